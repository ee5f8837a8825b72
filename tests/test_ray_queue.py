"""RayQueueDescriptor: queue.Queue semantics through the job's RayQueueManager actor."""

from __future__ import annotations

import pickle
import queue
import random
import subprocess
import sys
import threading
import time
import uuid

import pytest

from sage_nb.communication import (
    BaseQueueDescriptor,
    Bundle,
    Packet,
    QueueShutDown,
    RayQueueDescriptor,
    StopSignal,
)
from sage_nb.communication.ray_queue import QueueLost, RayQueueProxy, kill_manager, manager_name

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]  # the first test also starts Ray


def _gone(name: str) -> bool:
    from sage_nb.runtime.ray_backend import alive_actors

    kill_manager(name)
    deadline = time.monotonic() + 10
    while alive_actors(manager_name(name)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive_actors(manager_name(name)) == []


@pytest.fixture(scope="module")
def job(ray_session):
    """One queue manager for the module's tests (each test uses its own queue ids); it is
    killed, and checked gone, at the end."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    assert _gone(name)


@pytest.fixture
def own_job(ray_session):
    """A manager of its own, for a test that kills it."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    assert _gone(name)


def test_put_get_and_timeouts_speak_the_stdlib_language(job):
    qd = RayQueueDescriptor(maxsize=2, queue_id="q", job=job)
    qd.put("a")
    qd.put_nowait("b")
    assert qd.full() and qd.qsize() == 2
    with pytest.raises(queue.Full):
        qd.put_nowait("c")
    took = 0.0
    with pytest.raises(queue.Full):
        took = -time.monotonic()
        qd.put("c", timeout=0.2)
    took += time.monotonic()
    assert 0.2 <= took < 10
    assert [qd.get(), qd.get_nowait()] == ["a", "b"]
    assert qd.empty()
    with pytest.raises(queue.Empty):
        qd.get_nowait()
    with pytest.raises(queue.Empty):
        qd.get(timeout=0.1)
    assert qd.statistics().to_dict() == {"used": 0, "capacity": 2, "peak": 2, "total_in": 2,
                                        "total_out": 2}


def test_a_blocked_get_on_one_queue_never_delays_another(job):
    a = RayQueueDescriptor(maxsize=4, queue_id="a", job=job)
    b = RayQueueDescriptor(maxsize=4, queue_id="b", job=job)
    got = []
    blocked = threading.Thread(target=lambda: got.append(a.get(timeout=20)))
    blocked.start()
    time.sleep(0.2)  # the getter is now waiting inside the manager
    start = time.monotonic()
    for i in range(20):
        b.put(i)
        assert b.get(timeout=5) == i
    assert time.monotonic() - start < 10 and blocked.is_alive()
    a.put("late")
    blocked.join(10)
    assert got == ["late"]


def test_put_many_and_get_many_move_batches_in_order_with_backpressure(job):
    qd = RayQueueDescriptor(maxsize=10, queue_id="batches", job=job)
    qd.put_many(list(range(6)))
    assert qd.get_many(4) == [0, 1, 2, 3]
    assert qd.get_many(100) == [4, 5]
    received: list[int] = []

    def consume() -> None:
        while len(received) < 200:
            received.extend(qd.get_many(7, timeout=10))
            time.sleep(0.002)

    t = threading.Thread(target=consume)
    t.start()
    qd.put_many(list(range(200)), timeout=30)  # 200 items through a queue of 10: blocks, never drops
    t.join(30)
    assert received == list(range(200))
    s = qd.statistics()
    assert s.peak <= 10 and s.total_in == s.total_out == 206


def test_put_many_partial_on_full_then_full_raised(job):
    qd = RayQueueDescriptor(maxsize=3, queue_id="partial", job=job)
    with pytest.raises(queue.Full):
        qd.put_many([1, 2, 3, 4, 5], timeout=0.1)
    assert qd.get_many(10) == [1, 2, 3]  # like LocalQueue: what fitted was put, in order


def test_statistics_all_reads_every_queue_in_one_call(job, monkeypatch):
    qds = [RayQueueDescriptor(maxsize=8, queue_id=f"s{i}", job=job) for i in range(4)]
    for i, qd in enumerate(qds):
        qd.put_many(list(range(i + 1)))
    calls = []
    original = RayQueueProxy.call
    monkeypatch.setattr(RayQueueProxy, "call", lambda self, ref, wait=0.0: calls.append(ref) or
                        original(self, ref, wait))
    stats = qds[0].statistics_all()
    assert len(calls) == 1
    mine = {qid: s for qid, s in stats.items() if qid in {"s0", "s1", "s2", "s3"}}  # the module's others too
    assert {qid: s.used for qid, s in mine.items()} == {"s0": 1, "s1": 2, "s2": 3, "s3": 4}
    assert all(s.capacity == 8 for s in mine.values())


def test_shutdown_wakes_blocked_callers_with_queue_shutdown(job):
    qd = RayQueueDescriptor(maxsize=1, queue_id="stop", job=job)
    qd.put("full")
    errors: list[BaseException] = []

    def call(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)

    getter_qd = RayQueueDescriptor(maxsize=1, queue_id="stop-empty", job=job)
    threads = [threading.Thread(target=call, args=(qd.put, "more")),
               threading.Thread(target=call, args=(getter_qd.get,))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    qd.shutdown()
    getter_qd.shutdown()
    for t in threads:
        t.join(10)
    assert time.monotonic() - start < 5
    assert [type(e) for e in errors] == [QueueShutDown, QueueShutDown]


def test_a_killed_manager_fails_blocked_callers_loudly(own_job):
    job = own_job
    qd = RayQueueDescriptor(maxsize=1, queue_id="lost", job=job)
    qd.put(1)
    errors: list[BaseException] = []

    def put_blocked() -> None:
        try:
            qd.put(2)
        except QueueLost as exc:
            errors.append(exc)

    t = threading.Thread(target=put_blocked)
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    kill_manager(job)
    t.join(15)
    assert time.monotonic() - start < 10
    assert errors and manager_name(job) in str(errors[0]) and "'lost'" in str(errors[0])


def _conserve(qd: RayQueueDescriptor, n: int, producers: int, consumers: int, single: bool) -> list:
    """``n`` distinct items through ``qd`` under 10 ms get timeouts (and 10 ms put timeouts with
    retries when ``single``), with 0-2 ms jitter; returns what arrived."""
    received: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def produce(items: list[int], seed: int) -> None:
        rnd = random.Random(seed)
        i = 0
        while i < len(items):
            batch = items[i:i + (1 if single else rnd.randint(1, 8))]
            try:
                if single:
                    qd.put(batch[0], timeout=0.01)
                else:
                    qd.put_many(batch)
            except queue.Full:  # the item was not put: retry it
                continue
            i += len(batch)
            time.sleep(rnd.random() * 0.002)

    def consume(seed: int) -> None:
        rnd = random.Random(seed)
        while not done.is_set():
            try:  # single gets, or small batches, with 10 ms timeouts racing the producers
                k = 1 if single else rnd.choice((1, 4, 16))
                items = [qd.get(timeout=0.01)] if k == 1 else qd.get_many(k, timeout=0.01)
            except queue.Empty:
                continue
            with lock:
                received.extend(items)
                if len(received) >= n:
                    done.set()

    items = list(range(n))
    workers = [threading.Thread(target=produce, args=(items[k::producers], k)) for k in range(producers)]
    workers += [threading.Thread(target=consume, args=(100 + k,)) for k in range(consumers)]
    for t in workers:
        t.start()
    done.wait(100)
    done.set()
    for t in workers:
        t.join(10)
    return received


def test_t36_conservation_under_short_timeouts(job):
    qd = RayQueueDescriptor(maxsize=0, queue_id="t36", job=job)
    received = _conserve(qd, 10_000, producers=2, consumers=3, single=False)
    assert len(received) == 10_000 and sorted(received) == list(range(10_000))  # no loss, no duplicate


def test_t36_conservation_with_a_tiny_queue_and_put_timeouts(job):
    qd = RayQueueDescriptor(maxsize=4, queue_id="t36-tiny", job=job)
    received = _conserve(qd, 1500, producers=2, consumers=2, single=True)
    assert sorted(received) == list(range(1500))
    assert qd.statistics().peak <= 4


def test_t36_an_idle_blocked_consumer_does_not_spin(job):
    qd = RayQueueDescriptor(maxsize=4, queue_id="idle", job=job)
    cpu: list[float] = []

    def wait_idle() -> None:
        start = time.thread_time()
        with pytest.raises(queue.Empty):
            qd.get(timeout=2.0)
        cpu.append(time.thread_time() - start)

    t = threading.Thread(target=wait_idle)
    t.start()
    t.join(30)
    assert cpu and cpu[0] < 0.4  # < 20 % of the 2 s it waited


def test_t34_descriptor_round_trips_and_reaches_the_same_queue_from_an_actor(job, ray_session):
    ray = ray_session
    qd = RayQueueDescriptor(maxsize=16, queue_id="shared", job=job)
    twin = BaseQueueDescriptor.from_json(qd.to_json())
    assert twin == qd and twin.metadata == qd.metadata
    qd.put("via json")
    assert twin.get(timeout=5) == "via json"
    assert pickle.loads(pickle.dumps(qd)) == qd

    @ray.remote(num_cpus=0)
    def echo(descriptor: RayQueueDescriptor, n: int) -> list:
        got = [descriptor.get(timeout=10) for _ in range(n)]
        descriptor.put_many([x * 10 for x in got])
        return got

    qd.put_many([1, 2, 3])
    assert ray.get(echo.remote(qd, 3), timeout=60) == [1, 2, 3]
    assert qd.get_many(10, timeout=10) == [10, 20, 30]
    clone = qd.clone("other")
    assert clone.queue_id == "other" and clone.metadata == qd.metadata


def test_descriptor_validation_refuses_bad_fields():
    good = RayQueueDescriptor(maxsize=4, queue_id="v", job="j1").to_dict()
    for meta in ({"maxsize": "10"}, {"maxsize": -1}, {"job": "a b"}, {"job": "x" * 500},
                 {"local_fallback": "yes"}, {"host": "evil"}):
        bad = {**good, "metadata": {**good["metadata"], **meta}}
        with pytest.raises(ValueError):
            BaseQueueDescriptor.from_dict(bad)


def test_local_fallback_outside_ray_is_explicit_and_never_imports_ray(tmp_path):
    code = (
        "import sys\n"
        "from sage_nb.communication import RayQueueDescriptor\n"
        "qd = RayQueueDescriptor(maxsize=2, queue_id='f', local_fallback=True)\n"
        "qd.put(1); assert qd.get() == 1\n"
        "print(repr(qd)); print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    assert "local fallback" in out[0] and "SimpleTestQueue" in out[0]
    assert out[1] == "False"


def test_a_bundle_counts_its_packets_and_is_cut_where_the_room_or_a_get_ends(job):
    b = Bundle.fresh(list("abcdefgh"))
    p, stop = Packet("x"), StopSignal("src[0]")
    qd = RayQueueDescriptor(maxsize=6, queue_id="bundle-cut", job=job)
    with pytest.raises(queue.Full):
        qd.put_many([p, b, stop], timeout=0.1)  # 10 packets, room for 6: x and a-e are stored
    assert qd.statistics().used == 6
    assert [x.payload for x in qd.queue_instance.peek(4)] == ["x", "a", "b", "c"]  # packets, left in place
    first = qd.get_many(3)
    assert first[0] == p and first[1].payloads == ["a", "b"] and list(first[1].seqs) == list(b.seqs[:2])
    rest = qd.get_many(10)
    assert len(rest) == 1 and rest[0].payloads == ["c", "d", "e"] and list(rest[0].seqs) == list(b.seqs[2:5])
    assert rest[0].created == b.created and qd.statistics().used == 0


def test_bundles_and_single_items_stream_through_a_small_queue_in_order(job):
    """Random bundle sizes through a queue of 7, read in gets of random sizes: the packets come out
    in order with their trace ids, none lost, none twice."""
    rng = random.Random(7)
    qd = RayQueueDescriptor(maxsize=7, queue_id="bundle-stream", job=job)
    sent = [Bundle.fresh(list(range(i * 100, i * 100 + rng.randint(1, 20)))) if i % 3 else Packet(-i)
            for i in range(60)]
    want = [(x.payload, x.seq) for m in sent for x in (m.packets() if isinstance(m, Bundle) else [m])]
    got: list[tuple[int, int]] = []

    def consume() -> None:
        while len(got) < len(want):
            for m in qd.get_many(rng.randint(1, 9), timeout=30):
                got.extend((x.payload, x.seq) for x in (m.packets() if isinstance(m, Bundle) else [m]))

    t = threading.Thread(target=consume)
    t.start()
    for i in range(0, len(sent), 5):
        qd.put_many(sent[i:i + 5], timeout=30)
    t.join(60)
    assert got == want
    s = qd.statistics()
    assert s.peak <= 7 and s.total_in == s.total_out == len(want)
