"""Start-up: `stemd run` from spawn to READY=1 on a fresh SQLite file, the daemon's
embedded default (in-process broker, the bundled bench workflows), N starts.

    python bench/startup.py --starts 15
    python bench/startup.py --starts 15 --http off
    python bench/compare.py HEAD~1 HEAD --rounds 5 -- bench/startup.py --starts 5
    python bench/compare.py 3e764f3 HEAD --rounds 5 -- bench/startup.py --starts 5 --http default

Each start is timed as systemd sees it: from the spawn of the process (interpreter and
imports included) to its ``READY=1`` on ``NOTIFY_SOCKET``. Bytecode is written and used,
as an installed package's is (compiled at install time): one unmeasured start first
compiles the checkout's modules, and ``PYTHONDONTWRITEBYTECODE`` is not passed on (with it,
every start would compile every module of stemd again). Prints one line and a JSON
summary (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

# Appended, not first: run by bench/compare.py for an older revision, the revision's own
# bench.daemons (and so its stemd) comes first on PYTHONPATH.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.daemons import Daemon, write_config


def start_once(http: str) -> float:
    """Seconds from spawn to READY=1 of one daemon on a fresh SQLite file."""
    with tempfile.TemporaryDirectory(prefix="stemd-startup-") as tmp:
        path = Path(tmp)
        keys = {
            "modules": ["bench.workflows"],
            "entry_points": False,
            "store": f"sqlite:///{path / 'stemd.db'}",
            "log_format": "json",
            "log_level": "warning",
        }
        if http == "off":
            keys["http_address"] = "off"
        elif http == "default":
            keys["http_address"] = "default"  # (removed below: the revision's default)
        config = write_config(path / "stemd.toml", **keys)
        if http == "default":
            lines = config.read_text().splitlines(keepends=True)
            config.write_text("".join(x for x in lines if not x.startswith("http_address")))
        daemon = Daemon(config, path / "daemon.log")
        try:
            return daemon.start()
        finally:
            daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=15, help="measured starts")
    parser.add_argument(
        "--http",
        choices=("on", "off", "default"),
        default="on",
        help="the HTTP server on a free port, off, or as the revision has it by default "
        "(the first version had none; it is on since the dashboard)",
    )
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    http = args.http
    start_once(http)  # compiles the modules' bytecode
    times = [1000 * start_once(http) for _ in range(args.starts)]
    summary = {
        "ready_ms_median": round(statistics.median(times), 1),
        "ready_ms_min": round(min(times), 1),
        "ready_ms_max": round(max(times), 1),
    }
    print(
        f"spawn to READY=1 ({args.starts} starts, HTTP {args.http}): median "
        f"{summary['ready_ms_median']:.0f} ms, min {summary['ready_ms_min']:.0f}, "
        f"max {summary['ready_ms_max']:.0f}",
        flush=True,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
