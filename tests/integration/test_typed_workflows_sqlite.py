"""Typed handles, typed events, class-based workflows and FlowContext.iteration end to
end: real `stemd run` daemons on one SQLite file import a user module with a
@stemd.workflow class and a typed flow; a client starts them through their handles, one
daemon stops mid-run and another resumes them."""

from __future__ import annotations

import importlib
import signal
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from tests.integration.daemon_proc import DaemonProcess, NotifyListener, write_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)

MODULE = "e2e_typed_workflows"
SOURCE = """\
import msgspec

import stemd


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


class Receipt(msgspec.Struct, frozen=True):
    charge_id: str
    paid_by: str


class Paid(msgspec.Struct, frozen=True):
    by: str


paid = stemd.Event("e2e.paid", Paid)


@stemd.workflow("e2e.checkout")
class Checkout:
    async def run(self, order: Order, *, context: stemd.ScriptContext | None = None) -> Receipt:
        assert context is not None
        charge_id = await self.charge(order)
        payment = await paid.wait(context)
        return Receipt(charge_id=charge_id, paid_by=payment.by)

    @stemd.step
    async def charge(self, order: Order, *, context: stemd.StepContext) -> str:
        return f"{context.step_name}-{order.order_id}-{order.amount}"


poll = stemd.Flow("e2e.poll", params=Order, result=int)


@poll.step("wait")
async def wait(ctx: stemd.FlowContext[Order]) -> int:
    await paid.wait(ctx)
    await ctx.sleep(0.05)
    return ctx.iteration * 100 + ctx.params.amount
"""


def _ready(daemon: DaemonProcess, notify: NotifyListener, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"the daemon exited: {daemon.stderr.strip()}")
        try:
            notify.wait_for("READY=1", timeout=0.2)
            return
        except AssertionError:
            continue
    raise AssertionError("no READY=1 from the daemon")


def _daemon(proj: Path, store: str, notify: NotifyListener) -> DaemonProcess:
    config = write_config(
        proj / "stemd.toml",
        modules=[MODULE],
        entry_points=False,
        store=store,
        log_format="json",
        sweep_interval=0.2,
    )
    daemon = DaemonProcess(proj, config, notify, script=True)
    _ready(daemon, notify)
    return daemon


def test_typed_handles_and_class_workflows_across_daemons(
    tmp_path: Path, notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs started through typed handles by a client wait in one daemon, which stops;
    another daemon resumes them on a typed emit: the class workflow's checkpoints and the
    typed flow's params, result and iteration (3: two suspensions, one in each daemon)
    come out right, and wrong params are refused at start with nothing written."""
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(proj))
    mod: Any = importlib.import_module(MODULE)
    store = f"sqlite:///{tmp_path / 'stemd.db'}"

    async def start() -> tuple[str, str]:
        async with stemd.App(store=store, workers=False) as client:
            with pytest.raises(stemd.PayloadError, match=r"params of e2e\.poll"):
                await mod.poll.start(client, {"order_id": "o-0"}, run_id="bad")
            assert await client.get_run("bad") is None
            checkout = await stemd.handle(mod.Checkout).start(client, mod.Order("o-1", 5))
            polled = await mod.poll.start(client, mod.Order("o-2", 7))
            with anyio.fail_after(30):
                while len(await client.runs_waiting_on("e2e.paid")) < 2:  # noqa: ASYNC110 - another process: no event to await
                    await anyio.sleep(0.05)
            return checkout, polled

    first = _daemon(proj, store, notify)
    try:
        checkout_id, poll_id = anyio.run(start)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.stderr
    finally:
        first.kill()

    async def finish() -> tuple[stemd.WorkflowResult[Any], stemd.WorkflowResult[Any], Any]:
        async with stemd.App(store=store, workers=False) as client:
            assert await mod.paid.emit(client, mod.Paid(by="ana")) == 2
            receipt = await client.wait_for_completion(checkout_id, 30, type=mod.Receipt)
            polled = await client.wait_for_completion(poll_id, 30, type=int)
            return receipt, polled, await client.get_run(checkout_id)

    second = _daemon(proj, store, notify)
    try:
        receipt, polled, state = anyio.run(finish)
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.stderr
    finally:
        second.kill()
    assert receipt.value == mod.Receipt(charge_id="charge-o-1-5", paid_by="ana")
    assert list(state.checkpoints) == ["charge"]
    # Entered three times: before the event, after it (then a sleep), after the sleep.
    assert polled.value == 300 + 7
