"""NATS authentication, TLS and permissions against real nats-server processes started
with configs written here: a `stemd run` daemon and the CLI with the right credentials run
a workflow end to end; with wrong or missing ones both fail at once with one clear line."""

from __future__ import annotations

import json
import logging
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog
from stemd_examples import approvals, square

import stemd
from stemd._cli.main import run_cli
from stemd._natsauth import NatsAuth
from stemd._natsconn import MSG_ID, PermissionDenied, open_connection
from stemd.testing._nats import NatsServer, nats_server
from tests.integration.daemon_proc import DaemonProcess, NotifyListener, write_config
from tests.nats_pki import Pem, make_ca, make_cert, make_nkey, make_operator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo the CLI's logging configuration after each test."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV`` in a worker thread (it runs its own event loop), bounded in time."""
    capsys.readouterr()
    with anyio.fail_after(30):
        status = await anyio.to_thread.run_sync(run_cli, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_clear_line(err: str, *needles: str) -> str:
    """``err`` is exactly one ``stemd:`` line holding every needle; return it."""
    assert err.count("\n") == 1, err
    assert err.startswith("stemd: "), err
    for needle in needles:
        assert needle in err, err
    return err


@asynccontextmanager
async def server_with(tmp_path: Path, conf: str, scheme: str = "nats") -> AsyncIterator[NatsServer]:
    """A JetStream nats-server whose config file is ``conf``."""
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    async with nats_server(config_file=path, scheme=scheme) as server:
        yield server


# -- one daemon, one CLI ---------------------------------------------------------------------


async def run_square_through_daemon(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    url: str,
    auth: dict[str, Any],
    flags: list[str],
    *,
    secrets: tuple[str, ...] = (),
) -> None:
    """`stemd run` with ``auth`` as [nats_auth] on ``url`` (store, broker, API), and the CLI
    with ``flags`` starts examples.square and waits for it over --nats. No secret shows."""
    config = write_config(
        tmp_path / "stemd.toml", store=url, broker=url, log_format="json", nats_auth=auth
    )
    notify = NotifyListener(tmp_path)
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        await anyio.to_thread.run_sync(notify.wait_for, "READY=1")
        n = ["--nats", url, *flags]
        status, out, err = await cli(
            capsys, "workflow", "start", "examples.square", "--params", '{"n": 7}', *n
        )
        assert status == 0, err
        run_id = out.split()[-1]
        status, out, err = await cli(
            capsys, "workflow", "wait", run_id, "--timeout", "20", "--json", *n
        )
        assert status == 0, err
        assert json.loads(out)["run"]["result"] == 49
        status, out, err = await cli(capsys, "config", "check", "--config", str(config))
        assert status == 0, err
        assert "# every URL is reachable" in out
        daemon.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(daemon.wait) == 0
        for secret in secrets:
            assert secret not in daemon.stdout + daemon.stderr + out
    finally:
        daemon.kill()
        notify.close()


async def daemon_fails_at_start(
    tmp_path: Path, url: str, auth: dict[str, Any], *needles: str
) -> str:
    """`stemd run` with ``auth`` exits 1 at start with one line holding ``needles``."""
    config = write_config(tmp_path / "bad.toml", store=url, broker=url, nats_auth=auth)
    daemon = DaemonProcess(tmp_path, config)
    try:
        status = await anyio.to_thread.run_sync(daemon.wait)
    finally:
        daemon.kill()
    assert status == 1, daemon.stderr
    return one_clear_line(daemon.stderr, *needles)


@dataclass(frozen=True)
class Method:
    """One way to authenticate, right and wrong."""

    conf: str
    auth: dict[str, Any]
    flags: list[str]
    wrong_flags: list[str]
    wrong_auth: dict[str, Any]
    secrets: tuple[str, ...] = ()


def method(name: str, tmp_path: Path) -> Method:
    """The server config, daemon table and CLI flags of one authentication method."""
    if name == "user":
        return Method(
            conf='authorization { users = [ { user: ana, password: "pw-s3cret" } ] }\n',
            auth={"user": "ana", "password": "pw-s3cret"},
            flags=["--nats-user", "ana", "--nats-password", "pw-s3cret"],
            wrong_flags=["--nats-user", "ana", "--nats-password", "pw-wrong"],
            wrong_auth={"user": "ana", "password": "pw-wrong"},
            secrets=("pw-s3cret", "pw-wrong"),
        )
    if name == "token":
        return Method(
            conf='authorization { token: "tok-s3cret" }\n',
            auth={"token": "tok-s3cret"},
            flags=["--nats-token", "tok-s3cret"],
            wrong_flags=["--nats-token", "tok-wrong"],
            wrong_auth={"token": "tok-wrong"},
            secrets=("tok-s3cret", "tok-wrong"),
        )
    if name == "nkey":
        good, bad = make_nkey(), make_nkey()
        (tmp_path / "good.nk").write_text(good.seed + "\n")
        (tmp_path / "bad.nk").write_text(bad.seed + "\n")
        return Method(
            conf=f"authorization {{ users = [ {{ nkey: {good.public} }} ] }}\n",
            auth={"nkey_seed_file": str(tmp_path / "good.nk")},
            flags=["--nkey", str(tmp_path / "good.nk")],
            wrong_flags=["--nkey", str(tmp_path / "bad.nk")],
            wrong_auth={"nkey_seed_file": str(tmp_path / "bad.nk")},
            secrets=(good.seed, bad.seed),
        )
    assert name == "creds"
    operator = make_operator(tmp_path)
    return Method(
        conf=operator.server_config,
        auth={"creds_file": str(operator.creds)},
        flags=["--creds", str(operator.creds)],
        wrong_flags=["--creds", str(operator.stranger_creds)],
        wrong_auth={"creds_file": str(operator.stranger_creds)},
    )


@pytest.mark.parametrize("name", ["user", "token", "nkey", "creds"])
async def test_authentication_methods(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each method: right credentials run a workflow through daemon and CLI; wrong or none
    fail at once, in one line, naming the method (and the key, for the daemon)."""
    m = method(name, tmp_path)
    async with server_with(tmp_path, m.conf) as server:
        await run_square_through_daemon(
            capsys, tmp_path, server.url, m.auth, m.flags, secrets=m.secrets
        )
        with anyio.fail_after(15):
            status, _, err = await cli(
                capsys, "workflow", "list", "--nats", server.url, *m.wrong_flags
            )
        assert status == 1
        one_clear_line(err, "--nats: cannot connect to NATS", "authorization violation")
        status, _, err = await cli(capsys, "workflow", "list", "--nats", server.url)
        assert status == 1
        one_clear_line(err, "the server requires credentials and none were given")
        line = await daemon_fails_at_start(
            tmp_path, server.url, m.wrong_auth, "stemd: store: ", "authorization violation"
        )
        for secret in m.secrets:
            assert secret not in line + err


async def test_password_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI takes the password from STEMD_NATS_PASSWORD; a password in the URL works and
    is never printed."""
    conf = 'authorization { users = [ { user: ana, password: "pw-env" } ] }\n'
    auth = NatsAuth(user="ana", password="pw-env")
    async with (
        server_with(tmp_path, conf) as server,
        stemd.App(
            store="memory://",
            workflows=[square],
            options=stemd.AppOptions(nats=server.url, nats_auth=auth),
        ),
    ):
        monkeypatch.setenv("STEMD_NATS_PASSWORD", "pw-env")
        status, out, err = await cli(
            capsys, "workflow", "list", "--nats", server.url, "--nats-user", "ana"
        )
        assert status == 0, err
        monkeypatch.delenv("STEMD_NATS_PASSWORD")
        in_url = server.url.replace("nats://", "nats://ana:pw-env@")
        status, out, err = await cli(capsys, "workflow", "list", "--nats", in_url)
        assert status == 0, err
        bad_url = server.url.replace("nats://", "nats://ana:pw-bad@")
        status, out, err = await cli(capsys, "-v", "workflow", "list", "--nats", bad_url)
        assert status == 1
        # -v logs the connection trouble first: the URL is masked there too.
        line = one_clear_line(err.splitlines()[-1] + "\n", "refused the credentials in the URL")
        assert "pw-bad" not in err + out
        assert "nats://ana:***@" in line


async def test_malformed_files_fail_clearly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A malformed creds file or a missing seed file: one line naming the flag or key, before
    any connection is tried."""
    junk = tmp_path / "junk.creds"
    junk.write_text("not a creds file\n")
    status, _, err = await cli(
        capsys, "workflow", "list", "--nats", "nats://127.0.0.1:1", "--creds", str(junk)
    )
    assert status == 1
    one_clear_line(err, "--creds: ", "is not a NATS credentials file")
    status, _, err = await cli(
        capsys, "workflow", "list", "--nats", "nats://127.0.0.1:1", "--nkey", "/nonexistent.nk"
    )
    assert status == 1
    one_clear_line(err, "--nkey: cannot read /nonexistent.nk")
    await daemon_fails_at_start(
        tmp_path,
        "nats://127.0.0.1:1",
        {"creds_file": str(tmp_path / "missing.creds")},
        "nats_auth.creds_file: cannot read",
    )


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA with a server and a client certificate, and a CA nobody uses."""

    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Fresh certificates for one test."""
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_ca(directory)
    return Pki(
        ca=ca,
        server=make_cert(ca, directory, "server"),
        client=make_cert(ca, directory, "client", client=True),
        other_ca=make_ca(directory, "other CA"),
    )


def tls_conf(pki: Pki, extra: str = "") -> str:
    """A nats-server ``tls`` block with the test PKI's server certificate and ``extra``."""
    return f'tls {{\n  cert_file: "{pki.server.cert}"\n  key_file: "{pki.server.key}"\n{extra}}}\n'


async def test_tls_with_the_right_ca(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki
) -> None:
    """TLS: the daemon and CLI trusting the CA work; another CA, no CA, a wrong server name,
    or a server not requiring TLS fail at once with one clear line."""
    async with server_with(tmp_path, tls_conf(pki), scheme="tls") as server:
        ca = str(pki.ca.cert)
        await run_square_through_daemon(
            capsys, tmp_path, server.url, {"tls_ca_file": ca}, ["--tls-ca", ca]
        )
        n = ["workflow", "list", "--nats", server.url]
        status, _, err = await cli(capsys, *n, "--tls-ca", str(pki.other_ca.cert))
        assert status == 1
        one_clear_line(err, "certificate is not trusted", "unable to get local issuer")
        status, _, err = await cli(capsys, *n)
        assert status == 1
        one_clear_line(err, "certificate is not trusted")
        status, _, err = await cli(capsys, *n, "--tls-ca", ca, "--tls-hostname", "other.example")
        assert status == 1
        one_clear_line(err, "Hostname mismatch")
        await daemon_fails_at_start(
            tmp_path,
            server.url,
            {"tls_ca_file": str(pki.other_ca.cert)},
            "stemd: store: ",
            "certificate is not trusted",
        )
    async with nats_server() as plain:
        status, _, err = await cli(
            capsys, "workflow", "list", "--nats", plain.url, "--tls-ca", str(pki.ca.cert)
        )
        assert status == 1
        one_clear_line(err, "TLS is configured but the server does not require it")


async def test_mutual_tls(capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki) -> None:
    """Mutual TLS on a nats:// URL: the daemon and CLI with a client certificate work;
    without one the CLI and the daemon fail at once, saying a certificate is required."""
    extra = f'  ca_file: "{pki.ca.cert}"\n  verify: true\n'
    async with server_with(tmp_path, tls_conf(pki, extra)) as server:
        tls = {
            "tls_ca_file": str(pki.ca.cert),
            "tls_cert_file": str(pki.client.cert),
            "tls_key_file": str(pki.client.key),
        }
        flags = ["--tls-ca", tls["tls_ca_file"], "--tls-cert", tls["tls_cert_file"]]
        flags += ["--tls-key", tls["tls_key_file"]]
        await run_square_through_daemon(capsys, tmp_path, server.url, tls, flags)
        status, _, err = await cli(
            capsys, "workflow", "list", "--nats", server.url, "--tls-ca", str(pki.ca.cert)
        )
        assert status == 1
        # The server's alert, or (when the client's write beat it) the hang-up, explained.
        one_clear_line(err, "client certificate", "set tls_cert_file and tls_key_file")
        await daemon_fails_at_start(
            tmp_path,
            server.url,
            {"tls_ca_file": str(pki.ca.cert)},
            "stemd: store: ",
            "client certificate",
        )


async def test_tls_handshake_first(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki
) -> None:
    """A server that wants the TLS handshake first: an App and the CLI with
    tls_handshake_first work; without it the CLI fails in one line saying so."""
    async with server_with(tmp_path, tls_conf(pki, "  handshake_first: true\n"), "tls") as server:
        auth = NatsAuth(tls_ca_file=str(pki.ca.cert), tls_handshake_first=True)
        async with stemd.App(
            store=server.url,
            broker=server.url,
            workflows=[square],
            options=stemd.AppOptions(nats=server.url, nats_auth=auth),
        ) as app:
            run_id = await app.start_workflow(square, {"n": 3})
            assert (await app.wait_for_completion(run_id, timeout=20)).value == 9
            n = ["workflow", "get", run_id, "--nats", server.url, "--tls-ca", str(pki.ca.cert)]
            status, out, err = await cli(capsys, *n, "--tls-handshake-first")
            assert status == 0, err
            assert "completed" in out
            status, _, err = await cli(capsys, *n)
            assert status == 1
            one_clear_line(err, "tls_handshake_first")


# -- permissions -----------------------------------------------------------------------------

# The users of deploy/nats/authorization.conf (docs/reference/security.md): a daemon, a
# client that may only submit and read, and an operator with the whole API.
AUTHORIZATION = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "authorization.conf"


async def test_least_privilege_users(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the documented permissions a daemon works; a submit-and-read client starts,
    submits, reads and waits but its cancel, emit and list fail at once with a permission
    error; the operator may cancel and emit."""
    for user in ("STEMD", "SUBMITTER", "OPS"):
        monkeypatch.setenv(f"NATS_{user}_PASSWORD", f"{user.lower()}-pw")  # read by the server
    async with server_with(tmp_path, AUTHORIZATION.read_text()) as server:
        url = server.url
        async with stemd.App(
            store=url,
            broker=url,
            workflows=[square, approvals],
            options=stemd.AppOptions(
                nats=url, nats_auth=NatsAuth(user="stemd", password="stemd-pw")
            ),
        ):
            client = ["--nats", url, "--nats-user", "submitter", "--nats-password", "submitter-pw"]
            status, out, err = await cli(
                capsys, "workflow", "start", "examples.square", "--params", '{"n": 4}', *client
            )
            assert status == 0, err
            run_id = out.split()[-1]
            status, out, err = await cli(capsys, "workflow", "wait", run_id, "--json", *client)
            assert status == 0, err
            assert json.loads(out)["run"]["result"] == 16
            status, out, err = await cli(capsys, "workflow", "get", run_id, *client)
            assert status == 0, err
            # Durable submission with the client's credentials: allowed for its workflow only.
            submitter = NatsAuth(user="submitter", password="submitter-pw")
            conn = await open_connection(url, auth=submitter)
            try:
                ack = await conn.js_publish(
                    "stem.submit.examples.square", b'{"n": 5}', headers={MSG_ID: "sub-1"}
                )
                assert ack.stream
                denied = pytest.raises(PermissionDenied, match=r"stem\.submit\.approvals")
                with anyio.fail_after(3), denied:
                    await conn.js_publish("stem.submit.approvals.flow", b"{}")
            finally:
                await conn.close()
            status, out, err = await cli(capsys, "workflow", "wait", "sub-1", "--json", *client)
            assert status == 0, err
            assert json.loads(out)["run"]["result"] == 25
            operator = ["--nats", url, "--nats-user", "ops", "--nats-password", "ops-pw"]
            status, out, err = await cli(
                capsys,
                "workflow",
                "start",
                "approvals.flow",
                "--run-id",
                "a1",
                "--params",
                '{"draft": {"documentId": "d"}}',
                *operator,
            )
            assert status == 0, err
            for argv in (
                ["cancel", "a1"],
                ["emit", "approvals.manager", "--payload", "{}"],
                ["list"],
            ):
                with anyio.fail_after(4):  # at once: not after the 5 s request timeout
                    status, _, err = await cli(capsys, "workflow", *argv, *client)
                assert status == 1
                one_clear_line(err, "permission denied", f"stem.api.{argv[0]}")
            status, out, err = await cli(capsys, "workflow", "cancel", "a1", *operator)
            assert (status, out) == (0, "cancelled run a1\n"), err
            status, out, err = await cli(capsys, "workflow", "emit", "nobody.waits", *operator)
            assert status == 0, err
