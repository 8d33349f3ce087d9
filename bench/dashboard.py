"""The dashboard's cost: throughput with a run list open, and page times on a big store.

    python bench/dashboard.py throughput            # embedded throughput, list open vs not
    python bench/dashboard.py pages --db /tmp/1m.db # page times on a 1,000,000-run store

**throughput** measures what ``bench/embedded.py`` measures (runs of the 3-step flow
started by 64 tasks on a SQLite store, first start to last completion), with the HTTP
server of the daemon in the App each time, alternately with and without a dashboard open
on the run list: a separate process connected to ``/events/runs`` (server-sent events)
that fetches ``/runs`` again on each ``changed``, as the page's script does. It prints
the median of ``--repeat`` measurements of each, and the difference.

**pages** fills a SQLite file with ``--runs`` finished runs (bulk INSERTs, as
``bench/embedded.py --prefill`` does; kept in ``--db`` for the next time), opens an App
on it with the HTTP server, and times each page of the dashboard ``--samples`` times
(after one warm-up), printing the median and the worst in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stemd
from bench.embedded import prefill
from bench.workflows import three_steps
from stemd._actors.http import HttpEndpoint
from stemd._web import Web
from stemd._web.listing import RunLister

flow = three_steps

# The dashboard open on the run list: follows /events/runs, fetches /runs on each change.
_VIEWER = r"""
import sys, urllib.request
base, log = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(base + "/events/runs", timeout=600) as stream:
    for line in stream:
        if line.startswith(b"event: changed"):
            urllib.request.urlopen(base + "/runs", timeout=30).read()
            with open(log, "a") as out:
                out.write("fetched\n")
"""


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _served(port: int) -> Any:
    def factory(app: stemd.App) -> HttpEndpoint:
        web = Web(app, observers=app.engine.observers, lister=RunLister(app.store, app.codec))
        return HttpEndpoint(web.asgi, f"127.0.0.1:{port}", on_stop=web.close)

    return factory


async def throughput(url: str, runs: int, viewer: bool) -> tuple[float, float, int]:
    """Workflows/s for ``runs`` runs, the daemon's CPU µs per workflow, and how many times
    the open list was fetched."""
    port = _port()
    async with stemd.App(store=url, workflows=[flow], actors=[_served(port)]) as app:
        finished = 0
        all_done = anyio.Event()

        def on_event(event: Any, raw: bytes | None) -> None:
            nonlocal finished
            if event.status.is_terminal:
                finished += 1
                if finished == runs:
                    all_done.set()

        stop = app.engine.events.listen(on_event)
        proc = None
        log = Path(url.removeprefix("sqlite:///")).with_suffix(".viewer")
        if viewer:
            argv = [sys.executable, "-c", _VIEWER, f"http://127.0.0.1:{port}", str(log)]
            proc = await anyio.open_process(argv, stdout=subprocess.DEVNULL)
            await anyio.sleep(1.0)  # connected and idle before the clock starts

        async def client(n: int) -> None:
            for _ in range(n):
                await app.start_workflow(flow)

        started = time.perf_counter()
        cpu_started = time.process_time()
        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(client, runs // 64 + (1 if i < runs % 64 else 0))
        with anyio.fail_after(600):
            await all_done.wait()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stop()
        fetched = 0
        if proc is not None:
            proc.terminate()
            await proc.wait()
            fetched = len(log.read_text().split()) if log.exists() else 0
    return runs / elapsed, 1e6 * cpu / runs, fetched


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    without: list[float] = []
    with_list: list[float] = []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    fetches: list[int] = []
    for i in range(args.repeat):
        for viewer in (False, True) if i % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/bench.db"
                rate, us, fetched = anyio.run(throughput, url, args.runs, viewer)
            (with_list if viewer else without).append(rate)
            cpu[viewer].append(us)
            if viewer:
                fetches.append(fetched)
            label = "list open" if viewer else "no page  "
            extra = f" ({fetched} list fetches)" if viewer else ""
            print(
                f"  {label} {rate:8,.0f} workflows/s {us:6.0f} µs CPU/workflow{extra}", flush=True
            )
    a, b = statistics.median(without), statistics.median(with_list)
    summary = {
        "runs": args.runs,
        "repeat": args.repeat,
        "without_median": round(a, 1),
        "with_list_open_median": round(b, 1),
        "difference_percent": round(100 * (b - a) / a, 2),
        "cpu_us_per_workflow_without": round(statistics.median(cpu[False]), 1),
        "cpu_us_per_workflow_with_list_open": round(statistics.median(cpu[True]), 1),
        "list_fetches_median": statistics.median(fetches),
    }
    print(
        f"throughput, median of {args.repeat}: {a:,.0f} without, {b:,.0f} with the run list "
        f"open ({summary['difference_percent']:+.2f} %)"
    )
    return summary


def _time(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        reply.read()
        assert reply.status == 200, url
    return (time.perf_counter() - started) * 1000


async def pages(db: Path, samples: int) -> dict[str, Any]:
    port = _port()
    base = f"http://127.0.0.1:{port}"
    async with stemd.App(store=f"sqlite:///{db}", workflows=[flow], actors=[_served(port)]) as app:
        newest = (await app.list_runs(limit=1))[0].run_id
        paths = {
            "runs list (/runs)": "/runs",
            "runs list, completed": "/runs?status=completed",
            "runs list, workflow": "/runs?workflow=bench.flow",
            "runs list, page 2": "/runs?after=" + str((await app.page_runs(limit=50)).next),
            "runs list, since 1h": "/runs?since=1h",
            "overview (/)": "/",
            "run detail": f"/runs/{newest}",
            "search by run id": f"/runs?q={newest}",
            "topics": "/topics",
            "workflows": "/workflows",
            "API list": "/api/runs?limit=50",
        }
        out = {}
        for name, path in paths.items():
            url = base + path
            if name == "search by run id":
                url = base + f"/runs/{newest}"  # where the search sends the browser
            times = []
            await anyio.to_thread.run_sync(_time, url)  # warm up
            for _ in range(samples):
                times.append(await anyio.to_thread.run_sync(_time, url))
            out[name] = {
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
            }
            median, worst = statistics.median(times), max(times)
            print(f"  {name:<24} median {median:7.1f} ms   worst {worst:7.1f} ms", flush=True)
    return out


def run_pages(args: argparse.Namespace) -> dict[str, Any]:
    db = args.db or Path(tempfile.mkdtemp()) / "dashboard.db"
    took = prefill(db, args.runs)
    print(f"store: {args.runs:,} runs in {db} (filled in {took:.1f} s)", flush=True)
    return anyio.run(pages, db, args.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--runs", type=int, default=5000)
    t.add_argument("--repeat", type=int, default=5)
    p = sub.add_parser("pages")
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--db", type=Path, default=None, help="keep (and reuse) the store here")
    args = parser.parse_args()
    summary = run_throughput(args) if args.what == "throughput" else run_pages(args)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
