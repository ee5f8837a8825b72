"""Breakpoints on threads and step: each matching delivery fires once, nothing is lost."""

from __future__ import annotations

import threading

import pytest

import sage_nb as snb
from sage_nb.testing import wait_for

BACKENDS = ["threads", "step"]


def _start(p: snb.Pipeline, backend: str, **run) -> snb.Job:
    """A job that has not moved yet (threads: started paused; step: nothing runs unasked)."""
    return p.run(backend=backend, paused=backend == "threads", **run)


def _go(job: snb.Job) -> None:
    if job.backend == "threads":
        job.resume()


def _collect_hits(job: snb.Job) -> list[snb.runtime.breakpoints.BreakpointHit]:
    """Run to the end, noting and resuming every hit."""
    hits = []
    while True:
        if job.backend == "step":
            job.run_to_end()
        else:
            wait_for(lambda: job.breakpoint_hit is not None or job.done, timeout=10)
        hit = job.breakpoint_hit
        if hit is None:
            assert job.done
            return hits
        assert job.paused and job.snapshot().status == "PAUSED"
        hits.append(hit)
        job.resume()


def _numbers(name: str) -> snb.Pipeline:
    p = snb.Pipeline(name)
    p.from_iterable(range(100), name="src").map(lambda x: x * 10, name="m", parallelism=2) \
        .sink(name="out")
    return p


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_size", [None, 1])
def test_the_packet_a_breakpoint_stopped_on_is_in_its_queue_contents(backend, batch_size, no_leak):
    p = snb.Pipeline(f"bp-queued-{backend}")
    p.from_iterable([f"u{i % 10}" for i in range(200)], name="src").key_by(lambda u: u) \
        .map(str.upper, name="count", parallelism=3).sink(name="out")
    job = _start(p, backend, batch_size=batch_size)
    bp = job.break_when(packet=lambda pkt: pkt.partition_key == "u4")
    _go(job)
    if backend == "step":
        job.run_to_end()
    hit = wait_for(lambda: job.breakpoint_hit, timeout=10)
    queued = job.queue_contents(hit.instance, limit=None)
    assert hit.seq in [q.seq for q in queued], (hit, queued)  # delivered, waiting: in sight
    bp.remove()
    job.resume()
    assert sorted(job.wait(timeout=30).results("out")) == sorted(f"U{i % 10}" for i in range(200))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_breakpoint_predicate_that_raises_is_named_in_the_error(backend, no_leak):
    job = _start(_numbers(f"bp-raises-{backend}"), backend)
    job.break_when(packet=lambda pkt: pkt.payload["x"], on="m")
    _go(job)
    with pytest.raises(snb.JobFailed, match=r"breakpoint 1 \(packet matches .*\) raised on packet #\d+ from "
                                            r"src\[0\] to m\[\d\]: TypeError: 'int' object is not "
                                            r"subscriptable; fix its predicate, or remove it") as info:
        job.wait(timeout=10)
    assert isinstance(info.value.__cause__, snb.SageError)
    assert isinstance(info.value.__cause__.__cause__, TypeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_packet_breakpoint_fires_once_per_matching_packet_and_loses_nothing(backend, no_leak):
    job = _start(_numbers(f"bp-packet-{backend}"), backend, queue_maxsize=8)
    bp = job.break_when(packet=lambda pkt: pkt.payload % 70 == 0, on="out")
    _go(job)
    hits = _collect_hits(job)
    job.wait(timeout=10)
    assert sorted(int(h.payload) for h in hits) == list(range(0, 1000, 70))
    assert len({h.seq for h in hits}) == len(hits) == len(bp.hits)
    assert {h.instance for h in hits} == {"out[0]"} and {h.node for h in hits} == {"out"}
    assert {h.sender for h in hits} <= {"m[0]", "m[1]"}
    assert all(h.reason.startswith("packet matches") for h in hits)
    assert (hits[0].step is not None) == (backend == "step")
    assert sorted(job.results("out")) == [x * 10 for x in range(100)]
    assert job.status is snb.JobStatus.FINISHED


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_packet_on_a_node_and_on_a_connection_fire_once(backend, no_leak):
    job = _start(_numbers(f"bp-first-{backend}"), backend)
    node = job.break_when(first_packet="out")
    conn = job.break_when(first_packet=("m[1]", "out[0]"))
    _go(job)
    hits = _collect_hits(job)
    assert len(node.hits) == len(conn.hits) == 1 and len(hits) == 2
    assert node.hits[0].reason == "first packet into out"
    assert (conn.hits[0].sender, conn.hits[0].instance) == ("m[1]", "out[0]")
    assert conn.hits[0].reason == "first packet on m[1] -> out[0]"
    assert sorted(job.wait(timeout=10).results("out")) == [x * 10 for x in range(100)]


def test_breakpoint_names_are_checked_where_they_are_set():
    job = _numbers("bp-names").run(backend="step")
    with pytest.raises(snb.GraphError, match=r"unknown node or instance 'nope'; nodes: \['m', 'out', 'src'\]"):
        job.break_when(first_packet="nope")
    with pytest.raises(snb.GraphError, match=r"no connection from 'out' to 'src'"):
        job.break_when(first_packet=("out", "src"))
    with pytest.raises(TypeError, match="exactly one of packet=, first_packet=, load_above=, error=True"):
        job.break_when(first_packet="m", error=True)
    with pytest.raises(TypeError, match="exactly one of"):
        job.break_when()
    with pytest.raises(ValueError, match=r"load_above= must be a fill level in \(0, 1\], got 2"):
        job.break_when(load_above=2)
    unbounded = _numbers("bp-unbounded").run(backend="step", queue_maxsize=0)
    with pytest.raises(ValueError, match="needs bounded queues"):
        unbounded.break_when(load_above=0.5)


def test_load_above_fires_when_a_queue_fills_on_step():
    p = snb.Pipeline("bp-load")
    p.from_iterable(["a b c d e f"], name="src").flat_map(str.split, name="split").sink(name="out")
    job = p.run(backend="step", queue_maxsize=4)
    bp = job.break_when(load_above=0.75, on="out")
    job.run_to_end()
    hit = job.breakpoint_hit
    assert (hit.instance, hit.payload, hit.reason) == ("out[0]", "'c'", "queue of out[0] at 3/4 >= 75%")
    assert [q.payload for q in job.queue_contents("out[0]")] == ["'a'", "'b'", "'c'", "'d'"]
    assert job.snapshot().task("split[0]").state == "backpressured"  # 'e' and 'f' wait
    job.run_to_end()
    assert job.results("out") == list("abcdef") and len(bp.hits) == 1


def test_load_above_on_threads_pauses_the_producer_with_the_queue_full(no_leak):
    busy, gate = threading.Event(), threading.Event()

    def items():
        yield 0
        busy.wait(10)  # the sink holds 0: what follows waits in its queue
        yield from range(1, 50)

    def sink(x):
        busy.set()
        gate.wait(10)

    p = snb.Pipeline("bp-load-threads")
    p.from_source(items, name="src").sink(sink, name="out")
    job = p.run(paused=True, queue_maxsize=4)
    job.break_when(load_above=1.0)
    job.resume()
    try:
        wait_for(lambda: job.breakpoint_hit is not None, timeout=10)
        hit = job.breakpoint_hit
        assert (hit.instance, hit.payload, hit.reason) == ("out[0]", "4", "queue of out[0] at 4/4 >= 100%")
        assert [q.payload for q in job.queue_contents("out[0]")] == ["1", "2", "3", "4"]
        assert job.paused
    finally:
        gate.set()
    job.resume()
    _collect_hits(job)
    assert job.wait(timeout=10).status is snb.JobStatus.FINISHED
    assert job.snapshot().task("out[0]").packets_in == 50


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_error_breakpoint_pauses_instead_of_failing_then_fails_on_resume(backend, no_leak):
    p = snb.Pipeline(f"bp-error-{backend}")
    p.from_iterable(range(10), name="src").map(lambda x: 1 // (x - 4), name="m").sink(name="out")
    job = _start(p, backend)
    job.break_when(error=True, on="m")
    _go(job)
    if backend == "step":
        job.run_to_end()
    wait_for(lambda: job.breakpoint_hit is not None, timeout=10)
    hit = job.breakpoint_hit
    assert (hit.instance, hit.node, hit.payload) == ("m[0]", "m", "4")
    assert hit.reason == "error: ZeroDivisionError: integer division or modulo by zero"
    assert job.status is snb.JobStatus.RUNNING and job.snapshot().status == "PAUSED"
    assert job.snapshot().task("m[0]").state == "failed"
    job.resume()
    with pytest.raises(snb.JobFailed, match=r"m\[0\] \('m'\) raised on packet #\d+ 4"):
        job.wait(timeout=10)
    assert job.status is snb.JobStatus.FAILED


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_removed_breakpoint_costs_nothing_and_fires_no_more(backend, no_leak):
    job = _start(_numbers(f"bp-remove-{backend}"), backend)
    bp = job.break_when(packet=lambda pkt: True)
    assert all(t.router.watch is not None for t in job.runner.tasks.values())
    bp.remove()
    assert all(t.router.watch is None for t in job.runner.tasks.values())
    assert "removed" in repr(bp)
    _go(job)
    assert _collect_hits(job) == [] and bp.hits == []
    assert len(job.wait(timeout=10).results("out")) == 100


def test_stepping_back_then_forward_stops_again_at_a_recorded_hit():
    job = _numbers("bp-replay").run(backend="step")
    job.break_when(first_packet="out")
    job.run_to_end()
    hit = job.breakpoint_hit
    at = job.position
    assert hit.step == at
    job.run_to_end()
    assert job.done and job.breakpoint_hit is None
    job.seek(0)
    job.run_to_end()
    assert job.position == at and job.breakpoint_hit == hit
    job.run_to_end()
    assert job.position == len(job.recording())


def test_breakpoints_need_threads_or_step():
    job = _numbers("bp-backend").run(backend="step")
    job.backend = "ray"  # pretend: no Ray here
    with pytest.raises(snb.BackendError, match="breakpoints need backend='threads' or 'step', not 'ray'"):
        job.break_when(first_packet="out")


def test_upcoming_names_the_next_mover_without_moving_it():
    job = _numbers("bp-upcoming").run(backend="step", policy="depth_first")
    assert job.upcoming() == "src[0]" and job.position == 0
    ev = job.step()
    assert ev.instance == "src[0]" and job.upcoming() == ev.targets[0] == "m[0]"
    assert job.step().instance == "m[0]"
    job.back(2)
    assert job.upcoming() == "src[0]"  # replaying: the recorded next event
    job.run_to_end()
    assert job.upcoming() is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_stopping_a_job_held_at_a_breakpoint_releases_it(backend, no_leak):
    job = _start(_numbers(f"bp-stop-{backend}"), backend, queue_maxsize=4)
    job.break_when(packet=lambda pkt: True)
    _go(job)
    if backend == "step":
        job.run_to_end()
    wait_for(lambda: job.breakpoint_hit is not None, timeout=10)
    job.stop(drain=True, timeout=10)  # the sources stop; what they emitted reaches the sink
    assert job.status is snb.JobStatus.FINISHED and job.breakpoint_hit is None
    assert job.results("out") == [0] and job.snapshot().task("src[0]").packets_out == 1
