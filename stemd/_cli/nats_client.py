"""The CLI's client over NATS (:class:`NatsClient`): request/reply on
``<prefix>.api.<verb>`` with JSON bodies, as CONTRACT.md section 3 specifies; a daemon
connected to that NATS answers. It talks to NATS through :mod:`stemd._natsconn`, whose
errors are already :class:`~stemd._errors.StemError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import msgspec

from stemd import _wire as wire
from stemd._cli.group_requests import group_request
from stemd._engine.dedup import validate_dedup_key
from stemd._engine.limits import validate_priority
from stemd._errors import (
    PayloadError,
    RunNotFound,
    StemError,
    StepNotFound,
    TransportError,
    UnknownWorkflow,
)
from stemd._model import CancellationPolicy, RunPage, RunState, parse_status, validate_run_id
from stemd._tracing import trace_headers

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._engine.groups import GroupOp
    from stemd._natsconn import NatsConnection

__all__ = ["NatsClient", "raise_error"]


def _cursor(after: str | None) -> str | None:
    """A page cursor as given (checked here so that a bad one is a clear local error)."""
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 19):
        raise StemError(f"invalid cursor {after!r}: give the next of a previous page")
    return after


# -- straight to the store ------------------------------------------------------------------


_ERRORS: dict[str, type[StemError]] = {
    "unknown_workflow": UnknownWorkflow,
    "not_found": RunNotFound,
    "bad_request": StemError,
}


def raise_error(err: wire.ErrorBody) -> NoReturn:
    """Raise the error a daemon answered with, as the exception of its code."""
    if err.code == "internal":
        raise StemError(f"the daemon failed: {err.message}")
    raise _ERRORS.get(err.code, StemError)(err.message or err.code)


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
            raise_error(reply.error)
        return reply

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
        *,
        force: bool = False,
        ttl: float | None = None,
        parent: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
    ) -> tuple[str, bool]:
        if force:
            raise StemError(
                "--force works with --store only: over --nats the daemon decides, and it "
                "refuses a workflow it does not serve"
            )
        if run_id is not None:
            validate_run_id(run_id)
        body = None
        if policy is not None:
            body = wire.PolicyBody(
                max_run_duration=policy.max_run_duration,
                max_suspend_duration=policy.max_suspend_duration,
            )
        request = wire.StartRequest(
            workflow=workflow,
            params=params,
            run_id=run_id,
            policy=body,
            ttl=ttl,
            parent_run_id=None if parent is None else validate_run_id(parent),
            dedup_key=None if dedup_key is None else validate_dedup_key(dedup_key),
            priority=validate_priority(priority),
        )
        reply: wire.StartReply = await self._request("start", request)
        return reply.run_id, reply.created

    async def get(self, run_id: str) -> RunState | None:
        validate_run_id(run_id)
        try:
            reply: wire.GetReply = await self._request("get", wire.GetRequest(run_id=run_id))
        except RunNotFound:
            return None
        run, checkpoints = reply.run, dict(reply.run.checkpoints)
        while reply.next is not None:  # a run larger than a reply: its checkpoints in pages
            request = wire.GetRequest(run_id=run_id, checkpoints_after=reply.next)
            reply = await self._request("get", request)
            checkpoints.update(reply.run.checkpoints)
        return msgspec.structs.replace(run, checkpoints=checkpoints)

    async def list_runs(
        self,
        workflow: str | None,
        status: str | None,
        limit: int,
        after: str | None = None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> RunPage:
        st = parse_status(status)
        request = wire.ListRequest(
            workflow=workflow,
            status=st.value if st else None,
            limit=limit,
            after=_cursor(after),
            created_after=window[0],
            created_before=window[1],
        )
        reply: wire.ListReply = await self._request("list", request)
        return RunPage(runs=reply.runs, next=reply.next)

    async def emit(self, topic: str, payload: Any, retain: float | None = None) -> int:
        request = wire.EmitRequest(topic=topic, payload=payload, retain=retain)
        reply: wire.EmitReply = await self._request("emit", request)
        return reply.resumed

    async def send(self, run_id: str, topic: str, payload: Any, key: str | None) -> bool:
        validate_run_id(run_id)
        request = wire.SendRequest(run_id=run_id, topic=topic, payload=payload, key=key)
        reply: wire.SendReply = await self._request("send", request)
        return reply.accepted

    async def waiting(self, topic: str, limit: int = 1000, after: str | None = None) -> RunPage:
        request = wire.WaitingRequest(topic=topic, limit=limit, after=_cursor(after))
        reply: wire.WaitingReply = await self._request("waiting", request)
        return RunPage(runs=reply.runs, next=reply.next)

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

    async def types(self) -> list[wire.WorkflowType]:
        reply: wire.TypesReply = await self._request("types", wire.TypesRequest())
        return reply.workflows

    async def group(
        self,
        op: GroupOp,
        filters: dict[str, Any],
        reason: str,
        dry_run: bool,
        new_runs: bool = False,
    ) -> tuple[int, list[str] | None]:
        verb, request = group_request(op, filters, reason, dry_run, new_runs)
        reply: wire.GroupReply = await self._request(verb, request)
        return reply.count, reply.run_ids
