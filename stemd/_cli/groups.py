"""``stemd workflow pause|resume|cancel`` over a group of runs selected by filters
(``--topic``, ``--workflow``, ``--status``, ``--run-id``, ``--created-after``,
``--created-before``), with ``--dry-run`` to list what would change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemd._cli.output import print_json

if TYPE_CHECKING:
    import argparse

    from stemd._cli.client import Client
    from stemd._engine.groups import GroupOp

__all__ = ["add_filters", "add_new_runs", "filters_of", "run_group"]

_DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}


def add_filters(p: argparse.ArgumentParser) -> None:
    """The filters and ``--dry-run`` of a group operation."""
    group = p.add_argument_group("which runs (every filter given must hold)")
    group.add_argument("--topic", metavar="T", help="runs waiting for an event or message on T")
    group.add_argument("--workflow", metavar="W", help="runs of workflow W")
    group.add_argument("--status", metavar="S", help="runs in status S")
    group.add_argument(
        "--run-id",
        metavar="ID",
        action="append",
        dest="run_ids",
        help="this run (repeat for more)",
    )
    group.add_argument(
        "--created-after", metavar="TIME", help="runs created after TIME (ISO 8601, with zone)"
    )
    group.add_argument(
        "--created-before", metavar="TIME", help="runs created before TIME (ISO 8601, with zone)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="change nothing: list the runs that would change"
    )


def add_new_runs(p: argparse.ArgumentParser, what: str) -> None:
    """``--new-runs`` of pause and resume."""
    p.add_argument("--new-runs", action="store_true", help=f"with --workflow: {what}")


def filters_of(args: argparse.Namespace) -> dict[str, Any]:
    """The filters given on the command line, as keyword arguments."""
    names = ("run_ids", "topic", "workflow", "status", "created_after", "created_before")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


async def run_group(op: GroupOp, client: Client, args: argparse.Namespace) -> int:
    """Run the group operation ``op`` and print what it changed (or would)."""
    reason = getattr(args, "reason", None) or "cancelled by operator"
    new_runs = getattr(args, "new_runs", False)
    count, ids = await client.group(op, filters_of(args), reason, args.dry_run, new_runs)
    if args.json:
        out: dict[str, Any] = {"count": count}
        if args.dry_run:
            out.update(dry_run=True, run_ids=ids or [])
        print_json(out)
        return 0
    if not args.dry_run:
        print(f"{_DONE[op]} {count} run{'' if count == 1 else 's'}")
        return 0
    for run_id in ids or []:
        print(run_id)
    more = count - len(ids or [])
    tail = f" ({more} more not listed)" if more > 0 else ""
    print(f"would {op} {count} run{'' if count == 1 else 's'}{tail} (dry run: nothing changed)")
    return 0
