"""The ``[nats_auth]`` table: validation, STEMD_NATS_* overrides, and secrets kept out of
messages and printed configurations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nkeys
import pytest

from stemd._config import Config, load_config
from stemd._config_print import config_to_builtins, config_to_toml
from stemd._errors import ConfigError
from stemd._natsauth import NatsAuth, redact_url, url_has_credentials
from tests.nats_pki import creds_text, make_ca, make_cert, make_nkey

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://ana:s3cret@127.0.0.1:4222", "nats://ana:***@127.0.0.1:4222"),
        ("nats://t0ken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("tls://ana:p@ss@h:4222?bucket=a@b", "tls://ana:***@h:4222?bucket=a@b"),
        ("nats://a:b@h1:4222, c:d@h2:4222", "nats://a:***@h1:4222, c:***@h2:4222"),
        ("nats://127.0.0.1:4222?replicas=3", "nats://127.0.0.1:4222?replicas=3"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """Passwords and tokens in URLs are masked; the rest of the URL is kept."""
    assert redact_url(url) == shown
    assert url_has_credentials(url) == (url != shown)


def test_repr_hides_secrets() -> None:
    """repr/str of the settings never show a password or a token."""
    auth = NatsAuth(user="ana", password="s3cret", tls_ca_file="/ca.pem")
    assert "s3cret" not in repr(auth)
    assert "s3cret" not in str(auth)
    assert "ana" in repr(auth)
    assert "/ca.pem" in repr(auth)
    assert "t0k" not in repr(NatsAuth(token="t0k"))
    assert NatsAuth(token="t0k").to_builtins()["token"] == "(not shown)"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            NatsAuth(user="a", password="b", token="t"),
            r"^nats_auth\.token: give one way to authenticate, not both nats_auth\.user and",
        ),
        (NatsAuth(password="b"), r"^nats_auth\.password: set without nats_auth\.user"),
        (NatsAuth(user="a"), r"^nats_auth\.user: needs a password"),
        (NatsAuth(tls_cert_file="/c.pem"), r"^nats_auth\.tls_cert_file: needs nats_auth\.tls_key"),
        (
            NatsAuth(creds_file="/nonexistent/x.creds"),
            r"^nats_auth\.creds_file: cannot read /nonexistent/x\.creds: ",
        ),
        (NatsAuth(tls_ca_file="/nonexistent/ca.pem"), r"^nats_auth\.tls_ca_file: cannot read"),
    ],
)
def test_inconsistent_settings_name_the_key(auth: NatsAuth, message: str) -> None:
    """Each inconsistency or unreadable file is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=message):
        auth.validate()


def test_malformed_files_name_the_key(tmp_path: Path) -> None:
    """A creds file without its blocks, a bad seed and a non-PEM CA are clear errors."""
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"^nats_auth\.creds_file: .* not a NATS credentials"):
        NatsAuth(creds_file=str(junk)).validate()
    bad_jwt = tmp_path / "bad.creds"
    bad_jwt.write_text(creds_text("not-a-jwt", make_nkey().seed))
    with pytest.raises(ConfigError, match=r"^nats_auth\.creds_file: .*JWT is malformed"):
        NatsAuth(creds_file=str(bad_jwt)).validate()
    bad_seed = tmp_path / "seed.creds"
    bad_seed.write_text(creds_text("a.b.c", "SUAAAAAAAA"))
    with pytest.raises(ConfigError, match=r"^nats_auth\.creds_file: .*invalid NKey seed"):
        NatsAuth(creds_file=str(bad_seed)).validate()
    with pytest.raises(ConfigError, match=r"^nats_auth\.nkey_seed_file: .*holds no NKey user"):
        NatsAuth(nkey_seed_file=str(junk)).validate()
    with pytest.raises(ConfigError, match=r"^nats_auth\.tls_ca_file: .*is not a PEM CA bundle"):
        NatsAuth(tls_ca_file=str(junk)).validate()
    with pytest.raises(ConfigError, match=r"^--tls-ca: .*is not a PEM CA bundle"):
        NatsAuth(tls_ca_file=str(junk)).validate({"tls_ca_file": "--tls-ca"})


def test_well_formed_files_pass(tmp_path: Path) -> None:
    """A real seed, creds file, CA and client certificate validate."""
    seed = tmp_path / "user.nk"
    seed.write_text(make_nkey().seed + "\n")
    NatsAuth(nkey_seed_file=str(seed)).validate()
    account = make_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    creds = tmp_path / "u.creds"
    creds.write_text(creds_text("eyJ0.eyJ1.c2ln", make_nkey().seed))
    assert account.public.startswith("A")
    NatsAuth(creds_file=str(creds)).validate()
    ca = make_ca(tmp_path)
    client = make_cert(ca, tmp_path, "client", client=True)
    auth = NatsAuth(
        tls_ca_file=str(ca.cert), tls_cert_file=str(client.cert), tls_key_file=str(client.key)
    )
    auth.validate()
    assert auth.wants_tls
    assert auth.connect_options()["tls"].check_hostname


def test_environment_sets_the_table(tmp_path: Path) -> None:
    """STEMD_NATS_<FIELD> sets nats_auth.<field>; STEMD_NATS is still the URL."""
    path = tmp_path / "stemd.toml"
    path.write_text('[nats_auth]\nuser = "ana"\npassword = "from-file"\n')
    env = {"STEMD_NATS_PASSWORD": "from-env", "STEMD_NATS": "nats://127.0.0.1:4222"}
    config = load_config(path, environ=env)
    assert config.nats_auth == NatsAuth(user="ana", password="from-env")
    assert config.nats == "nats://127.0.0.1:4222"
    config = load_config(None, environ={"STEMD_NATS_TOKEN": "t0k"})
    assert config.nats_auth.token == "t0k"
    config = load_config(path, environ={"STEMD_NATS_USER": "", "STEMD_NATS_PASSWORD": ""})
    assert config.nats_auth.is_empty
    with pytest.raises(ConfigError, match=r"^STEMD_NATS_PASWORD: unknown setting"):
        load_config(None, environ={"STEMD_NATS_PASWORD": "x"})
    with pytest.raises(ConfigError, match=r"^STEMD_NATS_AUTH: unknown setting"):
        load_config(None, environ={"STEMD_NATS_AUTH": "x"})
    with pytest.raises(ConfigError, match=r"^nats_auth\.creds_file: cannot read /nope\.creds"):
        load_config(None, environ={"STEMD_NATS_CREDS_FILE": "/nope.creds"})


def test_unknown_key_in_the_table(tmp_path: Path) -> None:
    """A misspelt key of [nats_auth] is refused, named with its table."""
    path = tmp_path / "stemd.toml"
    path.write_text('[nats_auth]\npasword = "x"\n')
    with pytest.raises(ConfigError, match=r"nats_auth\.pasword: unknown key"):
        load_config(path, environ={})


def test_printed_config_hides_secrets() -> None:
    """The effective configuration, as TOML or data, shows no password, token nor URL secret."""
    config = Config(
        store="nats://ana:url-secret@127.0.0.1:4222",
        nats_auth=NatsAuth(user="ana", password="s3cret"),
    )
    text = config_to_toml(config)
    assert "s3cret" not in text
    assert "url-secret" not in text
    assert 'store = "nats://ana:***@127.0.0.1:4222"' in text
    assert 'password = "(not shown)"' in text
    assert "# nats defaults to nats://ana:***@127.0.0.1:4222" in text
    data = config_to_builtins(config)
    assert "s3cret" not in repr(data)
    assert "url-secret" not in repr(data)
    assert "t0k" not in config_to_toml(Config(nats_auth=NatsAuth(token="t0k")))


def test_url_errors_hide_credentials() -> None:
    """A bad URL carrying credentials is reported with them masked."""
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"STEMD_BROKER": "http://ana:s3cret@h:4222"})
    assert "s3cret" not in str(info.value)
    assert "http://ana:***@h:4222" in str(info.value)
