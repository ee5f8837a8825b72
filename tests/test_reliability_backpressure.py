"""Reliability cases T11-T16: bounded queues and backpressure (reliability-cases.md §4.B).

One semantic on every backend (DESIGN §2): a full queue blocks its producer, nothing is
ever dropped, every blocked put can be cancelled, and ``send()`` never reports success for
a packet it did not deliver.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
import warnings
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from _reliability import (
    STRICT_THREADS,
    WAIT,
    deadline,
    finished,
    job_threads,
    needs_concurrency,
    needs_shared_state,
    scaled,
)

import sage_nb as snb
from sage_nb.communication import (
    BaseRouter,
    BroadcastGroup,
    Connection,
    LocalQueue,
    Packet,
    PythonQueueDescriptor,
)
from sage_nb.errors import DeliveryError
from sage_nb.inspector.view import graph_view
from sage_nb.testing import wait_for

pytestmark = STRICT_THREADS


def _rss_mb() -> float:
    """This process's resident set size in MB (Linux), or 0.0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


class _Sampler:
    """Calls ``probe()`` every ``interval`` seconds in a helper thread until ``stop()``."""

    def __init__(self, probe, interval: float = 0.01) -> None:
        self.probe, self.interval, self.samples = probe, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.probe())

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join()
        return self.samples


class _Counted:
    """A source of ``range(n)`` (``.items`` is its generator function) that counts what it
    handed out and notes when the last item left it (the router had delivered it)."""

    def __init__(self, n: int) -> None:
        self.n, self.emitted, self.ended = n, 0, 0.0

        def items():
            for i in range(n):
                self.emitted += 1
                yield i
            self.ended = time.monotonic()
        self.items = items


# --------------------------------------------------------------------------- T11
@pytest.mark.timeout(60)
def test_t11_full_bounded_queue_blocks_never_drops(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    n, got = 20_000, []

    def sink(x):
        if x % 10 == 0:  # 0.1 ms per item on average
            time.sleep(0.001)
        got.append(x)

    p = snb.Pipeline("t11")
    p.from_iterable(range(n), name="src").sink(sink, name="out")
    rss_before = _rss_mb()
    job = p.run(backend=backend, queue_maxsize=8)
    sampler = _Sampler(lambda: (job.snapshot().task("out[0]").queue, _rss_mb()))
    try:
        snap = finished(job, timeout=50)
    finally:
        samples = sampler.stop()

    assert got == list(range(n))
    assert snap.task("src[0]").packets_out == snap.task("out[0]").packets_in == n
    queues = [q for q, _ in samples]
    assert len(queues) >= 20, "the run was too short to sample"
    assert max(q.used for q in queues) <= 8 and snap.task("out[0]").queue.peak <= 8
    full = sum(q.used >= 7 for q in queues) / len(queues)
    assert full >= 0.5, f"the queue was near full in only {full:.0%} of the samples"
    assert max(r for _, r in samples) - rss_before < 50, "memory grew by more than 50 MB"


# --------------------------------------------------------------------------- T12
@pytest.mark.timeout(60)
def test_t12_backpressure_propagates_transitively(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    n, size = 1000, 4
    src = _Counted(n)
    lags: list[int] = []
    sunk = [0, 0.0]

    def sink(x):
        time.sleep(0.001)
        sunk[0] += 1
        sunk[1] = time.monotonic()
        lags.append(src.emitted - sunk[0])

    p = snb.Pipeline("t12")
    s = p.from_source(src.items, name="src")
    for i in range(4):
        s = s.map(lambda x: x, name=f"m{i}")
    s.sink(sink, name="out")
    start = time.monotonic()
    job = p.run(backend=backend, queue_maxsize=size)
    snap = finished(job, timeout=50)

    assert sunk[0] == n
    for t in snap.tasks:
        if t.queue is not None:
            assert t.queue.peak == size, f"{t.name}'s queue never filled: {t.queue}"
    # each of the 5 stages holds at most a full queue, the batch it took from it and the
    # batch it routes (micro-batching: at most a queue's capacity)
    assert max(lags) <= 5 * 3 * size + 1, f"the source ran {max(lags)} items ahead of the sink"
    source_rate, sink_rate = n / (src.ended - start), n / (sunk[1] - start)
    assert 0.9 <= source_rate / sink_rate <= 1.1, (source_rate, sink_rate)


# --------------------------------------------------------------------------- T13
def _forever():
    i = 0
    while True:
        yield i
        i += 1


def _blocked_in_put(job: snb.Job, producers: list[str]) -> list[str]:
    """The producers that the snapshot shows blocked on a full downstream queue."""
    snap = job.snapshot()
    return [n for n in producers if snap.task(n).state == "backpressured"]


def test_t13_producers_blocked_in_put_are_cancellable(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    release = threading.Event()

    def stuck(x):
        release.wait(30)  # a bug must not hang the run forever

    p = snb.Pipeline("t13")
    p.from_source(_forever, name="src", parallelism=2).map(lambda x: x, name="m", parallelism=2) \
        .sink(stuck, name="out")
    job = p.run(backend=backend, queue_maxsize=4)
    producers = ["src[0]", "src[1]", "m[0]", "m[1]"]
    took: list[float] = []
    try:
        # both sources and at least one map blocked in put (the other map may wait for input)
        wait_for(lambda: len(_blocked_in_put(job, producers)) >= 3
                 and _blocked_in_put(job, producers)[:2] == ["src[0]", "src[1]"], timeout=10)

        def stop():
            t0 = time.monotonic()
            job.stop(drain=False)
            took.append(time.monotonic() - t0)
        stopper = threading.Thread(target=stop, name="t13-stopper")
        start = time.monotonic()
        stopper.start()
        wait_for(lambda: all(job.snapshot().task(n).state == "cancelled" for n in producers),
                 timeout=deadline(backend, 1.0))  # every producer blocked in put woke up
        stopper.join(5)
        assert not stopper.is_alive() and took[0] < 3.0, "stop() did not return within ~2 s"
        assert job.status is snb.JobStatus.CANCELLED
        if backend == "threads":
            assert [t.name for t in job_threads(job)] == [f"sage-nb:{job.job_id}:out[0]"]
        assert time.monotonic() - start < 3.0
    finally:
        release.set()  # the sink is stuck in user code: only the user can let it go
    wait_for(lambda: job.snapshot().task("out[0]").state == "cancelled", timeout=2.0)
    assert {t.state for t in job.snapshot().tasks} == {"cancelled"}
    wait_for(lambda: not job_threads(job), timeout=2.0)


def _wait_for_file(path: str, _item: Any) -> None:
    """A sink that blocks until ``path`` exists (a gate that also reaches Ray's workers)."""
    deadline_at = time.monotonic() + 30  # a bug must not hang the run forever
    while not os.path.exists(path) and time.monotonic() < deadline_at:
        time.sleep(0.005)


def test_the_bottleneck_is_the_slow_stage_not_the_stages_waiting_behind_it(backend, no_leak, tmp_path):
    needs_concurrency(backend)
    gate = str(tmp_path / "go")
    p = snb.Pipeline("bottleneck")
    p.from_source(_forever, name="src").map(lambda x: x, name="m").sink(partial(_wait_for_file, gate), name="out")
    job = p.run(backend=backend, queue_maxsize=4)
    try:
        # the sink holds its first item: its queue fills, then the map's; both feeders wait in put
        wait_for(lambda: _blocked_in_put(job, ["src[0]", "m[0]"]) == ["src[0]", "m[0]"], timeout=20)
        snap = job.snapshot()
        assert snap.bottlenecks() == ("out[0]",), snap.tasks  # the full queue the map waits on is not the map's fault
        physical, logical = graph_view(snap, "physical"), graph_view(snap, "logical")
        assert [n["id"] for n in physical["nodes"] if n["bottleneck"]] == ["out[0]"]
        assert [n["id"] for n in logical["nodes"] if n["bottleneck"]] == ["out"]
    finally:
        Path(gate).touch()
        job.stop(drain=False)
    wait_for(lambda: {t.state for t in job.snapshot().tasks} == {"cancelled"}, timeout=10)
    assert job.snapshot().bottlenecks() == ()  # ended: nothing limits anything


def _gated(backend: str, gate: str, **options: Any) -> snb.Job:
    """src (endless) -> map -> a sink that holds its first item until ``gate`` exists."""
    p = snb.Pipeline("stall")
    p.from_source(_forever, name="src").map(lambda x: x, name="m").sink(partial(_wait_for_file, gate), name="out")
    return p.run(backend=backend, queue_maxsize=4, **options)


def test_a_stall_fails_the_job_after_stall_timeout(backend, no_leak, tmp_path):
    needs_concurrency(backend)
    gate = str(tmp_path / "go")
    job = _gated(backend, gate, stall_timeout=2)
    try:
        with pytest.raises(snb.JobFailed) as info:
            job.wait(40)  # on Ray its actors start first
        assert isinstance(info.value.__cause__, snb.StallError)
        assert (info.value.node, info.value.instance) == ("out", "out[0]")
        text = str(info.value)
        assert re.search(r"nothing moved for \d+ s: out\[0\] is busy \(in its function\)", text), text
        assert "; m[0] waits for room in out[0]'s full queue (4/4)" in text, text
        assert "; src[0] waits for room in m[0]'s full queue (4/4)" in text, text
        assert "pass a longer stall_timeout, or None to only warn" in text, text
    finally:
        Path(gate).touch()
        job.stop(drain=False)
    assert job.status is snb.JobStatus.FAILED


def test_a_stall_only_warns_by_default_and_the_job_goes_on(backend, no_leak, tmp_path, monkeypatch):
    needs_concurrency(backend)
    monkeypatch.setattr("sage_nb.runtime.job.STALL_AFTER", 1.0)  # (10 s in use)
    gate = str(tmp_path / "go")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = _gated(backend, gate)
        try:
            wait_for(lambda: any(w.category is snb.StallWarning for w in caught), timeout=40)
            assert job.status is snb.JobStatus.RUNNING  # a slow function is not killed
            assert job.stall is not None and job.stall.culprit == "out[0]"
            assert str(job.stall) in job.snapshot().stall  # what the inspector shows
            with pytest.raises(TimeoutError, match=r"still running after 0.1 s \(nothing moved for"):
                job.wait(0.1)
            Path(gate).touch()  # the sink goes on: so does the job, and the stall is over
            wait_for(lambda: job.stall is None, timeout=10)
        finally:
            Path(gate).touch()
            job.stop(drain=False)
    stalls = [str(w.message) for w in caught if w.category is snb.StallWarning]
    assert len(stalls) == 1, stalls  # once per stall
    assert "m[0] waits for room in out[0]'s full queue (4/4)" in stalls[0]
    assert "job.stop() ends the job, p.run(stall_timeout=s) fails such a job" in stalls[0]
    assert job.status is snb.JobStatus.CANCELLED and job.stall is None


@pytest.mark.parametrize("bad", [0, -1, "10", True])
def test_a_bad_stall_timeout_is_refused_before_the_job_starts(bad):
    p = snb.Pipeline("bad-stall")
    p.from_iterable(range(3)).sink(name="out")
    with pytest.raises(snb.BackendError, match=r"stall_timeout must be a number of seconds > 0, got"):
        p.run(stall_timeout=bad)
    with pytest.raises(snb.BackendError, match=r"stall_timeout= applies to backend='threads' and 'ray'"):
        p.run(backend="step", stall_timeout=5)
    assert snb.jobs() == []


# --------------------------------------------------------------------------- T14
class _RefusingQueue(LocalQueue):
    """A queue that refuses every put with ``queue.Full`` *at once* — ignoring ``block``
    and ``timeout``, as SAGE's Ray queue manager did — for ``refuse_for`` seconds."""

    def __init__(self, maxsize: int, refuse_for: float) -> None:
        super().__init__(maxsize)
        self.until = time.monotonic() + refuse_for
        self.refused = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if time.monotonic() < self.until:
            self.refused += 1
            raise queue.Full
        super().put(item, block, timeout)


class _RefusingQD(PythonQueueDescriptor):
    def __init__(self, maxsize: int = 0, queue_id: str | None = None, *,
                 refuse_for: float = 0.0) -> None:
        super().__init__(maxsize, queue_id)
        self.refuse_for = refuse_for

    def _create_queue(self) -> _RefusingQueue:
        return _RefusingQueue(self.maxsize, self.refuse_for)


def test_t14_a_refusing_queue_delays_but_loses_nothing(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    p = snb.Pipeline("t14")
    p.from_iterable(range(200), name="src").sink(name="out")
    job = p.run(backend=backend, queue_maxsize=16,
                queue_factory=lambda qid, size: _RefusingQD(size, qid, refuse_for=1.0))
    snap = finished(job)
    assert job.results("out") == list(range(200))
    assert snap.task("src[0]").packets_out == snap.task("out[0]").packets_in == 200
    assert job.plan.contexts["out[0]"].input_qd.queue_instance.refused > 0


def test_t14_a_queue_refusing_forever_fails_the_job_naming_the_edge(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    p = snb.Pipeline("t14-forever")
    p.from_iterable(range(200), name="src").sink(name="out")
    start = time.monotonic()
    job = p.run(backend=backend, queue_maxsize=16, put_timeout=0.5,
                queue_factory=lambda qid, size: _RefusingQD(size, qid, refuse_for=float("inf")))
    with pytest.raises(snb.JobFailed) as info:
        job.wait(WAIT)
    assert time.monotonic() - start < 5.0
    assert job.status is snb.JobStatus.FAILED
    assert isinstance(info.value.__cause__, DeliveryError)
    assert "src[0] -> out[0]" in str(info.value)
    snap = job.snapshot()
    assert snap.task("out[0]").packets_in == 0 and job.results("out") == []
    assert sum(c.packets_sent for c in snap.connections) == 0, "nothing was delivered"
    assert job_threads(job) == []


def test_t14_router_send_never_reports_an_undelivered_packet():
    def router(refuse_for: float) -> tuple[BaseRouter, PythonQueueDescriptor]:
        qd = _RefusingQD(4, f"t14-router-{refuse_for}", refuse_for=refuse_for)
        conn = Connection(0, 0, "out[0]", qd, 0, "src[0]")
        return BaseRouter("src[0]", [BroadcastGroup(0, "out", "round_robin", (conn,))],
                          put_timeout=0.3), qd

    r, qd = router(float("inf"))
    with pytest.raises(DeliveryError, match=r"src\[0\] -> out\[0\]"):
        r.send(Packet("x"))
    assert r.connections[0].packets_sent == 0 and qd.qsize() == 0

    r, qd = router(0.1)
    assert r.send(Packet("y")) == 1
    assert r.connections[0].packets_sent == 1 and qd.get_nowait() == Packet("y")


# --------------------------------------------------------------------------- T15


@pytest.mark.timeout(60)
def test_t15_broadcast_with_one_slow_consumer(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    n, size = 1000, 16
    src = _Counted(n)
    lags: list[int] = []
    slow_done = [0, 0.0]

    class Consumer:
        def open(self):
            self.index = self.ctx.parallel_index

        def __call__(self, x):
            if self.index == 1:
                time.sleep(0.001)
                slow_done[0] += 1
                slow_done[1] = time.monotonic()
                lags.append(src.emitted - slow_done[0])
            return (self.index, x)

    p = snb.Pipeline("t15")
    p.from_source(src.items, name="src").broadcast().map(Consumer, name="c", parallelism=3).sink(name="out")
    start = time.monotonic()
    job = p.run(backend=backend, queue_maxsize=size)
    snap = finished(job, timeout=50)

    by_instance: dict[int, list[int]] = defaultdict(list)
    for i, x in job.results("out"):
        by_instance[i].append(x)
    assert {i: sorted(xs) for i, xs in by_instance.items()} == {i: list(range(n)) for i in range(3)}
    assert [snap.task(f"c[{i}]").packets_in for i in range(3)] == [n] * 3
    # a full queue, the batch the consumer took, the batch the source routes to it
    assert max(lags) <= 3 * size + 1, "the source did not slow down to the slow consumer's pace"
    assert src.ended - start >= 0.9 * (slow_done[1] - start)


# --------------------------------------------------------------------------- T16
def _diamond(p: snb.Pipeline, n: int, keys: int) -> tuple[snb.Stream, snb.Stream]:
    src = p.from_iterable(range(n), name="src")
    return (src.map(lambda x: (x % keys, x), name="build"),
            src.map(lambda x: (x % keys, -x), name="probe"))


def test_t16_buffering_join_on_a_bounded_diamond_completes(backend, no_leak):
    n, keys = scaled(backend, 600), 30

    class SymmetricJoin:
        """A hash join that buffers both sides, so it never waits for one input."""

        def open(self):
            self.sides = (defaultdict(list), defaultdict(list))

        def _add(self, side: int, kv):
            k, v = kv
            self.sides[side][k].append(v)
            return [(v, w) if side == 0 else (w, v) for w in self.sides[1 - side][k]]

        def map0(self, kv):
            return self._add(0, kv)

        def map1(self, kv):
            return self._add(1, kv)

    p = snb.Pipeline("t16")
    build, probe = _diamond(p, n, keys)
    build.connect(probe).co_map(SymmetricJoin, name="join").flat_map(lambda pairs: pairs, name="emit") \
        .sink(name="out")
    job = p.run(backend=backend, queue_maxsize=2)
    finished(job, timeout=60 if backend == "ray" else 10)  # on Ray its seven actors start first (~7 s here)
    expected = Counter((v, -w) for v in range(n) for w in range(n) if v % keys == w % keys)
    assert Counter(job.results("out")) == expected


@pytest.mark.timeout(60)
def test_t16_a_deadlocked_join_is_detected_within_10s(backend, no_leak):
    needs_concurrency(backend)
    needs_shared_state(backend)
    n, keys = 200, 10
    built = threading.Event()

    class BuildFirstJoin:
        """Reads input 0 (the build side) to exhaustion before it answers input 1."""

        def open(self):
            self.table, self.count = defaultdict(list), 0

        def map0(self, kv):
            self.table[kv[0]].append(kv[1])
            self.count += 1
            if self.count == n:
                built.set()
            return []

        def map1(self, kv):
            if not built.wait(30):  # a bug in the test must not hang the run forever
                raise TimeoutError("the build side never completed")
            return [(v, kv[1]) for v in self.table[kv[0]]]

    p = snb.Pipeline("t16-deadlock")
    build, probe = _diamond(p, n, keys)
    build.connect(probe).co_map(BuildFirstJoin, name="join").flat_map(lambda pairs: pairs, name="emit") \
        .sink(name="out")
    job = p.run(backend=backend, queue_maxsize=2, stall_timeout=3)
    try:
        with pytest.raises(snb.JobFailed) as info:
            job.wait(10)
        assert job.status is snb.JobStatus.FAILED
        assert isinstance(info.value.__cause__, snb.StallError) and info.value.instance == "join[0]"
        text = str(info.value)
        # a feeder of the join waits on its full queue; the join holds it, in its function
        assert re.search(r"(build|probe)\[0\] waits for room in join\[0\]'s full queue \(2/2\)", text), text
        assert re.search(r"nothing moved for \d+ s: join\[0\] is busy \(in its function\);", text), text
    finally:
        built.set()
        job.stop(drain=False)
