"""The raw CPython references that sage_nb is measured against, in the same process and run.

Numbers drift between runs on a shared 2-core machine, so every benchmark reports the
ratio to these references measured moments before (see the project's performance notes).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time

STOP = object()


def inc(x: int) -> int:
    return x + 1


def identity(x):
    return x


def fused(n: int) -> float:
    """generator source -> map function -> sink function, no queues: the ceiling (the
    reference benchmark's ``fused_int``: the sink is a Python function that counts, as sage_nb's is here)."""
    count = [0]

    def sink(_):
        count[0] += 1

    def source():
        yield from range(n)

    t0 = time.perf_counter()
    for x in source():
        sink(inc(x))
    dt = time.perf_counter() - t0
    assert count[0] == n
    return dt


LINE = "the quick brown fox jumps over the lazy dog again"  # a word count's line: 10 words


def pair(word: str) -> tuple[str, int]:
    return (word, 1)


def fused_words(n: int) -> float:
    """A word count with no queues, the ceiling for it: a generator of n / 10 lines, each
    split into words, each word paired with 1, each pair into a counting sink."""
    count = [0]

    def sink(_):
        count[0] += 1

    def lines():
        yield from itertools.repeat(LINE, n // 10)

    t0 = time.perf_counter()
    for line in lines():
        for word in line.split():
            sink(pair(word))
    dt = time.perf_counter() - t0
    assert count[0] == n // 10 * 10
    return dt


def pipeline3(n: int, maxsize: int = 10000) -> float:
    """source thread -> queue.Queue -> map thread -> queue.Queue -> sink thread, per item."""
    q1, q2 = queue.Queue(maxsize), queue.Queue(maxsize)
    done = threading.Event()

    def src():
        put = q1.put
        for i in range(n):
            put(i)
        put(STOP)

    def mp():
        get, put = q1.get, q2.put
        while (x := get()) is not STOP:
            put(inc(x))
        put(STOP)

    def snk():
        get = q2.get
        while get() is not STOP:
            pass
        done.set()

    threads = [threading.Thread(target=f) for f in (snk, mp, src)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    done.wait()
    dt = time.perf_counter() - t0
    for t in threads:
        t.join()
    return dt


def pipeline3_batched(n: int, batch: int = 256, maxsize: int = 64) -> float:
    """pipeline3 with lists of ``batch`` items as queue entries (the reference
    benchmark's ``batched_pipeline3``): what three threads reach under the GIL with no packet, routing or
    counting at all: the batched thread reference."""
    q1, q2 = queue.Queue(maxsize), queue.Queue(maxsize)
    got = [0]

    def src():
        put, it = q1.put, iter(range(n))
        while chunk := list(itertools.islice(it, batch)):
            put(chunk)
        put(STOP)

    def mp():
        get, put = q1.get, q2.put
        while (b := get()) is not STOP:
            put([inc(x) for x in b])
        put(STOP)

    def snk():
        get, c = q2.get, 0
        while (b := get()) is not STOP:
            for _ in b:
                c += 1
        got[0] = c

    threads = [threading.Thread(target=f) for f in (snk, mp, src)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    assert got[0] == n
    return dt


def latency_two_hops(n: int = 2000) -> list[float]:
    """One packet at a time: main -> queue -> map thread -> queue -> main (seconds each)."""
    q1, q2 = queue.Queue(), queue.Queue()

    def mp():
        while (x := q1.get()) is not STOP:
            q2.put(x)

    t = threading.Thread(target=mp)
    t.start()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        q1.put(i)
        q2.get()
        out.append(time.perf_counter() - t0)
    q1.put(STOP)
    t.join()
    return out
