"""The session actor: dead peers' runs taken over, the own session ended by a peer, and
clock skew between peers measured and warned about."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest
from structlog.testing import capture_logs

import stemd
from stemd._actors.sessions import SKEW_BOUND, SessionActor
from stemd._store.sessions import SessionRecord, SessionStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_until

pytestmark = pytest.mark.anyio

quick = stemd.Flow("sessions.quick")


@quick.step("one")
async def one(ctx: stemd.FlowContext) -> str:
    """Returns at once."""
    return "one"


class Gate:
    """Holds the step until the test opens it; counts its starts."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.starts = 0


gate = Gate()
gated = stemd.Flow("sessions.gated")


@gated.step("wait")
async def wait(ctx: stemd.FlowContext) -> str:
    """Counts its start, then blocks until the gate opens."""
    gate.starts += 1
    await gate.event.wait()
    return "done"


def peer(
    clock: ManualClock, beat: int = 0, ahead: float = 0.0, lease: float = 4.0
) -> SessionRecord:
    """The record of a peer session on another host."""
    now = clock.now()
    return SessionRecord(
        session_id="peer",
        host="elsewhere",
        pid=1,
        started_at=now,
        renewed_at=now + timedelta(seconds=ahead),
        beat=beat,
        lease=lease,
    )


def actor_of(app: stemd.App) -> SessionActor:
    """The App's session actor."""
    assert app.supervisor is not None
    found = [a for a in app.supervisor._actors if isinstance(a, SessionActor)]
    assert len(found) == 1
    return found[0]


async def test_a_silent_peers_runs_are_taken_over() -> None:
    """A peer session unchanged for its lease (on this process's monotonic clock) is
    ended; the run it held is given back and executed here."""
    # A store shared with a "peer": runs claimed under its session, which goes silent.
    clock = ManualClock()
    async with open_app(quick, clock=clock, workers=False) as client:
        store = client.store
        assert isinstance(store, SessionStore)
        await store.put_session(peer(clock, lease=0.05))
        run_id = await client.start_workflow(quick)
        assert await store.claim(run_id, "peer", clock.now(), 3600.0) is not None
        async with stemd.App(store=store, workflows=[quick], clock=clock) as app:
            actor = actor_of(app)
            await anyio.sleep(0.1)
            await actor.check_peers()
            result = await app.wait_for_completion(run_id, timeout=5)
            assert result.value == "one"
            assert actor.statistics().taken_over == 1
            assert [s.session_id for s in await store.sessions()] == [app.owner]


@pytest.mark.usefixtures("default_logging")
async def test_an_own_session_ended_by_a_peer_gives_up_its_slices() -> None:
    """When a peer ends this process's session (it was silent too long), the next renewal
    cancels the slices in flight (their runs were taken over) and records the session
    again; the run is executed again from its step."""
    gate.__init__()
    clock = ManualClock()
    async with open_app(gated, clock=clock) as app:
        store = app.store
        assert isinstance(store, SessionStore)
        run_id = await app.start_workflow(gated)

        async def in_step() -> bool:
            return gate.starts == 1

        await wait_until(in_step, what="the step to start")
        released = await store.end_session(app.owner, clock.now())
        assert [r.run_id for r in released] == [run_id]
        actor = actor_of(app)
        with capture_logs() as logs:
            await actor.renew()
        assert any("ended by a peer" in e["event"] for e in logs)
        assert actor.statistics().lost == 1
        assert [s.session_id for s in await store.sessions()] == [app.owner]
        # The run given back is taken again (here: by this process, alive again).
        await app.engine.broker.enqueue(run_id, released[0].queue)  # type: ignore[union-attr]

        async def restarted() -> bool:
            return gate.starts == 2

        await wait_until(restarted, what="the step to start again")
        gate.event.set()
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "done"


@pytest.mark.usefixtures("default_logging")
async def test_clock_skew_with_a_peer_is_warned_about_once() -> None:
    """A peer whose session stamps are ahead of this clock by more than the bound gets one
    warning; back within the bound, one line says so."""
    clock = ManualClock()
    async with open_app(quick, clock=clock) as app:
        store = app.store
        assert isinstance(store, SessionStore)
        actor = actor_of(app)
        ahead = SKEW_BOUND + 5.0
        with capture_logs() as logs:
            await store.put_session(peer(clock, beat=0))
            await actor.check_peers()  # first sighting: nothing to compare yet
            for beat in (1, 2):
                await store.put_session(peer(clock, beat=beat, ahead=ahead))
                await actor.check_peers()
            await store.put_session(peer(clock, beat=3))
            await actor.check_peers()
        events = [e["event"] for e in logs if "skew" in e["event"]]
        assert events == [
            "clock skew with a peer above the bound",
            "clock skew with a peer back within the bound",
        ]
        assert actor.statistics().max_skew == pytest.approx(ahead)
