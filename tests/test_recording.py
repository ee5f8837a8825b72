"""Recording, going back and replay on the step backend; saved recordings load without code."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from _pipelines import WORDCOUNT_OUT, build, specs, wordcount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sage_nb as snb
from sage_nb.testing import wait_for


def _plain(snapshot) -> dict:
    """A snapshot as JSON data (tuples become lists, as in a saved recording)."""
    return json.loads(json.dumps(snapshot.to_dict()))


def _fresh_states(make, n_events):
    """The live snapshot and queue contents of a fresh run after each of its first events."""
    job = make()
    states = [(job.snapshot(), _queues(job))]
    for _ in range(n_events):
        job.step()
        states.append((job.snapshot(), _queues(job)))
    return states


def _queues(job) -> dict:
    return {n: job.queue_contents(n) for n, c in job.plan.contexts.items() if c.input_qd is not None}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(max_ops=4), policy=st.sampled_from(["round_robin", "depth_first"]), data=st.data())
def test_seek_restores_exactly_the_state_of_a_fresh_run(spec, policy, data):
    def make():
        return build(spec).run(backend="step", policy=policy, job_id="seek",
                               queue_maxsize=spec["queue_maxsize"])

    job = make()
    job.run_to_end()
    n = len(job.recording())
    fresh = _fresh_states(make, n)
    for i in data.draw(st.lists(st.integers(0, n), min_size=1, max_size=6)):
        job.seek(i)
        assert job.position == i
        assert (job.snapshot(), _queues(job)) == fresh[i]
    assert [job.recording().snapshot(i) for i in range(n + 1)] == [s for s, _ in fresh]


def test_back_and_stepping_forward_replay_the_recording():
    job = wordcount().run(backend="step", job_id="replay")
    first = job.step(6)
    at6 = _plain(job.snapshot())
    assert job.back().index == 5 and job.position == 5
    assert job.back(10) is None and job.position == 0
    assert job.snapshot().extra["step"] == 0 and job.snapshot().tasks[0].state == "starting"
    assert job.step(6) == first                      # replayed, not run again
    assert _plain(job.snapshot()) == at6 and job.position == 6
    assert job.seek(3) == first[2]
    job.run_to_end()                                 # replays 4..6, then runs live
    assert job.status is snb.JobStatus.FINISHED and job.position == len(job.recording())
    assert sorted(job.results("out")) == WORDCOUNT_OUT
    with pytest.raises(IndexError, match=r"position 999 is not recorded: use 0\.\.\d+"):
        job.seek(999)


def test_queue_contents_age_in_steps():
    p = snb.Pipeline("ages")
    p.from_iterable(["a b c"], name="src").flat_map(str.split, name="split").sink(name="out")
    job = p.run(backend="step", policy="depth_first")
    job.step(2)
    waiting = job.queue_contents("out[0]")
    assert [(q.seq, q.kind, q.payload, q.sender, q.age) for q in waiting] == [
        (1, "packet", "'a'", "split[0]", 0.0), (1, "packet", "'b'", "split[0]", 0.0),
        (1, "packet", "'c'", "split[0]", 0.0)]
    job.step()
    assert [(q.payload, q.age) for q in job.queue_contents("out[0]")] == [("'b'", 1.0), ("'c'", 1.0)]
    job.run_until(lambda e: e.kind == "finish" and e.instance == "split[0]")
    assert job.queue_contents("out[0]")[-1].kind == "stop"
    with pytest.raises(ValueError, match="'src\\[0\\]' is a source: it has no input queue"):
        job.queue_contents("src[0]")
    with pytest.raises(KeyError, match="no instance named 'nope'"):
        job.queue_contents("nope")


def test_queue_contents_on_threads_age_in_seconds(no_leak):
    gate = threading.Event()

    def stuck(x):
        gate.wait(10)

    p = snb.Pipeline("ages-threads")
    p.from_iterable(range(10), name="src").sink(stuck, name="out")
    job = p.run(queue_maxsize=4)
    try:
        wait_for(lambda: job.snapshot().task("out[0]").queue.used == 4, timeout=10)
        waiting = job.queue_contents("out[0]")
        first = int(waiting[0].payload)  # the sink holds a batch before these: oldest first
        assert [q.payload for q in waiting] == [str(first + i) for i in range(4)]
        assert all(q.kind == "packet" and q.age >= 0.0 for q in waiting)
        assert [q.seq for q in waiting] == sorted(q.seq for q in waiting)
    finally:
        gate.set()
    job.wait(timeout=10)


def test_the_recording_is_capped_with_a_clear_message():
    p = snb.Pipeline("capped")
    p.from_iterable(range(20), name="src").sink(name="out")
    job = p.run(backend="step", record_limit=10)
    with pytest.warns(RuntimeWarning, match="keeps 10 events; back\\(\\)/seek\\(\\) reach those only"):
        job.run_to_end()
    rec = job.recording()
    assert len(rec) == 10 and rec.truncated and job.results("out") == list(range(20))
    now = job.position
    assert now == 43 and job.seek(5).index == 5
    with pytest.raises(IndexError, match=r"use 0\.\.10 or 43 \(now\)"):
        job.seek(11)
    job.seek(now)
    assert job.snapshot().status == "FINISHED"


def test_a_saved_recording_replays_without_the_users_code(tmp_path):
    def shout(word):  # user code: the subprocess never sees it
        return word.upper() + "!"

    p = snb.Pipeline("shipped")
    p.from_iterable(["to be or", "not to be"], name="lines") \
        .flat_map(str.split, name="split", parallelism=2) \
        .key_by(lambda w: (w, len(w))).map(shout, name="shout", parallelism=3).sink(name="out")
    job = p.run(backend="step", job_id="shipped", queue_maxsize=2)
    job.run_to_end()
    path = job.save_recording(tmp_path / "run.json")
    script = (
        "import json, sys, sage_nb\n"
        f"rec = sage_nb.load_recording({str(path)!r})\n"
        "assert not any('test_recording' in m for m in sys.modules), 'user code was imported'\n"
        "out = {'len': len(rec), 'events': [str(e) for e in rec.events],\n"
        "       'snapshots': [rec.snapshot(i).to_dict() for i in range(len(rec) + 1)],\n"
        "       'queue': [[q.payload for q in rec.queue_contents('shout[0]', i)] for i in range(len(rec) + 1)]}\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    rec = job.recording()
    assert got["len"] == len(rec) > 0
    assert got["events"] == [str(e) for e in rec.events]
    assert got["snapshots"] == [_plain(rec.snapshot(i)) for i in range(len(rec) + 1)]
    assert got["queue"] == [[q.payload for q in rec.queue_contents("shout[0]", i)]
                            for i in range(len(rec) + 1)]
    assert got["snapshots"][-1]["status"] == "FINISHED"
    loaded = snb.load_recording(path)
    assert loaded.events == rec.events and loaded.snapshot(7) == rec.snapshot(7)


def test_loading_something_else_says_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(snb.SageError, match=r"bad\.json: not a sage_nb recording .*'format'"):
        snb.load_recording(bad)
    bad.write_text("{not json")
    with pytest.raises(snb.SageError, match="not a sage_nb recording"):
        snb.load_recording(bad)


def test_recording_a_long_run_stays_fast():
    p = snb.Pipeline("fast")
    p.from_iterable(range(3000), name="src").key_by(lambda x: x % 50) \
        .map(abs, name="m", parallelism=4).sink(name="out")
    job = p.run(backend="step")
    start = time.monotonic()
    job.wait(timeout=60)
    assert len(job.recording()) == 3001 + 3008 + 3005 and time.monotonic() - start < 20
    assert job.recording().snapshot(4000).task("m[0]").top_keys == _top(job, 4000)


def _top(job, i):
    """``top_keys`` of m[0] recomputed from the recorded events up to position ``i``."""
    counts: dict = {}
    for e in job.recording().events[:i]:
        if e.instance == "m[0]" and e.kind == "packet":
            k = int(e.payload) % 50
            counts[k] = counts.get(k, 0) + 1
    return tuple((repr(k), c) for k, c in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
