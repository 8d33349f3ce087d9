"""The health probe: asks the store and the NATS connections, every few seconds, whether
they answer, and reports to :class:`~stemd._health.Health` what does not.

The actors meet outages too (and report them through the supervisor), but only when they
have work; the probe finds an outage on an idle daemon, and finds the end of one within
``degraded_interval`` seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from stemd._health import Health, outage_of

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from stemd._store.base import Store

__all__ = ["PROBE_RUN_ID", "HealthProbe", "ProbeStats"]

PROBE_RUN_ID = "stemd-health-probe"  # never created: reading it exercises the store only


class ProbeStats(msgspec.Struct, frozen=True, kw_only=True):
    """Probes made, and how many found a dependency away."""

    probes: int
    failures: int


class HealthProbe:
    """The probe actor.

    Args:
        store: the store to read.
        owners: the store, the broker...: the NATS connections (``conn``) of those that
            have one are pinged.
        health: where to report.
        interval: seconds between two probes while ready.
        degraded_interval: seconds between two probes while degraded.
        timeout: longest wait for one answer.
    """

    name = "health"

    def __init__(
        self,
        store: Store,
        owners: list[Any],
        health: Health,
        *,
        interval: float = 5.0,
        degraded_interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.store = store
        conns = [getattr(owner, "conn", None) for owner in owners]
        self.connections = list({id(c): c for c in conns if c is not None}.values())
        self.health = health
        self.interval = interval
        self.degraded_interval = degraded_interval
        self.timeout = timeout
        self._probes = 0
        self._failures = 0

    def statistics(self) -> ProbeStats:
        return ProbeStats(probes=self._probes, failures=self._failures)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.probe()
            ready = self.health.ready
            await anyio.sleep(self.interval if ready else self.degraded_interval)

    async def probe(self) -> bool:
        """Probe every dependency once; return whether all answered."""
        self._probes += 1
        checks: list[tuple[str, str, Any]] = [("probe:store", "store", self._read_store)]
        checks += [(f"probe:nats#{i}", "nats", c.flush) for i, c in enumerate(self.connections)]
        answers: list[bool] = []

        async def check(source: str, dependency: str, call: Any) -> None:
            answers.append(await self._check(source, dependency, call))

        # At once: a store on the same NATS server as the connections waits out its timeout
        # too, and one after the other the second would be reported a timeout later.
        async with anyio.create_task_group() as tg:
            for source, dependency, call in checks:
                tg.start_soon(check, source, dependency, call)
        ok = all(answers)
        if not ok:
            self._failures += 1
        return ok

    async def _read_store(self) -> None:
        await self.store.get_run(PROBE_RUN_ID)

    async def _check(self, source: str, dependency: str, call: Any) -> bool:
        try:
            with anyio.fail_after(self.timeout):
                await call()
        except TimeoutError:
            self.health.report(source, dependency, f"no answer within {self.timeout:g}s")
            return False
        except Exception as exc:
            if outage_of(exc) is None:
                raise  # a bug: the supervisor's budget is for those
            self.health.report(source, dependency, exc)
            return False
        self.health.clear(source)
        return True
