"""The shipped files: systemd units (systemd-analyze verify), sysusers and tmpfiles
snippets, the NATS server configs (nats-server -t) and the example stemd config.

systemd-analyze comes with Debian's `systemd` package, which .ci/run installs when it is
missing: under CI (``CI`` set) a missing tool fails these tests; elsewhere it skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stemd._config import load_config, sqlite_path
from stemd.testing._nats import find_nats_server

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("stemd.service", "stemd@.service")
NATS_CONFIGS = (
    "single.conf",
    "cluster/n1.conf",
    "cluster/n2.conf",
    "cluster/n3.conf",
    "leaf.conf",
)

pytestmark = pytest.mark.timeout(60)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs Debian's systemd package")
        pytest.skip(f"{name} is not installed (apt-get install systemd)")
    return path


def _units_in(tmp_path: Path) -> Path:
    """The units, with ExecStart pointing at an executable that exists here (verify checks
    it); nothing else is changed."""
    exe = tmp_path / "bin" / "stemd"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text()
        assert "ExecStart=/usr/bin/stemd run --config /etc/stemd/" in text
        (out / name).write_text(text.replace("/usr/bin/stemd", str(exe)))
    return out


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=unit.parent,
    )


def test_units_verify_cleanly(tmp_path: Path) -> None:
    """systemd-analyze verify accepts stemd.service and an instance of stemd@.service
    without a warning."""
    units = _units_in(tmp_path)
    instance = units / "stemd@billing.service"
    instance.write_text((units / "stemd@.service").read_text())
    for unit in (units / "stemd.service", instance):
        result = _verify(unit)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check is real: a unit whose ExecStart does not exist fails verification."""
    units = _units_in(tmp_path)
    broken = units / "broken.service"
    broken.write_text((ROOT / "systemd" / "stemd.service").read_text())
    assert _verify(broken).returncode != 0


def test_service_declares_the_contracted_settings() -> None:
    """Type=notify, the watchdog, restarts, the dedicated user and the hardening are set."""
    text = (ROOT / "systemd" / "stemd.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "User=stemd",
        "StateDirectory=stemd",
        "ExecStart=/usr/bin/stemd run --config /etc/stemd/stemd.toml",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ):
        assert f"\n{line}\n" in text, line
    template = (ROOT / "systemd" / "stemd@.service").read_text()
    assert "\nExecStart=/usr/bin/stemd run --config /etc/stemd/%i.toml\n" in template


def test_sysusers_and_tmpfiles_apply_in_a_scratch_root(tmp_path: Path) -> None:
    """systemd-sysusers creates the stemd user, and systemd-tmpfiles its directories, in a
    scratch root."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = [_tool("systemd-sysusers"), f"--root={root}"]
    subprocess.run(
        [*sysusers, str(ROOT / "systemd" / "stemd.sysusers.conf")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    passwd = (root / "etc" / "passwd").read_text()
    assert passwd.startswith("stemd:x:")
    assert ":/var/lib/stemd:/usr/sbin/nologin" in passwd
    subprocess.run(
        [
            _tool("systemd-tmpfiles"),
            f"--root={root}",
            "--create",
            str(ROOT / "systemd" / "stemd.tmpfiles.conf"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    state = root / "var" / "lib" / "stemd"
    assert state.is_dir()
    assert state.stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("name", NATS_CONFIGS)
def test_nats_configs_parse(name: str) -> None:
    """Each NATS server config under deploy/nats is valid for nats-server -t."""
    result = subprocess.run(
        [find_nats_server(), "-t", "-c", str(ROOT / "deploy" / "nats" / name)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_configs_fsync_before_acknowledging() -> None:
    """Every JetStream node syncs each write to disk before acknowledging it."""
    for name in NATS_CONFIGS:
        text = (ROOT / "deploy" / "nats" / name).read_text()
        assert "\n  sync_interval: always\n" in text, name


def test_example_config_is_valid() -> None:
    """deploy/stemd.example.toml loads, and holds the documented defaults."""
    config = load_config(ROOT / "deploy" / "stemd.example.toml", environ={})
    assert config.store == "sqlite:///stemd.db"
    assert (config.concurrency, config.queue, config.broker) == (32, "workflow", None)


def _settings(unit: str, instance: str | None = None) -> dict[str, list[str]]:
    """The ``Key=value`` lines of a unit file (``%i`` replaced by ``instance``)."""
    text = (ROOT / "systemd" / unit).read_text()
    if instance is not None:
        text = text.replace("%i", instance)
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _database_of(unit: str, instance: str | None = None) -> Path:
    """Where the service's database is when its config is the example one: the example's
    store, resolved from the unit's working directory (the cwd of `stemd run`)."""
    settings = _settings(unit, instance)
    [workdir] = settings["WorkingDirectory"]
    [state] = settings["StateDirectory"]
    # The working directory is the state directory, which systemd creates for the user.
    assert Path(workdir) == Path("/var/lib") / state
    config = load_config(ROOT / "deploy" / "stemd.example.toml", environ={})
    return Path(workdir) / sqlite_path(config.store)


def test_each_instance_has_its_own_database() -> None:
    """With the example config, stemd@a and stemd@b each keep their database in their own
    state directory, and stemd.service in /var/lib/stemd, as install.md says."""
    a = _database_of("stemd@.service", "a")
    b = _database_of("stemd@.service", "b")
    assert a == Path("/var/lib/stemd/a/stemd.db")
    assert b == Path("/var/lib/stemd/b/stemd.db")
    assert _database_of("stemd.service") == Path("/var/lib/stemd/stemd.db")
    install = (ROOT / "docs" / "operations" / "install.md").read_text()
    assert "/var/lib/stemd/billing/stemd.db" in install


@pytest.mark.parametrize("unit", UNITS)
def test_documentation_links_exist_after_install(unit: str) -> None:
    """Every Documentation= of the units names a page that exists once install.md has been
    followed: file:///usr/share/doc/stemd/X is docs/X, which install.md installs there."""
    install = (ROOT / "docs" / "operations" / "install.md").read_text()
    assert "cp -r docs/. /usr/share/doc/stemd/" in install
    links = [link for value in _settings(unit)["Documentation"] for link in value.split()]
    assert links
    for link in links:
        prefix = "file:///usr/share/doc/stemd/"
        assert link.startswith(prefix), link
        assert (ROOT / "docs" / link.removeprefix(prefix)).is_file(), link


@pytest.mark.parametrize("unit", UNITS)
def test_restarts_are_paced_and_never_given_up(unit: str) -> None:
    """Restart=on-failure, RestartSec apart, with no start limit: a start that failed
    during an outage (NATS down at boot) succeeds once the outage ends, instead of the unit
    staying failed after 10 tries in a minute."""
    settings = _settings(unit)
    assert settings["Restart"] == ["on-failure"]
    assert settings["StartLimitIntervalSec"] == ["0"]
    restart_sec = float(settings["RestartSec"][0].removesuffix("s"))
    assert 5 <= restart_sec <= 30
    assert "StartLimitBurst" not in settings
