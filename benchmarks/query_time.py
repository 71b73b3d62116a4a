"""The time of one ``huse search --text`` from the shell, as a ratio to ``import torch, transformers``.

A text query from the command line pays for Python, torch, the model, the index and the
text backbone before it embeds one sentence. The floor is the import of the libraries it
cannot do without, so the figure is a ratio to ``python -c "import torch, transformers"``
on the same machine; goal: under 2x.

Timed, each as a fresh process, interleaved (baseline, query, batch, baseline, query, ...)
``--repeat`` times, the median of each kept, so that every variant sees the same load on a
shared machine:

- ``baseline``: ``python -c "import torch, transformers"``;
- ``query``: ``python -m huse search RUN --text "a red apple" -k 5``;
- ``batch``: the same with ``--queries FILE`` of ``--batch`` queries (JSON Lines out),
  reported per query as well (skipped where the huse under test has no ``--queries``).

``--pythonpath DIR`` runs another checkout's ``src``; ``--index DIR`` its own index folder.
``--before DIR`` (with ``--before-index``) adds ``query-before``, the same query by an
older checkout's ``src`` (a clean clone of an older commit), interleaved with the rest, so
"before" and "after" are measured under the same load.

    python benchmarks/query_time.py --run runs/demo [--repeat 7]
    git clone -q . /tmp/before && git -C /tmp/before checkout -q OLD
    PYTHONPATH=/tmp/before/src python -m huse index runs/demo --out /tmp/before-index
    python benchmarks/query_time.py --run runs/demo --before /tmp/before/src \\
        --before-index /tmp/before-index
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERIES = [
    "a red apple",
    "a sailing boat on the sea",
    "a bird with wings",
    "a black cat",
    "an old car",
    "a christmas tree",
    "a flag of europe",
    "a computer keyboard",
    "a smiling sun",
    "a fish in the water",
]


def run_once(cmd: list[str], env: dict) -> float:
    """Seconds of one command, which must succeed."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds


def has_batch_mode(python: str, env: dict) -> bool:
    out = subprocess.run(
        [python, "-m", "huse", "search", "--help"], env=env, capture_output=True, text=True
    )
    return "--queries" in out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run folder with model/ and index/")
    ap.add_argument("--index", default=None, help="index folder (default RUN/index)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved runs of each (median)")
    ap.add_argument("--batch", type=int, default=50, help="queries in the batch variant")
    ap.add_argument("--pythonpath", default=None, help="put this src folder first on the path")
    ap.add_argument("--python", default=sys.executable, help="the interpreter to run")
    ap.add_argument("--before", default=None, help="an older checkout's src folder to compare")
    ap.add_argument("--before-index", default=None, help="the index folder it built")
    args = ap.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, env.get("PYTHONPATH", "")])
    search = [args.python, "-m", "huse", "search", args.run]
    if args.index:
        search += ["--index", args.index]
    variants = {
        "baseline": [args.python, "-c", "import torch, transformers"],
        "query": [*search, "--text", "a red apple", "-k", "5"],
    }
    envs = {name: env for name in variants}
    if args.before:
        old = [args.python, "-m", "huse", "search", args.run, "--text", "a red apple", "-k", "5"]
        if args.before_index:
            old += ["--index", args.before_index]
        variants["query-before"] = old
        envs["query-before"] = dict(env, PYTHONPATH=args.before)
    with tempfile.TemporaryDirectory() as tmp:
        if has_batch_mode(args.python, env):
            qfile = Path(tmp) / "queries.txt"
            lines = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(args.batch)]
            qfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
            variants["batch"] = [*search, "--queries", str(qfile), "-k", "5"]
            envs["batch"] = env
        for name, cmd in variants.items():  # warm the page cache: the first run reads disk
            run_once(cmd, envs[name])
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, cmd in variants.items():
                times[name].append(run_once(cmd, envs[name]))
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["baseline"]
    print(f"huse from {args.pythonpath or 'the installed package'}; {args.repeat} interleaved runs, "
          "median")  # fmt: skip
    print(f"{'variant':<10} {'seconds':>8} {'/ import':>9}")
    for name, s in med.items():
        print(f"{name:<10} {s:8.2f} {s / base:8.2f}x")
    if "batch" in med:
        per = med["batch"] / args.batch
        print(f"batch of {args.batch}: {per:.3f} s per query ({per / base:.3f}x the import)")
    print(f"one text query / import torch, transformers: {med['query'] / base:.2f}x (goal < 2x)")
    if "query-before" in med:
        print(
            f"before: {med['query-before'] / base:.2f}x; after / before: "
            f"{med['query'] / med['query-before']:.2f}"
        )


if __name__ == "__main__":
    main()
