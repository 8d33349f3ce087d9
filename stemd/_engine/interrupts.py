"""How an execution slice stops early: :class:`Interrupt` (an outcome), :class:`Fenced`
(a refused write) and :class:`Aborted` (an outage met by user code), and how what a task
group inside user code raised is sorted out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._errors import LeaseLost, StoreError, TransportError

if TYPE_CHECKING:
    from types import TracebackType

    from stemd._store.base import Fail, Outcome

__all__ = ["Aborted", "Exhausted", "Fenced", "Interrupt", "for_user_code", "user_error"]


class Interrupt(BaseException):
    """Ends an execution slice early with an outcome (a suspension, a retry, a failure).

    A BaseException on purpose: user code's ``except Exception`` must not swallow it,
    or a suspended run would carry on as if its wait had returned.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.kind)
        self.outcome = outcome


class Fenced(BaseException):
    """A write of this slice was refused: the run's fencing token has moved on (a takeover
    after the lease expired, a cancel, a rewind), and the slice must stop.

    A BaseException on purpose: user code's ``except Exception`` must not swallow it, or a
    fenced-out worker would go on running steps, and their side effects, that the run's
    new owner runs again.
    """


class Aborted(BaseException):
    """The store or the transport failed on a call made for user code (a checkpoint, a
    child's start): the slice must stop and the run be retried later.

    A BaseException on purpose: user code's ``except Exception`` must not turn an outage
    into the failure of a step or of the run.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _ForUserCode:
    """:func:`for_user_code`'s context manager: a class, not a generator, as it is on the
    hot path (twice per step) and has no state."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, LeaseLost):
            raise Fenced(str(exc)) from None
        if isinstance(exc, (StoreError, TransportError)):
            raise Aborted(exc) from exc


_FOR_USER_CODE = _ForUserCode()


def for_user_code() -> _ForUserCode:
    """Around a store or broker call made for user code: a refused write stops the slice
    as :class:`Fenced`, an outage as :class:`Aborted`."""
    return _FOR_USER_CODE


def user_error(group: BaseExceptionGroup[BaseException]) -> Exception:
    """Sort out what a task group inside user code raised.

    A suspension raised in a child task reaches the engine wrapped in a group: re-raise
    the :class:`Interrupt` itself when nothing else went wrong. Otherwise return the
    group's errors (an ExceptionGroup without the interrupts) to be handled as the step's
    failure; anything else (a BaseException of the user's own) is re-raised as it is.
    """
    fenced, _ = group.split((Fenced, Aborted))
    if fenced is not None:
        stop: BaseException = fenced
        while isinstance(stop, BaseExceptionGroup):
            stop = stop.exceptions[0]
        raise stop from None
    interrupts, errors = group.split(Interrupt)
    if errors is None:
        leaf: BaseException | None = interrupts
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, Interrupt)
        raise leaf from None
    if isinstance(errors, Exception):
        return errors
    raise group


class Exhausted(Interrupt):
    """A step failed for good (its retries are exhausted, or its error is non-retryable):
    its outcome fails the run unless the workflow handles the failure (a script's
    ``except StepFailed``, a flow's compensations)."""

    def __init__(self, outcome: Fail) -> None:
        super().__init__(outcome)
        self.failed = outcome
