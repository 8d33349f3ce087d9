"""Run one benchmark on two revisions side by side and print the ratios.

    python bench/compare.py 3e764f3 HEAD -- bench/embedded.py --repeat 1
    python bench/compare.py main HEAD --rounds 5 -- bench/nats.py --store kv --mode batch

Each revision is checked out (``git worktree add --detach``) into a temporary directory
and runs its *own* copy of the benchmark script, with its own ``stemd`` first on
``PYTHONPATH``, in this interpreter (so both use the same installed dependencies). The
runs alternate, A B A B ..., so that a machine that gets busier or quieter during the
comparison affects both sides alike. A benchmark reports by printing a JSON object last (on
one line, or indented from a ``{`` at column 0: ``bench/embedded.py`` and
``bench/nats.py`` do); every number in it is a
metric, named by its path (``medians.0.workflows_per_s``). For each metric the script
prints the median of each side, the ratio B/A, and the spread (min..max) of each side:
a ratio inside the spreads is noise.

A revision that has no copy of the benchmark runs this checkout's (``bench/startup.py``
on revisions older than it). Revisions are anything ``git rev-parse`` takes;
``WORKTREE`` compares the working tree as it is (uncommitted changes included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def checkout(stack: ExitStack, revision: str, into: Path) -> Path:
    """A directory holding ``revision`` (the working tree itself for ``WORKTREE``)."""
    if revision == "WORKTREE":
        return ROOT
    path = into / revision.replace("/", "_")
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), revision],
        cwd=ROOT,
        check=True,
    )
    stack.callback(
        subprocess.run,
        ["git", "worktree", "remove", "--force", str(path)],
        cwd=ROOT,
        check=False,
    )
    return path


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON value, by its dotted path."""
    out: dict[str, float] = {}
    if isinstance(value, bool):
        return out
    if isinstance(value, int | float):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{i}" if prefix else str(i)))
    return out


def run_once(tree: Path, script: str, args: list[str], timeout: float) -> dict[str, float]:
    """Run the benchmark in ``tree``; the metrics of its last line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # A revision older than the benchmark runs this checkout's copy (on its own stemd).
    path = tree / script if (tree / script).exists() else ROOT / script
    done = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {script} exited {done.returncode}:\n{done.stderr[-2000:]}")
    lines = done.stdout.rstrip().splitlines()
    # The last JSON document printed: one line, or an indented one from a "{" at column 0.
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                return flatten(json.loads("\n".join(lines[start:])))
            except json.JSONDecodeError:
                break
    raise SystemExit(f"{tree}: {script} printed no JSON document last")


def main() -> None:
    """Parse the command line, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the baseline revision")
    parser.add_argument("b", help="the revision compared with it")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--only", default="", help="print metrics whose path contains this")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ns = parser.parse_args(argv[:split])
    bench = argv[split + 1 :]
    if not bench:
        parser.error("give the benchmark after --: bench/compare.py A B -- bench/embedded.py")
    script, args = bench[0], bench[1:]
    results: dict[str, list[dict[str, float]]] = {ns.a: [], ns.b: []}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stemd-compare-")))
        trees = {rev: checkout(stack, rev, tmp) for rev in (ns.a, ns.b)}
        for round_ in range(ns.rounds):
            for rev in (ns.a, ns.b):
                results[rev].append(run_once(trees[rev], script, args, ns.timeout))
                print(f"round {round_ + 1}/{ns.rounds}: {rev} done", file=sys.stderr)
    keys = [k for k in results[ns.a][0] if k in results[ns.b][0] and ns.only in k]
    width = max((len(k) for k in keys), default=10)
    print(f"{'metric'.ljust(width)}  {ns.a:>12}  {ns.b:>12}  {'B/A':>6}  spread A / spread B")
    for key in keys:
        a = [r[key] for r in results[ns.a] if key in r]
        b = [r[key] for r in results[ns.b] if key in r]
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = f"{mb / ma:6.3f}" if ma else "     -"
        print(
            f"{key.ljust(width)}  {ma:12.4g}  {mb:12.4g}  {ratio}  "
            f"{min(a):.4g}..{max(a):.4g} / {min(b):.4g}..{max(b):.4g}"
        )


if __name__ == "__main__":
    main()
