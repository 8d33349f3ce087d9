"""The supervisor: owns every actor in one task group and restarts the ones that crash."""

from __future__ import annotations

import functools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd._actor import Actor
from stemd._errors import RestartBudgetExceeded
from stemd._health import Health, outage_of
from stemd._options import RestartPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup, TaskStatus

__all__ = ["Actor", "Supervisor", "SupervisorStats"]

log = structlog.get_logger("stemd.supervisor")


class SupervisorStats(msgspec.Struct, frozen=True, kw_only=True):
    """Restarts so far, per actor."""

    restarts: dict[str, int]


class Supervisor:
    """Starts actors, waits until each is ready, restarts crashed ones within budget.

    A crash past the budget raises :class:`RestartBudgetExceeded` out of :meth:`run`, which
    stops every actor: the daemon then exits non-zero and systemd restarts it.

    The budget is for bugs. An actor stopped by an outage (:func:`~stemd._health.outage_of`
    names a dependency: NATS away, the store full or locked) is restarted with backoff
    for as long as the outage lasts, without spending the budget; it is reported to
    ``health`` (degraded) until, restarted, it has run ``settle`` seconds again.
    """

    name = "supervisor"

    def __init__(
        self,
        actors: list[Any],
        policy: RestartPolicy | None = None,
        on_restart: Callable[[str], None] | None = None,
        *,
        health: Health | None = None,
        settle: float = 1.0,
    ) -> None:
        self._actors = actors
        self.policy = policy or RestartPolicy()
        self._restarts: dict[str, int] = {getattr(a, "name", repr(a)): 0 for a in actors}
        self._on_restart = on_restart
        self.health = health if health is not None else Health()
        self.settle = settle
        self._away: set[str] = set()  # actors stopped by an outage, not yet settled

    @property
    def actors(self) -> list[Any]:
        """The supervised actors, in start order."""
        return list(self._actors)

    def statistics(self) -> SupervisorStats:
        return SupervisorStats(restarts=dict(self._restarts))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for actor in self._actors:
                await tg.start(self._supervise, actor, tg)
            task_status.started()

    async def _supervise(
        self,
        actor: Any,
        tg: TaskGroup,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        name: str = getattr(actor, "name", repr(actor))
        crashes: deque[float] = deque()
        backoff = self.policy.backoff
        status = _OnceStatus(task_status)
        while True:
            status.attempt += 1
            status.on_started = None
            if name in self._away:
                status.on_started = functools.partial(tg.start_soon, self._settled, name, status)
            try:
                await actor.run(task_status=status)
                return
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is not None:
                    # An outage, not a bug: report it, retry with backoff, spend no budget.
                    self._away.add(name)
                    self.health.report(name, dependency, exc)
                    log.debug("actor stopped by an outage", actor=name, error=repr(exc))
                    await anyio.sleep(backoff)
                    backoff = max(0.05, min(self.policy.max_backoff, backoff * 2))
                    continue
                now = time.monotonic()
                crashes.append(now)
                while crashes and crashes[0] < now - self.policy.window:
                    crashes.popleft()
                if len(crashes) > self.policy.max_restarts:
                    log.error("actor crashed past its restart budget", actor=name, error=repr(exc))
                    raise RestartBudgetExceeded(f"actor {name} crashed: {exc!r}") from exc
                log.warning("actor crashed; restarting", actor=name, error=repr(exc))
                self._restarts[name] = self._restarts.get(name, 0) + 1
                if self._on_restart is not None:
                    self._on_restart(name)
                await anyio.sleep(backoff)
                backoff = min(self.policy.max_backoff, backoff * 2)

    async def _settled(self, name: str, status: _OnceStatus) -> None:
        """Clear ``name``'s outage once its current attempt has run ``settle`` seconds."""
        attempt = status.attempt
        await anyio.sleep(self.settle)
        if status.attempt == attempt and name in self._away:
            self._away.discard(name)
            self.health.clear(name)


class _OnceStatus:
    """Passes the first ``started()`` through to the supervisor's own task status and
    ignores the ones of restarted actors (but calls ``on_started``, if set, on each)."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self._inner = inner
        self._done = False
        self.attempt = 0
        self.on_started: Callable[[], object] | None = None

    def started(self, value: None = None) -> None:
        if self.on_started is not None:
            self.on_started()
        if not self._done:
            self._done = True
            self._inner.started()
