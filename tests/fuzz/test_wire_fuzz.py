"""Fuzzing a real daemon (``stemd run``, SQLite store, API and submission on a real
nats-server) through its wire protocol: hypothesis-made requests to every
``stem.api.*`` verb (and to unknown ones) and submissions on ``stem.submit.*``, with
malformed JSON, wrong types, unknown fields, huge and deeply nested payloads, invalid
UTF-8 and headers with odd values.

The daemon stays up; every reply is a contract error or a valid result, never
``internal`` (the store is healthy); and a request answered with an error, or a
submission that cannot become a run, leaves the store exactly as it was (the database
is compared row by row before and after). Short form by default; ``STEMD_CHAOS_LONG=1``
sends more than 10,000 requests.
"""

from __future__ import annotations

import contextlib
import sqlite3
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemd import _wire as wire
from stemd._errors import TransportError
from stemd._natsconn import MSG_ID, JetStreamApiError, NatsConnection, open_connection
from stemd._store.sqlite_schema import to_us
from stemd.testing._nats import nats_server
from tests.chaos.harness import Daemon, scale
from tests.integration.daemon_proc import write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from anyio.from_thread import BlockingPortal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(scale(400, 3600))]

T = TypeVar("T")

REQUESTS = scale(2500, 12_000)
SUBMISSIONS = scale(600, 3_000)
WORKFLOWS = ("fuzz.echo", "fuzz.wait")
ECHO_IDS = [f"echo-{i}" for i in range(4)]
WAIT_IDS = [f"wait-{i}" for i in range(4)]
CONTRACT_ERRORS = ("bad_request", "unknown_workflow", "not_found")


# -- the daemon and its database ------------------------------------------------------------


@dataclass
class Target:
    """The daemon under fuzz, a client connection, and a read-only view of its database."""

    daemon: Daemon
    conn: NatsConnection
    db: sqlite3.Connection
    counts: dict[str, int] = field(default_factory=dict)
    portal: BlockingPortal | None = None

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the event loop that owns the daemon's connection."""
        assert self.portal is not None
        return self.portal.call(fn, *args)

    def snapshot(self) -> tuple[list[Any], list[Any]]:
        """Every row of the store."""
        runs = self.db.execute("SELECT * FROM runs ORDER BY seq").fetchall()
        checkpoints = self.db.execute("SELECT * FROM checkpoints ORDER BY seq").fetchall()
        return runs, checkpoints

    def busy(self) -> bool:
        """Whether the daemon has work to do now or soon (a run to advance, a timer due in
        the next seconds): the store may change by itself."""
        soon = to_us(datetime.now(UTC) + timedelta(seconds=5))
        (n,) = self.db.execute(
            "SELECT count(*) FROM runs WHERE status IN ('pending', 'running')"
            " OR (timer_at IS NOT NULL AND timer_at < ?)",
            (soon,),
        ).fetchone()
        return bool(n)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the store has nothing left to do by itself."""
        with anyio.fail_after(timeout):
            while self.busy():  # noqa: ASYNC110 - the database offers no event
                await anyio.sleep(0.005)

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


@contextlib.asynccontextmanager
async def open_target(tmp_path: Path) -> AsyncIterator[Target]:
    """A daemon on a fresh SQLite store serving the API and submission on a fresh
    nats-server, with a few runs completed and a few waiting for an event."""
    db_path = tmp_path / "stemd.db"
    async with nats_server() as server:
        config = write_config(
            tmp_path / "stemd.toml",
            modules=["tests.fuzz.workflows"],
            entry_points=False,
            store=f"sqlite:///{db_path}",
            nats=server.url,
            log_format="json",
            log_level="warning",
        )
        daemon = Daemon(tmp_path, config, "fuzzed")
        conn = await open_connection(server.url, name="fuzzer")
        db: sqlite3.Connection | None = None
        try:
            await daemon.start()
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
            for run_id in ECHO_IDS + WAIT_IDS:
                workflow = "fuzz.echo" if run_id in ECHO_IDS else "fuzz.wait"
                body = wire.encode({"workflow": workflow, "params": {"n": 1}, "run_id": run_id})
                reply = await conn.request("stem.api.start", body, timeout=10)
                assert wire.decode_reply("start", reply.data).created
            target = Target(daemon, conn, db)
            await target.settle()
            started = time.monotonic()
            yield target
            took = time.monotonic() - started
            total = sum(target.counts.values())
            print(f"wire fuzz: {total} messages in {took:.1f}s: {sorted(target.counts.items())}")
            assert daemon.alive, daemon.stderr_tail()
            reply = await conn.request("stem.api.get", wire.encode({"run_id": ECHO_IDS[0]}))
            assert isinstance(wire.decode_reply("get", reply.data), wire.GetReply)
            assert daemon.stop() == 0, daemon.stderr_tail()
        finally:
            if db is not None:
                db.close()
            await conn.close()
            daemon.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """The fuzzed daemon, driven from an event loop in a thread: hypothesis runs the test
    synchronously, and each example sends its request through :attr:`Target.portal`."""
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(open_target(tmp_path)) as opened,
    ):
        opened.portal = portal
        yield opened


# -- what requests are made of --------------------------------------------------------------

SAFE = string.ascii_letters + string.digits
PRINTABLE = "".join(c for c in string.printable if c not in "\r\n\x0b\x0c")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.sampled_from([None, 0, 0.001, 0.2, 1e7, -1, -0.5, "1", True, [], {}, 2**64, 1e308])
run_ids = st.sampled_from(
    [*ECHO_IDS, *WAIT_IDS, "nope", "x" * 128, "x" * 129, "", "bad id", "ü", "../x", "a.b", "a*"]
) | st.text(max_size=140)
topics = st.sampled_from(
    ["fuzz.topic", "fuzz.other", "", ".", "a..b", "x" * 257, "a b", "ü", "a.>", "*"]
) | st.text(max_size=300)
workflows = st.sampled_from([*WORKFLOWS, "nope", "", "x" * 257]) | st.text(max_size=40)
statuses = st.sampled_from(["pending", "running", "suspended", "completed", "failed", "x", "DONE"])


def requests(wrong: bool) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Request bodies per verb: with values of the right kind, or (``wrong``) with some
    values of any kind and unknown fields."""

    def value(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(good, good, json_values) if wrong else good

    def extra() -> dict[str, st.SearchStrategy[Any]]:
        return {"unknown": json_values} if wrong else {}

    policy = st.fixed_dictionaries(
        {},
        optional={"max_run_duration": numbers, "max_suspend_duration": numbers, **extra()},
    )
    return {
        "start": st.fixed_dictionaries(
            {"workflow": value(workflows)},
            optional={
                "params": json_values,
                "run_id": value(run_ids),
                "policy": value(policy),
                "ttl": numbers,
                **extra(),
            },
        ),
        "get": st.fixed_dictionaries({"run_id": value(run_ids)}, optional=extra()),
        "list": st.fixed_dictionaries(
            {},
            optional={
                "workflow": value(workflows),
                "status": value(statuses),
                "limit": value(st.sampled_from([1, 100, 10_000, 10_001, 0, -1])),
                **extra(),
            },
        ),
        "emit": st.fixed_dictionaries(
            {"topic": value(topics)}, optional={"payload": json_values, **extra()}
        ),
        "waiting": st.fixed_dictionaries({"topic": value(topics)}, optional=extra()),
        "cancel": st.fixed_dictionaries(
            {"run_id": value(run_ids)},
            optional={"reason": value(st.text(max_size=20) | st.just("r" * 5000)), **extra()},
        ),
        "rewind": st.fixed_dictionaries(
            {"run_id": value(run_ids)},
            optional={
                "step": value(st.sampled_from(["echo", "wait", "done", "nope", ""])),
                **extra(),
            },
        ),
        "types": st.fixed_dictionaries({}, optional=extra()),
    }


WELL_FORMED = requests(wrong=False)
PERTURBED = requests(wrong=True)
# The field of each verb that takes any JSON value (where nesting goes deepest).
ANY_FIELD = {"start": "params", "emit": "payload"}
DEEP = b"[" * 100_000 + b"]" * 100_000
verbs = st.sampled_from([*wire.VERBS * 4, "nope", "Start", "start.x", "GET"])


@st.composite
def bodies(draw: st.DrawFn, verb: str) -> bytes:
    """A request body for ``verb``: well-formed, perturbed, broken, nested, huge or
    binary."""
    good = WELL_FORMED.get(verb, WELL_FORMED["get"])
    perturbed = PERTURBED.get(verb, PERTURBED["get"])
    kind = draw(
        st.sampled_from(
            ["request"] * 4
            + ["perturbed"] * 3
            + ["json", "truncated", "mangled", "binary", "nested", "nested", "huge", "empty"]
        )
    )
    if kind == "request":
        return wire.encode(draw(good))
    if kind == "perturbed":
        return wire.encode(draw(perturbed))
    if kind == "json":
        return wire.encode(draw(json_values))
    if kind in ("truncated", "mangled"):
        data = bytearray(wire.encode(draw(good)))
        at = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if kind == "truncated":
            return bytes(data[:at])
        data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"']))
        return bytes(data)
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "nested":
        depth = draw(st.sampled_from([10, 100, 500, 900, 990, 1200, 5000, 100_000]))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        inner = opener * depth + (b"]" if opener == b"[" else b"}") * depth
        request = dict(draw(good))
        names = [ANY_FIELD[verb]] * 3 if verb in ANY_FIELD else []
        request[draw(st.sampled_from([*names, "policy", "run_id", "topic"]))] = "@"
        return wire.encode(request).replace(b'"@"', inner, 1)
    if kind == "huge":
        size = draw(st.sampled_from([10_000, 200_000, 1_000_000]))
        request = dict(draw(good))
        request[draw(st.sampled_from(["params", "payload", "reason", "topic", "run_id"]))] = (
            "x" * size
        )
        return wire.encode(request)
    return b""


headers = st.none() | st.dictionaries(
    st.sampled_from(["Status", "Description", MSG_ID, "Nats-Expected-Stream", "X-Odd"])
    | st.text(alphabet=SAFE + "-", min_size=1, max_size=20),
    st.sampled_from(["", "408", "100", "503", "-NAK", "+TERM", "x" * 2000])
    | st.text(alphabet=PRINTABLE, max_size=100),
    max_size=3,
)


def decodes(verb: str, body: bytes) -> bool:
    """Whether ``body`` is a valid request of ``verb`` at all."""
    if verb not in wire.REQUEST_TYPES:
        return False
    try:
        wire.decode_request(verb, body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return False
    return True


def check_reply(verb: str, body: bytes, data: bytes) -> str | None:
    """Assert ``data`` is a contract error or a valid result; return the error code."""
    decoded = msgspec.json.decode(data)
    if isinstance(decoded, dict) and "error" in decoded:
        error = decoded["error"]
        assert set(error) == {"code", "message"}, decoded
        assert isinstance(error["message"], str), decoded
        assert error["code"] in CONTRACT_ERRORS, (verb, body[:300], decoded)
        return str(error["code"])
    assert decodes(verb, body), (verb, body[:300], data[:300])
    assert not isinstance(wire.decode_reply(verb, data), wire.ErrorReply)
    return None


# -- the tests ------------------------------------------------------------------------------


FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(FUZZ, max_examples=REQUESTS)
@given(data=st.data())
def test_api_requests_get_contract_replies_and_errors_change_nothing(
    target: Target, data: st.DataObject
) -> None:
    """Fuzzed stem.api requests get contract replies; refused ones change nothing."""
    verb = data.draw(verbs, label="verb")
    body = data.draw(bodies(verb), label="body")
    head = data.draw(headers, label="headers")
    target.call(send_request, target, verb, body, head)


async def send_request(target: Target, verb: str, body: bytes, head: Any) -> None:
    """Send one API request and check its reply, and that an error reply changed nothing."""
    before = target.snapshot()
    try:
        reply = await target.conn.request(f"stem.api.{verb}", body, headers=head, timeout=20)
    except TransportError as exc:
        raise AssertionError(
            f"no reply to {verb} {body[:200]!r}: {exc}\n{target.daemon.stderr_tail()}"
        ) from None
    code = check_reply(verb, body, reply.data)
    if code is None:
        target.count(f"{verb}:ok")
        await target.settle()
    else:
        target.count(f"{verb}:{code}")
        if not decodes(verb, body):
            assert code == "bad_request", (verb, body[:200], code)
        assert target.snapshot() == before, (verb, body[:300], reply.data[:300])


def submit_subjects() -> st.SearchStrategy[str]:
    """Submission subjects: the registered workflows and random dotted names."""
    token = st.text(alphabet=SAFE + "-_", min_size=1, max_size=12)
    made = st.lists(token, min_size=1, max_size=3).map(".".join)
    return st.sampled_from(list(WORKFLOWS)) | made


async def wait_consumed(target: Target, timeout: float = 15.0) -> None:
    """Wait until the ingress has taken every submission (started or rejected it)."""
    deadline = time.monotonic() + timeout
    while True:
        info = await target.conn.js_api("STREAM.INFO.STEM_SUBMIT", timeout=5)
        if info["state"]["messages"] == 0:
            return
        assert time.monotonic() < deadline, (
            f"submissions not consumed: {info['state']}\n{target.daemon.stderr_tail()}"
        )
        await anyio.sleep(0.005)


@settings(FUZZ, max_examples=SUBMISSIONS)
@given(data=st.data())
def test_submissions_become_runs_or_change_nothing(target: Target, data: st.DataObject) -> None:
    """A fuzzed submission starts exactly its run, or changes nothing."""
    workflow = data.draw(submit_subjects(), label="workflow")
    body = data.draw(
        st.sampled_from(
            [b"", b"  ", b"null", b"{}", b'{"a": [1, 2]}', b"[", b"\xff", b'"\xc5E"', DEEP]
        )
        | json_values.map(wire.encode)
        | st.binary(max_size=100),
        label="body",
    )
    head = data.draw(headers, label="headers")
    target.call(submit, target, workflow, body, head)


async def submit(target: Target, workflow: str, body: bytes, head: Any) -> None:
    """Publish one submission and check it started one run or was refused changing nothing."""
    before = target.snapshot()
    try:
        ack = await target.conn.js_publish(f"stem.submit.{workflow}", body, headers=head)
    except JetStreamApiError:
        target.count("refused by the stream")
        return
    await wait_consumed(target)
    await target.settle()
    after = target.snapshot()
    run_id = (head or {}).get(MSG_ID) or f"submit-{ack.seq}"
    if ack.duplicate:
        target.count("duplicate")
        assert after == before
        return
    try:
        params = msgspec.json.decode(body) if body.strip() else None
        valid_json = True
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        valid_json = False
    if workflow not in WORKFLOWS or not valid_json:
        target.count("rejected")
        assert after == before, (workflow, body, head)
        return
    if after == before:
        # An invalid run id, or the id of a run that exists: nothing written.
        target.count("rejected or existing")
        return
    target.count("started")
    created = {row[1] for row in after[0] if row not in before[0]}
    assert run_id in created, (workflow, body, head, created)
    reply = await target.conn.request("stem.api.get", wire.encode({"run_id": run_id}))
    state = wire.decode_reply("get", reply.data).run
    assert state.workflow == workflow
    assert state.params == params
