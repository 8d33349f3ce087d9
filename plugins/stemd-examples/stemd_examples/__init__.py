"""Example workflows for stemd, one per feature.

``stemd run`` finds this module through the ``stemd.workflows`` entry point and registers
every Flow and script bound at its top level: the names below.
"""

from __future__ import annotations

from stemd_examples.approvals import approvals
from stemd_examples.fanout import fanout, square
from stemd_examples.flaky import flaky
from stemd_examples.signup import signup

__all__ = ("approvals", "fanout", "flaky", "signup", "square")
