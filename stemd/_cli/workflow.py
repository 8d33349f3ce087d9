"""``stemd workflow …``: start, inspect, emit to, cancel, wait for and rewind runs, and
list the workflows daemons serve.

Every command reaches runs either through a daemon (``--nats URL`` or ``--http URL``) or
straight through the store (``--store URL``, or the store of ``--config``/``STEMD_*``,
default ``sqlite:///./stemd.db``), and prints JSON with ``--json``. Only ``start`` creates a
SQLite store that is not there; only ``start`` and ``rewind`` import workflow modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec

from stemd._cli.auth import auth_flags, auth_of
from stemd._cli.client import Client, open_client
from stemd._cli.groups import add_filters, add_new_runs, filters_of, run_group
from stemd._cli.http_client import HttpClient
from stemd._cli.live import exit_status, list_window, print_wait, wait_with_progress, watch
from stemd._cli.output import print_json, run_detail, runs_table, types_table
from stemd._config import Config, load_config
from stemd._errors import DECODE_ERRORS, ConfigError, PayloadError, RunNotFound, StemError
from stemd._loading import Workflow, load_workflows, use_app_dir
from stemd._model import CancellationPolicy, RunPage, RunStatus, seconds, validate_run_id

__all__ = ["EXIT_CANCELLED", "EXIT_FAILED", "EXIT_TIMED_OUT", "add_parser"]

EXIT_FAILED = 3  # `wait`: the run failed
EXIT_CANCELLED = 4  # `wait`: the run was cancelled
EXIT_TIMED_OUT = 5  # `wait`: the timeout passed first

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def _json_arg(name: str, raw: str | None) -> Any:
    """Decode a ``--params``/``--payload`` value: JSON text, ``@FILE``, or ``-`` (stdin).

    The JSON is decoded from bytes as given (argv, the file, stdin), so text that is not
    UTF-8 is a clear error, not a crash.
    """
    if raw is None:
        return None
    if raw == "-":
        data = sys.stdin.buffer.read()
    elif raw.startswith("@"):
        try:
            data = Path(raw[1:]).read_bytes()
        except OSError as exc:
            raise PayloadError(f"{name}: cannot read {raw[1:]}: {exc.strerror}") from None
    else:
        data = os.fsencode(raw)
    try:
        return msgspec.json.decode(data)
    except DECODE_ERRORS as exc:
        raise PayloadError(f"{name} is not valid JSON: {exc}") from None


def _seconds(text: str) -> float:
    """An argparse type: a duration in seconds, finite, not negative, at most 100 years."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    try:
        value = seconds(number, "value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(exc).removeprefix('value ')}") from None
    assert value is not None
    return value


def _out(message: str) -> None:
    sys.stdout.write(message if message.endswith("\n") else message + "\n")


def _err(message: str) -> None:
    sys.stderr.write(f"stemd: {message}\n")


# -- the commands -----------------------------------------------------------------------------


async def _start(client: Client, args: argparse.Namespace) -> int:
    params = _json_arg("--params", args.params)
    policy = None
    if args.max_run_duration is not None or args.max_suspend_duration is not None:
        try:
            policy = CancellationPolicy(
                max_run_duration=args.max_run_duration,
                max_suspend_duration=args.max_suspend_duration,
            )
        except (TypeError, ValueError) as exc:
            raise StemError(f"policy: {exc}") from None
    run_id, created = await client.start(
        args.name,
        params,
        args.run_id,
        policy,
        force=args.force,
        ttl=args.ttl,
        parent=args.parent,
        dedup_key=args.dedup_key,
        priority=args.priority,
    )
    if args.json:
        print_json({"run_id": run_id, "created": created})
    elif created:
        _out(f"started {args.name} run {run_id}")
    elif args.dedup_key is not None and args.run_id != run_id:
        _out(f"run {run_id} was started with dedup key {args.dedup_key}; nothing started")
    else:
        _out(f"run {run_id} already exists; nothing started")
    return 0


async def _get(client: Client, args: argparse.Namespace) -> int:
    run = await client.get(validate_run_id(args.run_id))
    if run is None:
        raise RunNotFound(f"no run {args.run_id}")
    if args.json:
        print_json({"run": run})
    else:
        _out(run_detail(run))
    return 0


def _print_page(page: RunPage, as_json: bool) -> None:
    if as_json:
        # As the wire's reply: "next" only when there is a next page.
        more = {} if page.next is None else {"next": page.next}
        print_json({"runs": page.runs, **more})
        return
    _out(runs_table(page.runs))
    if page.next is not None:
        _out(f"more: --after {page.next}")


async def _list(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise StemError("--limit must be a positive integer")
    if args.since or args.until:
        page = await list_window(client, args)
    else:
        page = await client.list_runs(args.workflow, args.status, args.limit, args.after)
    _print_page(page, args.json)
    return 0


async def _emit(client: Client, args: argparse.Namespace) -> int:
    payload = _json_arg("--payload", args.payload)
    resumed = await client.emit(args.topic, payload, args.retain)
    if args.json:
        print_json({"resumed": resumed})
    else:
        _out(f"resumed {resumed} run{'s' if resumed != 1 else ''} waiting on {args.topic}")
    return 0


async def _send(client: Client, args: argparse.Namespace) -> int:
    payload = _json_arg("--payload", args.payload)
    accepted = await client.send(validate_run_id(args.run_id), args.topic, payload, args.key)
    if args.json:
        print_json({"accepted": accepted})
    elif accepted:
        _out(f"sent {args.topic} to run {args.run_id}")
    else:
        _out(f"a message with key {args.key} was sent to run {args.run_id} before; nothing sent")
    return 0


async def _waiting(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise StemError("--limit must be a positive integer")
    _print_page(await client.waiting(args.topic, args.limit, args.after), args.json)
    return 0


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    if filters_of(args) or args.dry_run:
        if args.run_id is not None:
            raise StemError("give RUN_ID or filters, not both (--run-id ID is a filter)")
        return await run_group("cancel", client, args)
    if args.run_id is None:
        raise StemError("give RUN_ID, or filters naming the runs to cancel")
    cancelled = await client.cancel(validate_run_id(args.run_id), args.reason)
    if args.json:
        print_json({"cancelled": cancelled})
    elif cancelled:
        _out(f"cancelled run {args.run_id}")
    else:
        _err(f"run {args.run_id} not cancelled: no such run, or it has already ended")
    return 0 if cancelled else 1


async def _wait(client: Client, args: argparse.Namespace) -> int:
    run_id = validate_run_id(args.run_id)
    if not args.json and sys.stderr.isatty():
        run, timed_out = await wait_with_progress(client, run_id, args.timeout)
    else:
        run, timed_out = await client.wait(run_id, args.timeout)
    print_wait(run, timed_out, args)
    return exit_status(run, timed_out, EXIT_TIMED_OUT)


async def _types(client: Client, args: argparse.Namespace) -> int:
    workflows = await client.types()
    if args.json:
        print_json({"workflows": workflows})
    else:
        _out(types_table(workflows))
    return 0


async def _rewind(client: Client, args: argparse.Namespace) -> int:
    rewound = await client.rewind(validate_run_id(args.run_id), args.step)
    if args.json:
        print_json({"rewound": rewound})
    elif rewound:
        _out(f"rewound run {args.run_id} to step {args.step}; it resumes from there")
    else:
        _err(f"run {args.run_id} not rewound: no such run")
    return 0 if rewound else 1


# -- wiring -----------------------------------------------------------------------------------


def _workflows(args: argparse.Namespace, code: bool) -> tuple[list[Workflow], str, str, Config]:
    """The workflows to validate starts against, the store URL, the subject prefix, and
    the configuration (whose codec reads the store's values, encrypted ones included).

    For a command that needs the workflows' code (``code``: ``start`` and ``rewind``) with
    a config (``--config``, ``STEMD_CONFIG`` or ``STEMD_MODULES``) and a store, its modules
    and entry points are loaded (from the app directory, as the daemon does) and an
    unknown workflow name or step is refused here. Without one, ``start`` checks the name
    against the workflows daemons registered in the store. Other commands import nothing.
    """
    has_config = bool(
        args.config or os.environ.get("STEMD_CONFIG") or os.environ.get("STEMD_MODULES")
    )
    config = load_config(args.config, check_auth=False)  # checked with the flags: auth_of
    workflows: list[Workflow] = []
    if code and has_config and args.nats is None and args.http is None:
        use_app_dir(config.app_dir)
        workflows, _ = load_workflows(config.modules, use_entry_points=config.entry_points)
    return workflows, config.store, config.prefix, config


def _runner(
    command: Command, *, code: bool = False, creates: bool = False
) -> Callable[[argparse.Namespace], int]:
    """The handler running ``command``: ``code`` if it needs the workflows' code,
    ``creates`` if it may create a SQLite store (``start``, when it knows the workflow
    from the config's modules or is forced: no daemon can have registered anything in a
    store that is not there). Otherwise a missing file is refused, naming it, and none is
    created."""

    def run(args: argparse.Namespace) -> int:
        workflows, store, prefix, config = _workflows(args, code)
        given = [f"--{k}" for k in ("store", "nats", "http") if getattr(args, k) is not None]
        if len(given) > 1:
            both = "both" if len(given) == 2 else "all of"
            raise ConfigError(
                f"give one of --store, --nats or --http, not {both} {' and '.join(given)}"
            )
        auth = auth_of(args, config)
        create = creates and (bool(workflows) or getattr(args, "force", False))
        missing = "; or pass --force to create it and start the run" if creates else ""

        async def main() -> int:
            if args.http is not None:
                token = args.http_token or os.environ.get("STEMD_HTTP_TOKEN")
                return await command(
                    HttpClient(args.http, token, timeout=args.request_timeout), args
                )
            async with open_client(
                store=args.store or store,
                nats_url=args.nats,
                workflows=workflows,
                prefix=args.prefix or prefix,
                timeout=args.request_timeout,
                codecs=config.build_codecs(),
                auth=auth,
                create_store=create,
                missing_hint=missing,
                event_retention=config.event_retention,
            ) as client:
                return await command(client, args)

        return anyio.run(main)

    return run


def _common(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("where the runs are (default: the config's store)")
    where.add_argument("--store", metavar="URL", help="straight to this store (no daemon needed)")
    where.add_argument("--nats", metavar="URL", help="through the daemon serving this NATS")
    where.add_argument("--http", metavar="URL", help="through this daemon's HTTP API")
    where.add_argument(
        "--http-token", metavar="TOKEN", help="its bearer token (prefer STEMD_HTTP_TOKEN)"
    )
    where.add_argument("--config", metavar="FILE", help="read store, prefix and modules here")
    where.add_argument("--prefix", metavar="P", help="NATS subject prefix (default: stem)")
    where.add_argument(
        "--request-timeout",
        metavar="S",
        type=_seconds,
        default=5.0,
        help="seconds to wait for a NATS reply or connection (default: 5)",
    )
    auth_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")


def add_parser(commands: Any) -> Callable[..., argparse.ArgumentParser]:
    """Add ``workflow`` and its subcommands to ``commands`` (an argparse subparsers object);
    return the function that adds one more (``name, command, help, code=, creates=``)."""
    group = commands.add_parser("workflow", help="start, inspect and steer runs")
    sub = group.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def add(
        name: str, command: Command, help: str, *, code: bool = False, creates: bool = False
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=_runner(command, code=code, creates=creates))
        return p

    p = add("start", _start, "start a run of a workflow", code=True, creates=True)
    p.add_argument("name", metavar="NAME", help="the workflow's name")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --store: start it even though no daemon has registered this workflow in "
        "the store (a deliberate start before its daemon first runs)",
    )
    p.add_argument("--params", metavar="JSON", help="the run's params (JSON, @FILE or -)")
    p.add_argument("--run-id", metavar="ID", help="the run's id (an existing id starts nothing)")
    p.add_argument("--max-run-duration", metavar="S", type=_seconds, help="cancel after S seconds")
    p.add_argument(
        "--max-suspend-duration", metavar="S", type=_seconds, help="cancel if suspended S seconds"
    )
    p.add_argument(
        "--ttl", metavar="S", type=_seconds, help="delete the run S seconds after it ends"
    )
    p.add_argument("--parent", metavar="RUN_ID", help="start it as a child of this run")
    p.add_argument(
        "--dedup-key",
        metavar="KEY",
        help="start nothing if a live run of the workflow was started with KEY within its "
        "dedup window (its id is printed)",
    )
    p.add_argument(
        "--priority",
        metavar="N",
        type=int,
        default=0,
        help="-1000..1000: among runs waiting for a slot of a concurrency limit, higher first",
    )
    _common(p)

    p = add("get", _get, "show a run and its checkpoint timeline")
    p.add_argument("run_id", metavar="RUN_ID")
    _common(p)

    p = add("list", _list, "list runs, newest first")
    p.add_argument("--workflow", metavar="W", help="only runs of this workflow")
    p.add_argument(
        "--status", metavar="S", help="only runs in this status (" + ", ".join(RunStatus) + ")"
    )
    p.add_argument("--limit", metavar="N", type=int, default=100, help="at most N runs (100)")
    p.add_argument("--after", metavar="CURSOR", help="the next page: the cursor a page printed")
    p.add_argument("--since", metavar="T", help="only runs created since T (15m, 2h, ISO time)")
    p.add_argument("--until", metavar="T", help="only runs created before T (age or ISO time)")
    _common(p)

    p = add(
        "emit",
        _emit,
        "emit an event on a topic: every run waiting on it takes it now, and runs that wait "
        "on it later take it within the retention",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--payload", metavar="JSON", help="the event's payload (JSON, @FILE or -)")
    p.add_argument(
        "--retain",
        metavar="S",
        type=_seconds,
        help="keep the event S seconds for later waits (default: the daemon's or config's "
        "event_retention; 0: only the runs waiting now get it)",
    )
    _common(p)

    p = add(
        "send",
        _send,
        "send a message to one run: its next wait on the topic takes it (at once if it waits now)",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--payload", metavar="JSON", help="the message's payload (JSON, @FILE or -)")
    p.add_argument(
        "--key",
        metavar="K",
        help="make the send idempotent: a second send with this key to this run sends nothing",
    )
    _common(p)

    p = add("waiting", _waiting, "list the runs waiting on a topic, oldest first")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--limit", metavar="N", type=int, default=1000, help="at most N runs (1000)")
    p.add_argument("--after", metavar="CURSOR", help="the next page: the cursor a page printed")
    _common(p)

    p = add("cancel", _cancel, "cancel a run, or every run the filters select (and children)")
    p.add_argument("run_id", metavar="RUN_ID", nargs="?")
    p.add_argument("--reason", metavar="R", default="cancelled by operator")
    add_filters(p)
    _common(p)

    p = add("pause", partial(run_group, "pause"), "pause every run the filters select")
    add_filters(p)
    add_new_runs(p, "the workflow's new runs start paused too")
    _common(p)

    p = add("resume", partial(run_group, "resume"), "resume every paused run the filters select")
    add_filters(p)
    add_new_runs(p, "the workflow's new runs no longer start paused")
    _common(p)

    p = add(
        "wait",
        _wait,
        "wait for a run to end; exit 0 if it completed, 3 failed, 4 cancelled, 5 timed out",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--timeout", metavar="S", type=_seconds, help="give up after S seconds")
    _common(p)

    p = add("watch", watch, "follow a run's timeline as it advances, until it ends")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--timeout", metavar="S", type=_seconds, help="give up after S seconds")
    _common(p)

    p = add(
        "rewind", _rewind, "re-run a run from a step on (its checkpoints are deleted)", code=True
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--step", metavar="NAME", required=True, help="the first step to re-run")
    _common(p)

    p = add(
        "types",
        _types,
        "list the workflows daemons have registered: name, kind, version, a flow's steps",
    )
    _common(p)
    return add
