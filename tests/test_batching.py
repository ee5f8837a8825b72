"""Micro-batching in jobs: options, validation, and light traffic that never waits for a batch."""

from __future__ import annotations

import os
import threading
import time

import pytest
from _reliability import finished

import sage_nb as snb
from sage_nb.testing import wait_for


def test_batch_size_and_linger_are_validated_when_the_job_is_made(no_leak):
    p = snb.Pipeline("batching-options")
    p.from_iterable(range(3)).sink(name="out")
    for bad in (0, -1, 2.5, "64", True, 70_000):
        with pytest.raises(snb.BackendError, match=r"batch_size must be an int in \[1, 65536\], got"):
            p.run(batch_size=bad)
    for bad in (0, -0.1, "1ms", 11.0):
        with pytest.raises(snb.BackendError, match=r"linger must be a number of seconds in \(0, 10.0\]"):
            p.run(linger=bad)
    with pytest.raises(snb.BackendError, match="backend='step' moves packets one by one"):
        p.run(backend="step", batch_size=8)
    assert p.run(backend="step", batch_size=1).wait(10).results("out") == [0, 1, 2]


@pytest.mark.parametrize("batch_size", [1, 256])
def test_a_source_that_waits_for_its_own_packets_is_not_held_back(no_leak, batch_size):
    """Each item waits in the source until the sink saw the previous one: a batch that
    waited to fill up would never leave."""
    got = threading.Event()
    missed = []

    def items():
        for i in range(20):
            yield i
            if not got.wait(10):
                missed.append(i)
            got.clear()

    p = snb.Pipeline(f"batching-lonely-{batch_size}")
    p.from_source(items).map(lambda x: x + 1).sink(lambda x: got.set(), name="out")
    finished(p.run(batch_size=batch_size, linger=0.05))
    assert missed == []


@pytest.mark.parametrize("batch_size", [1, None])
def test_what_a_source_kept_reaches_the_sink_while_the_source_waits_in_user_code(no_leak, batch_size):
    """The map is busy when "a" comes (nobody waits for it: the source keeps it for a batch),
    then the generator waits in user code until the sink has "a": the job's flusher routes it."""
    a_kept, released = threading.Event(), threading.Event()
    waited = []

    def items():
        yield "x0"
        yield "a"
        a_kept.set()  # the source asked for the next item: "a" is gathered
        waited.append(released.wait(10))
        yield "b"

    def busy(x: str) -> str:
        if x == "x0":
            a_kept.wait(10)
        return x

    def sink(x: str) -> None:
        if x == "a":
            released.set()

    p = snb.Pipeline(f"batching-kept-{batch_size}")
    p.from_source(items, name="src").map(busy, name="map").sink(sink, name="out")
    job = p.run(batch_size=batch_size, linger=0.005)
    finished(job)
    assert waited == [True]


def test_a_fast_generator_that_blocks_mid_slice_holds_back_nothing(no_leak):
    """A fast generator's items are pulled a slice at a time by one C-level call; when the
    generator then blocks in the middle of a slice until the sink has every item so far, the
    job's flusher routes what the slice kept. Nothing is lost or counted twice. (Three bursts:
    a source that lost the CPU during its last slice before a block went back to one item at
    a time; it cannot have lost it in all three.)"""
    seen: list[int] = []
    bursts, waited, slicing = [threading.Event() for _ in range(3)], [], []

    def items():
        for i, burst in enumerate(bursts):
            yield from range(5000 * i, 5000 * (i + 1))
            slicing.append(job.runner.tasks["src[0]"].router.slicing)  # (blocked inside a slice?)
            waited.append(burst.wait(10))

    def sink(x: int) -> None:
        seen.append(x)
        if len(seen) % 5000 == 0:
            bursts[len(seen) // 5000 - 1].set()

    p = snb.Pipeline("batching-generator-blocks")
    p.from_source(items, name="src").map(lambda x: x, name="m").sink(sink, name="out")
    job = p.run(paused=True)
    job.resume()
    snap = finished(job)
    assert True in slicing and waited == [True] * 3 and seen == list(range(15000))
    assert snap.task("src[0]").packets_out == 15000
    assert next(c for c in snap.connections if c.target_operator == "m").packets_sent == 15000


@pytest.mark.parametrize("batch_size", [256, None])
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
def test_slow_user_code_does_not_hold_what_its_task_already_routed(no_leak, kind, batch_size):
    """The operator blocks in user code on item 3 until the sink has seen items 0-2: the linger
    flusher sends them on meanwhile (whether they wait in the router's buffer or, made of a
    bundle the user code is still on, in the task)."""
    seen: list[int] = []
    three = threading.Event()
    waited = []

    def slow(x: int) -> int:
        if x == 3:
            waited.append(three.wait(10))
        return x

    def sink(x: int) -> None:
        seen.append(x)
        if len(seen) == 3:
            three.set()

    p = snb.Pipeline(f"batching-slow-{kind}-{batch_size}")
    src = p.from_iterable(range(6 if batch_size else 3000))
    if kind == "map":
        src = src.map(slow)
    elif kind == "filter":
        src = src.filter(lambda x: slow(x) is not None)
    else:
        src = src.flat_map(lambda x: [slow(x)])
    src.sink(sink, name="out")
    finished(p.run(batch_size=batch_size, linger=0.002, **({"queue_maxsize": 64} if batch_size else {})))
    assert waited == [True] and seen == list(range(6 if batch_size else 3000))


class _Marker:
    """A map that creates the file ``path`` once it has seen three items (in its own Ray actor)."""

    path = ""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, x):
        self.seen += 1
        if self.seen == 3:
            with open(self.path, "w"):
                pass
        return x


@pytest.mark.ray
def test_on_ray_slow_user_code_does_not_hold_what_it_made_of_a_bundle(ray_session, no_leak, tmp_path):
    """The map's actor blocks in user code on item 3 until the next map (another process) has
    seen items 0-2, made of the same bundle: the actor's flusher sends them on meanwhile."""
    path = str(tmp_path / "three")
    marker = type("Marker", (_Marker,), {"path": path})

    def slow(x):
        if x != 3:
            return (x, True)
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)  # (the signal comes from another process: a file)
        return (x, os.path.exists(path))

    p = snb.Pipeline("batching-slow-ray")
    p.from_iterable(range(6), name="src").map(slow, name="slow").map(marker, name="mark").sink(name="out")
    job = p.run(backend="ray")
    assert sorted(job.wait(timeout=60).results("out")) == [(x, True) for x in range(6)]


def test_counters_are_exact_and_queues_count_packets_with_batching(no_leak):
    p = snb.Pipeline("batching-counters")
    p.from_iterable(range(1000)).key_by(lambda x: x % 7).map(abs, parallelism=3).sink(name="out")
    job = p.run(batch_size=64, queue_maxsize=100)
    snap = finished(job)
    assert sorted(job.results("out")) == list(range(1000))
    assert sum(c.packets_sent for c in snap.connections if c.target_operator == "out") == 1000
    assert all(t.queue.peak <= 100 for t in snap.tasks if t.queue is not None)


@pytest.fixture(params=["threads", pytest.param("ray", marks=pytest.mark.ray)])
def bundled(request: pytest.FixtureRequest) -> str:
    """The backends whose default settings move bundles: threads, and Ray (the shared cluster)."""
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


def test_bundled_packets_keep_their_trace_id_hop_after_hop(bundled, no_leak):
    """By default an in-memory source's packets travel as bundles (no packet objects between
    tasks); a packet keeps its trace id through map and filter, so the inspector can follow it."""
    from sage_nb.inspector.tables import packet_path

    p = snb.Pipeline("bundle-trace")
    p.from_iterable(range(600), name="src").map(abs, name="m").filter(lambda x: x % 2 == 0, name="even") \
        .sink(name="out")
    snap = finished(p.run(backend=bundled))
    traced: dict[str, set[int]] = {}
    for d in snap.trace:
        traced.setdefault(d.sender, set()).add(d.seq)
    first = min(traced["src[0]"])
    assert first in traced["m[0]"] and first in traced["even[0]"]
    assert packet_path(snap, first, "logical") == ["src->m", "m->even", "even->out"]
    assert snap.trace_skipped == 3 * 600 // 2 + 600 - len(snap.trace)   # every decision is counted


@pytest.mark.parametrize("parallelism", [1, 3])
def test_an_error_deep_in_a_bundle_names_its_packet_and_what_came_before_goes_on(bundled, no_leak,
                                                                                 parallelism):
    def check(x):
        if x == 700:
            raise ValueError(f"bad item {x}")
        return x

    p = snb.Pipeline("bundle-error")
    p.from_iterable(range(1000), name="src").map(check, name="m", parallelism=parallelism).sink(name="out")
    job = p.run(backend=bundled)
    with pytest.raises(snb.JobFailed) as info:
        job.wait(timeout=30)
    e = info.value
    assert e.node == "m" and str(e.packet).endswith(" 700") and str(e.packet).startswith("#")
    assert str(e.__cause__) == "bad item 700"
    snap = job.snapshot()
    failed = snap.task(e.instance)
    assert failed.state == "failed"
    if parallelism == 1:
        assert job.results("out") == list(range(700)), "exactly the items before the failure"
    else:
        assert 700 not in job.results("out") and set(job.results("out")) <= set(range(1000))
    # every packet the failed instance was sent: processed, the one it failed on, discarded or queued
    sent = sum(c.packets_sent for c in snap.connections if c.target == e.instance)
    assert failed.packets_in + 1 + failed.unprocessed + failed.queue.used == sent


def test_a_flat_map_takes_bundles_and_its_items_keep_their_packets_trace_id(bundled, no_leak):
    from sage_nb.inspector.tables import packet_path

    lines = [" ".join(f"w{i}.{j}" for j in range((i + 1) % 4)) for i in range(900)]  # 0 to 3 words
    p = snb.Pipeline("bundle-flat")
    p.from_iterable(lines, name="src").flat_map(str.split, name="split").map(str.upper, name="m") \
        .sink(name="out")
    job = p.run(backend=bundled)
    snap = finished(job)
    words = [w.upper() for line in lines for w in line.split()]
    assert job.results("out") == words
    traced: dict[str, set[int]] = {}
    for d in snap.trace:
        traced.setdefault(d.sender, set()).add(d.seq)
    first = min(traced["src[0]"])  # the first line's: its one word is traced on each hop after
    assert packet_path(snap, first, "logical") == ["src->split", "split->m", "m->out"]
    assert snap.trace_skipped == 900 + 2 * len(words) - len(snap.trace)   # every decision is counted


def test_each_item_of_a_flat_map_carries_the_trace_id_of_its_packet(no_leak, monkeypatch):
    from sage_nb.runtime.task import BaseTask

    sent = []
    send = BaseTask._send_bundle

    def spy(self, b, done=None):  # the bundles the flat_map sends on, as they go
        if self.ctx.operator == "split":
            sent.append((list(b.payloads), list(b.seqs)))
        return send(self, b, done)

    monkeypatch.setattr(BaseTask, "_send_bundle", spy)
    lines = [" ".join(f"{i}.{j}" for j in range(i % 5)) for i in range(3000)]  # 0 to 4 words
    p = snb.Pipeline("bundle-flat-ids")
    p.from_iterable(lines, name="src").flat_map(str.split, name="split").sink(name="out")
    job = p.run()
    finished(job)
    assert [w for words, _ in sent for w in words] == job.results("out") == " ".join(lines).split()
    line_of = {}  # trace id -> the line its words came from
    for words, ids in sent:
        for w, seq in zip(words, ids, strict=True):
            assert line_of.setdefault(seq, w.split(".")[0]) == w.split(".")[0]
    assert len(line_of) == sum(1 for line in lines if line)   # one trace id a line, each its own


def test_a_flat_map_call_that_yields_many_items_streams_them(no_leak):
    """An iterator is read a batch at a time and what it gave goes on meanwhile: the sink gets
    the first items while the call still yields (gathered whole, it would wait forever)."""
    got = threading.Event()
    waited = []

    def many(n):
        yield from range(n)
        waited.append(got.wait(10))  # the sink has item 0 before this call ends
        yield from range(n, 2 * n)

    p = snb.Pipeline("bundle-flat-stream")
    p.from_iterable([5000, 3], name="src").flat_map(many, name="split") \
        .sink(lambda x: got.set() if x == 0 else None, name="out")
    job = p.run(queue_maxsize=4096)
    finished(job)
    assert waited == [True, True]
    assert job.snapshot().task("out[0]").packets_in == 10_006


@pytest.mark.parametrize("batch_size", [1, None])
def test_a_failing_flat_map_call_passes_on_what_it_gave_and_names_its_packet(no_leak, batch_size):
    def words(i):
        yield from (f"{i}.{j}" for j in range(3))
        if i == 1500:
            raise ValueError(f"bad line {i}")

    p = snb.Pipeline(f"bundle-flat-error-{batch_size}")
    p.from_iterable(range(3000), name="src").flat_map(words, name="split").sink(name="out")
    job = p.run(batch_size=batch_size)
    with pytest.raises(snb.JobFailed) as info:
        job.wait(timeout=30)
    e = info.value
    assert e.node == "split" and str(e.packet).endswith(" 1500") and str(e.__cause__) == "bad line 1500"
    assert job.results("out") == [f"{i}.{j}" for i in range(1501) for j in range(3)]
    snap = job.snapshot()
    failed = snap.task(e.instance)
    sent = sum(c.packets_sent for c in snap.connections if c.target == e.instance)
    assert failed.packets_in == 1500 and failed.packets_in + 1 + failed.unprocessed + failed.queue.used == sent


def test_keyed_bundles_count_keys_and_show_user_code_each_packets_key(bundled, no_leak):
    from sage_nb.communication import partition

    class Tagged:
        def __call__(self, x):
            return (x, self.ctx.current_key)

    p = snb.Pipeline("bundle-keys")
    p.from_iterable(range(3000), name="src").key_by(lambda x: x % 10).map(Tagged, name="m", parallelism=3) \
        .sink(name="out")
    job = p.run(backend=bundled)
    snap = finished(job)
    out = job.results("out")
    assert sorted(x for x, _ in out) == list(range(3000)) and all(key == x % 10 for x, key in out)
    for i in range(3):
        owned = [k for k in range(10) if partition(k, 3) == i]
        task = snap.task(f"m[{i}]")
        assert task.packets_in == 300 * len(owned)
        assert len(task.top_keys) == min(5, len(owned)) and all(n == 300 for _, n in task.top_keys)
        assert {k for k, _ in task.top_keys} <= {repr(k) for k in owned}


def _key_counts(job: snb.Job, node: str) -> dict[str, tuple[dict, object]]:
    """Each instance of ``node``: its whole key counts and the key it saw last."""
    return {name: (dict(t.key_counts), t.ctx.current_key)
            for name, t in job.runner.tasks.items() if name.startswith(f"{node}[")}


class Keyed:
    """A map whose instances see their context: each result is the key the packet had."""

    def __call__(self, x):
        return (x, self.ctx.current_key)


@pytest.mark.parametrize("kind", ["map", "class", "filter", "flat_map", "sink", "collect"])
def test_keys_counted_after_the_function_match_one_by_one(no_leak, monkeypatch, kind):
    """A bundle's keys are counted after the user function ran over it, in bulk. The counts
    (only the first KEY_CAP distinct keys an instance sees) and the last key are those of
    packet-by-packet delivery; a class reading ``ctx.current_key`` sees each packet's."""
    from sage_nb.runtime import task as task_module

    monkeypatch.setattr(task_module, "KEY_CAP", 7)
    seen = {}
    for batch_size in (1, None):
        p = snb.Pipeline(f"bulk-keys-{kind}-{batch_size}")
        keyed = p.from_iterable([i * 7 % 101 for i in range(5000)], name="src").key_by(lambda x: x % 37)
        if kind == "map":
            keyed.map(lambda x: -x, name="k", parallelism=3).sink(name="out")
        elif kind == "class":
            keyed.map(Keyed, name="k", parallelism=3).sink(name="out")
        elif kind == "filter":
            keyed.filter(lambda x: x % 3, name="k", parallelism=3).sink(name="out")
        elif kind == "flat_map":
            keyed.flat_map(lambda x: [x] * (x % 3), name="k", parallelism=3).sink(name="out")
        else:
            keyed.sink(None if kind == "collect" else (lambda x: None), name="k", parallelism=3)
        job = p.run(batch_size=batch_size)
        finished(job)
        seen[batch_size] = _key_counts(job, "k")
        if kind == "class":
            assert all(key == x % 37 for x, key in job.results("out"))
    assert seen[None] == seen[1]
    assert sorted(len(counts) for counts, _ in seen[1].values()) == [6, 7, 7]  # (6 keys reach k[2])


def test_a_failing_plain_function_counts_the_keys_up_to_its_packet_as_one_by_one(no_leak):
    def check(x):
        if x == 2345:
            raise ValueError("bad")
        return x

    seen = {}
    for batch_size in (1, None):
        p = snb.Pipeline(f"bulk-keys-failure-{batch_size}")
        p.from_iterable(range(4000), name="src").key_by(lambda x: x % 5).map(check, name="k").sink(name="out")
        job = p.run(batch_size=batch_size)
        with pytest.raises(snb.JobFailed, match="bad"):
            job.wait(timeout=30)
        seen[batch_size] = _key_counts(job, "k")
    assert seen[None] == seen[1] == {"k[0]": ({0: 470, 1: 469, 2: 469, 3: 469, 4: 469}, 0)}


def test_a_generator_source_paused_and_resumed_loses_nothing(no_leak):
    """The source keeps items for its next bundle; a pause routes them first, and the run goes
    on in order after resume."""
    p = snb.Pipeline("batching-pause-generator")

    def items():
        yield from range(3000)

    p.from_source(items, name="src").map(lambda x: x + 1, name="m").sink(name="out")
    job = p.run(queue_maxsize=16)
    job.pause()
    wait_for(lambda: job.snapshot().status == "PAUSED", timeout=5)
    job.resume()
    assert job.wait(timeout=30).results("out") == list(range(1, 3001))
    snap = job.snapshot()
    assert snap.task("src[0]").packets_out == snap.task("out[0]").packets_in == 3000


def test_a_breakpoint_set_while_a_generator_source_runs_sees_each_later_packet(no_leak):
    """The source gathers items into bundles; once a breakpoint is set it sends packets one
    by one, so the breakpoint sees every packet that comes after, and nothing is lost."""
    from test_breakpoints import _collect_hits

    release = threading.Event()

    def items():
        yield from range(10)
        release.wait(10)  # the breakpoint is set meanwhile
        yield from range(10, 20)

    p = snb.Pipeline("batching-breakpoint-generator")
    p.from_source(items, name="src").map(lambda x: x * 10, name="m").sink(name="out")
    job = p.run(queue_maxsize=8)
    wait_for(lambda: job.snapshot().task("out[0]").packets_in == 10, timeout=10)
    bp = job.break_when(packet=lambda pkt: pkt.payload >= 10, on="m")
    release.set()
    hits = _collect_hits(job)
    assert [int(h.payload) for h in hits] == list(range(10, 20)) and len(bp.hits) == 10
    assert job.wait(timeout=10).results("out") == [x * 10 for x in range(20)]
