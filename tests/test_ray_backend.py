"""The Ray backend: one actor per task instance, queues in one manager actor per job.

Every test checks T21 invariant (c): once its job ended, no actor of the job is alive.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections import Counter

import pytest

import sage_nb as snb
from sage_nb.communication import partition
from sage_nb.communication.ray_queue import kill_manager, manager_name
from sage_nb.testing import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]  # the first test also starts Ray

LINES = ["the quick brown fox", "jumps over the lazy dog", "the dog sleeps", "a fox is quick"] * 25
KEYS = ["user-1", "user-42", "", "ü", b"raw", b"", 0, 1, -7, 10**20, None, (), ("a", 1),
        (("nested", 2), None), 3.5, "the", "dog"] * 3


@pytest.fixture(autouse=True)
def no_actors_left(ray_session):
    from sage_nb.runtime.ray_backend import alive_actors

    before = set(alive_actors())
    yield
    snb.stop_all()
    deadline = time.monotonic() + 10
    while set(alive_actors()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(alive_actors()) - before == set(), "actors left behind by the job"


class CountWords:
    """Keyed state: a running count per word, per instance."""

    def open(self):
        self.counts = collections.Counter()

    def __call__(self, word):
        self.counts[word] += 1
        return word, self.counts[word], self.ctx.parallel_index


def _wordcount(backend: str) -> snb.Job:
    p = snb.Pipeline(f"wc-{backend}")
    lines = p.from_iterable((line for line in LINES), name="lines", parallelism=2)  # not a sequence
    words = lines.flat_map(str.split, name="split", parallelism=2)
    words.key_by(lambda w: w).map(CountWords, name="count", parallelism=3).sink(name="out")
    return p.run(backend=backend).wait(timeout=90)


def test_wordcount_on_ray_equals_threads():
    from _reliability import assert_balanced

    ray_job, threads_job = _wordcount("ray"), _wordcount("threads")
    got, want = ray_job.results("out"), threads_job.results("out")
    assert sorted(got) == sorted(want)
    final = {w: c for w, c, _ in got}
    assert final == Counter(w for line in LINES for w in line.split())
    per_key: dict[str, list[int]] = collections.defaultdict(list)
    for w, c, _ in got:
        per_key[w].append(c)
    assert all(cs == list(range(1, len(cs) + 1)) for cs in per_key.values())  # per-key order (T31)
    owner = {w: i for w, _, i in got}
    assert owner == {w: partition(w, 3) for w in owner}  # the stable hash, in every worker
    assert ray_job.status is snb.JobStatus.FINISHED and ray_job.backend == "ray"
    snap = assert_balanced(ray_job)
    assert {t.state for t in snap.tasks} == {"finished"}
    assert sum(t.packets_in for t in snap.tasks if t.operator == "count") == len(got)
    assert snap.trace and {d.strategy for d in snap.trace} >= {"hash"}
    assert snap.task("count[0]").top_keys  # keyed counters travelled back from the actor


class Tag:
    def __call__(self, key):
        return key, self.ctx.parallel_index


def _keys():
    yield from KEYS


def _key_map(backend: str, parallelism: int) -> dict:
    p = snb.Pipeline(f"hash-{backend}-{parallelism}")
    src = p.from_source(_keys, name="keys", parallelism=2)  # Ray: each instance keeps its stride
    src.key_by(lambda k: k).map(Tag, name="tag", parallelism=parallelism).sink(name="out")
    out = p.run(backend=backend).wait(timeout=90).results("out")
    assert sorted(map(repr, (k for k, _ in out))) == sorted(map(repr, KEYS))  # each key exactly once
    return {repr(k): i for k, i in out}


def test_t26_hash_map_is_identical_to_threads_and_across_ray_workers():
    on_ray = _key_map("ray", 4)
    assert on_ray == _key_map("threads", 4)
    assert on_ray == {repr(k): partition(k, 4) for k in KEYS}


class Producer:
    """Stamps every item with (this instance, its own sequence number)."""

    def open(self):
        self.seq = 0

    def __call__(self, x):
        self.seq += 1
        return self.ctx.parallel_index, self.seq


class Consumer:
    def __call__(self, item):
        return (*item, self.ctx.parallel_index)


def test_t31_fifo_per_channel_three_to_two():
    p = snb.Pipeline("fifo")
    src = p.from_iterable(range(3000), name="src")
    src.map(Producer, name="produce", parallelism=3).map(Consumer, name="consume", parallelism=2) \
        .sink(name="out")
    out = p.run(backend="ray", queue_maxsize=16).wait(timeout=90).results("out")
    assert len(out) == len({(p, n) for p, n, _ in out}) == 3000
    channels: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for producer, n, consumer in out:
        channels[producer, consumer].append(n)
    assert len(channels) == 6
    for seq in channels.values():  # FIFO per (producer, consumer); no order across producers
        assert all(a < b for a, b in itertools.pairwise(seq))


def explode_at_37(x):
    if x == 37:
        raise ValueError(f"cannot handle {x}")
    return x * 2


def test_t17_error_names_node_instance_and_packet_with_the_remote_traceback():
    p = snb.Pipeline("t17")
    p.from_iterable(range(100), name="src").map(explode_at_37, name="boom").sink(name="out")
    job = p.run(backend="ray")
    with pytest.raises(snb.JobFailed) as info:
        job.wait(timeout=90)
    err = info.value
    assert err.node == "boom" and err.instance == "boom[0]" and "37" in str(err.packet)
    assert "boom[0] ('boom') raised on packet" in str(err) and "ValueError: cannot handle 37" in str(err)
    assert isinstance(err.__cause__, ValueError)  # the original exception, unpickled
    assert "explode_at_37" in err.traceback_text and "raise ValueError" in err.traceback_text
    assert job.status is snb.JobStatus.FAILED
    assert job.results("out") == [x * 2 for x in range(37)]  # what was routed before the error arrives


def test_unpicklable_function_fails_at_submit_naming_the_node():
    lock = threading.Lock()
    p = snb.Pipeline("pickle")
    p.from_iterable(range(3), name="src").map(lambda x: (lock, x)[1], name="locked").sink(name="out")
    with pytest.raises(snb.BackendError, match=r"node 'locked'.*cannot be sent to a Ray actor"):
        p.run(backend="ray")


def slow_forever(x):
    if x == 5:
        time.sleep(600)  # stuck in user code: only killing the actor ends it
    return x


def test_stop_cancels_within_10s_even_a_task_stuck_in_user_code():
    p = snb.Pipeline("stuck")
    p.from_source(lambda: 1, name="ones").map(slow_forever, name="stuck").sink(name="out")
    job = p.run(backend="ray")
    wait_for(lambda: job.snapshot().task("stuck[0]").packets_in >= 1, timeout=60)
    start = time.monotonic()
    job.stop(drain=False)
    assert time.monotonic() - start < 10
    assert job.status is snb.JobStatus.CANCELLED


class Counted:
    """A source of ``n`` items, one per millisecond."""

    def __iter__(self):
        for i in range(3000):
            time.sleep(0.001)
            yield i


def test_pause_reaches_the_actors_and_drain_finishes_what_was_emitted():
    p = snb.Pipeline("pause")
    p.from_source(Counted, name="src").map(abs, name="m").sink(name="out")
    job = p.run(backend="ray")
    wait_for(lambda: len(job.results("out")) > 50, timeout=60)
    job.pause()
    time.sleep(0.5)  # let batches already routed arrive
    frozen = job.snapshot().task("out[0]").packets_in
    time.sleep(0.5)
    assert job.snapshot().task("out[0]").packets_in == frozen and job.snapshot().status == "PAUSED"
    assert {t.state for t in job.snapshot().tasks} <= {"paused", "idle"}
    waiting = job.queue_contents("m[0]", limit=5)  # read from the manager, left in place
    assert len(waiting) <= 5 and all(q.kind in ("packet", "stop") for q in waiting)
    job.resume()
    wait_for(lambda: job.snapshot().task("out[0]").packets_in > frozen, timeout=30)
    job.stop(drain=True, timeout=60)
    assert job.status is snb.JobStatus.FINISHED
    snap = job.snapshot()
    emitted = snap.task("src[0]").packets_out
    assert 0 < emitted < 3000 and len(job.results("out")) == emitted == snap.task("out[0]").packets_in


def slow(x):
    time.sleep(0.002)
    return x


def _running_job(name: str) -> snb.Job:
    p = snb.Pipeline(name)
    p.from_source(lambda: 1, name="src").map(slow, name="map").sink(name="out")
    job = p.run(backend="ray")
    wait_for(lambda: len(job.results("out")) > 20, timeout=60)
    return job


def test_t21_killing_a_task_actor_fails_the_job_within_10s(ray_session):
    job = _running_job("kill-task")
    actor = ray_session.get_actor(f"{job.runner.job}/map[0]", namespace="sage_nb")
    start = time.monotonic()
    ray_session.kill(actor, no_restart=True)
    with pytest.raises(snb.JobFailed, match=r"map\[0\].*died.*up to \d+ packet\(s\)") as info:
        job.wait(timeout=30)
    assert time.monotonic() - start < 10
    assert info.value.instance == "map[0]" and job.status is snb.JobStatus.FAILED


def test_t21_killing_the_queue_manager_fails_the_job_within_10s():
    job = _running_job("kill-queues")
    start = time.monotonic()
    kill_manager(job.runner.job)
    with pytest.raises(snb.JobFailed, match=r"queue manager .* died; up to \d+ packet\(s\)") as info:
        job.wait(timeout=30)
    assert time.monotonic() - start < 10
    assert info.value.instance == manager_name(job.runner.job)


class Lookup:
    def __init__(self, table):
        self.table = table

    def get(self, key):
        return self.table[key]


class Enrich:
    def __call__(self, x):
        return x, self.ctx.call_service("lookup", "get", x % 5)


def test_services_are_called_from_task_actors():
    p = snb.Pipeline("svc")
    p.service("lookup", Lookup, {i: i * 100 for i in range(5)}, workers=2)
    p.from_iterable(range(60), parallelism=2).map(Enrich, name="enrich", parallelism=2).sink(name="out")
    out = p.run(backend="ray").wait(timeout=90).results("out")
    assert sorted(out) == [(x, (x % 5) * 100) for x in range(60)]


# --------------------------------------------------------------------------- T32
class Pair:
    """(key, x, this instance, its sequence number): the order of each channel out of it shows
    downstream."""

    fault = False

    def open(self):
        self.seq = 0

    def __call__(self, x):
        self.seq += 1
        return f"k{x % 11}", explode_at_37(x) if self.fault else x, self.ctx.parallel_index, self.seq


class FaultyPair(Pair):
    fault = True


class Running:
    """Keyed state: a running total per key, with where each item came from and arrived."""

    def open(self):
        self.total = collections.Counter()

    def __call__(self, item):
        key, value, producer, seq = item
        self.total[key] += value
        return key, value, self.total[key], producer, seq, self.ctx.parallel_index


def _mixed(backend: str, rpc: bool, fault: bool = False) -> snb.Job:
    p = snb.Pipeline(f"t32-{backend}-{'rpc' if rpc else 'local'}")
    src = p.from_iterable(range(600), name="src", parallelism=2)
    kept = src.filter(lambda x: x % 7 != 3, name="keep", parallelism=3)
    pairs = kept.map(FaultyPair if fault else Pair, name="pair", parallelism=2)
    keyed = pairs.key_by(lambda kv: kv[0])
    totals = (keyed.via("rpc") if rpc else keyed).map(Running, name="total", parallelism=3)
    totals.sink(name="out")
    pairs.broadcast().map(lambda kv: kv[1], name="copy", parallelism=3).sink(name="copies")
    return p.run(backend=backend)


def test_t32_backend_parity_threads_ray_and_rpc_edges():
    jobs = {(b, rpc): _mixed(b, rpc).wait(timeout=180) for b, rpc in
            [("threads", False), ("ray", False), ("threads", True), ("ray", True)]}
    kept = [x for x in range(600) if x % 7 != 3]
    want = {f"k{k}": (len([x for x in kept if x % 11 == k]), sum(x for x in kept if x % 11 == k))
            for k in range(11)}
    for job in jobs.values():
        assert job.status is snb.JobStatus.FINISHED
        assert sorted(job.results("copies")) == sorted(kept * 3)  # broadcast: one copy per instance
        out = job.results("out")
        assert collections.Counter((key, value) for key, value, *_ in out) == \
            collections.Counter((f"k{x % 11}", x) for x in kept)  # every item once, none made up
        per_key: dict[str, list[int]] = collections.defaultdict(list)
        channels: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        for key, _, total, producer, seq, consumer in out:  # (the sink keeps each consumer's order)
            per_key[key].append(total)
            channels[producer, consumer].append(seq)
        assert {k: (len(seq), max(seq)) for k, seq in per_key.items()} == want
        # FIFO per channel pair[i] -> total[j], through the in-process, Ray or RPC queue
        assert len(channels) == 6 and all(seqs == sorted(seqs) for seqs in channels.values())
    owners = {k: {(key, i) for key, i in job.snapshot().task("total[0]").top_keys} for k, job in jobs.items()}
    assert len({frozenset(o) for o in owners.values()}) == 1, "the same keys meet total[0] everywhere"

    errors = {}
    for backend in ("threads", "ray"):
        with pytest.raises(snb.JobFailed) as info:
            _mixed(backend, rpc=False, fault=True).wait(timeout=180)
        errors[backend] = info.value
    assert {(e.node, type(e.__cause__), str(e.__cause__)) for e in errors.values()} == \
        {("pair", ValueError, "cannot handle 37")}
    assert all(str(e.packet).endswith("37") for e in errors.values()), errors


def test_batch_size_and_linger_apply_on_ray_too():
    p = snb.Pipeline("ray-batch-1")
    p.from_iterable(range(50), name="src").map(lambda x: x + 1, name="inc").sink(name="out")
    job = p.run(backend="ray", batch_size=1, linger=0.001).wait(timeout=120)
    assert job.results("out") == list(range(1, 51))  # one actor call per packet, still FIFO
    with pytest.raises(snb.BackendError, match=r"batch_size must be an int"):
        p.run(backend="ray", batch_size=0)


def test_a_generator_source_travels_in_bundles_yet_an_item_never_waits_for_the_next(tmp_path):
    """A generator's items wait in their source as payloads and leave as one bundle (Ray sends
    no packet object): each item still reaches the sink while the source waits in user code
    for the driver to have seen it, in order, counted on every connection."""
    def items():
        for i in range(6):
            yield i
            while not (tmp_path / f"seen-{i}").exists():  # the driver saw item i at the sink
                time.sleep(0.005)
        yield from range(6, 3000)

    p = snb.Pipeline("ray-gather")
    p.from_source(items, name="src").map(lambda x: x * 2, name="m").sink(name="out")
    job = p.run(backend="ray")
    for i in range(6):
        wait_for(lambda i=i: len(job.results("out")) > i, timeout=30)
        (tmp_path / f"seen-{i}").touch()
    job.wait(timeout=120)
    assert job.results("out") == [2 * x for x in range(3000)]
    snap = job.snapshot()
    assert [c.packets_sent for c in snap.connections] == [3000, 3000]
    first = {sender: min(d.seq for d in snap.trace if d.sender == sender) for sender in ("src[0]", "m[0]")}
    assert first["m[0]"] == first["src[0]"], "the map's output keeps the source's trace ids"
