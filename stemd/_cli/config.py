"""``stemd config check``: validate a configuration and print the effective one.

It checks what ``stemd run`` checks before it says ``READY=1``: the config, the workflow
modules, every file the config names (encryption keys, NATS credentials, TLS certificates
and keys), and, unless ``--offline``, every URL and the ``http_address`` to listen on.
An ``http_address`` in use is only a warning here: it may be this config's own daemon.
"""

from __future__ import annotations

import errno
import sys
from typing import TYPE_CHECKING, Any

import anyio

from stemd._actors.http import bind_error, parse_address
from stemd._cli.output import print_json
from stemd._config import Config, load_config
from stemd._config_print import config_to_builtins, config_to_toml
from stemd._errors import ConfigError
from stemd._loading import load_workflows, use_app_dir
from stemd._natsauth import redact_url
from stemd._reachability import check_reachable

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser"]


async def _check_online(config: Config) -> list[str]:
    """Reach every URL and try ``http_address`` (or ``metrics_address``, its old name);
    return the warnings."""
    await check_reachable(config)
    if config.http is None:
        return []
    address, key = config.http
    host, port = parse_address(address, key)
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        error = bind_error(key, address, exc)
        if exc.errno != errno.EADDRINUSE:
            raise error from None
        return [
            f"{error} (fine if it is this config's running daemon; `stemd run` fails otherwise)"
        ]
    await listener.aclose()
    return []


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # also reads the [nats_auth] files
    use_app_dir(args.app_dir or config.app_dir, key="--app-dir" if args.app_dir else "app_dir")
    config.build_codecs()  # reads the encryption key files
    workflows, sources = load_workflows(config.modules, use_entry_points=config.entry_points)
    warnings: list[str] = []
    if not args.offline:
        warnings = anyio.run(_check_online, config)
    names = sorted(w.name for w in workflows)
    for i, schedule in enumerate(config.schedules):
        if schedule.workflow not in names:
            raise ConfigError(
                f"schedules[{i}]: workflow {schedule.workflow!r} is not among the loaded "
                "workflows (modules, entry points)"
            )
    effective_nats = config.effective_nats
    database = config.database
    if args.json:
        # Secrets (NATS passwords and tokens, credentials in URLs, encryption keys) are
        # masked here as in the TOML form.
        print_json(
            {
                "config": config_to_builtins(config),
                "effective_nats": None if effective_nats is None else redact_url(effective_nats),
                "database": database,
                "workflows": names,
                "sources": sources,
                "warnings": warnings,
            }
        )
    else:
        sys.stdout.write(config_to_toml(config))
        sys.stdout.write(f"\n# workflows ({len(names)}): {', '.join(names) or 'none'}\n")
        if database is not None:
            sys.stdout.write(f"# database file: {database}\n")
        if not args.offline:
            sys.stdout.write("# every URL is reachable\n")
        for warning in warnings:
            sys.stdout.write(f"# warning: {warning}\n")
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
            "workflow modules, read every key, credentials and certificate file it names, "
            "check that every URL is reachable and http_address can be bound, and print "
            "the result."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="the TOML config (default: $STEMD_CONFIG)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not try to reach the URLs nor bind http_address",
    )
    p.add_argument(
        "--app-dir",
        metavar="DIR",
        help="import the workflow modules from DIR, as `stemd run --app-dir` does",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_check)
