"""The CLI's two ways to reach runs, behind one interface (:class:`Client`):

- :class:`StoreClient`: straight to the store, through ``App(store=URL, workers=False)``;
  works with no daemon up.
- :class:`NatsClient`: request/reply on ``<prefix>.api.<verb>`` with JSON bodies, as
  CONTRACT.md section 3 specifies; a daemon connected to that NATS answers. It talks to NATS
  through :mod:`stemd.natsconn`, whose errors are already :class:`~stemd.errors.StemError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import msgspec

from stemd import wire
from stemd.app import App
from stemd.codec import Codec, codec_for
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
from stemd.natsauth import NatsAuth, redact_url
from stemd.natsconn import NatsConnection, open_connection
from stemd.tracing import trace_headers

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


_ERRORS: dict[str, type[StemError]] = {
    "unknown_workflow": UnknownWorkflow,
    "not_found": RunNotFound,
    "bad_request": StemError,
}


class NatsClient:
    """A :class:`Client` speaking to a daemon over NATS request/reply.

    Args:
        conn: an open connection.
        url: its URL, for messages.
        prefix: the subject prefix (``stem``).
        timeout: seconds to wait for each reply.
    """

    def __init__(
        self, conn: NatsConnection, url: str, prefix: str = "stem", timeout: float = 5.0
    ) -> None:
        self.conn = conn
        self.url = url
        self.prefix = prefix
        self.timeout = timeout

    async def _request(self, verb: str, request: msgspec.Struct) -> Any:
        """Send ``request`` on ``<prefix>.api.<verb>``; return the decoded reply, or raise
        the error the daemon answered with."""
        subject = wire.api_subject(self.prefix, verb)
        try:
            data = wire.encode(request)
        except (TypeError, msgspec.EncodeError) as exc:
            raise PayloadError(f"cannot encode the request as JSON: {exc}") from None
        try:
            # The caller's trace context travels in a `traceparent` header: a run started
            # here continues the caller's trace.
            msg = await self.conn.request(
                subject, data, headers=trace_headers(), timeout=self.timeout
            )
        except TransportError as exc:
            cause = exc.__cause__
            if isinstance(cause, TimeoutError) or type(cause).__name__ == "NoRespondersError":
                raise TransportError(
                    f"no stemd daemon answered on {subject} at {self.url} within "
                    f"{self.timeout:g}s (is `stemd run` running with this NATS?)"
                ) from None
            raise
        try:
            reply = wire.decode_reply(verb, msg.data)
        except msgspec.DecodeError as exc:
            raise TransportError(f"unexpected reply on {subject}: {exc}") from None
        if isinstance(reply, wire.ErrorReply):
            err = reply.error
            if err.code == "internal":
                raise StemError(f"the daemon failed: {err.message}")
            raise _ERRORS.get(err.code, StemError)(err.message or err.code)
        return reply

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
    ) -> tuple[str, bool]:
        if run_id is not None:
            validate_run_id(run_id)
        body = None
        if policy is not None:
            body = wire.PolicyBody(
                max_run_duration=policy.max_run_duration,
                max_suspend_duration=policy.max_suspend_duration,
            )
        request = wire.StartRequest(workflow=workflow, params=params, run_id=run_id, policy=body)
        reply: wire.StartReply = await self._request("start", request)
        return reply.run_id, reply.created

    async def get(self, run_id: str) -> RunState | None:
        validate_run_id(run_id)
        try:
            reply: wire.GetReply = await self._request("get", wire.GetRequest(run_id=run_id))
        except RunNotFound:
            return None
        return reply.run

    async def list_runs(
        self, workflow: str | None, status: str | None, limit: int
    ) -> list[RunState]:
        st = _status(status)
        request = wire.ListRequest(
            workflow=workflow,
            status=st.value if st else None,
            limit=limit,
        )
        reply: wire.ListReply = await self._request("list", request)
        return reply.runs

    async def emit(self, topic: str, payload: Any) -> int:
        request = wire.EmitRequest(topic=topic, payload=payload)
        reply: wire.EmitReply = await self._request("emit", request)
        return reply.resumed

    async def waiting(self, topic: str) -> list[RunState]:
        reply: wire.WaitingReply = await self._request("waiting", wire.WaitingRequest(topic=topic))
        return reply.runs

    async def cancel(self, run_id: str, reason: str) -> bool:
        validate_run_id(run_id)
        request = wire.CancelRequest(run_id=run_id, reason=reason)
        try:
            reply: wire.CancelReply = await self._request("cancel", request)
        except RunNotFound:
            return False
        return reply.cancelled

    async def rewind(self, run_id: str, step: str) -> bool:
        validate_run_id(run_id)
        request = wire.RewindRequest(run_id=run_id, step=step)
        try:
            reply: wire.RewindReply = await self._request("rewind", request)
        except RunNotFound as exc:
            # An unknown run is ``rewound: false``; not_found here means an unknown step.
            raise StepNotFound(str(exc)) from None
        return reply.rewound

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        """Listen to ``<prefix>.events.run.<id>`` and re-read the run on each event (and
        every second, in case an event was missed) until it has ended."""
        validate_run_id(run_id)
        sub = await self.conn.subscribe(wire.event_subject(self.prefix, run_id), buffer=16)
        state: RunState | None = None
        try:
            with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                while True:
                    state = await self.get(run_id)
                    if state is None:
                        raise RunNotFound(f"no run {run_id}")
                    if state.status.is_terminal:
                        return state, False
                    with anyio.move_on_after(1.0):
                        await sub.receive()
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
        state = await self.get(run_id) or state
        if state is None:
            raise RunNotFound(f"no run {run_id}")
        return state, not state.status.is_terminal


@asynccontextmanager
async def open_client(
    *,
    store: str | None = None,
    nats_url: str | None = None,
    workflows: Iterable[Workflow] = (),
    prefix: str = "stem",
    timeout: float = 5.0,
    codecs: tuple[Codec, dict[str, Codec]] | None = None,
    auth: NatsAuth | None = None,
) -> AsyncIterator[Client]:
    """A :class:`Client` over ``nats_url`` if given, else straight to ``store``; ``auth``
    gives the credentials and TLS of a NATS connection.

    Raises:
        ConfigError: the store or NATS cannot be reached (naming ``--store``/``--nats``).
        TransportError: NATS refused the credentials or the TLS handshake failed.
    """
    if nats_url is not None:
        # TCP first, for the plain "cannot reach" message; the handshake is the real open.
        await check_nats("--nats", nats_url, timeout=timeout, handshake=False)
        try:
            conn = await open_connection(
                nats_url,
                auth=auth,
                name="stemd-cli",
                timeout=timeout,
                connect_timeout=min(timeout, 2.0),
                connect_attempts=1,
            )
        except TransportError as exc:
            raise TransportError(f"--nats: {exc}") from None
        try:
            yield NatsClient(conn, redact_url(nats_url), prefix=prefix, timeout=timeout)
        finally:
            await conn.close()
        return
    assert store is not None
    if store.startswith("sqlite://"):
        check_sqlite("--store", store)
    elif store.startswith(("nats://", "tls://")):
        await check_nats("--store", store, timeout=timeout, handshake=False)
    codec, per_workflow = codecs if codecs is not None else (codec_for("json"), {})
    async with App(
        store=store,
        workers=False,
        workflows=workflows,
        codec=codec,
        workflow_codecs=per_workflow,
        nats_auth=auth,
    ) as app:
        yield StoreClient(app)
