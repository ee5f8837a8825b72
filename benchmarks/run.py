"""``make bench``: sage_nb on threads against the raw CPython references, in one process and run.

Prints one JSON line per measurement and a summary table with ratios:
- the raw references: 3-stage ``queue.Queue(maxsize=10000)`` thread pipeline, the fused loop,
  the same 3-stage pipeline moving lists of 256 items (the batched thread reference), and the
  latency of one packet through two thread hops (written as the reference benchmark the targets
  were set against writes them);
- sage_nb source -> map -> sink on threads with ``batch_size=1`` (packet by packet), with
  the default settings (micro-batching; an in-memory source, and a generator source as the
  fused loop has), with ``chain=True`` (one task; from a generator, the source keeps its own
  thread and the map and sink share one), and with ``key_by`` (hash) before the map at p = 1
  and at p = 4 (compared with its own p = 1);
- p = 1 (default settings) under the live Inspector (rate 10), and the CPU its updater thread
  spent per update;
- a word count (lines -> flat_map(str.split) -> key_by -> map at p = 1 and p = 4 -> sink),
  in words/s, against the same word count in one loop;
- light-traffic latency (one packet in flight) through source -> map -> sink;
- streamz and Bytewax on the same pipeline, when installed (``benchmarks/peers.py``);
- memory over a 10,000,000-packet run (RSS sampled while it runs: flat means bounded).
The throughput cases take turns within each repetition, and every ratio is the median over the
repetitions of the two rates measured in the same turn: a busy machine's drift hits both alike.

Usage: python benchmarks/run.py [--n 1000000] [--reps 5] [--memory-n 10000000]
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
import peers
import references

import sage_nb as snb
from sage_nb.inspector import Inspector  # loaded for every case, as in a notebook


def _count_sink():
    box = [0]

    def sink(_):
        box[0] += 1
    return sink, box


def sage_pipeline(n: int, parallelism: int = 1, key: bool = False, inspect: bool = False,
                  costs: list[tuple[int, float, float, float]] | None = None, generator: bool = False,
                  **run_options) -> float:
    """Seconds to run n packets; with ``inspect``, ``costs`` gets (updates, updater CPU s,
    CPU s to create the Inspector, run s) for each run. The source is ``range(n)`` in memory,
    or with ``generator`` a generator function yielding it (as the fused loop's source)."""
    p = snb.Pipeline(f"bench-p{parallelism}{'-hash' if key else ''}{'-gen' if generator else ''}")

    def numbers():
        yield from range(n)
    src = p.from_source(numbers, name="src") if generator else p.from_iterable(range(n), name="src")
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


def sage_words(n: int, parallelism: int = 1) -> float:
    """Seconds for a word count of n words (n / 10 lines of 10): lines in memory ->
    flat_map(str.split) -> key_by(word) -> map(pair) at ``parallelism`` -> counting sink."""
    p = snb.Pipeline(f"bench-words-p{parallelism}")
    sink, box = _count_sink()
    p.from_iterable([references.LINE] * (n // 10), name="lines").flat_map(str.split, name="split") \
        .key_by(references.identity).map(references.pair, name="count", parallelism=parallelism) \
        .sink(sink, name="sink")
    t0 = time.perf_counter()
    p.run().wait(timeout=600)
    dt = time.perf_counter() - t0
    assert box[0] == n // 10 * 10, (box[0], n)
    return dt


def sage_latency(n: int = 2000, **run_options) -> list[float]:
    """One packet in flight: the source yields an item stamped now, then waits until the sink got it."""
    got = threading.Event()
    out: list[float] = []

    def items():
        for _ in range(n):
            yield time.perf_counter()
            got.wait(10)
            got.clear()

    def sink(stamp: float) -> None:
        out.append(time.perf_counter() - stamp)
        got.set()

    p = snb.Pipeline("bench-latency")
    p.from_source(items, name="src").map(references.identity, name="map").sink(sink, name="sink")
    p.run(**run_options).wait(timeout=600)
    assert len(out) == n, (len(out), n)
    return out


def p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_run(n: int) -> dict[str, float]:
    """RSS while ``n`` packets flow (default settings): at 10 % of the run and at the peak."""
    sink, box = _count_sink()
    p = snb.Pipeline("bench-memory")
    p.from_iterable(range(n)).map(references.inc).sink(sink, name="sink")
    job = p.run()
    samples = [(box[0], rss_mb())]  # one at least, however short the run
    while not job.done:
        time.sleep(0.05)
        samples.append((box[0], rss_mb()))
    job.wait()
    early = next((mb for c, mb in samples if c >= n // 10), samples[0][1])
    return {"rss_mb_at_10pct": early, "rss_mb_peak": max(mb for _, mb in samples),
            "growth_mb": max(mb for _, mb in samples) - early}


def measure(cases: dict[str, Callable[[int], float]], n: int, reps: int) -> dict[str, list[float]]:
    """Packets/s of each case in each repetition; the cases take turns, so that a busy machine's
    drift hits them alike."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            rates[name].append(n / fn(n))
    for name, rs in rates.items():
        print(json.dumps({"config": name, "n": n, "pps_median": round(statistics.median(rs)),
                          "pps": [round(r) for r in rs]}), flush=True)
    return rates


def ratio(a: list[float], b: list[float]) -> float:
    """``a / b`` as the median of the ratios of the rates measured in the same repetition."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def updater_cost(costs: list[tuple[int, float, float, float]]) -> dict[str, float]:
    """The Inspector's own CPU: per update, its share of the runs, and creating it."""
    updates, cpu, created, secs = (sum(c[i] for c in costs) for i in range(4))
    return {"updates_per_s": updates / secs, "cpu_ms_per_update": 1e3 * cpu / max(1, updates),
            "cpu_share_pct": 100 * (cpu + created) / secs, "create_ms": 1e3 * created / len(costs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)  # runs of 0.2 s or more: 200,000 ran 40 ms, too short to compare
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--memory-n", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    n, reps = args.n, args.reps
    before = set(threading.enumerate())
    costs: list[tuple[int, float, float, float]] = []
    others = peers.available()
    raw, fused, batched, b1, p1, gen, chained, gen_chained, h1, p4, watched, fused_wc, wc1, wc4, \
        *peer_rates = measure({
        "raw 3-stage queue.Queue(10000) threads": references.pipeline3,
        "raw fused loop": references.fused,
        "raw 3-stage threads, lists of 256": references.pipeline3_batched,
        "sage_nb threads batch_size=1": lambda k: sage_pipeline(k, batch_size=1),
        "sage_nb threads default": sage_pipeline,
        "sage_nb threads default, generator source": lambda k: sage_pipeline(k, generator=True),
        "sage_nb threads default chain=True": lambda k: sage_pipeline(k, chain=True),
        "sage_nb threads default chain=True, generator source": lambda k: sage_pipeline(k, generator=True, chain=True),
        "sage_nb threads default map p=1 hash": lambda k: sage_pipeline(k, 1, key=True),
        "sage_nb threads default map p=4 hash": lambda k: sage_pipeline(k, 4, key=True),
        "sage_nb threads default under the Inspector": lambda k: sage_pipeline(k, inspect=True, costs=costs),
        "raw fused word count": references.fused_words,
        "sage_nb threads default word count p=1": sage_words,
        "sage_nb threads default word count p=4": lambda k: sage_words(k, 4),
        **others,
    }, n, reps).values()
    med = statistics.median
    lat_raw = p50_us(references.latency_two_hops())
    lat_b1 = p50_us(sage_latency(batch_size=1))
    lat = p50_us(sage_latency())
    for name, v in (("raw two hops", lat_raw), ("sage_nb batch_size=1", lat_b1), ("sage_nb default", lat)):
        print(json.dumps({"config": f"latency p50 {name}", "us": round(v, 1)}), flush=True)
    cost = updater_cost(costs)
    print(json.dumps({"config": "Inspector updater", **{k: round(v, 3) for k, v in cost.items()}}))
    mem = memory_run(args.memory_n)
    print(json.dumps({"config": "memory", "n": args.memory_n, **{k: round(v, 1) for k, v in mem.items()}}))
    left = [t.name for t in set(threading.enumerate()) - before]
    assert not left, f"threads left behind: {left}"
    rows = [
        ("raw 3-stage queue.Queue(10000) threads", f"{med(raw):12,.0f}", "1.00x raw"),
        ("raw fused loop", f"{med(fused):12,.0f}", f"{ratio(fused, raw):.2f}x raw"),
        ("raw 3-stage threads, lists of 256", f"{med(batched):12,.0f}",
         f"{ratio(batched, fused):.3f}x fused (the batched thread reference)"),
        ("sage_nb threads batch_size=1", f"{med(b1):12,.0f}", f"{ratio(b1, raw):.2f}x raw (target >= 1.0x)"),
        ("sage_nb threads default", f"{med(p1):12,.0f}",
         f"{ratio(p1, fused):.3f}x fused (target >= 0.5x); {ratio(p1, batched):.2f}x raw lists; "
         f"{ratio(p1, raw):.2f}x raw"),
        ("sage_nb threads default, generator source", f"{med(gen):12,.0f}",
         f"{ratio(gen, fused):.3f}x fused; {ratio(gen, p1):.2f}x the in-memory source"),
        ("sage_nb threads default chain=True", f"{med(chained):12,.0f}",
         f"{ratio(chained, fused):.3f}x fused; {ratio(chained, p1):.2f}x default"),
        ("sage_nb threads default chain=True, generator source", f"{med(gen_chained):12,.0f}",
         f"{ratio(gen_chained, fused):.3f}x fused; {ratio(gen_chained, gen):.2f}x the generator without chain"),
        ("sage_nb threads default map p=1 hash", f"{med(h1):12,.0f}", f"{ratio(h1, p1):.2f}x default (no key)"),
        ("sage_nb threads default map p=4 hash", f"{med(p4):12,.0f}",
         f"{ratio(p4, h1):.2f}x own p=1 (target >= 0.8x); {ratio(p4, p1):.2f}x default (no key)"),
        ("sage_nb threads default under the Inspector", f"{med(watched):12,.0f}",
         f"{ratio(watched, p1):.2f}x default without it (target >= 0.95x)"),
        ("raw fused word count (words/s)", f"{med(fused_wc):12,.0f}", f"{ratio(fused_wc, fused):.2f}x fused"),
        ("sage_nb threads default word count p=1", f"{med(wc1):12,.0f}", f"{ratio(wc1, fused_wc):.3f}x fused word count"),
        ("sage_nb threads default word count p=4", f"{med(wc4):12,.0f}",
         f"{ratio(wc4, fused_wc):.3f}x fused word count; {ratio(wc4, wc1):.2f}x its p=1"),
        *((name, f"{med(rates):12,.0f}",
           f"{ratio(rates, fused):.3f}x fused; sage_nb default is {ratio(p1, rates):.2f}x this, "
           f"chain=True {ratio(chained, rates):.2f}x")
          for name, rates in zip(others, peer_rates, strict=True)),
        ("latency p50, raw two thread hops", f"{lat_raw:9,.1f} us", "1.00x raw"),
        ("latency p50, sage_nb batch_size=1", f"{lat_b1:9,.1f} us", f"{lat_b1 / lat_raw:.2f}x raw"),
        ("latency p50, sage_nb default", f"{lat:9,.1f} us", f"{lat / lat_raw:.2f}x raw (target <= 3x)"),
    ]
    print()
    print(f"| {'case':44} | {'packets/s or p50':>16} | ratio |")
    print(f"|{'-' * 46}|{'-' * 18}|-------|")
    for name, value, relative in rows:
        print(f"| {name:44} | {value:>16} | {relative} |")
    print(f"\nInspector updater: {cost['updates_per_s']:.1f} updates/s at {cost['cpu_ms_per_update']:.2f} ms CPU "
          f"each; with creating it ({cost['create_ms']:.1f} ms), {cost['cpu_share_pct']:.1f} % of the job's time")
    print(f"memory over {args.memory_n:,} packets: RSS {mem['rss_mb_at_10pct']:.0f} MB at 10 %, "
          f"peak {mem['rss_mb_peak']:.0f} MB (growth {mem['growth_mb']:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
