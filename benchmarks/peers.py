"""The peers of performance.md on the same pipeline (source -> map(inc) -> counting sink), in
the same process and run as sage_nb and the raw references. Installed by ``make bench``
(the ``bench`` extra); a peer that is not installed is left out of the table, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from references import inc


def streamz_sync(n: int) -> float:
    """streamz: ``Stream().map(inc).sink(count)``, synchronous ``emit`` (a chain of calls)."""
    from streamz import Stream

    box = [0]

    def count(_):
        box[0] += 1

    source = Stream()
    source.map(inc).sink(count)
    emit = source.emit
    t0 = time.perf_counter()
    for i in range(n):
        emit(i)
    dt = time.perf_counter() - t0
    assert box[0] == n
    return dt


def bytewax_run(n: int, batch_size: int) -> float:
    """Bytewax ``run_main``: ``TestingSource(range(n), batch_size)`` -> ``op.map`` -> counting sink,
    one worker."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    box = [0]

    class Count(StatelessSinkPartition):
        def write_batch(self, items):
            box[0] += len(items)

    class Sink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return Count()

    flow = Dataflow("bench")
    stream = op.input("inp", flow, TestingSource(range(n), batch_size=batch_size))
    op.output("out", op.map("inc", stream, inc), Sink())
    t0 = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t0
    assert box[0] == n
    return dt


def available() -> dict[str, Callable[[int], float]]:
    """The peers installed here, by the name the table shows."""
    cases: dict[str, Callable[[int], float]] = {}
    try:
        import streamz  # noqa: F401
        cases["streamz 0.6 sync emit"] = streamz_sync
    except ImportError:
        print("streamz not installed: left out (make bench installs it)")
    try:
        import bytewax  # noqa: F401
        cases["Bytewax run_main batch_size=1"] = lambda k: bytewax_run(k, 1)
        cases["Bytewax run_main batch_size=256"] = lambda k: bytewax_run(k, 256)
    except ImportError:
        print("bytewax not installed: left out (make bench installs it)")
    return cases
