"""``python -m stemd``: the same as the ``stemd`` command."""

from __future__ import annotations

from stemd._cli.main import main

main()
