"""Packets/s through an RPC queue between two processes, moved in batches (put_many/get_many).

A server runs in this process; a producer process puts ``n`` :class:`Packet` objects in
batches of ``--batch`` and a consumer process gets them in batches of the same size, both
over authenticated TCP loopback. The time runs from the moment both are released until the
consumer holds the last packet. Then a pipeline, source -> (RPC edge) -> map -> sink on
threads with default settings and with ``batch_size=1``: a batch crosses the edge in one
round trip, a packet at a time one each. Prints one JSON line per case (median of ``--runs``).

    .venv/bin/python benchmarks/bench_rpc.py --n 200000 --batch 256 --runs 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import time

from sage_nb.communication import BaseQueueDescriptor, Packet, RPCQueueServer


def produce(descriptor_json: str, secret: bytes, n: int, batch: int, ready, go) -> None:
    qd = BaseQueueDescriptor.from_json(descriptor_json)
    qd._secret = secret  # the secret never travels in JSON; a real worker reads SAGE_NB_RPC_SECRET
    qd.get_queue()  # connect before the clock starts
    packets = [Packet(i) for i in range(n)]
    ready.set()
    go.wait()
    for start in range(0, n, batch):
        qd.put_many(packets[start:start + batch])


def consume(descriptor_json: str, secret: bytes, n: int, batch: int, ready, go, done) -> None:
    qd = BaseQueueDescriptor.from_json(descriptor_json)
    qd._secret = secret
    qd.get_queue()
    ready.set()
    go.wait()
    got = expected = 0
    while got < n:
        for packet in qd.get_many(batch, timeout=30):
            if packet.payload != expected:
                raise AssertionError(f"packet {packet.payload} arrived where {expected} was expected")
            expected += 1
        got = expected
    done.put(time.perf_counter())


def run_once(n: int, batch: int, maxsize: int) -> float:
    ctx = mp.get_context("spawn")
    with RPCQueueServer() as server:
        qd = server.descriptor(maxsize=maxsize)
        ready = [ctx.Event(), ctx.Event()]
        go, done = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=produce, args=(qd.to_json(), server.secret, n, batch, ready[0], go)),
                 ctx.Process(target=consume, args=(qd.to_json(), server.secret, n, batch, ready[1], go, done))]
        for p in procs:
            p.start()
        for event in ready:
            if not event.wait(60):
                raise RuntimeError("a worker did not start within 60 s")
        start = time.perf_counter()
        go.set()
        end = done.get(timeout=600)
        for p in procs:
            p.join(30)
            if p.exitcode != 0:
                raise RuntimeError(f"{p.name} exited with {p.exitcode}")
        return n / (end - start)


def pipeline_rate(n: int, **options) -> float:
    """Packets/s of ``from_iterable(range(n))`` -> (RPC edge) -> map -> sink on threads."""
    import sage_nb as snb

    p = snb.Pipeline("bench-rpc-edge")
    p.from_iterable(range(n), name="src").via("rpc").map(abs, name="m").sink(name="out")
    start = time.perf_counter()
    job = p.run(**options).wait(600)
    rate = n / (time.perf_counter() - start)
    assert len(job.results("out")) == n, len(job.results("out"))
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--maxsize", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = [run_once(args.n, args.batch, args.maxsize) for _ in range(args.runs)]
    print(json.dumps({
        "bench": "rpc_queue_two_processes", "n": args.n, "batch": args.batch, "maxsize": args.maxsize,
        "runs": args.runs, "packets_per_s": round(statistics.median(rates)),
        "min": round(min(rates)), "max": round(max(rates)),
        "python": platform.python_version(), "cpus": mp.cpu_count(),
    }))
    for name, options, n in (("default", {}, args.n), ("batch_size=1", {"batch_size": 1}, args.n // 20)):
        rates = [pipeline_rate(n, **options) for _ in range(args.runs)]
        print(json.dumps({"bench": "rpc_edge_pipeline_threads", "settings": name, "n": n,
                          "packets_per_s": round(statistics.median(rates))}))


if __name__ == "__main__":
    main()
