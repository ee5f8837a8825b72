"""The Job handle and the operator semantics users rely on (DESIGN §2-§3)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import threading
import time
from collections import Counter

import pytest
from _reliability import needs_shared_state

import sage_nb as snb
from sage_nb.communication import partition
from sage_nb.testing import Scripted, wait_for


def test_operators_map_flat_map_filter_union_co_map(backend):
    p = snb.Pipeline("ops")
    nums = p.from_iterable(range(10), name="nums")
    evens = nums.filter(lambda x: x % 2 == 0, name="evens")
    words = p.from_iterable(["a b", "c"], name="words").flat_map(str.split, name="split")
    evens.union(words).map(str, name="both").sink(name="union")
    evens.connect(words).co_map([lambda x: ("n", x), lambda w: ("w", w)], name="tag").sink(name="tagged")
    job = p.run(backend=backend).wait(timeout=120)
    assert sorted(job.results("union")) == sorted(["0", "2", "4", "6", "8", "a", "b", "c"])
    assert sorted(job.results("tagged")) == sorted([("n", x) for x in range(0, 10, 2)] +
                                                   [("w", w) for w in "abc"])


def test_map_forwards_none_and_user_sink_sees_everything(backend):
    needs_shared_state(backend)
    seen = []
    p = snb.Pipeline("none")
    p.from_iterable([1, 2, 3]).map(lambda x: None if x == 2 else x).sink(seen.append, name="s")
    p.run(backend=backend).wait(timeout=30)
    assert sorted(seen, key=str) == [1, 3, None]


def test_class_functions_get_ctx_before_open_and_close_once(backend):
    needs_shared_state(backend)
    events = []
    lock = threading.Lock()

    class Tagger:
        def open(self):
            with lock:
                events.append(("open", self.ctx.name, self.ctx.parallel_index, self.ctx.parallelism))

        def __call__(self, x):
            return (self.ctx.parallel_index, x)

        def close(self):
            with lock:
                events.append(("close", self.ctx.name))

    p = snb.Pipeline("cls")
    p.from_iterable(range(6)).map(Tagger, name="tag", parallelism=3).sink(name="out")
    out = p.run(backend=backend).wait(timeout=30).results("out")
    assert sorted(x for _, x in out) == list(range(6))
    assert sorted(e for e in events if e[0] == "open") == [("open", f"tag[{i}]", i, 3) for i in range(3)]
    assert sorted(e for e in events if e[0] == "close") == [("close", f"tag[{i}]") for i in range(3)]


def test_parallel_sources_split_their_input(backend):
    def gen():
        yield from range(100)

    p = snb.Pipeline("split")
    p.from_iterable(list(range(50)), name="seq", parallelism=3).sink(name="a")
    p.from_source(gen, name="gen", parallelism=4).sink(name="b")
    p.from_iterable(iter(range(30)), name="it", parallelism=2).sink(name="c")
    job = p.run(backend=backend).wait(timeout=30)
    assert sorted(job.results("a")) == list(range(50))    # not replayed per instance (SAGE did)
    assert sorted(job.results("b")) == list(range(100))
    assert sorted(job.results("c")) == list(range(30))


def test_callable_source_ends_with_END(backend):
    counter = itertools.count()

    def next_item():
        n = next(counter)
        return snb.END if n == 5 else n

    p = snb.Pipeline("callable")
    p.from_source(next_item).sink(name="out")
    assert p.run(backend=backend).wait(timeout=30).results("out") == [0, 1, 2, 3, 4]


def test_context_manager_waits_and_raises(no_leak):
    p = snb.Pipeline("cm")
    p.from_iterable(range(3)).map(lambda x: 1 // (x - 2)).sink(name="out")
    with pytest.raises(snb.JobFailed) as info, p.run() as job:
        pass
    assert job.status is snb.JobStatus.FAILED
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_context_manager_cancels_when_the_block_raises(no_leak):
    p = snb.Pipeline("cm2")
    p.from_source(itertools.count).sink(name="out")
    with pytest.raises(RuntimeError, match="user error"), p.run() as job:
        raise RuntimeError("user error")
    assert job.status is snb.JobStatus.CANCELLED


def test_wait_timeout_leaves_job_running_then_stop(no_leak):
    p = snb.Pipeline("timeout")
    p.from_source(itertools.count).sink(lambda x: None, name="out")
    job = p.run()
    with pytest.raises(TimeoutError, match=r"still running after 0\.05 s; call job\.stop"):
        job.wait(timeout=0.05)
    assert job.status is snb.JobStatus.RUNNING
    assert job.stop().status is snb.JobStatus.CANCELLED


def test_a_wait_that_times_out_says_the_job_is_paused(no_leak):
    p = snb.Pipeline("timeout-paused")
    p.from_iterable(range(10), name="src").sink(name="out")
    job = p.run(paused=True)
    with pytest.raises(TimeoutError, match=r"still running after 0\.05 s \(paused: job\.resume\(\) goes on\)"):
        job.wait(timeout=0.05)
    job.break_when(first_packet="out")
    job.resume()
    wait_for(lambda: job.breakpoint_hit, timeout=10)
    with pytest.raises(TimeoutError, match=r"\(paused at breakpoint 1, first packet into out at out\[0\]; job\.resume"):
        job.wait(timeout=0.05)
    job.resume()
    assert job.wait(timeout=10).results("out") == list(range(10))


def test_wait_returns_promptly_after_the_last_packet(no_leak):
    src = Scripted(range(3), hold_at=2)
    p = snb.Pipeline("prompt")
    p.from_iterable(src).map(abs).sink(name="out")
    job = p.run()
    wait_for(lambda: job.snapshot().task("out[0]").packets_in == 2, timeout=10)
    src.release()
    start = time.monotonic()
    job.wait(timeout=10)
    assert time.monotonic() - start < 0.5  # no quiet-period heuristics (SAGE: 0.8-1.9 s)


def test_pause_and_resume_lose_nothing(no_leak):
    p = snb.Pipeline("pause")
    p.from_iterable(range(2000)).map(lambda x: x + 1).sink(name="out")
    job = p.run(queue_maxsize=16)
    job.pause()
    assert job.paused
    wait_for(lambda: job.snapshot().status == "PAUSED", timeout=5)
    job.resume()
    assert sorted(job.wait(timeout=30).results("out")) == list(range(1, 2001))


def test_results_of_unknown_sink_names_known_ones():
    p = snb.Pipeline("res")
    p.from_iterable([1]).sink(name="out")
    job = p.run().wait(timeout=10)
    with pytest.raises(KeyError, match=r"no collecting sink named 'nope'; collecting sinks: \['out'\]"):
        job.results("nope")


def test_snapshot_is_frozen_and_complete(no_leak):
    p = snb.Pipeline("snap")
    p.from_iterable(range(100)).key_by(lambda x: x % 4).map(abs, name="m", parallelism=2).sink(name="out")
    job = p.run().wait(timeout=10)
    snap = job.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.status = "x"  # type: ignore[misc]
    assert snap.status == "FINISHED"
    assert [t.state for t in snap.tasks] == ["finished"] * 4
    m = [t for t in snap.tasks if t.operator == "m"]
    assert sum(t.packets_in for t in m) == 100
    assert all(t.stops_received == t.stops_expected == 1 for t in m)
    assert sum(c.packets_sent for c in snap.connections if c.target_operator == "m") == 100
    assert {c.strategy for c in snap.connections if c.target_operator == "m"} == {"hash"}
    assert snap.trace and snap.trace[0].explain().startswith(("hash(", "round-robin"))
    assert snap.to_dict()["tasks"][0]["name"] == "source[0]"


def test_rerunning_a_pipeline_stops_its_previous_job(no_leak):
    jobs = []
    for i in range(3):
        p = snb.Pipeline("rerun")
        p.from_source(itertools.count).sink(lambda x: None, name="out")
        if i:  # not silently: two pipelines named alike (unnamed ones) would stop each other
            with pytest.warns(RuntimeWarning, match=rf"stopped job 'rerun-{i}': a job of pipeline 'rerun' "
                                                    rf"started \('rerun-{i + 1}'\); give pipelines different"):
                jobs.append(p.run())
        else:
            jobs.append(p.run())
    assert [j.status for j in jobs] == [snb.JobStatus.CANCELLED] * 2 + [snb.JobStatus.RUNNING]
    assert snb.jobs() == [jobs[-1]]
    assert snb.stop_all() == 1


@pytest.mark.parametrize("drain", [False, True])
def test_a_function_of_the_job_can_stop_it(backend, drain, no_leak):
    needs_shared_state(backend)  # (the job handle lives in this process)
    box: dict[str, snb.Job] = {}
    started = threading.Event()

    def enough(x):
        if x == 100 and started.wait(10):
            box["job"].stop(drain=drain)

    p = snb.Pipeline("stop-inside")
    p.from_source(itertools.count, name="src").sink(enough, name="out")
    box["job"] = job = p.run(backend=backend, queue_maxsize=64)
    started.set()
    job.wait(30)  # no JobFailed: the sink asked for the end
    assert job.status is (snb.JobStatus.FINISHED if drain else snb.JobStatus.CANCELLED)
    assert job.snapshot().task("out[0]").packets_in >= 101


# --------------------------------------------------------------------------- what if
def _same(x):
    return x


def _hold_until(path, x):
    deadline_at = time.monotonic() + 30  # a bug must not hang the run forever
    while not os.path.exists(path) and time.monotonic() < deadline_at:
        time.sleep(0.005)
    return x


def test_what_if_repartitions_the_keys_counted_so_far(backend, tmp_path):
    users = [f"u{i}" for i in range(8)]
    skewed = ["u42" if i % 5 else users[i % 8] for i in range(2000)]  # one hot key: 80 % of the packets
    gate = tmp_path / "go"
    p = snb.Pipeline("what-if")
    p.from_iterable(skewed, name="events").key_by(_same).map(_same, name="count", parallelism=4) \
        .map(functools.partial(_hold_until, str(gate)), name="hold").sink(name="out")
    job = p.run(backend=backend, queue_maxsize=64)
    if backend != "step":  # while it runs (on Ray: asked of the actors), a part of what comes
        live = wait_for(lambda: job.key_counts("count"), timeout=60)
        assert live.keys() <= set(skewed) and all(n <= skewed.count(k) for k, n in live.items())
    gate.touch()
    job.wait(timeout=120)
    assert job.key_counts("count") == Counter(skewed)  # (on Ray: from the actors' final reports)
    own = job.what_if("count", 4)
    assert own.packets == tuple(job.snapshot().task(f"count[{i}]").packets_in for i in range(4))
    assert own.hottest[partition("u42", 4)] == "u42"
    seven = job.what_if("count", 7)
    assert sum(seven.packets) == 2000 and seven.packets[partition("u42", 7)] >= 1600
    assert seven.skew > own.skew > 3  # more instances do not spread one hot key: the skew grows
    with pytest.raises(ValueError, match=re.escape("'hold' is not behind key_by")):
        job.what_if("hold", 2)
    with pytest.raises(KeyError, match="no operator named 'nope'"):
        job.key_counts("nope")
    with pytest.raises(ValueError, match="parallelism must be an int >= 1, got 0"):
        job.what_if("count", 0)


def test_a_misspelt_run_option_is_named_with_the_fix():
    p = snb.Pipeline("typo")
    p.from_iterable(range(3)).sink(name="out")
    with pytest.raises(snb.BackendError, match=r"unknown run option 'queue_max_size' \(did you mean "
                                               r"'queue_maxsize'\?\); the options are batch_size, chain, "):
        p.run(queue_max_size=8)
    with pytest.raises(snb.BackendError, match=r"unknown run option 'colour'; the options are"):
        snb.run(p.graph, colour="red")
    assert snb.jobs() == []


@pytest.mark.parametrize(("options", "message"), [
    ({"put_timeout": "x"}, r"put_timeout must be a number of seconds > 0, got 'x'; None \(the default\) waits"),
    ({"put_timeout": -1}, r"put_timeout must be a number of seconds > 0, got -1"),
    ({"paused": "no"}, r"paused must be True or False, got 'no'"),
    ({"service_timeout": -1}, r"service_timeout must be a number of seconds > 0, got -1"),
    ({"job_id": 5}, r"job_id must be a non-empty string, got 5"),
])
def test_a_bad_run_option_value_is_refused_before_the_job_starts(options, message):
    p = snb.Pipeline("bad-values")
    p.from_iterable(range(3)).sink(name="out")
    with pytest.raises(snb.SageError, match=message):
        p.run(**options)
    assert snb.jobs() == []


def test_a_source_iterator_is_not_silently_run_twice(backend):
    p = snb.Pipeline("iterator-twice")
    p.from_iterable(x * 2 for x in range(5)).sink(name="out")
    assert p.run(backend=backend).wait(timeout=30).results("out") == [0, 2, 4, 6, 8]
    if backend == "ray":  # (Ray listed the items to send them to its actors: they are read again)
        assert p.run(backend=backend).wait(timeout=60).results("out") == [0, 2, 4, 6, 8]
        return
    with pytest.raises(snb.GraphError, match=r"source 'source' reads an iterator \(generator\), which this "
                                             r"pipeline's first run used up; to run it again, give"):
        p.run(backend=backend)


def test_a_source_function_returning_an_iterator_fails_saying_what_to_write(backend):
    data = [1, 2, 3]
    p = snb.Pipeline("iterator-function")
    p.from_source(lambda: iter(data), name="src").sink(name="out")
    with pytest.raises(snb.JobFailed, match=r"returned an iterator \(list_iterator\), and a plain function is "
                                            r"called once per item until it returns snb\.END; .*from_iterable"):
        p.run(backend=backend).wait(timeout=30)
