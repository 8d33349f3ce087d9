"""What `stemd run` imports before READY=1 on its embedded default (SQLite, in-process
broker, the HTTP server): not the NATS client (nats-py takes about a tenth of a second to
import on a small machine) nor jinja2 (the dashboard's templates load with its first
page)."""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "stemd._cli.main",
    "stemd._daemon",
    "stemd._store.sqlite",
    "stemd._actors.http",
    "stemd._observe",
    "stemd._web",
    "stemd._web.listing",
)


def _imported_after(modules: tuple[str, ...], wanted: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(' '.join(m for m in {wanted!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return out.stdout.split()


def test_the_embedded_daemons_modules_import_neither_nats_nor_jinja2() -> None:
    """The modules the embedded daemon imports before READY=1, each imported."""
    assert _imported_after(MODULES, ("nats", "jinja2")) == []


def test_the_dashboards_templates_load_jinja2_when_first_used() -> None:
    """The check above means something: the modules that need them do import them."""
    code = (
        "import sys\n"
        "from stemd._web.pages import Dashboard\n"
        "d = Dashboard.__new__(Dashboard); d._templates = None\n"
        "assert 'jinja2' not in sys.modules\n"
        "d.templates.get_template('overview.html')\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["True"]
    assert _imported_after(("stemd._cli.client", "stemd._natsconn"), ("nats",)) == ["nats"]
