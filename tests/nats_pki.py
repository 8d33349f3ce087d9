"""Credentials made on the spot for the NATS security tests: a self-signed CA with server
and client certificates (``cryptography``), NKey pairs (``nkeys``), and an operator →
account → user JWT chain with its ``.creds`` file, all offline.

The JWTs follow the format of nats-io/jwt v2 (``ed25519-nkey`` signatures over
``base64url(header).base64url(claims)``, ``jti`` the base32 SHA-512/256 of the claims).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from pathlib import Path

# -- X.509 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    """A certificate and its key, written to files."""

    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "stemd test CA") -> Pem:
    """A self-signed CA certificate, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    slug = name.replace(" ", "-")
    cert_path, key_path = directory / f"{slug}.pem", directory / f"{slug}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Pem(cert_path, key_path, cert, key)


def make_cert(
    ca: Pem,
    directory: Path,
    name: str,
    *,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    client: bool = False,
) -> Pem:
    """A certificate signed by ``ca``: a server's (with these SANs) or a client's."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Pem(cert_path, key_path, cert, key)


# -- NKeys and JWTs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NKey:
    """An NKey pair: its seed (secret, ``S…``) and public key (``U…``, ``A…``, ``O…``)."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        pair = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return bytes(pair.sign(data))
        finally:
            pair.wipe()


def make_nkey(prefix: int = nkeys.PREFIX_BYTE_USER) -> NKey:
    """A fresh NKey pair of the given kind (user, account, operator)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix).decode()
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        public = pair.public_key.decode()
    finally:
        pair.wipe()
    return NKey(seed, public)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(subject: str, name: str, issuer: NKey, nats: dict[str, Any]) -> str:
    """A NATS v2 JWT of ``nats`` claims about ``subject``, signed by ``issuer``."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


def creds_text(jwt: str, seed: str) -> str:
    """A ``.creds`` file as ``nsc generate creds`` writes it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass(frozen=True)
class OperatorSetup:
    """A server config fragment trusting one operator, and a user's creds file."""

    server_config: str
    creds: Path
    stranger_creds: Path  # a well-formed user of an account the server does not know


def make_operator(directory: Path) -> OperatorSetup:
    """An operator, an account with JetStream, a user of it, and one of another operator."""
    operator = make_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    account = make_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user = make_nkey(nkeys.PREFIX_BYTE_USER)
    operator_jwt = encode_jwt(operator.public, "stemd-test", operator, {"type": "operator"})
    account_jwt = encode_jwt(
        account.public,
        "STEMD",
        operator,
        {"type": "account", "limits": _UNLIMITED, "default_permissions": {"pub": {}, "sub": {}}},
    )
    user_claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    user_jwt = encode_jwt(user.public, "daemon", account, user_claims)
    creds = directory / "daemon.creds"
    creds.write_text(creds_text(user_jwt, user.seed))
    creds.chmod(0o600)
    other_account = make_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    stranger = make_nkey(nkeys.PREFIX_BYTE_USER)
    stranger_jwt = encode_jwt(stranger.public, "stranger", other_account, user_claims)
    stranger_creds = directory / "stranger.creds"
    stranger_creds.write_text(creds_text(stranger_jwt, stranger.seed))
    # JetStream needs a system account in operator mode.
    system = make_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    system_jwt = encode_jwt(system.public, "SYS", operator, {"type": "account"})
    config = (
        f'operator: "{operator_jwt}"\n'
        f"system_account: {system.public}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f'  {account.public}: "{account_jwt}"\n'
        f'  {system.public}: "{system_jwt}"\n'
        "}\n"
    )
    return OperatorSetup(config, creds, stranger_creds)
