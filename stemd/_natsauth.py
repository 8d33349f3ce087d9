"""How stemd authenticates to NATS and secures the connection: the ``[nats_auth]`` table.

One :class:`NatsAuth` applies to every NATS connection of a process (the daemon's store,
broker and API surface; the CLI's ``--nats``/``--store``). It holds at most one way to
authenticate (user and password, a token, an NKey seed file, or a ``.creds`` file holding
a user JWT and its seed) and the TLS settings (CA, client certificate for mutual TLS,
server name, TLS-first handshake). :meth:`NatsAuth.validate` checks every file at start;
:meth:`NatsAuth.connect_options` turns it into nats-py's options (this module does not
import nats-py: :mod:`stemd._natsconn` does).

Secrets never reach a log line, an error message or ``stemd config check``: ``repr`` of a
:class:`NatsAuth` hides them and :func:`redact_url` masks credentials written into a URL
(``nats://user:pass@host`` → ``nats://user:***@host``).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from stemd._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["NatsAuth", "redact_url", "url_has_credentials"]

_HIDDEN = "***"
_SECRETS = ("password", "token")
_JWT_BLOCK = re.compile(r"-{3,}BEGIN NATS USER JWT-{3,}\s+(\S+)\s+-{3,}END NATS USER JWT")
_SEED_BLOCK = re.compile(r"-{3,}BEGIN USER NKEY SEED-{3,}\s+(\S+)\s+-{3,}END USER NKEY SEED")


class NatsAuth(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Credentials and TLS settings for every NATS connection (``[nats_auth]``).

    Attributes:
        user: user name (with ``password``).
        password: the user's password (prefer ``STEMD_NATS_PASSWORD`` to the file).
        token: an authentication token.
        nkey_seed_file: a file holding an NKey user seed (``SU…``); the server knows the
            public key (``U…``).
        creds_file: a ``.creds`` file (user JWT and NKey seed, as ``nsc`` writes it) for a
            server in operator (decentralised JWT) mode.
        tls_ca_file: PEM CA bundle the server's certificate must chain to; setting it
            (or any ``tls_*`` key) makes TLS mandatory, also on ``nats://`` URLs.
        tls_cert_file: client certificate (PEM) for mutual TLS, with ``tls_key_file``.
        tls_key_file: the client certificate's private key (PEM).
        tls_hostname: the name the server's certificate must carry, when it is not the
            URL's host (the host is checked otherwise).
        tls_handshake_first: start TLS before the server's INFO (a server configured with
            ``handshake_first: true``).
    """

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    tls_handshake_first: bool = False

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is None or value is False:
                continue
            shown.append(f"{name}={_HIDDEN if name in _SECRETS else repr(value)}")
        return f"NatsAuth({', '.join(shown)})"

    __str__ = __repr__

    # -- what it asks for ---------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """Whether nothing is configured (plain, anonymous connections)."""
        return self == _EMPTY

    @property
    def wants_tls(self) -> bool:
        """Whether TLS is required of every connection."""
        return bool(
            self.tls_ca_file
            or self.tls_cert_file
            or self.tls_key_file
            or self.tls_hostname
            or self.tls_handshake_first
        )

    def method(self) -> str:
        """How this authenticates, in words for error messages (never the secret)."""
        if self.creds_file:
            return f"the user JWT in {self.creds_file}"
        if self.nkey_seed_file:
            return f"the NKey in {self.nkey_seed_file}"
        if self.token:
            return "a token"
        if self.user:
            return f"user {self.user!r} with a password"
        return "no credentials"

    def to_builtins(self) -> dict[str, Any]:
        """The settings as plain data for printing, secrets replaced by ``"(not shown)"``."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        for name in _SECRETS:
            if data.get(name) is not None:
                data[name] = "(not shown)"
        return data

    def merged(self, **overrides: Any) -> NatsAuth:
        """A copy with the non-``None`` ``overrides`` applied (command-line flags)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return msgspec.structs.replace(self, **given) if given else self

    # -- checks ---------------------------------------------------------------------------

    def validate(self, names: Mapping[str, str] | None = None) -> None:
        """Check that the settings are consistent and every file is readable and well formed.

        Args:
            names: how to name each field in messages (default ``nats_auth.<field>``; the
                CLI names its flags).

        Raises:
            ConfigError: naming the field at fault.
        """

        def name(field: str) -> str:
            return (names or {}).get(field, f"nats_auth.{field}")

        self._check_settings(name)
        if self.nkey_seed_file is not None:
            text = _read(name("nkey_seed_file"), self.nkey_seed_file)
            seed = next((w for w in text.split() if w.startswith("SU")), None)
            if seed is None:
                raise ConfigError(
                    f"{name('nkey_seed_file')}: {self.nkey_seed_file} holds no NKey user seed "
                    "(a line starting with 'SU')"
                )
            _check_seed(name("nkey_seed_file"), self.nkey_seed_file, seed)
        if self.creds_file is not None:
            _check_creds(name("creds_file"), self.creds_file)
        if self.wants_tls:
            self.ssl_context(names)

    def _check_settings(self, name: Callable[[str], str]) -> None:
        """The settings agree with each other (one way to authenticate, a user with its
        password, a client certificate with its key); no file is read here."""
        methods = [
            f
            for f, on in (
                ("user", self.user is not None or self.password is not None),
                ("token", self.token is not None),
                ("nkey_seed_file", self.nkey_seed_file is not None),
                ("creds_file", self.creds_file is not None),
            )
            if on
        ]
        if len(methods) > 1:
            raise ConfigError(
                f"{name(methods[1])}: give one way to authenticate, not both "
                f"{name(methods[0])} and {name(methods[1])}"
            )
        if self.password is not None and not self.user:
            raise ConfigError(f"{name('password')}: set without {name('user')}")
        if self.user is not None and not self.password:
            raise ConfigError(f"{name('user')}: needs a password ({name('password')})")
        if self.token is not None and not self.token:
            raise ConfigError(f"{name('token')}: empty")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            given = "tls_cert_file" if missing == "tls_key_file" else "tls_key_file"
            raise ConfigError(f"{name(given)}: needs {name(missing)} as well (mutual TLS)")

    def ssl_context(self, names: Mapping[str, str] | None = None) -> ssl.SSLContext:
        """A client TLS context: the CA (else the system's), the client certificate, and
        the server's name checked against its certificate.

        Raises:
            ConfigError: a file is unreadable or not PEM of the right kind.
        """

        def name(field: str) -> str:
            return (names or {}).get(field, f"nats_auth.{field}")

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_ca_file is not None:
            _read(name("tls_ca_file"), self.tls_ca_file)
            try:
                context = ssl.create_default_context(
                    ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file
                )
                context.minimum_version = ssl.TLSVersion.TLSv1_2
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"{name('tls_ca_file')}: {self.tls_ca_file} is not a PEM CA bundle: "
                    f"{_ssl_reason(exc)}"
                ) from None
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            _read(name("tls_cert_file"), self.tls_cert_file)
            _read(name("tls_key_file"), self.tls_key_file)
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"{name('tls_cert_file')}: cannot use {self.tls_cert_file} with the key "
                    f"{self.tls_key_file}: {_ssl_reason(exc)}"
                ) from None
        return context

    def connect_options(self) -> dict[str, Any]:
        """nats-py's ``connect`` keyword arguments for these settings."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = self.nkey_seed_file
        if self.creds_file is not None:
            options["user_credentials"] = self.creds_file
        if self.wants_tls:
            options["tls"] = self.ssl_context()
            if self.tls_hostname:
                options["tls_hostname"] = self.tls_hostname
            options["tls_handshake_first"] = self.tls_handshake_first
        return options


_EMPTY = NatsAuth()


def _read(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def _nkeys(key: str) -> Any:
    try:
        import nkeys
    except ImportError:
        raise ConfigError(
            f"{key}: NKey and JWT authentication need the nkeys package "
            "(pip install 'stemd[nkeys]')"
        ) from None
    return nkeys


def _check_seed(key: str, path: str, seed: str) -> None:
    nkeys = _nkeys(key)
    try:
        pair = nkeys.from_seed(bytearray(seed.encode()))
        pair.wipe()
    except Exception as exc:  # nkeys raises its own errors and binascii's
        raise ConfigError(
            f"{key}: {path} holds an invalid NKey seed ({type(exc).__name__})"
        ) from None


def _check_creds(key: str, path: str) -> None:
    text = _read(key, path)
    jwt = _JWT_BLOCK.search(text)
    seed = _SEED_BLOCK.search(text)
    if jwt is None or seed is None:
        what = "user JWT" if jwt is None else "user NKey seed"
        raise ConfigError(
            f"{key}: {path} is not a NATS credentials file (no {what} block; "
            "make one with `nsc generate creds`)"
        )
    if jwt.group(1).count(".") != 2:
        raise ConfigError(f"{key}: {path}: the user JWT is malformed (not header.claims.sig)")
    _check_seed(key, path, seed.group(1))


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).replace("_", " ").lower() or type(exc).__name__


# -- URLs -----------------------------------------------------------------------------------

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _split_userinfo(part: str) -> tuple[str, str | None, str]:
    """``(before, userinfo or None, after)`` of one server URL (``scheme://`` optional)."""
    stripped = part.lstrip()
    lead = part[: len(part) - len(stripped)]
    scheme = _SCHEME.match(stripped)
    start = scheme.end() if scheme else 0
    rest = stripped[start:]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    info, at, host = rest[:end].rpartition("@")
    if not at:
        return part, None, ""
    return lead + stripped[:start], info, host + rest[end:]


def _redact_one(part: str) -> str:
    before, info, after = _split_userinfo(part)
    if info is None:
        return part
    user, sep, _ = info.partition(":")
    masked = f"{user}:{_HIDDEN}" if sep else _HIDDEN
    return f"{before}{masked}@{after}"


def redact_url(url: str) -> str:
    """``url`` with any password or token in it replaced by ``***`` (every server of a
    comma-separated list): ``nats://ana:s3cret@h:4222`` → ``nats://ana:***@h:4222``,
    ``nats://tok@h`` → ``nats://***@h``."""
    return ",".join(_redact_one(part) for part in url.split(","))


def url_has_credentials(url: str) -> bool:
    """Whether some server of ``url`` carries a user, password or token."""
    return any(_split_userinfo(part)[1] is not None for part in url.split(","))
