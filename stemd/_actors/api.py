"""The API responder: serves the wire protocol's request/reply verbs over NATS.

It subscribes to ``<prefix>.api.>`` in a queue group, so that of several daemons exactly
one answers each request. Every request is decoded and validated by the verb's msgspec
decoder before anything touches state; whatever arrives (malformed JSON, wrong types,
unknown or missing fields, oversized bodies, unknown verbs, invalid run ids or topics) is
answered with a contract error and changes nothing. Only an unexpected failure of the
store or the transport gives ``internal``; the responder itself never stops on a request.

A ``start`` request may carry the starter's W3C ``traceparent`` header: a well-formed one is
recorded with the run (its spans continue the starter's trace), a malformed one is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd import _wire as wire
from stemd import _wire_schedules as wsched
from stemd._actors.api_paging import fit_page, fit_run
from stemd._engine.groups import check_new_runs, group_filter
from stemd._engine.scheduling import ScheduleNotFound
from stemd._errors import (
    RunNotFound,
    StemError,
    StepNotFound,
    StoreError,
    TransportError,
    UnknownWorkflow,
)
from stemd._model import CancellationPolicy
from stemd._tracing import traceparent_from

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from stemd._engine.groups import GroupOp
    from stemd._model import RunPage
    from stemd._natsconn import NatsConnection, NatsMsg
    from stemd._operations import Operations

__all__ = ["ApiResponder", "ApiStats"]

log = structlog.get_logger("stemd.api")


_FILTERS = ("run_ids", "topic", "workflow", "status", "created_after", "created_before")
# Run ids listed at most in the reply to a dry run of a group operation.
PREVIEW = 1000


class ApiStats(msgspec.Struct, frozen=True, kw_only=True):
    """Requests answered so far."""

    requests: int
    errors: int


class _NotFound(Exception):
    pass


HTTP_REPLY_BUDGET = 8 * 1024 * 1024  # the largest reply of the HTTP API before it pages


class ApiResponder:
    """The ``<prefix>.api.*`` responder actor.

    Args:
        ops: the operations the verbs call (an App).
        conn: the NATS connection to serve on (``None``: only :meth:`handle` is used, as
            the HTTP API does).
        prefix: the subject prefix.
        queue_group: the queue group shared by all daemons.
        concurrency: requests handled at once.
        max_request: largest request body accepted, in bytes.
    """

    name = "api"

    def __init__(
        self,
        ops: Operations,
        conn: NatsConnection | None,
        *,
        prefix: str = wire.DEFAULT_PREFIX,
        queue_group: str = "stemd-api",
        concurrency: int = 16,
        max_request: int = 1024 * 1024,
    ) -> None:
        self.ops = ops
        self.conn = conn
        self.prefix = prefix
        self.queue_group = queue_group
        self.concurrency = concurrency
        self.max_request = max_request
        self._requests = 0
        self._errors = 0

    def statistics(self) -> ApiStats:
        return ApiStats(requests=self._requests, errors=self._errors)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self.conn is not None, "an ApiResponder without a connection serves no NATS"
        sub = await self.conn.subscribe(
            f"{self.prefix}.api.>", queue=self.queue_group, buffer=self.concurrency * 64
        )
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.concurrency):
                    tg.start_soon(self._serve, sub.messages)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await sub.unsubscribe()

    async def _serve(self, messages: anyio.abc.ObjectReceiveStream[NatsMsg]) -> None:
        assert self.conn is not None
        async for msg in messages:
            if not msg.reply:
                continue  # a request nobody waits for: nothing to answer, nothing to do
            verb = msg.subject[len(self.prefix) + 5 :]
            reply = await self.handle(verb, msg.data, msg.headers)
            if len(reply) > self.conn.max_payload - 1024:
                reply = wire.error_reply(
                    "bad_request",
                    f"the reply would take {len(reply)} bytes, more than a NATS message "
                    f"holds ({self.conn.max_payload}): ask for fewer runs",
                )
            try:
                await self.conn.publish(msg.reply, reply)
            except TransportError as exc:
                log.warning("reply not sent", verb=verb, error=str(exc))

    async def handle(self, verb: str, data: bytes, headers: dict[str, str] | None = None) -> bytes:
        """The JSON reply to one request (``headers``: the message's, if any)."""
        self._requests += 1
        try:
            return await self._dispatch(verb, data, headers)
        except Exception as exc:
            self._errors += 1
            code, message = self._classify(exc)
            if code == "internal":
                log.exception("request failed", verb=verb, error=repr(exc))
            return wire.error_reply(code, message)

    @staticmethod
    def _classify(exc: Exception) -> tuple[wire.ErrorCode, str]:
        if isinstance(exc, msgspec.ValidationError):
            return "bad_request", f"invalid request: {exc}"
        if isinstance(exc, msgspec.DecodeError):
            return "bad_request", f"malformed request: {exc}"
        if isinstance(exc, (StoreError, TransportError)):
            return "internal", f"{type(exc).__name__}: {exc}"
        if isinstance(exc, UnknownWorkflow):
            return "unknown_workflow", str(exc)
        if isinstance(exc, (RunNotFound, StepNotFound, ScheduleNotFound, _NotFound)):
            return "not_found", str(exc)
        if isinstance(exc, (StemError, ValueError, TypeError)):
            return "bad_request", str(exc)
        return "internal", f"{type(exc).__name__}: {exc}"

    async def _dispatch(self, verb: str, data: bytes, headers: dict[str, str] | None) -> bytes:
        if verb not in wire.REQUEST_TYPES:
            raise StemError(f"unknown verb {verb!r} (one of {', '.join(wire.VERBS)})")
        if len(data) > self.max_request:
            raise StemError(f"request of {len(data)} bytes is larger than {self.max_request}")
        request = wire.decode_request(verb, data)
        reply: Any
        if verb == "start":
            reply = await self._start(request, trace=traceparent_from(headers))
        else:
            reply = await getattr(self, f"_{verb}")(request)
        return reply if isinstance(reply, bytes) else wire.encode(reply)

    @property
    def _budget(self) -> int:
        """The largest reply sent: what a NATS message holds, less room for headers (over
        HTTP, with no connection, :data:`HTTP_REPLY_BUDGET`)."""
        if self.conn is None:
            return HTTP_REPLY_BUDGET
        return self.conn.max_payload - 1024

    async def _start(self, req: wire.StartRequest, *, trace: str | None) -> wire.StartReply:
        policy = None
        if req.policy is not None:
            policy = CancellationPolicy(
                max_run_duration=req.policy.max_run_duration,
                max_suspend_duration=req.policy.max_suspend_duration,
            )
        run_id, created = await self.ops.start_run(
            req.workflow,
            req.params,
            run_id=req.run_id,
            policy=policy,
            ttl=req.ttl,
            trace=trace,
            parent_run_id=req.parent_run_id,
            dedup_key=req.dedup_key,
            priority=req.priority,
        )
        return wire.StartReply(run_id=run_id, created=created)

    async def _get(self, req: wire.GetRequest) -> bytes:
        state = await self.ops.get_run(req.run_id)
        if state is None:
            raise _NotFound(f"no run {req.run_id}")
        # A run larger than a reply comes in pages of checkpoints (api_paging).
        return fit_run(state, self._budget, req.checkpoints_after)

    async def _list(self, req: wire.ListRequest) -> bytes:
        async def fetch(limit: int) -> RunPage:
            return await self.ops.page_runs(
                workflow=req.workflow,
                status=req.status,
                limit=limit,
                after=req.after,
                created_after=req.created_after,
                created_before=req.created_before,
            )

        def reply(page: RunPage, partial: bool) -> wire.ListReply:
            return wire.ListReply(runs=page.runs, next=page.next, partial=partial)

        return await fit_page(fetch, reply, req.limit, self._budget)

    async def _emit(self, req: wire.EmitRequest) -> wire.EmitReply:
        resumed = await self.ops.emit(req.topic, req.payload, retain=req.retain)
        return wire.EmitReply(resumed=resumed)

    async def _send(self, req: wire.SendRequest) -> wire.SendReply:
        accepted = await self.ops.send(req.run_id, req.topic, req.payload, key=req.key)
        return wire.SendReply(accepted=accepted)

    async def _waiting(self, req: wire.WaitingRequest) -> bytes:
        async def fetch(limit: int) -> RunPage:
            return await self.ops.page_waiting(req.topic, limit, after=req.after)

        def reply(page: RunPage, partial: bool) -> wire.WaitingReply:
            return wire.WaitingReply(runs=page.runs, next=page.next, partial=partial)

        return await fit_page(fetch, reply, req.limit, self._budget)

    async def _cancel(self, req: wire.CancelRequest) -> wire.CancelReply:
        cancelled = await self.ops.cancel_run(req.run_id, req.reason or "cancelled")
        return wire.CancelReply(cancelled=cancelled)

    async def _rewind(self, req: wire.RewindRequest) -> wire.RewindReply:
        return wire.RewindReply(rewound=await self.ops.rewind_run(req.run_id, req.step))

    async def _group(self, op: GroupOp, req: wire.GroupFilterBody, **extra: Any) -> wire.GroupReply:
        filters: dict[str, Any] = {
            name: getattr(req, name) for name in _FILTERS if getattr(req, name) is not None
        }
        if req.dry_run:
            if extra.get("new_runs"):
                check_new_runs(op, group_filter(**filters))
            count, ids = await self.ops.preview_runs(op, limit=PREVIEW, **filters)
            return wire.GroupReply(count=count, run_ids=ids)
        if op == "pause":
            return wire.GroupReply(count=await self.ops.pause_runs(**extra, **filters))
        if op == "resume":
            return wire.GroupReply(count=await self.ops.resume_runs(**extra, **filters))
        return wire.GroupReply(count=await self.ops.cancel_runs(**extra, **filters))

    async def _pause(self, req: wire.PauseRequest) -> wire.GroupReply:
        return await self._group("pause", req, new_runs=req.new_runs)

    async def _resume(self, req: wire.ResumeRequest) -> wire.GroupReply:
        return await self._group("resume", req, new_runs=req.new_runs)

    async def _cancel_many(self, req: wire.CancelManyRequest) -> wire.GroupReply:
        return await self._group("cancel", req, reason=req.reason or "cancelled")

    async def _types(self, req: wire.TypesRequest) -> wire.TypesReply:
        # The daemon's own workflows and every one recorded in its store by any daemon
        # sharing it (Operations.registered_workflows).
        return wire.TypesReply(
            workflows=[wire.workflow_type(w) for w in await self.ops.registered_workflows()]
        )

    async def _fork(self, req: wsched.ForkRequest) -> wsched.ForkReply:
        return wsched.ForkReply(run_id=await self.ops.fork_run(req.run_id, req.step))

    async def _schedules(self, req: wsched.SchedulesRequest) -> wsched.SchedulesReply:
        return wsched.SchedulesReply(schedules=await self.ops.list_schedules())

    async def _pause_schedule(self, req: wsched.ScheduleNameRequest) -> wsched.ScheduleReply:
        return wsched.ScheduleReply(schedule=await self.ops.pause_schedule(req.name))

    async def _resume_schedule(self, req: wsched.ScheduleNameRequest) -> wsched.ScheduleReply:
        return wsched.ScheduleReply(schedule=await self.ops.resume_schedule(req.name))

    async def _trigger_schedule(self, req: wsched.TriggerRequest) -> wsched.TriggerReply:
        return wsched.TriggerReply(run_id=await self.ops.trigger_schedule(req.name, req.run_id))
