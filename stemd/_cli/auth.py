"""The CLI's NATS credentials and TLS: the flags, and their merge with the config's
``[nats_auth]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import argparse

    from stemd._config import Config
    from stemd._natsauth import NatsAuth

__all__ = ["auth_flags", "auth_of"]


# The command-line flag of each [nats_auth] key, for messages.
_AUTH_FLAGS = {
    "user": "--nats-user",
    "password": "--nats-password",
    "token": "--nats-token",
    "nkey_seed_file": "--nkey",
    "creds_file": "--creds",
    "tls_ca_file": "--tls-ca",
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "tls_hostname": "--tls-hostname",
    "tls_handshake_first": "--tls-handshake-first",
}
# The ways to authenticate, each with its fields.
_AUTH_METHODS = (("user", "password"), ("token",), ("nkey_seed_file",), ("creds_file",))


def auth_of(args: argparse.Namespace, config: Config) -> NatsAuth:
    """The config's ``[nats_auth]`` (with ``STEMD_NATS_*``) with the flags on top, checked.
    A flag choosing a way to authenticate drops the config's other ways (``--nats-user``
    keeps a password from the config or STEMD_NATS_PASSWORD); TLS flags replace one
    setting each."""
    given = {
        field: getattr(args, field)
        for field in _AUTH_FLAGS
        if getattr(args, field, None) not in (None, False)
    }
    auth = config.nats_auth
    chosen = [fields for fields in _AUTH_METHODS if any(f in given for f in fields)]
    if chosen:
        dropped = [f for fields in _AUTH_METHODS if fields not in chosen for f in fields]
        auth = msgspec.structs.replace(auth, **dict.fromkeys(dropped))
    auth = auth.merged(**given)
    auth.validate({field: _AUTH_FLAGS[field] for field in given})
    return auth


def auth_flags(p: argparse.ArgumentParser) -> None:
    auth = p.add_argument_group(
        "NATS credentials and TLS (default: the config's [nats_auth] and STEMD_NATS_*)"
    )
    auth.add_argument("--creds", metavar="FILE", dest="creds_file", help="a .creds file (JWT)")
    auth.add_argument("--nkey", metavar="FILE", dest="nkey_seed_file", help="an NKey seed file")
    auth.add_argument("--nats-user", metavar="USER", dest="user", help="user name")
    auth.add_argument(
        "--nats-password",
        metavar="PASSWORD",
        dest="password",
        help="the user's password (visible to other local users: prefer STEMD_NATS_PASSWORD)",
    )
    auth.add_argument(
        "--nats-token",
        metavar="TOKEN",
        dest="token",
        help="an authentication token (prefer STEMD_NATS_TOKEN)",
    )
    auth.add_argument("--tls-ca", metavar="FILE", dest="tls_ca_file", help="CA bundle (PEM)")
    auth.add_argument(
        "--tls-cert", metavar="FILE", dest="tls_cert_file", help="client certificate (PEM)"
    )
    auth.add_argument("--tls-key", metavar="FILE", dest="tls_key_file", help="its key (PEM)")
    auth.add_argument(
        "--tls-hostname", metavar="NAME", dest="tls_hostname", help="name the server's cert has"
    )
    auth.add_argument(
        "--tls-handshake-first",
        action="store_true",
        dest="tls_handshake_first",
        help="start TLS before the server's INFO",
    )
