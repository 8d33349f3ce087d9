"""``stemd schedule list|pause|resume|trigger`` and ``stemd workflow fork``.

As the other ``workflow`` commands, each reaches the store straight (``--store``, or the
config's store) or goes through a daemon (``--nats``), and prints JSON with ``--json``.
The schedules are the ones recorded in the store by the daemons that serve them (their
config's ``[[schedules]]``); pausing, resuming and triggering one takes effect in every
daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemd import _wire_schedules as wsched
from stemd._cli.client import Client, NatsClient, StoreClient
from stemd._cli.output import print_json
from stemd._cli.workflow import _common, _out, _runner
from stemd._engine.scheduling import ScheduleNotFound
from stemd._errors import RunNotFound, StemError, StepNotFound
from stemd._model import validate_run_id

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from stemd._schedules import ScheduleInfo

__all__ = ["add_fork", "add_parser"]


# -- the operations, over either client -------------------------------------------------------


def _app_of(client: Client) -> Any:
    return client.app if isinstance(client, StoreClient) else None


async def _request(client: Client, verb: str, request: Any) -> Any:
    if not isinstance(client, NatsClient):  # pragma: no cover - only two kinds
        raise StemError("unsupported client")
    try:
        return await client._request(verb, request)
    except RunNotFound as exc:  # not_found: of a schedule, a run or a step
        if verb != "fork":
            raise ScheduleNotFound(str(exc)) from None
        if str(exc).startswith("no run "):
            raise
        raise StepNotFound(str(exc)) from None


async def fork(client: Client, run_id: str, step: str) -> str:
    """Fork ``run_id`` at ``step``; the new run's id."""
    app = _app_of(client)
    if app is not None:
        forked: str = await app.fork_run(run_id, step)
        return forked
    reply = await _request(client, "fork", wsched.ForkRequest(run_id=run_id, step=step))
    return str(reply.run_id)


async def schedules(client: Client) -> list[ScheduleInfo]:
    """Every schedule recorded in the store."""
    app = _app_of(client)
    if app is not None:
        found: list[ScheduleInfo] = await app.list_schedules()
        return found
    reply = await _request(client, "schedules", wsched.SchedulesRequest())
    return list(reply.schedules)


async def set_paused(client: Client, name: str, paused: bool) -> ScheduleInfo:
    """Pause or resume schedule ``name``; the schedule now."""
    app = _app_of(client)
    if app is not None:
        done: ScheduleInfo = await (app.pause_schedule if paused else app.resume_schedule)(name)
        return done
    verb = "pause_schedule" if paused else "resume_schedule"
    reply = await _request(client, verb, wsched.ScheduleNameRequest(name=name))
    return reply.schedule  # type: ignore[no-any-return]


async def trigger(client: Client, name: str, run_id: str | None) -> str:
    """Start a run of schedule ``name`` now; its id."""
    app = _app_of(client)
    if app is not None:
        started: str = await app.trigger_schedule(name, run_id)
        return started
    reply = await _request(
        client, "trigger_schedule", wsched.TriggerRequest(name=name, run_id=run_id)
    )
    return str(reply.run_id)


# -- the commands -----------------------------------------------------------------------------


def _time(at: Any) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S%z")


def _table(found: list[ScheduleInfo]) -> str:
    if not found:
        return "no schedules: no daemon with [[schedules]] has run with this store yet\n"
    rows = [("NAME", "WORKFLOW", "CRON", "TIMEZONE", "STATE", "LAST TICK", "NEXT TICK", "LAST RUN")]
    for s in found:
        state = "paused" if s.paused else "active"
        rows.append(
            (
                s.name,
                s.workflow,
                s.cron,
                s.timezone,
                state,
                _time(s.last_tick),
                _time(s.next_tick),
                s.last_run_id or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


async def _fork(client: Client, args: argparse.Namespace) -> int:
    forked = await fork(client, validate_run_id(args.run_id), args.step)
    if args.json:
        print_json({"run_id": forked})
    else:
        _out(f"forked run {args.run_id} at step {args.step} into run {forked}")
    return 0


async def _list(client: Client, args: argparse.Namespace) -> int:
    found = await schedules(client)
    if args.json:
        print_json({"schedules": found})
    else:
        _out(_table(found))
    return 0


async def _pause(client: Client, args: argparse.Namespace) -> int:
    done = await set_paused(client, args.name, True)
    if args.json:
        print_json({"schedule": done})
    else:
        _out(f"paused schedule {done.name}: its ticks start nothing until it is resumed")
    return 0


async def _resume(client: Client, args: argparse.Namespace) -> int:
    done = await set_paused(client, args.name, False)
    if args.json:
        print_json({"schedule": done})
    else:
        _out(f"resumed schedule {done.name}; next tick {_time(done.next_tick)}")
    return 0


async def _trigger(client: Client, args: argparse.Namespace) -> int:
    run_id = None if args.run_id is None else validate_run_id(args.run_id)
    started = await trigger(client, args.name, run_id)
    if args.json:
        print_json({"run_id": started})
    else:
        _out(f"triggered schedule {args.name}: run {started}")
    return 0


def add_fork(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``workflow fork`` with ``add`` (the ``workflow`` group's subcommand maker)."""
    p = add(
        "fork",
        _fork,
        "start a new run from a run's checkpoints before a step (the run is not changed)",
        code=True,
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--step", metavar="NAME", required=True, help="the first step the fork runs")
    _common(p)


def add_parser(commands: Any) -> None:
    """Add ``schedule`` and its subcommands to ``commands`` (an argparse subparsers object)."""
    group = commands.add_parser("schedule", help="list, pause, resume and trigger schedules")
    sub = group.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def add(name: str, command: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=_runner(command))
        return p

    p = add("list", _list, "list the schedules daemons serve, with their state and next tick")
    _common(p)
    p = add("pause", _pause, "pause a schedule: its ticks start nothing (in every daemon)")
    p.add_argument("name", metavar="NAME")
    _common(p)
    p = add("resume", _resume, "resume a paused schedule from now on (no catch-up of the pause)")
    p.add_argument("name", metavar="NAME")
    _common(p)
    p = add("trigger", _trigger, "start a run of a schedule now, out of its ticks")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--run-id", metavar="ID", help="the run's id (an existing id starts nothing)")
    _common(p)
