"""A flow step's entries: what ``FlowContext.iteration`` is read from.

Each time a flow step suspends, the suspension is committed with one more checkpoint
``<step>@entry#<n>`` (its value: the number of the entry that suspended). A step's
iteration is then 1, plus one per such record, plus one per failed attempt (the run's
retry bookkeeping): the same in every process, deleted with the step's other checkpoints
by a rewind. An execution that ends without a commit (a crash, a lost lease, a shutdown's
give-back) leaves no record and is not counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from stemd._store.base import Checkpoint, Suspend

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["entries", "with_entry"]


def entries(names: Iterable[str], step: str) -> int:
    """How many suspensions of ``step`` are recorded among the checkpoint ``names``."""
    # A plain loop, and none at all without checkpoints: this runs before every step.
    if not names:
        return 0
    prefix = f"{step}@entry#"
    count = 0
    for name in names:
        if name.startswith(prefix):
            count += 1
    return count


def with_entry(outcome: Suspend, step: str, recorded: int, value: bytes) -> Suspend:
    """``outcome`` committing, besides its own checkpoints, the record of one more
    suspension of ``step`` (which has ``recorded`` so far)."""
    marker = Checkpoint(f"{step}@entry#{recorded}", value)
    return msgspec.structs.replace(outcome, checkpoints=(*outcome.checkpoints, marker))
