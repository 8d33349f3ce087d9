"""The CLI's two ways to reach runs, behind one interface (:class:`Client`):

- :class:`StoreClient`: straight to the store, through ``App(store=URL, workers=False)``;
  works with no daemon up.
- :class:`NatsClient`: request/reply on ``<prefix>.api.<verb>`` with JSON bodies, as
  CONTRACT.md section 3 specifies; a daemon connected to that NATS answers. This module is
  the CLI's only adapter to nats-py: its errors become :class:`~stemd.errors.StemError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import msgspec

from stemd.app import App
from stemd.config import check_nats, check_sqlite
from stemd.errors import (
    PayloadError,
    RunNotFound,
    StemError,
    StepNotFound,
    TransportError,
    UnknownWorkflow,
)
from stemd.loading import Workflow
from stemd.model import CancellationPolicy, RunState, RunStatus, validate_run_id

__all__ = ["Client", "NatsClient", "StoreClient", "open_client"]


class Client(Protocol):
    """What every ``stemd workflow`` command needs."""

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
    ) -> tuple[str, bool]:
        """Start a run; return its id and whether it was created (``False``: it existed)."""
        ...

    async def get(self, run_id: str) -> RunState | None:
        """The run, or ``None``."""
        ...

    async def list_runs(
        self, workflow: str | None, status: str | None, limit: int
    ) -> list[RunState]:
        """Runs, newest first."""
        ...

    async def emit(self, topic: str, payload: Any) -> int:
        """Resume the runs waiting on ``topic``; return how many."""
        ...

    async def waiting(self, topic: str) -> list[RunState]:
        """Runs waiting on ``topic``."""
        ...

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel the run; ``False`` if unknown or already ended."""
        ...

    async def rewind(self, run_id: str, step: str) -> bool:
        """Re-run from ``step``; ``False`` if the run is unknown."""
        ...

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        """Wait until the run ends or ``timeout`` passes; return its state and whether the
        timeout passed first."""
        ...


def _status(value: str | None) -> RunStatus | None:
    if value is None:
        return None
    try:
        return RunStatus(value.lower())
    except ValueError:
        choices = ", ".join(s.value for s in RunStatus)
        raise StemError(f"unknown status {value!r} (one of {choices})") from None


# -- straight to the store ------------------------------------------------------------------


class StoreClient:
    """A :class:`Client` over an open ``App(workers=False)``."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
    ) -> tuple[str, bool]:
        return await self.app.engine.start_run(workflow, params, run_id=run_id, policy=policy)

    async def get(self, run_id: str) -> RunState | None:
        return await self.app.get_run(run_id)

    async def list_runs(
        self, workflow: str | None, status: str | None, limit: int
    ) -> list[RunState]:
        return await self.app.list_runs(workflow=workflow, status=_status(status), limit=limit)

    async def emit(self, topic: str, payload: Any) -> int:
        return await self.app.emit(topic, payload)

    async def waiting(self, topic: str) -> list[RunState]:
        return await self.app.runs_waiting_on(topic)

    async def cancel(self, run_id: str, reason: str) -> bool:
        return await self.app.cancel_run(run_id, reason=reason)

    async def rewind(self, run_id: str, step: str) -> bool:
        return await self.app.rewind_run(run_id, step)

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        result = await self.app.wait_for_completion(run_id, timeout=timeout)
        assert result.state is not None
        return result.state, result.timed_out


# -- through a daemon, over NATS ------------------------------------------------------------


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str = "internal"
    message: str = ""


class _Reply(msgspec.Struct, frozen=True):
    error: _ErrorBody | None = None


class _StartReply(msgspec.Struct, frozen=True):
    run_id: str
    created: bool = True


class _RunReply(msgspec.Struct, frozen=True):
    run: RunState | None = None


class _RunsReply(msgspec.Struct, frozen=True):
    runs: list[RunState] = msgspec.field(default_factory=list)


class _EmitReply(msgspec.Struct, frozen=True):
    resumed: int


class _CancelReply(msgspec.Struct, frozen=True):
    cancelled: bool


class _RewindReply(msgspec.Struct, frozen=True):
    rewound: bool


class _RunEvent(msgspec.Struct, frozen=True):
    run_id: str
    status: RunStatus


_ERRORS: dict[str, type[StemError]] = {
    "unknown_workflow": UnknownWorkflow,
    "not_found": RunNotFound,
    "bad_request": StemError,
}


class NatsClient:
    """A :class:`Client` speaking to a daemon over NATS request/reply.

    Args:
        nc: a connected nats-py client.
        url: its URL, for messages.
        prefix: the subject prefix (``stem``).
        timeout: seconds to wait for each reply.
    """

    def __init__(self, nc: Any, url: str, prefix: str = "stem", timeout: float = 5.0) -> None:
        self.nc = nc
        self.url = url
        self.prefix = prefix
        self.timeout = timeout

    async def _request(self, verb: str, body: dict[str, Any], reply_type: Any) -> Any:
        import nats.errors

        subject = f"{self.prefix}.api.{verb}"
        try:
            data = msgspec.json.encode({k: v for k, v in body.items() if v is not None})
        except (TypeError, msgspec.EncodeError) as exc:
            raise PayloadError(f"cannot encode the request as JSON: {exc}") from None
        try:
            msg = await self.nc.request(subject, data, timeout=self.timeout)
        except nats.errors.NoRespondersError:
            raise TransportError(
                f"no stemd daemon answers on {subject} at {self.url} "
                "(is `stemd run` running with this NATS?)"
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise TransportError(
                f"no reply on {subject} from {self.url} within {self.timeout:g}s "
                "(is a stemd daemon running with this NATS?)"
            ) from None
        except nats.errors.Error as exc:
            raise TransportError(f"NATS request on {subject} failed: {exc}") from None
        try:
            reply = msgspec.json.decode(msg.data, type=_Reply)
            if reply.error is not None:
                err = reply.error
                raise _ERRORS.get(err.code, StemError)(err.message or err.code)
            return msgspec.json.decode(msg.data, type=reply_type)
        except msgspec.DecodeError as exc:
            raise TransportError(f"unexpected reply on {subject}: {exc}") from None

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
    ) -> tuple[str, bool]:
        if run_id is not None:
            validate_run_id(run_id)
        body: dict[str, Any] = {"workflow": workflow, "params": params, "run_id": run_id}
        if policy is not None:
            body["policy"] = msgspec.to_builtins(policy)
        reply: _StartReply = await self._request("start", body, _StartReply)
        return reply.run_id, reply.created

    async def get(self, run_id: str) -> RunState | None:
        validate_run_id(run_id)
        try:
            reply: _RunReply = await self._request("get", {"run_id": run_id}, _RunReply)
        except RunNotFound:
            return None
        return reply.run

    async def list_runs(
        self, workflow: str | None, status: str | None, limit: int
    ) -> list[RunState]:
        st = _status(status)
        body = {"workflow": workflow, "status": st.value if st else None, "limit": limit}
        reply: _RunsReply = await self._request("list", body, _RunsReply)
        return reply.runs

    async def emit(self, topic: str, payload: Any) -> int:
        reply: _EmitReply = await self._request(
            "emit", {"topic": topic, "payload": payload}, _EmitReply
        )
        return reply.resumed

    async def waiting(self, topic: str) -> list[RunState]:
        reply: _RunsReply = await self._request("waiting", {"topic": topic}, _RunsReply)
        return reply.runs

    async def cancel(self, run_id: str, reason: str) -> bool:
        validate_run_id(run_id)
        body = {"run_id": run_id, "reason": reason}
        try:
            reply: _CancelReply = await self._request("cancel", body, _CancelReply)
        except RunNotFound:
            return False
        return reply.cancelled

    async def rewind(self, run_id: str, step: str) -> bool:
        validate_run_id(run_id)
        body = {"run_id": run_id, "step": step}
        try:
            reply: _RewindReply = await self._request("rewind", body, _RewindReply)
        except RunNotFound:
            return False
        except StemError as exc:
            # The daemon answers a rewind to an unknown step with bad_request.
            if "step" in str(exc):
                raise StepNotFound(str(exc)) from None
            raise
        return reply.rewound

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        """Listen to ``<prefix>.events.run.<id>`` and re-read the run on each event (and
        every second, in case an event was missed) until it has ended."""
        import nats.errors

        validate_run_id(run_id)
        sub = await self.nc.subscribe(f"{self.prefix}.events.run.{run_id}")
        state: RunState | None = None
        try:
            with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                while True:
                    state = await self.get(run_id)
                    if state is None:
                        raise RunNotFound(f"no run {run_id}")
                    if state.status.is_terminal:
                        return state, False
                    try:
                        msg = await sub.next_msg(timeout=1.0)
                        msgspec.json.decode(msg.data, type=_RunEvent)
                    except (nats.errors.TimeoutError, TimeoutError, msgspec.DecodeError):
                        pass
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
        state = await self.get(run_id) or state
        if state is None:
            raise RunNotFound(f"no run {run_id}")
        return state, not state.status.is_terminal


async def _quiet(*_: Any) -> None:
    """nats-py's callbacks must be coroutines; the CLI reports errors itself."""


@asynccontextmanager
async def open_client(
    *,
    store: str | None = None,
    nats_url: str | None = None,
    workflows: Iterable[Workflow] = (),
    prefix: str = "stem",
    timeout: float = 5.0,
) -> AsyncIterator[Client]:
    """A :class:`Client` over ``nats_url`` if given, else straight to ``store``.

    Raises:
        ConfigError: the store or NATS cannot be reached (naming ``--store``/``--nats``).
    """
    if nats_url is not None:
        import nats
        import nats.errors

        await check_nats("--nats", nats_url, timeout=timeout)
        try:
            with anyio.fail_after(timeout + 1):
                nc = await nats.connect(
                    servers=[u.strip() for u in nats_url.split(",")],
                    connect_timeout=max(1, int(timeout)),
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    error_cb=_quiet,
                    disconnected_cb=_quiet,
                    closed_cb=_quiet,
                    name="stemd-cli",
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise TransportError(f"--nats: cannot connect to {nats_url}: {exc!r}") from None
        try:
            yield NatsClient(nc, nats_url, prefix=prefix, timeout=timeout)
        finally:
            with anyio.move_on_after(2, shield=True):
                await nc.close()
        return
    assert store is not None
    if store.startswith("sqlite://"):
        check_sqlite("--store", store)
    elif store.startswith(("nats://", "tls://")):
        await check_nats("--store", store, timeout=timeout)
    async with App(store=store, workers=False, workflows=workflows) as app:
        yield StoreClient(app)
