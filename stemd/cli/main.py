"""Entry point of the ``stemd`` command (filled in by the CLI module)."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("stemd: the command line is not installed yet")
