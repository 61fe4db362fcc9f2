"""Wall time of the demo (``python -m jobs.demo`` on its defaults) against the pipeline shape it had before.

Run:
    .venv/bin/python -m benchmarks.demo_speed                 # one run of each, out/demo_speed
    .venv/bin/python -m benchmarks.demo_speed --repeats 2 --videos 16

Both runs are the real demo in a fresh process on its own local Ray (same data, checkpoint and compute
flags). The reference starts Ray as ``jobs.infer`` does (with the dashboard) and lets Ray Data merge the
work items and frames of the demo's videos into one block, which a single model actor takes while the
others idle: the pipeline as it was before each video became a block of its own. (The Ray reaper's cheaper
watch loop is in both.) The printed tables (J, F, J&F per expression type) must be identical, else the
script exits with status 1; the machine's load average is printed beside every time, since a shared
machine slows both runs (Ray's workers run at a low priority).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: The demo with the earlier pipeline shape: one block for all the videos, Ray started with its dashboard.
REFERENCE = (
    "import sys; import jobs.demo as demo; import pipelines.inference.dataset as dataset; "
    "dataset._small_blocks = lambda ds: ds; demo.init_ray = lambda **options: None; "
    "sys.exit(demo.main(sys.argv[1:]))"
)

_TABLE_ROW = re.compile(r"^(referring|reasoning|overall|A \(accuracy\)).*$", re.M)
_STAMP = r"^\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d,\d{3}) "


def table_rows(printed: str) -> list[str]:
    """The score rows of the table ``jobs.report`` prints (what must not change)."""
    return [m.group(0).rstrip() for m in _TABLE_ROW.finditer(printed)]


def phases(log: str, started: dt.datetime, ended: dt.datetime) -> dict[str, float]:
    """Seconds per phase of a demo run, from its log lines: data and start-up (preflight, Ray start,
    planning), segmentation (the Ray Data run: actor start-up, models, writers), report and exit."""

    def stamp(pattern: str) -> dt.datetime | None:
        match = re.search(_STAMP + r".*?" + pattern, log, re.M)
        if match is None:
            return None
        clock = dt.datetime.strptime(match.group(1), "%H:%M:%S,%f").time()
        return dt.datetime.combine(started.date(), clock)

    run_start, run_end = stamp(r"expression\(s\) to do"), stamp(r"run \S+ completed in")
    if run_start is None or run_end is None:
        return {}
    return {"start-up": (run_start - started).total_seconds(), "segmentation": (run_end - run_start).total_seconds(),
            "report+exit": (ended - run_end).total_seconds()}


def run_once(name: str, command: list[str], out: Path, env: dict[str, str]) -> dict:
    """One demo run in a fresh process: its seconds, phases, table rows and the load average around it."""
    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()
    started = dt.datetime.now()
    begin = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    ended = dt.datetime.now()
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"name": name, "seconds": seconds, "phases": phases(done.stderr, started, ended),
            "rows": table_rows(done.stdout), "load": (load_before, os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/demo_speed", help="folder for the runs' outputs")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating (default 1)")
    parser.add_argument("--videos", type=int, default=None, help="demo videos (default: the demo's)")
    args = parser.parse_args(argv)
    if os.environ.get("RAY_ADDRESS"):
        raise SystemExit("benchmarks.demo_speed times the demo on its own local Ray: unset RAY_ADDRESS")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    extra = ["--videos", str(args.videos)] if args.videos else []
    commands = {"reference": [sys.executable, "-c", REFERENCE, *extra],
                "ours": [sys.executable, "-m", "jobs.demo", *extra]}
    results = [run_once(name, command, Path(args.out) / name, env)
               for _ in range(args.repeats) for name, command in commands.items()]
    print(f"{'run':<10} | {'seconds':>7} | {'start-up':>8} | {'segmentation':>12} | {'report+exit':>11} | load before -> after")
    for r in results:
        p = r["phases"]
        cells = " | ".join(f"{p.get(k, float('nan')):>{w}.1f}" for k, w in
                           (("start-up", 8), ("segmentation", 12), ("report+exit", 11)))
        (before, after) = r["load"]
        print(f"{r['name']:<10} | {r['seconds']:>7.1f} | {cells} | {before[0]:.2f} -> {after[0]:.2f}")
    best = {name: min(r["seconds"] for r in results if r["name"] == name) for name in commands}
    print(f"ours / reference (best of {args.repeats}): {best['reference'] / best['ours']:.2f}x faster")
    tables = {tuple(r["rows"]) for r in results}
    if len(tables) != 1 or not next(iter(tables)):
        print("the printed tables differ between runs:\n" + "\n\n".join("\n".join(t) for t in tables))
        return 1
    print("printed table identical in every run:\n" + "\n".join(next(iter(tables))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
