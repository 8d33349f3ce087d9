"""The session actor: this process's liveness, and the takeover of dead peers' runs.

A process with workers holds one session (:mod:`stemd._store.sessions`) under its owner
name: it renews the record every ``lease/4`` seconds, whatever the number of runs it
executes, and holds an exclusive ``flock`` on a lock file (next to a SQLite database,
else in ``$STATE_DIRECTORY`` or the temporary directory) for as long as it lives.

Every ``lease/8`` seconds it reads the other sessions. A session is dead when

- it is on this host and its lock file can be locked: its process is gone (the OS frees
  the lock of a killed process at once, so a daemon restarted after a crash takes its
  predecessor's runs over as soon as it starts), or
- its record has not changed for the owner's ``lease`` seconds of *this* process's
  monotonic clock (no wall-clock reading decides it, so no clock jump on either side
  makes a live peer look dead).

A dead session is ended: its runs are given back (runnable, new fencing token) and
enqueued at once, under a new deduplication key (a NATS broker's old, unacknowledged task
of the run does not hold them back until its ``ack_wait``); one still unclaimed ``lease``
seconds later is enqueued once more (its task may have gone to a process that hangs with
its connection up). The runs the dead process had received but not claimed yet (a NATS
broker's tasks delivered to it, unacknowledged) are not in its session: the runnable runs
whose task was delivered and never acknowledged get their task sent again, then and
``lease`` seconds later (:class:`~stemd._broker.capabilities.InFlightTasks`).

A session that finds its own record ended (it was silent for longer than ``lease``: a
pause, a partition) cancels its slices in flight (their runs belong to others now) and
records itself again. Closing ends the own session: every run still claimed under it is
given back, so no lease is ever left held by no one.

The ``renewed_at`` stamps of peers' records measure the clock skew between the processes
sharing the store; above :data:`SKEW_BOUND` seconds a warning is logged (once per peer
and change of state).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

from stemd._broker.capabilities import InFlightTasks
from stemd._engine.leases import LeaseKeeper
from stemd._engine.limits import LimitedStore
from stemd._store.memory import MemoryStore
from stemd._store.sessions import SessionRecord, SessionStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from stemd._broker.base import Broker
    from stemd._clock import Clock
    from stemd._engine.engine import Engine
    from stemd._store.base import Store
    from stemd._store.sessions import Released

__all__ = [
    "SKEW_BOUND",
    "CLAIM_HOLD",
    "SessionActor",
    "SessionStats",
    "claim_lease",
    "lease_keeper",
    "lock_dir",
    "session_actors",
]

log = structlog.get_logger("stemd.sessions")

#: Seconds of clock skew between processes sharing a store above which a warning is
#: logged. Timers and deadlines fire on whichever daemon's clock, so skew moves them.
SKEW_BOUND = 2.0
#: Seconds a run claimed under a session is held by the claim itself (a backstop for a
#: claim whose session record is gone); the session, not this, decides takeover.
CLAIM_HOLD = 3600.0
#: The most runnable runs looked at for tasks in flight to a dead session, at a time.
REDELIVER_BATCH = 1000

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class SessionStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the session actor has seen and done."""

    session_id: str
    renewals: int
    peers: int
    ended: int
    taken_over: int
    lost: int
    max_skew: float


def claim_lease(store: Store, workers: bool, lease: float) -> float:
    """The lease a worker's claim carries: with sessions, :data:`CLAIM_HOLD` (the session
    keeps the runs), else ``lease`` (renewed per run)."""
    return max(lease, CLAIM_HOLD) if workers and isinstance(store, SessionStore) else lease


def lease_keeper(store: Store, clock: Clock, workers: bool, lease: float) -> LeaseKeeper | None:
    """The lease keeper of an App's workers (``None`` without workers): with sessions it
    renews a claim only past a third of :data:`CLAIM_HOLD` and checks it by a read every
    ``lease/3`` seconds."""
    if not workers:
        return None
    if isinstance(store, SessionStore):
        return LeaseKeeper(store, clock, claim_lease(store, workers, lease), check=lease)
    return LeaseKeeper(store, clock, lease)


def lock_dir(store: Store) -> Path | None:
    """Where the lock files of ``store``'s sessions go: next to a SQLite database, else in
    ``$STATE_DIRECTORY`` (systemd) or the temporary directory; ``None`` for the memory
    store (no other process shares it)."""
    if isinstance(store, MemoryStore):
        return None
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return path.absolute().parent / f"{path.name}-sessions"
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or tempfile.gettempdir()) / f"stemd-sessions-{os.getuid()}"


class _Lock:
    """An exclusive ``flock`` on a file, held while the process lives."""

    def __init__(self, directory: Path, session_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (_UNSAFE.sub("_", session_id) + ".lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise
        st = os.fstat(self.fd)
        self.lock_id = f"{st.st_dev}:{st.st_ino}"

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


def lock_is_free(session: SessionRecord) -> bool:
    """Whether ``session``'s process (on this host) is gone: its lock file is there, is the
    very file it locked, and can be locked now. Anything else cannot tell: ``False``."""
    if session.host != socket.gethostname() or not session.lock or not session.lock_id:
        return False
    try:
        fd = os.open(session.lock, os.O_RDWR)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if f"{st.st_dev}:{st.st_ino}" != session.lock_id:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: alive
        with contextlib.suppress(OSError):
            os.unlink(session.lock)
        return True
    finally:
        os.close(fd)


class SessionActor:
    """Keeps this process's session and ends the dead ones (see the module docstring)."""

    name = "sessions"

    def __init__(
        self,
        engine: Engine,
        broker: Broker,
        lease: float,
        *,
        keeper: LeaseKeeper | None = None,
        locks: Path | None = None,
    ) -> None:
        store = engine.store
        assert isinstance(store, SessionStore)
        self.store: SessionStore = store
        self.engine = engine
        self.broker = broker
        self.lease = lease
        self.keeper = keeper
        self.locks = locks
        self.session_id = engine.owner
        self._record: SessionRecord | None = None
        self._lock: _Lock | None = None
        # Per peer session: (beat, monotonic time it was first seen at that beat).
        self._seen: dict[str, tuple[int, float]] = {}
        self._skewed: set[str] = set()
        # Runs taken over, to look at again at a monotonic time (see _follow_up).
        self._follow: list[tuple[float, list[Released]]] = []
        self._failing = False
        self._renewals = self._ended = self._taken = self._lost = 0
        self._max_skew = 0.0

    def statistics(self) -> SessionStats:
        return SessionStats(
            session_id=self.session_id,
            renewals=self._renewals,
            peers=len(self._seen),
            ended=self._ended,
            taken_over=self._taken,
            lost=self._lost,
            max_skew=round(self._max_skew, 3),
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._begin()
            # Runs of predecessors known dead (their lock is free) are taken at once,
            # before the workers start.
            await self._quietly(self.check_peers)
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._every, self.lease / 4, self.renew)
                tg.start_soon(self._every, self.lease / 8, self.check_peers)
                # Slices this process could not commit nor give back during an outage.
                tg.start_soon(self._every, self.lease / 4, self.engine.release_orphans)
                if isinstance(self.engine.store, LimitedStore):
                    tg.start_soon(self._every, self.lease / 4, self._refresh_slots)
        finally:
            with anyio.move_on_after(5, shield=True):
                await self._end()

    async def _begin(self) -> None:
        if self._lock is None and self.locks is not None:
            try:
                self._lock = await anyio.to_thread.run_sync(_Lock, self.locks, self.session_id)
            except OSError as exc:
                log.warning("no session lock file", path=str(self.locks), error=str(exc))
        now = self.engine.clock.now()
        lock = self._lock
        self._record = SessionRecord(
            session_id=self.session_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            lock=str(lock.path) if lock is not None else None,
            lock_id=lock.lock_id if lock is not None else None,
            started_at=now,
            renewed_at=now,
            lease=self.lease,
        )
        await self.store.put_session(self._record)

    async def _end(self) -> None:
        """End the own session: give back every run still claimed under it."""
        try:
            if self._record is not None:
                released = await self.store.end_session(self.session_id, self.engine.clock.now())
                if released:
                    log.info("runs given back on close", runs=len(released))
                    await self._enqueue(released)
        except Exception as exc:
            log.warning("session not ended on close", error=repr(exc))
        finally:
            self._record = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    async def _refresh_slots(self) -> None:
        store = self.engine.store
        assert isinstance(store, LimitedStore)
        await store.refresh_slots(self.engine.clock.now())

    async def _every(self, seconds: float, fn: Callable[[], Awaitable[object]]) -> None:
        # Real (monotonic) time: the engine's clock may jump.
        while True:
            await anyio.sleep(seconds)
            await self._quietly(fn)

    async def _quietly(self, fn: Callable[[], Awaitable[object]]) -> None:
        """``fn()``; a failure (an outage) is logged once, and tried again next time."""
        try:
            await fn()
        except Exception as exc:
            if not self._failing:
                log.warning("session upkeep failed; retrying", error=repr(exc))
            self._failing = True
        else:
            if self._failing:
                log.info("session upkeep works again")
            self._failing = False

    async def renew(self) -> None:
        """Renew the own session; if a peer has ended it, give up the slices in flight
        and record the session again."""
        if self._record is None:
            return
        self._record = record = msgspec.structs.replace(
            self._record, beat=self._record.beat + 1, renewed_at=self.engine.clock.now()
        )
        if await self.store.renew_session(record):
            self._renewals += 1
            return
        lost = self.keeper.lose_all() if self.keeper is not None else 0
        self._lost += 1
        log.warning(
            "this process's session was ended by a peer (silent for longer than the lease);"
            " its runs were taken over",
            session=self.session_id,
            cancelled=lost,
        )
        await self.store.put_session(record)

    async def check_peers(self) -> None:
        """One look at the other sessions: end the dead ones, measure skew."""
        sessions = await self.store.sessions()
        mono = time.monotonic()
        listed = set()
        for session in sessions:
            sid = session.session_id
            if sid == self.session_id:
                continue
            listed.add(sid)
            seen = self._seen.get(sid)
            if lock_is_free(session):
                await self._end_peer(session, "its process is gone")
            elif seen is None or seen[0] != session.beat:
                self._seen[sid] = (session.beat, mono)
                if seen is not None:
                    self._measure_skew(session)
            elif mono - seen[1] >= session.lease:
                await self._end_peer(session, f"silent for {session.lease:g} s")
        for sid in set(self._seen) - listed:
            del self._seen[sid]
            self._skewed.discard(sid)
        await self._follow_up(mono)

    async def _follow_up(self, mono: float) -> None:
        """Enqueue again, under another key, a run taken over ``lease`` seconds ago that
        nobody has claimed since: its task went to a process that cannot take it (one
        that hangs with its NATS connection up, whose pull request caught it)."""
        due = [runs for at, runs in self._follow if at <= mono]
        self._follow = [(at, runs) for at, runs in self._follow if at > mono]
        for runs in due:
            for run in runs:
                rec = await self.engine.store.get_run(run.run_id)
                if rec is not None and rec.token == run.token and rec.lease_owner is None:
                    key = f"{run.run_id}:{run.token}:again"
                    await self.broker.enqueue(run.run_id, run.queue, key=key)
        if due:
            # Tasks the dead process's last pull requests caught after the first look.
            await self._redeliver([run for runs in due for run in runs])

    async def _redeliver(self, released: list[Released]) -> None:
        """Send again the tasks of runnable runs delivered and never acknowledged (those
        a dead process received and had not claimed), but those of ``released`` (enqueued
        anew already), where the broker can tell which were delivered."""
        broker = self.broker
        if not isinstance(broker, InFlightTasks):
            return
        skip = {run.run_id for run in released}
        found = await self.engine.store.runnable(self.engine.clock.now(), REDELIVER_BATCH)
        sent = await broker.redeliver_in_flight([f for f in found if f[0] not in skip])
        if sent:
            log.info("tasks in flight to a dead session sent again", tasks=sent)

    async def _end_peer(self, session: SessionRecord, why: str) -> None:
        released = await self.store.end_session(session.session_id, self.engine.clock.now())
        self._seen.pop(session.session_id, None)
        self._skewed.discard(session.session_id)
        self._ended += 1
        self._taken += len(released)
        log.warning(
            "took over the runs of a dead session",
            session=session.session_id,
            reason=why,
            runs=len(released),
        )
        await self._enqueue(released)
        self._follow.append((time.monotonic() + self.lease, released))
        await self._redeliver(released)

    async def _enqueue(self, released: list[Released]) -> None:
        for run in released:
            # A new key: a task of the old token (in flight at the dead owner) does not
            # hold this one back.
            await self.broker.enqueue(run.run_id, run.queue, key=f"{run.run_id}:{run.token}")

    def _measure_skew(self, session: SessionRecord) -> None:
        # The renewal was written since the previous look (at most lease/8 ago): the
        # difference of the clocks is within that much of this.
        skew = (session.renewed_at - self.engine.clock.now()).total_seconds()
        self._max_skew = max(self._max_skew, abs(skew))
        sid = session.session_id
        margin = SKEW_BOUND + self.lease / 8
        if abs(skew) > margin and sid not in self._skewed:
            self._skewed.add(sid)
            log.warning(
                "clock skew with a peer above the bound",
                peer=sid,
                skew=round(skew, 3),
                bound=SKEW_BOUND,
            )
        elif abs(skew) <= margin and sid in self._skewed:
            self._skewed.discard(sid)
            log.info("clock skew with a peer back within the bound", peer=sid, skew=round(skew, 3))


def session_actors(engine: Engine, broker: Broker, lease: float) -> list[SessionActor]:
    """The session actor of an App's workers on ``engine``, or none when the store keeps
    no sessions (a store of the user's: leases are then renewed per run)."""
    store = engine.store
    if not isinstance(store, SessionStore):
        return []
    keeper = engine.leases if isinstance(engine.leases, LeaseKeeper) else None
    return [SessionActor(engine, broker, lease, keeper=keeper, locks=lock_dir(store))]
