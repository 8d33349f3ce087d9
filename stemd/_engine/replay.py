"""Replay that checks what it replays.

A run's checkpoints are kept in the order they were written. Within one scope (a script's
body, or one step) the calls that record something are made in a fixed order, so the
n-th such call of a replay must be the one the run recorded n-th: same kind and same key
(a step's name and occurrence, a wait's kind and count). The recorded value carries the
rest of the call's identity (an event's topic, a child's workflow and id), checked by the
call itself. A flow's steps are checked the same way: the n-th step value recorded must
be the flow's n-th declared step, and every step the run recorded something in must
still be declared.

A mismatch never returns the recorded value: the slice ends with the run given back for
later (:func:`changed_outcome`), its error a :class:`~stemd.WorkflowChanged` naming the
recorded and the requested call. The check costs no store write: it reads the order the
store keeps anyway.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from stemd._engine.interrupts import Interrupt
from stemd._errors import WorkflowChanged
from stemd._model import WORKFLOW_CHANGED_CODE, ErrorInfo, Retry
from stemd._store.base import RetryLater

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

    from stemd._store.base import Checkpoint, RunRecord

__all__ = ["CHANGED_RETRY", "Replay", "changed_outcome", "describe", "failed_key", "place"]

# A run stopped by a code change is tried again after 1 s, 2 s, 4 s... at most a minute
# apart: deploying code that matches it resumes it without anyone touching it.
CHANGED_RETRY = Retry(backoff=1.0, max_backoff=60.0, jitter=False)

# Internal records that are not calls: a flow step's entry count, a compensation's value.
_NOT_CALLS = frozenset({"entry", "undo"})
_WORDS = {
    "event": "wait_for_event",
    "any": "wait_for_any",
    "sleep": "sleep",
    "child": "start_child",
    "join": "wait_child",
    "patch": "patched",
    "failed": "failed step",
}


def failed_key(key: str) -> str:
    """The checkpoint recording that the step called ``key`` failed for good."""
    return f"{key}@failed#0"


def place(name: str) -> tuple[str, str] | None:
    """(scope, call) of a recorded checkpoint: the scope it was called in (``""``: a
    script's body, or a flow's steps) and the key of the call; ``None`` for a record that
    is no call. A step's failure holds the place of the step's call."""
    head, at, rest = name.partition("@")
    if not at:
        return "", name
    kind = rest.partition("#")[0]
    if kind in _NOT_CALLS:
        return None
    if kind == "failed":
        return "", head
    return head, name


def describe(key: str) -> str:
    """A recorded call, from its checkpoint key, as people read it."""
    head, at, rest = key.partition("@")
    if not at:
        return f"step {key!r}"
    kind = rest.partition("#")[0]
    where = f" in step {head!r}" if head else ""
    return f"{_WORDS.get(kind, kind)} (checkpoint {key!r}){where}"


def changed_outcome(rec: RunRecord, now: datetime, exc: WorkflowChanged) -> RetryLater:
    """The run given back until code that matches its record takes it (or it is rewound
    or cancelled): tried again after a backoff, its error saying what changed."""
    before = rec.error
    tries = 1
    if before is not None and before.code == WORKFLOW_CHANGED_CODE:
        tries = (before.attempts or 0) + 1
    return RetryLater(
        step=None,
        failures=0,
        resume_at=now + timedelta(seconds=CHANGED_RETRY.delay(tries)),
        error=ErrorInfo(
            type="WorkflowChanged",
            message=str(exc),
            attempts=tries,
            code=WORKFLOW_CHANGED_CODE,
        ),
    )


class Replay:
    """The recorded calls of one run, by scope and in order, and how far a slice's replay
    has come in each scope."""

    __slots__ = ("_next", "_now", "heads", "record", "sequences")

    def __init__(
        self, record: RunRecord, checkpoints: Iterable[Checkpoint], now: Callable[[], datetime]
    ) -> None:
        self.record = record
        self._now = now
        self.sequences: dict[str, list[str]] = {}
        # The steps the run recorded anything in besides their values (waits, entries...).
        self.heads: set[str] = set()
        for cp in checkpoints:
            head, at, _ = cp.name.partition("@")
            if at and head:
                self.heads.add(head)
            placed = place(cp.name)
            if placed is not None:
                self.sequences.setdefault(placed[0], []).append(placed[1])
        self._next: dict[str, int] = {}

    def stop(self, recorded: str, requested: str) -> Interrupt:
        """The interrupt that ends the slice: the code changed under the run."""
        exc = WorkflowChanged(self.record.run_id, recorded, requested)
        return Interrupt(changed_outcome(self.record, self._now(), exc))

    def take(self, scope: str, key: str, requested: str) -> None:
        """Check that the next call of ``scope``, ``key`` (``requested`` for people), is the
        one the run recorded at that place, if any; move past it.

        Raises:
            Interrupt: it is not (the run stops with a WorkflowChanged error).
        """
        n = self._next.get(scope, 0)
        seq = self.sequences.get(scope)
        if seq is not None and n < len(seq) and seq[n] != key:
            raise self.stop(describe(seq[n]), requested)
        self._next[scope] = n + 1

    def passed(self, scope: str) -> bool:
        """Whether the run recorded a call of ``scope`` at or after the next place: it went
        past this point of the code before."""
        return self._next.get(scope, 0) < len(self.sequences.get(scope, ()))

    def check_steps(self, workflow: str, declared: Callable[[str], bool]) -> None:
        """Check that every step the run recorded something in (or is retrying) is still
        declared by the flow ``workflow``.

        Raises:
            Interrupt: one is not.
        """
        retrying = (self.record.attempt_step or "").partition("@")[0]
        if not (self.heads or self.sequences or retrying):
            return  # nothing recorded yet (a run's first slice): nothing to check
        recorded = set(self.heads)
        recorded.update(self.sequences.get("", ()))
        if retrying:
            recorded.add(retrying)
        for step in sorted(recorded):
            if not declared(step):
                raise self.stop(
                    f"step {step!r}", f"flow {workflow!r}, which declares no step {step!r}"
                )
