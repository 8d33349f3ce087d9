"""The saga of docs/howto/handling-failures.md (its ``trips.py``, taken from the page) under
SIGKILL of real ``stemd run`` daemons, on SQLite and on NATS: killed while paying and
again while undoing, the next daemon finishes the saga. Every booking is undone once, in
reverse order, the failed payment is neither retried after its failure was recorded nor
lost, and the trip that pays completes."""

from __future__ import annotations

import json
import re
import secrets
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from tests.integration.daemon_proc import ROOT, DaemonProcess, daemon_config, wait_file

if TYPE_CHECKING:
    from pathlib import Path

    from stemd.testing._nats import NatsServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("restore_logging"),
]

PAGE = ROOT / "docs" / "howto" / "handling-failures.md"


def _trips_module(into: Path) -> None:
    """Write the page's ``trips.py`` block into ``into``."""
    found = re.search(r"```python\n# trips\.py\n(.*?)```", PAGE.read_text(), re.S)
    assert found is not None, "handling-failures.md has no trips.py block"
    into.mkdir()
    (into / "trips.py").write_text(found.group(1))


def _daemon(tmp_path: Path, store: str) -> DaemonProcess:
    config = daemon_config(tmp_path, store=store, modules=["trips"], lease=1.0, sweep_interval=0.2)
    path = f"{ROOT}:{tmp_path / 'mods'}"
    return DaemonProcess(tmp_path, config, env={"PYTHONPATH": path})


async def _lines(path: Path, *wanted: str) -> None:
    def check(lines: list[str]) -> bool:
        return all(w in lines for w in wanted)

    await anyio.to_thread.run_sync(wait_file, path, check, 60.0)


async def _ended(app: stemd.App, run_id: str) -> stemd.RunState:
    with anyio.fail_after(60):
        while True:
            state = await app.get_run(run_id)
            if state is not None and state.status.is_terminal:
                return state
            await anyio.sleep(0.05)


async def _saga_under_kills(tmp_path: Path, store: str) -> None:
    _trips_module(tmp_path / "mods")
    paid, declined = tmp_path / "paid.txt", tmp_path / "declined.txt"

    def trip(trip_id: str, amount: int, ledger: Path) -> dict[str, Any]:
        return {"id": trip_id, "amount": amount, "card_limit": 1000, "ledger": str(ledger)}

    async with stemd.App(store=store, workers=False) as client:
        ok = await client.start_workflow("trips.book", trip("t-ok", 900, paid), run_id="t-ok")
        no = await client.start_workflow("trips.book", trip("t-no", 1500, declined), run_id="t-no")
        first = _daemon(tmp_path, store)
        try:
            await _lines(declined, "flight booked")  # the payment is being attempted
        finally:
            first.kill()
        second = _daemon(tmp_path, store)
        try:
            await _lines(declined, "flight cancelled")  # the hotel is being cancelled
        finally:
            second.kill()
        third = _daemon(tmp_path, store)
        try:
            good = await _ended(client, ok)
            bad = await _ended(client, no)
        finally:
            third.kill()
    assert good.status is stemd.RunStatus.COMPLETED, good.error
    assert good.result == {
        "hotel": "hotel-t-ok",
        "flight": "flight-t-ok",
        "receipt": "receipt-t-ok",
    }
    assert paid.read_text().splitlines() == ["hotel booked", "flight booked", "paid 900"]
    assert bad.status is stemd.RunStatus.FAILED
    assert bad.error is not None
    assert (bad.error.type, bad.error.step) == ("CardDeclined", "pay")
    assert declined.read_text().splitlines() == [
        "hotel booked",
        "flight booked",
        "flight cancelled",
        "hotel cancelled",
    ]
    names = [entry.name for entry in bad.timeline]
    assert names == [
        "book_hotel",
        "book_flight",
        "pay@failed#0",
        "cancel_flight",
        "cancel_hotel",
    ], json.dumps(names)


async def test_the_saga_survives_sigkill_on_sqlite(tmp_path: Path) -> None:
    """SQLite: daemons SIGKILLed mid-payment and mid-undo; the saga still ends right."""
    await _saga_under_kills(tmp_path, f"sqlite:///{tmp_path / 'stemd.db'}")


async def test_the_saga_survives_sigkill_on_nats(nats: NatsServer, tmp_path: Path) -> None:
    """NATS JetStream: daemons SIGKILLed mid-payment and mid-undo; the saga still ends right."""
    await _saga_under_kills(tmp_path, f"{nats.url}?bucket=saga{secrets.token_hex(4)}")
