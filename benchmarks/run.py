"""``make bench``: sage_nb on threads against the raw CPython references, in one process and run.

Prints one JSON line per measurement and a summary table with ratios:
- raw 3-stage ``queue.Queue(maxsize=10000)`` thread pipeline and the fused loop;
- sage_nb source -> map -> sink on threads (p = 1), and map p = 4 with hash;
- p = 1 under the live Inspector (rate 10), taking turns with the plain p = 1 runs, and
  the CPU its updater thread spent per update;
- memory over a 1,000,000-packet run (RSS sampled while it runs: flat means bounded).

Usage: python benchmarks/run.py [--n 200000] [--reps 5] [--memory-n 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))
import references

import sage_nb as snb
from sage_nb.inspector import Inspector  # loaded for every case, as in a notebook


def _count_sink():
    box = [0]

    def sink(_):
        box[0] += 1
    return sink, box


def sage_pipeline(n: int, parallelism: int = 1, key: bool = False, inspect: bool = False,
                  costs: list[tuple[int, float, float, float]] | None = None, **run_options) -> float:
    """Seconds to run n packets; with ``inspect``, ``costs`` gets (updates, updater CPU s,
    CPU s to create the Inspector, run s) for each run."""
    p = snb.Pipeline(f"bench-p{parallelism}{'-hash' if key else ''}")
    src = p.from_iterable(range(n), name="src")
    if key:
        src = src.key_by(lambda x: x & 63)
    sink, box = _count_sink()
    src.map(references.inc, name="map", parallelism=parallelism).sink(sink, name="sink")
    t0 = time.perf_counter()
    job = p.run(**run_options)
    inspector = None
    if inspect:  # the live widget at its highest update rate, as in a notebook
        start = time.thread_time()
        inspector = Inspector(job, rate=10)
        created = time.thread_time() - start
    job.wait(timeout=600)
    dt = time.perf_counter() - t0
    if inspector is not None:
        inspector.close()
        if costs is not None:
            costs.append((*inspector.updater_cost, created, dt))
    assert box[0] == n, (box[0], n)
    return dt


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_run(n: int) -> dict[str, float]:
    """RSS while 1,000,000 packets flow: at 10 % of the run and at the end."""
    sink, box = _count_sink()
    p = snb.Pipeline("bench-memory")
    p.from_iterable(range(n)).map(references.inc).sink(sink, name="sink")
    job = p.run()
    samples = []
    while not job.done:
        samples.append((box[0], rss_mb()))
        time.sleep(0.05)
    job.wait()
    early = next((mb for c, mb in samples if c >= n // 10), samples[0][1])
    return {"rss_mb_at_10pct": early, "rss_mb_peak": max(mb for _, mb in samples),
            "growth_mb": max(mb for _, mb in samples) - early}


def measure(cases: dict[str, Callable[[int], float]], n: int, reps: int) -> list[float]:
    """Median packets/s of each case; several cases take turns, so that a busy machine's
    drift hits them alike."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            rates[name].append(n / fn(n))
    medians = []
    for name, rs in rates.items():
        medians.append(statistics.median(rs))
        print(json.dumps({"config": name, "n": n, "pps_median": round(medians[-1]), "pps": [round(r) for r in rs]}),
              flush=True)
    return medians


def updater_cost(costs: list[tuple[int, float, float, float]]) -> dict[str, float]:
    """The Inspector's own CPU: per update, its share of the runs, and creating it."""
    updates, cpu, created, secs = (sum(c[i] for c in costs) for i in range(4))
    return {"updates_per_s": updates / secs, "cpu_ms_per_update": 1e3 * cpu / max(1, updates),
            "cpu_share_pct": 100 * (cpu + created) / secs, "create_ms": 1e3 * created / len(costs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--memory-n", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    n, reps = args.n, args.reps
    base = threading.active_count()
    [raw] = measure({"raw 3-stage queue.Queue(10000) threads": references.pipeline3}, n, reps)
    [fused] = measure({"raw fused loop": references.fused}, n, reps)
    [p4] = measure({"sage_nb threads map p=4 hash": lambda k: sage_pipeline(k, 4, key=True)}, n, reps)
    costs: list[tuple[int, float, float, float]] = []
    p1, watched = measure({"sage_nb threads p=1": sage_pipeline,
                           "sage_nb threads p=1 under the Inspector":
                           lambda k: sage_pipeline(k, inspect=True, costs=costs)}, n, reps)
    cost = updater_cost(costs)
    print(json.dumps({"config": "Inspector updater", **{k: round(v, 3) for k, v in cost.items()}}))
    mem = memory_run(args.memory_n)
    print(json.dumps({"config": "memory", "n": args.memory_n, **{k: round(v, 1) for k, v in mem.items()}}))
    assert threading.active_count() == base, "threads left behind"
    rows = [
        ("raw 3-stage queue.Queue(10000) threads", raw, "1.00x raw"),
        ("raw fused loop", fused, f"{fused / raw:.2f}x raw"),
        ("sage_nb threads p=1", p1, f"{p1 / raw:.2f}x raw (target >= 0.5x)"),
        ("sage_nb threads map p=4 hash", p4, f"{p4 / p1:.2f}x own p=1 (target >= 0.7x)"),
        ("sage_nb threads p=1 under the Inspector", watched,
         f"{watched / p1:.2f}x own p=1 (target >= 0.95x)"),
    ]
    print()
    print(f"| {'case':40} | {'packets/s':>12} | ratio |")
    print(f"|{'-' * 42}|{'-' * 14}|-------|")
    for name, rate, ratio in rows:
        print(f"| {name:40} | {rate:12,.0f} | {ratio} |")
    print(f"\nInspector updater: {cost['updates_per_s']:.1f} updates/s at {cost['cpu_ms_per_update']:.2f} ms CPU "
          f"each; with creating it ({cost['create_ms']:.1f} ms), {cost['cpu_share_pct']:.1f} % of the job's time")
    print(f"memory over {args.memory_n:,} packets: RSS {mem['rss_mb_at_10pct']:.0f} MB at 10 %, "
          f"peak {mem['rss_mb_peak']:.0f} MB (growth {mem['growth_mb']:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
