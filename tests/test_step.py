"""The step backend: one packet one hop per step, deterministic, documented policies."""

from __future__ import annotations

import threading

import pytest
from _pipelines import WORDCOUNT_OUT, build, expected, specs, wordcount
from hypothesis import HealthCheck, given, settings

import sage_nb as snb
from sage_nb.communication.partition import partition
from sage_nb.errors import ProtocolError


def _kinds(events):
    return [(e.instance, e.kind) for e in events]


def _split_pipeline(name: str, **run) -> snb.Job:
    p = snb.Pipeline(name)
    p.from_iterable(["a b c"], name="src").flat_map(str.split, name="split").sink(name="out")
    return p.run(backend="step", **run)


def test_nothing_runs_until_the_user_steps(no_leak):
    pulled = []

    def gen():
        for i in range(3):
            pulled.append(i)
            yield i

    threads = threading.active_count()
    p = snb.Pipeline("lazy")
    p.from_source(gen, name="src").map(abs, name="m").sink(name="out")
    job = p.run(backend="step")
    assert threading.active_count() == threads and pulled == []
    assert job.status is snb.JobStatus.RUNNING and job.position == 0
    assert job.snapshot().task("src[0]").state == "starting"
    ev = job.step()
    assert (ev.index, ev.kind, ev.instance, ev.seq, ev.payload) == (1, "packet", "src[0]", 1, "0")
    assert ev.targets == ("m[0]",) and pulled == [0]
    assert threading.active_count() == threads


def test_one_step_moves_one_packet_one_hop_and_explains_the_routing():
    job = wordcount().run(backend="step", policy="depth_first")
    first = job.step()
    assert str(first) == "#1 lines[0] packet #1 'a b c' → split[0]"
    assert first.routes == ("split: round-robin counter 0 → 1 → split[0]",)
    second = job.step()
    assert (second.kind, second.instance, second.sender, second.seq) == ("packet", "split[0]", "lines[0]", 1)
    assert second.queue == job.plan.contexts["split[0]"].input_qd.queue_id
    assert second.targets == tuple(f"count[{partition(w, 4)}]" for w in "abc")
    assert second.outputs == ("'a'", "'b'", "'c'")
    assert len(second.routes) == 3 and all(r.startswith("count: hash(") for r in second.routes)
    assert second.routes[0].endswith(f"mod 4 = {partition('a', 4)} → count[{partition('a', 4)}]")
    assert job.step(0) == []
    assert [e.index for e in job.step(3)] == [3, 4, 5]


def test_same_input_same_events_every_run():
    runs = []
    for policy in ("round_robin", "depth_first", "round_robin"):
        job = wordcount().run(backend="step", policy=policy, job_id="det")
        job.run_to_end()
        assert job.status is snb.JobStatus.FINISHED
        runs.append((job.recording().events, sorted(job.results("out"))))
    assert runs[0] == runs[2]
    assert runs[0][0] != runs[1][0] and runs[0][1] == runs[1][1] == WORDCOUNT_OUT
    assert runs[0][0][0].seq == 1  # packets are numbered per job


def test_round_robin_policy_takes_turns_in_the_fixed_order():
    job = _split_pipeline("rr")
    job.run_to_end()
    assert _kinds(job.recording().events) == [
        ("src[0]", "packet"), ("split[0]", "packet"), ("out[0]", "packet"), ("src[0]", "finish"),
        ("split[0]", "stop"), ("out[0]", "packet"), ("split[0]", "finish"), ("out[0]", "packet"),
        ("out[0]", "stop"), ("out[0]", "finish")]
    assert job.results("out") == ["a", "b", "c"]


def test_depth_first_policy_follows_the_packet_to_the_sink():
    job = _split_pipeline("df", policy="depth_first")
    job.run_to_end()
    assert _kinds(job.recording().events) == [
        ("src[0]", "packet"), ("split[0]", "packet"), ("out[0]", "packet"), ("out[0]", "packet"),
        ("out[0]", "packet"), ("src[0]", "finish"), ("split[0]", "stop"), ("split[0]", "finish"),
        ("out[0]", "stop"), ("out[0]", "finish")]
    assert job.step() is None and job.step(3) == []


def test_backpressure_a_full_queue_makes_its_producer_wait():
    job = _split_pipeline("bp", queue_maxsize=1, policy="depth_first")
    job.step(2)  # src emits "a b c"; split splits it: "a" fits, "b" and "c" wait in the outbox
    snap = job.snapshot()
    assert snap.task("split[0]").state == "backpressured"
    assert snap.task("out[0]").queue.used == 1 == snap.task("out[0]").queue.capacity
    assert [p.payload for p in job.queue_contents("out[0]")] == ["'a'"]
    job.run_to_end()
    kinds = _kinds(job.recording().events)
    assert kinds.count(("split[0]", "deliver")) == 2
    assert job.results("out") == ["a", "b", "c"]
    for i in range(len(job.recording()) + 1):
        for t in job.recording().snapshot(i).tasks:
            assert t.queue is None or t.queue.used <= t.queue.capacity


def test_a_source_waits_while_its_queue_is_full():
    p = snb.Pipeline("bp-src")
    p.from_iterable(range(5), name="src").sink(name="out")
    job = p.run(backend="step", queue_maxsize=1, policy="round_robin")
    job.run_to_end()
    instances = [e.instance for e in job.recording().events]
    assert instances[:6] == ["src[0]", "out[0]"] * 3  # never two emissions in a row
    assert job.results("out") == list(range(5))


def test_deadlock_is_an_error_event_not_a_hang():
    p = snb.Pipeline("deadlock")
    p.from_iterable([1, 2], name="src").sink(name="out")
    job = p.run(backend="step")
    job.runner.tasks["out[0]"]._expected.add(("ghost[0]", 0))  # a stop signal that never comes
    job.run_to_end()
    last = job.recording().events[-1]
    assert last.kind == "error" and "deadlock" in last.error and "ghost[0]" in last.error
    assert job.status is snb.JobStatus.FAILED
    with pytest.raises(snb.JobFailed, match=r"deadlock.*out\[0\]: waits for stop signals from "
                                            r"\['ghost\[0\]'\]") as info:
        job.wait(timeout=5)
    assert isinstance(info.value.__cause__, ProtocolError)
    assert job.results("out") == [1, 2]


def test_a_failing_function_is_an_error_event_then_the_job_winds_down():
    p = snb.Pipeline("fail")
    p.from_iterable(range(6), name="src").map(lambda x: 10 // (x - 3), name="m").sink(name="out")
    job = p.run(backend="step", policy="depth_first")
    ev = job.run_until(lambda e: e.kind == "error")
    assert (ev.instance, ev.payload) == ("m[0]", "3") and ev.error.startswith("ZeroDivisionError")
    assert job.status is snb.JobStatus.FAILED and not job.runner.done.is_set()
    with pytest.raises(snb.JobFailed, match=r"m\[0\] \('m'\) raised on packet #4 3"):
        job.wait(timeout=5)
    assert job.results("out") == [-4, -5, -10]
    assert {t.name: t.state for t in job.snapshot().tasks}["m[0]"] == "failed"


def test_stop_cancels_and_drain_finishes_on_step():
    p = snb.Pipeline("stop-step")
    p.from_iterable(range(10), name="src").sink(name="out")
    job = p.run(backend="step")
    job.step(3)
    assert job.stop().status is snb.JobStatus.CANCELLED
    assert {t.state for t in job.snapshot().tasks} == {"cancelled"}
    job = p.run(backend="step")
    job.step(3)
    assert job.stop(drain=True).status is snb.JobStatus.FINISHED
    assert job.results("out") == [0, 1]


def test_step_only_methods_name_the_step_backend(no_leak):
    p = snb.Pipeline("threads-step")
    p.from_iterable([1]).sink(name="out")
    job = p.run().wait(timeout=10)
    for call in (job.step, job.back, job.run_to_end, job.recording, lambda: job.seek(0),
                 lambda: job.run_until(bool), lambda: job.save_recording("x.json")):
        with pytest.raises(snb.BackendError, match=r"p.run\(backend='step'\)"):
            call()
    with pytest.raises(snb.BackendError, match="policy= applies to backend='step' only"):
        p.run(policy="depth_first")
    with pytest.raises(snb.BackendError, match="unknown step policy 'fifo'"):
        p.run(backend="step", policy="fifo")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs())
def test_step_and_threads_agree_on_random_dags(spec):
    """Same sink multisets and terminal states as threads (and as the spec's semantics)."""
    want = expected(spec)
    runs = [("step", "round_robin"), ("step", "depth_first"), ("threads", None)]
    for backend, policy in runs:
        opts = {"policy": policy} if policy else {}
        job = build(spec).run(backend=backend, queue_maxsize=spec["queue_maxsize"], **opts)
        job.wait(timeout=30)
        assert job.status is snb.JobStatus.FINISHED
        assert {s: sorted(job.results(s)) for s in want} == want, (backend, policy)
        assert {t.state for t in job.snapshot().tasks} == {"finished"}
