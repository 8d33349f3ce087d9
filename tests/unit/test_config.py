"""The daemon's configuration: TOML, STEMD_* overrides, and errors that name the key."""

from __future__ import annotations

import tomllib
from typing import TYPE_CHECKING

import msgspec
import pytest

from stemd._config import DEFAULT_STORE, Config, load_config
from stemd._config_print import config_to_toml
from stemd._errors import ConfigError
from stemd._reachability import check_reachable
from stemd._urls import sqlite_path

if TYPE_CHECKING:
    from pathlib import Path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stemd.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    """With no file and no variables: SQLite in ./stemd.db, in-process broker, 32 workers."""
    config = load_config(None, environ={})
    assert config.store == DEFAULT_STORE == "sqlite:///./stemd.db"
    assert config.broker is None
    assert config.effective_nats is None
    assert config.concurrency == 32
    assert config.queue == "workflow"
    assert config.entry_points is True


def test_contract_keys_are_read(tmp_path: Path) -> None:
    """Every key of the contract's example is read with its meaning."""
    path = _write(
        tmp_path,
        """
modules = ["myapp.workflows"]
store = "sqlite:////var/lib/stemd/stemd.db"
broker = "nats://127.0.0.1:4222"
nats = "nats://127.0.0.1:4222"
concurrency = 8
queue = "billing"
""",
    )
    config = load_config(path, environ={})
    assert config.modules == ("myapp.workflows",)
    assert config.store == "sqlite:////var/lib/stemd/stemd.db"
    assert config.broker == config.nats == "nats://127.0.0.1:4222"
    assert (config.concurrency, config.queue) == (8, "billing")


def test_nats_defaults_to_the_brokers_or_the_stores_url() -> None:
    """Unset ``nats`` is the broker's URL, else the store's, when either is NATS."""
    assert Config(broker="nats://b:4222").effective_nats == "nats://b:4222"
    assert Config(store="nats://s:4222").effective_nats == "nats://s:4222"
    assert Config(store="nats://s:4222", nats="nats://n:4222").effective_nats == "nats://n:4222"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrency = 'many'", "concurrency: expected `int`"),
        ("concurrency = 0", "concurrency: expected `int` >= 1"),
        ("colour = 'blue'", "colour: unknown key"),
        ("[restart]\nmax_restart = 1", "restart.max_restart: unknown key"),
        ("modules = 'one.module'", "modules: expected `array`"),
        ("log_level = 'loud'", "log_level: invalid enum value 'loud'"),
        ("store = 'postgres://x'", "store: unsupported URL"),
        ("broker = 'amqp://x'", "broker: unsupported URL"),
        ("modules = ['not a module']", "modules[0]: 'not a module' is not a module name"),
        ("actors = ['nocolon']", "actors[0]:"),
        ("queue = 'a.b'", "queue:"),
        ("metrics_address = 'nowhere'", "metrics_address:"),
        ("concurrency = ", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """An unknown key, a wrong type or a bad value is a ConfigError naming the key."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert message in str(info.value)
    assert str(info.value).startswith(str(path)) or "unsupported" in message or ":" in message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that cannot be read is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """STEMD_* variables override the file's keys, with their types converted."""
    path = _write(tmp_path, "concurrency = 4\nqueue = 'q1'\nbroker = 'nats://x:1'\n")
    env = {
        "STEMD_MODULES": "a.b, c ,",
        "STEMD_STORE": "memory://",
        "STEMD_BROKER": "",
        "STEMD_NATS": "nats://n:4222",
        "STEMD_CONCURRENCY": "12",
        "STEMD_QUEUE": "q2",
        "STEMD_LEASE": "2.5",
        "STEMD_ENTRY_POINTS": "false",
        "STEMD_RESTART_MAX_RESTARTS": "9",
    }
    config = load_config(path, environ=env)
    assert config.modules == ("a.b", "c")
    assert config.store == "memory://"
    assert config.broker is None
    assert config.nats == "nats://n:4222"
    assert (config.concurrency, config.queue, config.lease) == (12, "q2", 2.5)
    assert config.entry_points is False
    assert config.restart.max_restarts == 9


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STEMD_CONCURRENCY": "lots"}, "STEMD_CONCURRENCY: expected `int`, got 'lots'"),
        ({"STEMD_CONCURRENCY": "-1"}, "STEMD_CONCURRENCY: expected `int` >= 1"),
        ({"STEMD_CONCURENCY": "3"}, "STEMD_CONCURENCY: unknown setting"),
        ({"STEMD_STORE": "ftp://x"}, "store: unsupported URL"),
    ],
)
def test_environment_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    """A bad or unknown STEMD_* variable is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=env)
    assert message in str(info.value)


def test_stemd_config_names_the_file(tmp_path: Path) -> None:
    """STEMD_CONFIG names the config file when no path is given."""
    path = _write(tmp_path, "queue = 'from-file'\n")
    assert load_config(None, environ={"STEMD_CONFIG": str(path)}).queue == "from-file"


def test_printed_config_reads_back_the_same(tmp_path: Path) -> None:
    """`config check` output is TOML that loads into the same configuration."""
    path = _write(tmp_path, "modules = ['x.y']\nbroker = 'nats://h:1'\n[restart]\nwindow = 5.0\n")
    config = load_config(path, environ={})
    again = _write(tmp_path, config_to_toml(config))
    assert load_config(again, environ={}) == config
    assert tomllib.loads(config_to_toml(config))["restart"]["window"] == 5.0


def test_config_is_frozen() -> None:
    """The decoded configuration cannot be changed in place."""
    with pytest.raises(AttributeError):
        Config().queue = "x"  # type: ignore[misc]
    assert msgspec.structs.replace(Config(), queue="x").queue == "x"


def test_sqlite_paths_are_read_like_the_store_reads_them() -> None:
    """Three slashes then a relative path, four for an absolute one."""
    assert sqlite_path("sqlite:///./stemd.db") == "./stemd.db"
    assert sqlite_path("sqlite:///stemd.db?synchronous=NORMAL") == "stemd.db"
    assert sqlite_path("sqlite:////var/lib/stemd/stemd.db") == "/var/lib/stemd/stemd.db"


@pytest.mark.anyio
async def test_unreachable_urls_name_their_key(tmp_path: Path) -> None:
    """A store in a missing directory, or a NATS URL nobody listens on, names its key."""
    with pytest.raises(ConfigError, match=r"^store: cannot create"):
        await check_reachable(Config(store=f"sqlite:///{tmp_path}/missing/stemd.db"))
    with pytest.raises(ConfigError, match=r"^broker: cannot reach nats://127\.0\.0\.1:1"):
        await check_reachable(Config(store="memory://", broker="nats://127.0.0.1:1"))
    await check_reachable(Config(store=f"sqlite:///{tmp_path}/stemd.db"))


def test_event_loop_options() -> None:
    """event_loop picks uvloop when installed (auto) or asked, asyncio when asked."""
    from stemd._daemon import loop_options

    assert loop_options("asyncio") == {}
    assert loop_options("auto") == {"use_uvloop": True}  # uvloop is a test dependency
    assert loop_options("uvloop") == {"use_uvloop": True}
    assert load_config(None, environ={"STEMD_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="STEMD_EVENT_LOOP"):
        load_config(None, environ={"STEMD_EVENT_LOOP": "trio"})


def test_http_address_defaults_to_loopback_8080_and_can_be_turned_off(tmp_path: Path) -> None:
    """No key: the HTTP server on 127.0.0.1:8080 with the API; "" or "off": none."""
    config = load_config(None, environ={})
    assert (config.http, config.http_api) == (("127.0.0.1:8080", "http_address"), True)
    assert load_config(_write(tmp_path, 'http_address = ""'), environ={}).http is None
    assert load_config(None, environ={"STEMD_HTTP_ADDRESS": "off"}).http is None
    assert "# http_address defaults to 127.0.0.1:8080" in config_to_toml(config)


def test_an_address_that_is_not_loopback_needs_tokens(tmp_path: Path) -> None:
    """http_address on all interfaces without http_tokens is refused at load, naming the
    key; with tokens it loads, and the tokens are never printed."""
    with pytest.raises(ConfigError, match=r"^http_address 0\.0\.0\.0:8080: not a loopback"):
        load_config(_write(tmp_path, 'http_address = "0.0.0.0:8080"'), environ={})
    env = {"STEMD_HTTP_TOKENS": "a-long-secret-token-1,a-long-secret-token-2"}
    config = load_config(_write(tmp_path, 'http_address = "0.0.0.0:8080"'), environ=env)
    assert config.http_tokens == ("a-long-secret-token-1", "a-long-secret-token-2")
    assert config.http_api
    assert "a-long-secret" not in config_to_toml(config)
    with pytest.raises(ConfigError, match=r"^STEMD_HTTP_TOKENS"):
        load_config(None, environ={"STEMD_HTTP_TOKENS": "short"})


def test_metrics_address_is_the_old_name_of_http_address(tmp_path: Path) -> None:
    """An old config's metrics_address is where the HTTP server listens; on a public
    address without tokens it serves metrics and health only, as before; both keys at
    once are an error."""
    config = load_config(_write(tmp_path, 'metrics_address = "127.0.0.1:9100"'), environ={})
    assert (config.http, config.http_api) == (("127.0.0.1:9100", "metrics_address"), True)
    public = load_config(_write(tmp_path, 'metrics_address = "0.0.0.0:9100"'), environ={})
    assert (public.http, public.http_api) == (("0.0.0.0:9100", "metrics_address"), False)
    both = 'metrics_address = "127.0.0.1:9100"\nhttp_address = "127.0.0.1:8080"'
    with pytest.raises(ConfigError, match=r"^metrics_address: the old name of http_address"):
        load_config(_write(tmp_path, both), environ={})
