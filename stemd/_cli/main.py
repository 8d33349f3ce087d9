"""Entry point of the ``stemd`` command: ``run``, ``config check`` and ``workflow …``.

Exit status: 0 success, 1 an error (one line on standard error, no traceback), 2 a usage
error; ``workflow wait`` also uses 3 (failed), 4 (cancelled) and 5 (timed out); ``run``
exits 70 when an actor crashed past its restart budget.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

from stemd import __version__
from stemd._cli import config, run, schedules, workflow
from stemd._errors import StemError
from stemd._logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main", "run_cli"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on standard error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(
        prog="stemd",
        description="stemd: a durable workflow engine. Run the daemon, or steer its runs.",
    )
    parser.add_argument("--version", action="version", version=f"stemd {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=(
            "log stemd's debug lines (client commands log to standard error and are silent "
            "otherwise; `run` logs at debug instead of its log_level)"
        ),
    )
    parser.add_argument(
        "--log-drivers",
        metavar="LEVEL",
        choices=("debug", "info", "warning", "error", "critical"),
        help=(
            "level of the libraries' own log lines (aiosqlite, nats, asyncio); default "
            "warning, or the config's log_drivers for `run`"
        ),
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    run.add_parser(commands)
    config.add_parser(commands)
    schedules.add_fork(workflow.add_parser(commands))
    schedules.add_parser(commands)
    return parser


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, return its exit status."""
    args = build_parser().parse_args(argv)
    if args.command != "run":
        # The daemon configures its own logging; a client command's only output is its
        # result, and its errors are one line each.
        level = "debug" if args.verbose else "critical"
        configure_logging(level, "console", sys.stderr, drivers=args.log_drivers)
    try:
        status: int = args.handler(args)
        return status
    except StemError as exc:
        sys.stderr.write(f"stemd: {_one_line(str(exc))}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("stemd: interrupted\n")
        return 130
    except Exception as exc:  # a bug: still one line, with what is needed to report it
        sys.stderr.write(f"stemd: internal error: {type(exc).__name__}: {_one_line(str(exc))}\n")
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def main() -> None:
    """The ``stemd`` console script."""
    sys.exit(run_cli())
