"""``stemd config check``: validate a configuration and print the effective one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from stemd.cli.output import print_json
from stemd.config import config_to_builtins, config_to_toml, load_config
from stemd.loading import load_workflows, use_app_dir
from stemd.natsauth import redact_url
from stemd.reachability import check_reachable

__all__ = ["add_parser"]


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    use_app_dir(args.app_dir or config.app_dir, key="--app-dir" if args.app_dir else "app_dir")
    workflows, sources = load_workflows(config.modules, use_entry_points=config.entry_points)
    if not args.offline:
        anyio.run(check_reachable, config)
    names = sorted(w.name for w in workflows)
    effective_nats = config.effective_nats
    if args.json:
        # Secrets (NATS passwords and tokens, credentials in URLs, encryption keys) are
        # masked here as in the TOML form.
        print_json(
            {
                "config": config_to_builtins(config),
                "effective_nats": None if effective_nats is None else redact_url(effective_nats),
                "workflows": names,
                "sources": sources,
            }
        )
    else:
        sys.stdout.write(config_to_toml(config))
        sys.stdout.write(f"\n# workflows ({len(names)}): {', '.join(names) or 'none'}\n")
        if not args.offline:
            sys.stdout.write("# every URL is reachable\n")
    return 0


def add_parser(commands: Any) -> None:
    """Add ``config`` and its subcommands to ``commands`` (an argparse subparsers object)."""
    group = commands.add_parser("config", help="check the configuration")
    sub = group.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="validate a config and print the effective configuration",
        description=(
            "Read the config (--config or $STEMD_CONFIG) and STEMD_* variables, import the "
            "workflow modules, check that every URL is reachable, and print the result."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="the TOML config (default: $STEMD_CONFIG)")
    p.add_argument("--offline", action="store_true", help="do not try to reach the URLs")
    p.add_argument(
        "--app-dir",
        metavar="DIR",
        help="import the workflow modules from DIR, as `stemd run --app-dir` does",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_check)
