"""The NATS wire protocol (CONTRACT.md §3): subjects, request and reply bodies, errors.

Request/reply on ``<prefix>.api.<verb>`` (prefix ``stem`` by default), JSON bodies. A
reply is the verb's result object or ``{"error": {"code": CODE, "message": TEXT}}``. Every
request type is a frozen msgspec Struct that forbids unknown fields and constrains its
values (run ids, topics, limits), decoded by one long-lived decoder per verb, so a request
is fully validated before anything touches state.

Durable submission: a JetStream message on ``<prefix>.submit.<workflow>`` whose body is
the params (JSON) and whose ``Nats-Msg-Id`` header is the run id.

Run events: core NATS messages on ``<prefix>.events.run.<run_id>``, a :class:`RunEventMsg`.

Reference: docs/reference/wire.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from stemd import _wire_schedules as forks_and_schedules
from stemd._identifiers import RunId, Topic
from stemd._model import MAX_DURATION, ErrorInfo, RunState, RunStatus

if TYPE_CHECKING:
    from stemd._store.base import WorkflowInfo

__all__ = [
    "DEFAULT_PREFIX",
    "DEDUP_KEY_HEADER",
    "PRIORITY_HEADER",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "VERBS",
    "CancelManyRequest",
    "CancelReply",
    "CancelRequest",
    "EmitReply",
    "EmitRequest",
    "ErrorBody",
    "ErrorCode",
    "ErrorReply",
    "GetReply",
    "GetRequest",
    "GroupFilterBody",
    "GroupReply",
    "ListReply",
    "ListRequest",
    "PauseRequest",
    "PolicyBody",
    "ResumeRequest",
    "RewindReply",
    "RewindRequest",
    "RunEventMsg",
    "SendReply",
    "SendRequest",
    "StartReply",
    "StartRequest",
    "TypesReply",
    "TypesRequest",
    "WaitingReply",
    "WaitingRequest",
    "WorkflowType",
    "api_subject",
    "decode_reply",
    "decode_request",
    "encode",
    "error_reply",
    "event_subject",
    "submit_subject",
    "workflow_type",
]

DEFAULT_PREFIX = "stem"
#: Headers of a durable submission (``<prefix>.submit.<workflow>``) carrying what the
#: ``start`` verb's ``priority`` and ``dedup_key`` carry (the names in any case).
PRIORITY_HEADER = "Stem-Priority"
DEDUP_KEY_HEADER = "Stem-Dedup-Key"

ErrorCode = Literal["bad_request", "unknown_workflow", "not_found", "internal"]

WorkflowName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
MessageKey = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Cursor = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$")]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
StatusName = Literal["pending", "running", "suspended", "completed", "failed", "cancelled"]


def api_subject(prefix: str, verb: str) -> str:
    """``<prefix>.api.<verb>``."""
    return f"{prefix}.api.{verb}"


def submit_subject(prefix: str, workflow: str) -> str:
    """``<prefix>.submit.<workflow>``: durable submission of a run of ``workflow``."""
    return f"{prefix}.submit.{workflow}"


def event_subject(prefix: str, run_id: str) -> str:
    """``<prefix>.events.run.<run_id>``: status changes of one run."""
    return f"{prefix}.events.run.{run_id}"


class PolicyBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A cancellation policy, in seconds."""

    max_run_duration: Seconds | None = None
    max_suspend_duration: Seconds | None = None


class StartRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``start``: start a run (idempotent on ``run_id``, and on ``dedup_key`` within the
    workflow's dedup window while the run it started is live)."""

    workflow: WorkflowName
    params: Any = None
    run_id: RunId | None = None
    policy: PolicyBody | None = None
    ttl: Seconds | None = None
    parent_run_id: RunId | None = None
    dedup_key: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0


class GetRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``get``: one run's state; ``checkpoints_after``: the ``next`` of the previous
    reply, when the run did not fit in one (its checkpoints come in pages)."""

    run_id: RunId
    checkpoints_after: Cursor | None = None


class ListRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``list``: runs, newest first, from the cursor ``after`` on (the ``next`` of the
    previous page); ``created_after``, ``created_before``: only the runs created after,
    before that instant (a page of such a window may hold fewer than ``limit`` runs while
    there are more: go on while ``next`` is present)."""

    workflow: WorkflowName | None = None
    status: StatusName | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    after: Cursor | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


class EmitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``emit``: resume every run waiting on ``topic`` with ``payload``; keep the event
    for later waits ``retain`` seconds (absent or ``true``: the daemon's
    ``event_retention``; ``false`` or 0: not at all)."""

    topic: Topic
    payload: Any = None
    retain: bool | Seconds | None = None


class SendRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``send``: put a message in ``run_id``'s mailbox for its next wait on ``topic``;
    with ``key``, a second send of that key to that run is a no-op."""

    run_id: RunId
    topic: Topic
    payload: Any = None
    key: MessageKey | None = None


class WaitingRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``waiting``: runs suspended on ``topic``, oldest first, at most ``limit``, from the
    cursor ``after`` on."""

    topic: Topic
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    after: Cursor | None = None


class CancelRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``cancel``: cancel a run (and its unfinished children)."""

    run_id: RunId
    reason: Text | None = None


class GroupFilterBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The filters of a group operation (``pause``, ``resume``, ``cancel_many``): every one
    given must hold (at least one is required). ``dry_run``: change nothing, reply with how
    many runs would change and the ids of the first 1000 of them."""

    run_ids: Annotated[list[RunId], msgspec.Meta(max_length=10_000)] | None = None
    topic: Topic | None = None
    workflow: WorkflowName | None = None
    status: StatusName | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    dry_run: bool = False


class PauseRequest(GroupFilterBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``pause``: pause every run of the group that has not ended; with ``new_runs`` (and
    ``workflow``), the workflow's new runs start paused too."""

    new_runs: bool = False


class ResumeRequest(GroupFilterBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``resume``: resume every paused run of the group; with ``new_runs`` (and
    ``workflow``), the workflow's new runs no longer start paused."""

    new_runs: bool = False


class CancelManyRequest(GroupFilterBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``cancel_many``: cancel every run of the group that has not ended (and their
    unfinished children) with ``reason``."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None


class RewindRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``rewind``: re-run ``run_id`` from ``step`` on."""

    run_id: RunId
    step: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class TypesRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``types``: the workflows registered (served by daemons); no fields."""


class StartReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``start``."""

    run_id: str
    created: bool


class GetReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Reply to ``get``: ``next``, present when the run is larger than a reply holds, is
    the cursor of its next checkpoints (see the wire reference: paged runs)."""

    run: RunState
    next: str | None = None


class ListReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Reply to ``list``: ``next``, present when there are more runs, is the cursor of
    the next page; ``partial``, present and true when the runs' checkpoints were left out
    to fit in a reply (``get`` each run for them)."""

    runs: list[RunState]
    next: str | None = None
    partial: bool = False


class EmitReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``emit``."""

    resumed: int


class SendReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``send``: ``false`` when a message with that key was sent to the run
    before (nothing changed)."""

    accepted: bool


class WaitingReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Reply to ``waiting``: ``next``, present when there are more runs, is the cursor of
    the next page; ``partial``: as in :class:`ListReply`."""

    runs: list[RunState]
    next: str | None = None
    partial: bool = False


class CancelReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``cancel``: ``false`` when the run is unknown or already ended."""

    cancelled: bool


class GroupReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Reply to ``pause``, ``resume`` and ``cancel_many``: how many runs were changed
    (with ``dry_run``: would be, and ``run_ids``, the first 1000 of them)."""

    count: int
    run_ids: list[str] | None = None


class RewindReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``rewind``: ``false`` when the run is unknown."""

    rewound: bool


class WorkflowType(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A registered workflow: ``version`` is always present (``null`` when it has none),
    ``steps`` (the declared steps, in order) only for a flow, ``registered_at`` when a
    daemon last registered it."""

    name: str
    kind: Literal["flow", "script"]
    version: str | int | None
    steps: list[str] | msgspec.UnsetType = msgspec.UNSET
    registered_at: datetime | None = None


class TypesReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``types``: by name."""

    workflows: list[WorkflowType]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong."""

    code: ErrorCode
    message: str


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to a request that was refused or failed; nothing was changed."""

    error: ErrorBody


class RunEventMsg(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A run changed status. ``result`` is present when it completed, ``error`` when it
    failed, ``cancel_reason`` when it was cancelled."""

    run_id: str
    workflow: str
    status: RunStatus
    result: Any = msgspec.UNSET
    error: ErrorInfo | None = None
    cancel_reason: str | None = None


REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {
    "start": StartRequest,
    "get": GetRequest,
    "list": ListRequest,
    "emit": EmitRequest,
    "send": SendRequest,
    "waiting": WaitingRequest,
    "cancel": CancelRequest,
    "rewind": RewindRequest,
    "types": TypesRequest,
    "pause": PauseRequest,
    "resume": ResumeRequest,
    "cancel_many": CancelManyRequest,
}
REPLY_TYPES: dict[str, type[msgspec.Struct]] = {
    "start": StartReply,
    "get": GetReply,
    "list": ListReply,
    "emit": EmitReply,
    "send": SendReply,
    "waiting": WaitingReply,
    "cancel": CancelReply,
    "rewind": RewindReply,
    "types": TypesReply,
    "pause": GroupReply,
    "resume": GroupReply,
    "cancel_many": GroupReply,
}
# Forks and schedules: stemd._wire_schedules.
REQUEST_TYPES.update(forks_and_schedules.REQUESTS)
REPLY_TYPES.update(forks_and_schedules.REPLIES)
VERBS = tuple(REQUEST_TYPES)

_request_decoders = {verb: msgspec.json.Decoder(t) for verb, t in REQUEST_TYPES.items()}
_reply_decoders = {verb: msgspec.json.Decoder(t) for verb, t in REPLY_TYPES.items()}


class _MaybeError(msgspec.Struct, frozen=True):
    error: ErrorBody | None = None


_maybe_error = msgspec.json.Decoder(_MaybeError)
_encoder = msgspec.json.Encoder()


def decode_request(verb: str, data: bytes) -> Any:
    """Decode and validate the request of ``verb``.

    Raises:
        KeyError: ``verb`` is not a verb of the protocol.
        msgspec.DecodeError: the body is not valid JSON or not a valid request (a
            ``msgspec.ValidationError`` says which field).
    """
    try:
        return _request_decoders[verb].decode(data or b"{}")
    except RecursionError:
        raise msgspec.DecodeError("JSON is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"a string is not valid UTF-8: {exc.reason}") from None


def decode_reply(verb: str, data: bytes) -> Any:
    """Decode the reply to ``verb``: its reply type, or an :class:`ErrorReply`.

    Raises:
        msgspec.DecodeError: the reply is neither.
    """
    try:
        error = _maybe_error.decode(data).error
        if error is not None:
            return ErrorReply(error=error)
        return _reply_decoders[verb].decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"undecodable reply: {exc}") from None


def workflow_type(info: WorkflowInfo) -> WorkflowType:
    """The wire form of a registered workflow."""
    return WorkflowType(
        name=info.name,
        kind=info.kind,
        version=info.version,
        steps=list(info.steps) if info.kind == "flow" and info.steps is not None else msgspec.UNSET,
        registered_at=info.registered_at,
    )


def encode(message: Any) -> bytes:
    """Encode a request, reply or event as JSON."""
    return _encoder.encode(message)


def error_reply(code: ErrorCode, message: str) -> bytes:
    """The JSON of an error reply."""
    return _encoder.encode(ErrorReply(error=ErrorBody(code=code, message=message)))
