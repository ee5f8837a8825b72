"""sage_nb on Ray against Ray's own references, measured in one run on one machine.

References (performance.md, "Ray mode"): the single-item ``ray.util.queue.Queue.put`` rate
from the driver, and the round trip of one actor call. Measured here:

- **R2 throughput**: source -> map -> sink with ``--n`` packets and default settings, twice:
  a generator source (packets/s from the source's first item to the last result on the
  driver; actor start-up excluded, and reported apart) and an in-memory one,
  ``from_iterable(range(n))`` as in ``make bench`` (from the map's first call: the source's
  items carry no stamp). Goals: >= 200x the single put rate, >= 0.5x a direct actor push of
  256-item lists of ``range`` source -> map -> sink (no queue, 64 calls in flight; measured here).
- **R3 latency**: one packet at a time through source -> map -> sink (the source stamps
  ``time.time()``, the sink measures); p50 against the actor-call RTT. Goal: <= 4x. Also
  measured: the same two hops through Ray's own ``ray.util.queue`` (driver -> queue -> actor
  -> queue -> driver), what a hop through a queue actor costs on this machine.

Prints one JSON line per figure and a summary.

    .venv/bin/python benchmarks/bench_ray.py                # 200,000 packets
    .venv/bin/python benchmarks/bench_ray.py --n 50000 --puts 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def queue_put_rate(ray, n: int) -> float:
    from ray.util.queue import Queue

    q = Queue()
    q.put(0)
    start = time.perf_counter()
    for i in range(n):
        q.put(i)
    rate = n / (time.perf_counter() - start)
    ray.kill(q.actor)
    return rate


def actor_rtt(ray, n: int) -> list[float]:
    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self, x):
            return x

    a = Echo.remote()
    ray.get(a.ping.remote(0))
    out = []
    for i in range(n):
        start = time.perf_counter()
        ray.get(a.ping.remote(i))
        out.append(time.perf_counter() - start)
    ray.kill(a)
    return out


def queue_two_hops(ray, n: int, gap: float) -> list[float]:
    """Ray's own queue path, one packet in flight: driver -> ``ray.util.queue.Queue`` -> an
    actor that passes it on -> a second queue -> driver (seconds each; performance.md's
    "one packet through driver->q1->map actor->q2->driver")."""
    from ray.util.queue import Queue

    @ray.remote(num_cpus=0)
    class Relay:
        def run(self, q1, q2, k):
            for _ in range(k):
                q2.put(q1.get())

    q1, q2 = Queue(), Queue()
    relay = Relay.remote()
    done = relay.run.remote(q1, q2, n)
    out = []
    for i in range(n):
        time.sleep(gap)
        start = time.perf_counter()
        q1.put(i)
        q2.get(timeout=60)
        out.append(time.perf_counter() - start)
    ray.get(done)
    for a in (relay, q1.actor, q2.actor):
        ray.kill(a)
    return out[5:]  # the first packets meet cold code paths


def direct_push_rate(ray, n: int, batch: int = 256, window: int = 64) -> float:
    """Ray's own best: a source actor pushes ``batch``-item lists to a map actor, which pushes
    ``x + 1`` lists to a sink actor; no queue in between, ``window`` calls in flight."""

    @ray.remote(num_cpus=0)
    class Sink:
        def __init__(self):
            self.count = 0

        def push(self, xs):
            self.count += len(xs)

        def total(self):
            return self.count

    @ray.remote(num_cpus=0)
    class Map:
        def __init__(self, sink):
            self.sink, self.inflight = sink, []

        def push(self, xs):
            self.inflight.append(self.sink.push.remote([x + 1 for x in xs]))
            if len(self.inflight) >= window:
                _, self.inflight = ray.wait(self.inflight, num_returns=len(self.inflight) // 2)

        def flush(self):
            ray.get(self.inflight)
            self.inflight = []

    @ray.remote(num_cpus=0)
    class Source:
        def run(self, mapper):
            inflight = []
            for start in range(0, n, batch):
                inflight.append(mapper.push.remote(list(range(start, min(start + batch, n)))))
                if len(inflight) >= window:
                    _, inflight = ray.wait(inflight, num_returns=len(inflight) // 2)
            ray.get(inflight)
            ray.get(mapper.flush.remote())

    sink = Sink.remote()
    mapper = Map.remote(sink)
    source = Source.remote()
    ray.get([a.__ray_ready__.remote() for a in (sink, mapper, source)])
    start = time.perf_counter()
    ray.get(source.run.remote(mapper))
    total = ray.get(sink.total.remote())
    rate = n / (time.perf_counter() - start)
    assert total == n, (total, n)
    for a in (sink, mapper, source):
        ray.kill(a)
    return rate


def pipeline_rate(n: int) -> tuple[float, float]:
    """(packets/s from first packet to last result, seconds of start-up before the first packet)."""
    import sage_nb as snb

    def numbers():
        yield time.time()
        yield from range(1, n)

    p = snb.Pipeline("bench-ray")
    p.from_source(numbers, name="src").map(lambda x: x, name="map").sink(name="out")
    began = time.time()
    job = p.run(backend="ray")
    out = job.runner.results["out"]
    while not out and not job.runner.done.is_set():
        time.sleep(0.001)
    first = out[0]
    while len(out) < n and not job.runner.done.is_set():
        time.sleep(0.001)
    last = time.time()
    job.wait(timeout=600)
    assert len(job.results("out")) == n, len(job.results("out"))
    return n / (last - first), first - began


def memory_rate(n: int) -> float:
    """Packets/s of an in-memory source (``from_iterable(range(n))``) from the map's first call
    to the last result on the driver."""
    import sage_nb as snb

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "first.json")

        class First:  # defined here: it travels to the map's actor by value
            """``x -> x``, noting when it was first called; writes that to ``path`` at the end."""

            def __init__(self) -> None:
                self.first: float | None = None

            def __call__(self, x):
                if self.first is None:
                    self.first = time.time()
                return x

            def close(self) -> None:
                with open(path, "w") as f:
                    json.dump(self.first, f)

        p = snb.Pipeline("bench-ray-memory")
        p.from_iterable(range(n), name="src").map(First, name="map").sink(name="out")
        job = p.run(backend="ray")
        out = job.runner.results["out"]
        while len(out) < n and not job.runner.done.is_set():
            time.sleep(0.001)
        last = time.time()
        job.wait(timeout=600)
        assert len(job.results("out")) == n, len(job.results("out"))
        with open(path) as f:
            return n / (last - json.load(f))


class _Latency:
    """A sink class that records how long each packet took since the source stamped it, and
    writes the samples to ``path`` when the stream ends."""

    path = ""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def __call__(self, stamp: float) -> None:
        self.samples.append(time.time() - stamp)

    def close(self) -> None:
        with open(self.path, "w") as f:
            json.dump(self.samples, f)


def pipeline_latency(n: int, gap: float) -> list[float]:
    import sage_nb as snb

    def stamps():
        for _ in range(n):
            time.sleep(gap)
            yield time.time()

    with tempfile.TemporaryDirectory() as tmp:
        sink = type("LatencySink", (_Latency,), {"path": os.path.join(tmp, "latency.json")})
        p = snb.Pipeline("bench-ray-latency")
        p.from_source(stamps, name="src").map(lambda t: t, name="map").sink(sink, name="out")
        p.run(backend="ray").wait(timeout=600)
        with open(sink.path) as f:
            return json.load(f)[5:]  # the first packets meet cold code paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="packets through the pipeline")
    ap.add_argument("--puts", type=int, default=2000, help="single-item Queue.put calls")
    ap.add_argument("--latency", type=int, default=100, help="packets for the latency run")
    args = ap.parse_args()

    from sage_nb.communication.ray_manager import ensure_ray

    began = time.perf_counter()
    ray = ensure_ray(num_cpus=os.cpu_count(), object_store_memory=100 * 1024 * 1024)  # as backend="ray" does
    figures = {"ray": ray.__version__, "cpus": os.cpu_count(), "ray_init_s": round(time.perf_counter() - began, 2)}
    put_rate = queue_put_rate(ray, args.puts)
    rtt = actor_rtt(ray, 300)
    push_rate = direct_push_rate(ray, args.n)
    rate, startup = pipeline_rate(args.n)
    in_memory = memory_rate(args.n)
    latency = pipeline_latency(args.latency, 0.01)
    ray_hops = queue_two_hops(ray, args.latency, 0.01)
    put_again = queue_put_rate(ray, args.puts)  # the box may have changed under us: report both
    figures.update({
        "queue_put_per_s": round(put_rate), "queue_put_per_s_after": round(put_again),
        "actor_rtt_p50_ms": round(_p50_ms(rtt), 3),
        "pipeline_packets": args.n, "pipeline_packets_per_s": round(rate),
        "pipeline_startup_s": round(startup, 2),
        "throughput_ratio": round(rate / put_rate, 1), "throughput_goal": ">= 200",
        "in_memory_packets_per_s": round(in_memory), "in_memory_ratio": round(in_memory / put_rate, 1),
        "direct_push_256_per_s": round(push_rate), "direct_push_ratio": round(rate / push_rate, 3),
        "in_memory_direct_push_ratio": round(in_memory / push_rate, 3),
        "direct_push_goal": ">= 0.5",
        "latency_p50_ms": round(_p50_ms(latency), 3),
        "latency_p99_ms": round(sorted(latency)[int(0.99 * (len(latency) - 1))] * 1e3, 3),
        "latency_ratio": round(_p50_ms(latency) / _p50_ms(rtt), 2), "latency_goal": "<= 4",
        "ray_queue_two_hops_p50_ms": round(_p50_ms(ray_hops), 3),
    })
    print(json.dumps(figures))
    print(f"Queue.put x1: {put_rate:,.0f}/s (after: {put_again:,.0f}/s); direct actor push of 256-item "
          f"lists: {push_rate:,.0f} packets/s")
    for what, r in (("generator source", rate), ("in-memory source", in_memory)):
        print(f"sage_nb source->map->sink, {what}: {r:,.0f} packets/s = {r / put_rate:.0f}x Queue.put "
              f"(goal >= 200x), {r / push_rate:.2f}x direct push (goal >= 0.5x)")
    print(f"actor start-up before the first packet: {startup:.1f} s")
    print(f"latency p50 {_p50_ms(latency):.2f} ms vs actor RTT p50 {_p50_ms(rtt):.2f} ms = "
          f"{_p50_ms(latency) / _p50_ms(rtt):.1f}x (goal <= 4x); Ray's own path through two "
          f"ray.util.queue hops {_p50_ms(ray_hops):.2f} ms ({_p50_ms(ray_hops) / _p50_ms(rtt):.1f}x RTT)")
    ray.shutdown()


if __name__ == "__main__":
    main()
