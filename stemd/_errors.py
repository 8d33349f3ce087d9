"""Errors raised by stemd.

Every error derives from :class:`StemError`::

    StemError
    ├── ConfigError          bad or unreachable configuration
    ├── PayloadError         a value that does not encode or decode
    ├── UnknownWorkflow      a workflow name nobody registered
    ├── InvalidRunId         a run id outside [A-Za-z0-9_-]{1,128}
    ├── RunNotFound          a run id the store does not know
    ├── StepNotFound         a rewind target the run never reached
    ├── StoreError           the store refused or failed an operation
    │   └── LeaseLost        a write by an owner that no longer holds the run
    ├── TransportError       the broker or NATS failed
    │   ├── PermissionDenied the NATS server refused a publish or subscription
    │   └── NoResponders     a NATS request reached nobody
    ├── EventTimeout         a ``wait_for_event`` whose timeout passed first
    ├── ChildFailed          a child workflow that failed or was cancelled
    ├── StepFailed           a step's retries were exhausted (raised in the script body)
    ├── WorkflowChanged      replay met a call other than the one the run recorded
    └── RestartBudgetExceeded  an actor crashed more often than its restart policy allows

Retryability is data (``non_retryable``), not a class tree.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ChildFailed",
    "ConfigError",
    "EventTimeout",
    "InvalidRunId",
    "LeaseLost",
    "NoResponders",
    "PayloadError",
    "PermissionDenied",
    "RestartBudgetExceeded",
    "RunEnded",
    "RunNotFound",
    "StemError",
    "StepFailed",
    "StepNotFound",
    "StoreError",
    "TransportError",
    "UnknownWorkflow",
    "WorkflowChanged",
]

#: What msgspec raises on input it cannot decode: ``DecodeError`` (and its subclass
#: ``ValidationError``), ``UnicodeDecodeError`` for a string that is not valid UTF-8, and
#: ``RecursionError`` for a value nested too deeply. Catch all three wherever bytes from
#: outside (a request, a submission, a stored record) are decoded.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError,
    UnicodeDecodeError,
    RecursionError,
)


class StemError(Exception):
    """Raised when stemd itself refuses or fails an operation (the base of all errors)."""

    non_retryable: bool = False


class ConfigError(StemError):
    """Raised when the configuration is invalid, names an unknown key or an unreachable URL."""

    non_retryable = True


class PayloadError(StemError):
    """Raised when a value does not encode, does not decode, or exceeds the size limit."""

    non_retryable = True


class UnknownWorkflow(StemError):
    """Raised when a workflow name is not registered."""

    non_retryable = True


class InvalidRunId(StemError, ValueError):
    """Raised when a run id is not 1-128 ASCII letters, digits, ``-`` or ``_``."""

    non_retryable = True


class RunNotFound(StemError, LookupError):
    """Raised when an operation names a run id that does not exist."""

    non_retryable = True


class StepNotFound(StemError, LookupError):
    """Raised when a rewind names a step that the run's workflow does not have."""

    non_retryable = True


class StoreError(StemError):
    """Raised when the store fails or refuses an operation."""


class LeaseLost(StoreError):
    """Raised when a worker writes to a run it no longer owns (a stale fencing token)."""

    non_retryable = True


class TransportError(StemError):
    """Raised when the broker or the NATS connection fails."""


class EventTimeout(StemError):
    """Raised inside a step when the timeout of its ``wait_for_event`` passed first."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"no event on topic {topic!r} before the timeout")
        self.topic = topic


class RunEnded(StemError):
    """Raised by ``send`` when the run has ended (completed, failed or cancelled): a message
    to it could never be taken."""


class ChildFailed(StemError):
    """Raised by ``wait_child`` when the child run failed or was cancelled."""

    def __init__(self, run_id: str, status: str, message: str) -> None:
        super().__init__(f"child run {run_id} {status}: {message}")
        self.run_id = run_id
        self.status = status


class StepFailed(StemError):
    """Raised at the call of a step in a script's body when the step failed for good (its
    retries were exhausted, or it raised a non-retryable error).

    The failure is recorded: a replay of the run raises it again at the same call, without
    running the step. Uncaught, the run fails with the step's error (``error``).

    Attributes:
        step: the name of the step's checkpoint (``"charge"``, ``"charge#1"``).
        error: what the step's last attempt raised (an :class:`~stemd.ErrorInfo`).
    """

    def __init__(self, step: str, error: Any) -> None:
        super().__init__(f"step {step} failed: {error.type}: {error.message}")
        self.step = step
        self.error = error


class WorkflowChanged(StemError):
    """The code of a run's workflow no longer makes the calls the run recorded: replay met
    a call (``requested``) other than the recorded one at that place (``recorded``).

    The recorded value is never returned to the other call: the run stops, its error of
    this type (code ``"workflow_changed"``) names both calls, and it is tried again now and
    then (at most a minute apart), so deploying code that matches resumes it; rewinding or
    cancelling it are the other ways out.
    """

    non_retryable = True

    def __init__(self, run_id: str, recorded: str, requested: str) -> None:
        super().__init__(
            f"run {run_id}: the workflow's code changed: the run recorded {recorded}"
            f" where the code now calls {requested}"
        )
        self.run_id = run_id
        self.recorded = recorded
        self.requested = requested


class RestartBudgetExceeded(StemError):
    """Raised by the supervisor (out of the App) when an actor crashed more often than its
    :class:`~stemd._options.RestartPolicy` allows; every actor is stopped with it."""

    non_retryable = True


class PermissionDenied(TransportError):
    """Raised when the server refused a publish or subscription: the connection's user
    lacks the permission (see docs/reference/security.md)."""

    non_retryable = True


class NoResponders(TransportError):
    """Raised when a request reached nobody: no subscriber (or no stream) on its subject."""
