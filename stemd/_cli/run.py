"""``stemd run``: the long-running daemon (see :mod:`stemd._daemon`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemd import _daemon as daemon

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser"]


def _run(args: argparse.Namespace) -> int:
    return daemon.main(
        args.config, app_dir=args.app_dir, verbose=args.verbose, log_drivers=args.log_drivers
    )


def add_parser(commands: Any) -> None:
    """Add ``run`` to ``commands`` (an argparse subparsers object)."""
    p: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="run the daemon until SIGTERM or SIGINT",
        description=(
            "Run the daemon: execute workflows until SIGTERM or SIGINT. With no config it "
            "runs embedded: SQLite in ./stemd.db, the in-process broker, and the workflows "
            "of installed stemd.workflows entry points (the bundled examples). Exits 1 "
            "with one line on standard error, before telling systemd it is ready, when it "
            "cannot start: a bad config, an unreachable URL, an unreadable key or "
            "certificate file, a metrics_address in use or not resolvable. `stemd -v run` "
            "logs at debug; `stemd --log-drivers debug run` also shows the libraries' lines."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="the TOML config (default: $STEMD_CONFIG)")
    p.add_argument(
        "--app-dir",
        metavar="DIR",
        help="import the workflow modules from DIR (default: the config's app_dir, else "
        "the working directory)",
    )
    p.set_defaults(handler=_run)
