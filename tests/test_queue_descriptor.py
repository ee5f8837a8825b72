"""Queue descriptors: the lazy queue, the proxy, round trips, clone (SAGE #1112), pickling, threads, bad JSON."""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import queue
import sys
import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sage_nb.communication import (
    BaseQueueDescriptor,
    LocalQueue,
    Packet,
    PythonQueueDescriptor,
    QueueStats,
    StopSignal,
)
from sage_nb.communication import queue_descriptor as qd_module
from sage_nb.communication.queue_descriptor import MAX_JSON_BYTES, MAX_QUEUE_SIZE, int_field


@pytest.fixture
def creations(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts descriptors constructed ("descriptor") and queues created ("queue")."""
    counts: Counter = Counter()
    init, create = BaseQueueDescriptor.__init__, PythonQueueDescriptor._create_queue

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        counts["descriptor"] += 1  # only descriptors that were actually made

    def counting_create(self):
        counts["queue"] += 1
        return create(self)

    monkeypatch.setattr(BaseQueueDescriptor, "__init__", counting_init)
    monkeypatch.setattr(PythonQueueDescriptor, "_create_queue", counting_create)
    return counts


@pytest.fixture
def deque_type():
    """A second, minimal descriptor type, registered for this test only."""

    class DequeDescriptor(BaseQueueDescriptor):
        queue_type = "test_deque"
        _schema = {"maxsize": int_field(0, 100)}

        def __init__(self, maxsize: int = 0, queue_id: str | None = None) -> None:
            self.maxsize = maxsize
            super().__init__(queue_id)

        @property
        def metadata(self):
            return {"maxsize": self.maxsize}

        def _create_queue(self):
            return LocalQueue(self.maxsize)

    yield DequeDescriptor
    qd_module._REGISTRY.pop("test_deque")


# ---------------------------------------------------------------- the lazy queue and its proxy
def test_the_base_class_is_abstract():
    with pytest.raises(TypeError):
        BaseQueueDescriptor("q")  # type: ignore[abstract]


def test_the_queue_is_created_on_first_use_exactly_once(creations):
    qd = PythonQueueDescriptor(maxsize=3, queue_id="q")
    assert not qd.is_initialized() and creations["queue"] == 0
    q = qd.queue_instance
    assert isinstance(q, LocalQueue) and q.maxsize == 3
    assert qd.is_initialized()
    assert qd.queue_instance is q and qd.get_queue() is q
    qd.put(1)
    qd.get()
    assert creations["queue"] == 1


def test_clear_cache_forgets_the_queue(creations):
    qd = PythonQueueDescriptor(maxsize=3, queue_id="q")
    qd.put("old")
    first = qd.queue_instance
    qd.clear_cache()
    assert not qd.is_initialized()
    assert qd.queue_instance is not first
    assert qd.empty() and first.qsize() == 1
    assert creations["queue"] == 2


def test_the_proxy_speaks_the_stdlib_queue_language():
    qd = PythonQueueDescriptor(maxsize=2, queue_id="q")
    assert qd.empty() and not qd.full() and qd.qsize() == 0
    qd.put("a")
    qd.put_nowait("b")
    assert qd.full() and qd.qsize() == 2
    with pytest.raises(queue.Full):
        qd.put_nowait("c")
    with pytest.raises(queue.Full):
        qd.put("c", timeout=0)
    assert qd.get() == "a"
    assert qd.get_nowait() == "b"
    with pytest.raises(queue.Empty):
        qd.get_nowait()
    with pytest.raises(queue.Empty):
        qd.get(block=False)
    qd.put_many(["x", "y"])
    assert qd.get_many(5) == ["x", "y"]


def test_a_subclass_gets_the_lazy_queue_and_the_proxy(deque_type):
    qd = deque_type(maxsize=1, queue_id="d")
    assert not qd.is_initialized()
    qd.put(5)
    assert qd.full() and qd.get() == 5 and qd.is_initialized()


# ---------------------------------------------------------------- identity
def test_equality_and_hash_use_type_and_id(deque_type):
    a = PythonQueueDescriptor(maxsize=4, queue_id="q")
    b = PythonQueueDescriptor(maxsize=8, queue_id="q")
    assert a == b and hash(a) == hash(b)
    assert a != PythonQueueDescriptor(maxsize=4, queue_id="r")
    assert a != deque_type(maxsize=4, queue_id="q")
    assert a != "q"
    assert len({a, b, PythonQueueDescriptor(queue_id="r")}) == 2
    assert {a: 1}[b] == 1


def test_generated_ids_are_unique_and_valid():
    ids = {PythonQueueDescriptor().queue_id for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("python_") for i in ids)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 201, "q\n", 5])
def test_a_bad_queue_id_is_refused(bad):
    with pytest.raises(ValueError, match=r"descriptor field 'queue_id' must be 1-200 characters"):
        PythonQueueDescriptor(queue_id=bad)


def test_repr_is_readable_and_shows_the_state():
    qd = PythonQueueDescriptor(maxsize=4, queue_id="demo")
    assert repr(qd) == "PythonQueueDescriptor('demo', maxsize=4, lazy)"
    qd.put(1)
    assert repr(qd) == "PythonQueueDescriptor('demo', maxsize=4, initialized)"


# ---------------------------------------------------------------- round trips
def test_to_dict_and_to_json():
    qd = PythonQueueDescriptor(maxsize=4, queue_id="job.0.count[1].in")
    d = {"queue_id": "job.0.count[1].in", "queue_type": "python", "metadata": {"maxsize": 4}}
    assert qd.to_dict() == d
    assert json.loads(qd.to_json()) == d


@given(queue_id=st.from_regex(qd_module._ID_RE, fullmatch=True),
       maxsize=st.integers(0, MAX_QUEUE_SIZE))
def test_round_trips_keep_type_id_and_settings(queue_id, maxsize):
    qd = PythonQueueDescriptor(maxsize=maxsize, queue_id=queue_id)
    for back in (BaseQueueDescriptor.from_dict(qd.to_dict()),
                 BaseQueueDescriptor.from_json(qd.to_json()),
                 PythonQueueDescriptor.from_json(qd.to_json().encode()),
                 BaseQueueDescriptor.from_dict(json.loads(qd.to_json()))):
        assert type(back) is PythonQueueDescriptor
        assert back == qd
        assert (back.queue_id, back.maxsize) == (queue_id, maxsize)
        assert not back.is_initialized()


def test_a_round_trip_of_an_initialised_descriptor_reaches_a_new_lazy_queue():
    qd = PythonQueueDescriptor(maxsize=4, queue_id="q")
    qd.put("x")
    back = BaseQueueDescriptor.from_json(qd.to_json())
    assert back == qd and not back.is_initialized()
    assert back.empty() and qd.qsize() == 1


def test_from_dict_of_a_subclass_refuses_another_type(deque_type):
    d = deque_type(queue_id="d").to_dict()
    assert type(BaseQueueDescriptor.from_dict(d)) is deque_type
    with pytest.raises(ValueError, match=r"descriptor field 'queue_type' is 'test_deque', but "
                                         r"PythonQueueDescriptor expects 'python'"):
        PythonQueueDescriptor.from_dict(d)


# ---------------------------------------------------------------- clone and serialisable copies
def test_clone_of_a_lazy_descriptor_has_a_new_id_and_the_same_settings():
    qd = PythonQueueDescriptor(maxsize=5, queue_id="q")
    twin = qd.clone()
    assert twin.queue_id != "q" and twin.maxsize == 5 and type(twin) is PythonQueueDescriptor
    assert not twin.is_initialized()
    assert qd.clone("q2").queue_id == "q2"


def test_clone_of_an_initialised_descriptor_shares_the_live_queue():
    """SAGE #1112: clone() built a new queue, so a server answered into a queue nobody read."""
    qd = PythonQueueDescriptor(maxsize=5, queue_id="q")
    qd.put("one")
    twin = qd.clone("q2")
    assert twin.is_initialized() and twin.queue_instance is qd.queue_instance
    assert twin.get_nowait() == "one"
    twin.put("two")
    assert qd.get_nowait() == "two"


def test_request_response_over_cloned_descriptors_never_times_out():
    requests = PythonQueueDescriptor(maxsize=1, queue_id="svc.requests")
    responses = PythonQueueDescriptor(maxsize=1, queue_id="client.responses")
    requests.queue_instance, responses.queue_instance  # noqa: B018 - initialise, then clone
    server_in, server_out = requests.clone(), responses.clone()
    pairs, timeouts = 1000, []

    def serve():
        for _ in range(pairs):
            try:
                rid, x = server_in.get(timeout=5)
            except queue.Empty:
                timeouts.append("server")
                return
            server_out.put((rid, x * x))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    answers = []
    for rid in range(pairs):
        requests.put((rid, rid + 1))
        try:
            answers.append(responses.get(timeout=5))
        except queue.Empty:
            timeouts.append(rid)
            break
    server.join(timeout=5)
    assert timeouts == []
    assert answers == [(rid, (rid + 1) ** 2) for rid in range(pairs)]


def test_to_serializable_descriptor():
    lazy = PythonQueueDescriptor(maxsize=3, queue_id="q")
    assert lazy.to_serializable_descriptor() is lazy
    live = PythonQueueDescriptor(maxsize=3, queue_id="q")
    live.put(1)
    portable = live.to_serializable_descriptor()
    assert portable is not live and portable == live and portable.maxsize == 3
    assert not portable.is_initialized()
    assert live.qsize() == 1  # the live one is unchanged


def test_pickling_an_initialised_descriptor_says_what_to_do():
    qd = PythonQueueDescriptor(maxsize=3, queue_id="q")
    qd.put(1)
    msg = (r"PythonQueueDescriptor\('q', maxsize=3, initialized\) holds a live in-process queue "
           r"and cannot be pickled; call to_serializable_descriptor\(\) first")
    with pytest.raises(TypeError, match=msg):
        pickle.dumps(qd)
    with pytest.raises(TypeError, match=msg):
        copy.deepcopy(qd)
    back = pickle.loads(pickle.dumps(qd.to_serializable_descriptor()))
    assert back == qd and back.maxsize == 3


def test_an_uninitialised_descriptor_pickles_and_works_after():
    qd = PythonQueueDescriptor(maxsize=3, queue_id="q")
    back = pickle.loads(pickle.dumps(qd))
    assert back == qd and back.maxsize == 3 and not back.is_initialized()
    back.put("x")  # its lock was rebuilt
    assert back.get() == "x"
    assert not qd.is_initialized()


# ---------------------------------------------------------------- statistics
def test_statistics_of_a_descriptor():
    qd = PythonQueueDescriptor(maxsize=4, queue_id="q")
    assert qd.statistics() == QueueStats(0, 4, 0, 0, 0)
    qd.put_many([1, 2, 3])
    qd.get()
    assert qd.statistics() == QueueStats(used=2, capacity=4, peak=3, total_in=3, total_out=1)
    assert PythonQueueDescriptor(queue_id="u").statistics().capacity is None


def _consistent(s: QueueStats, capacity: int) -> None:
    assert s.used == s.total_in - s.total_out, s
    assert 0 <= s.used <= s.peak <= capacity, s
    assert s.capacity == capacity


def test_statistics_stay_consistent_while_two_threads_put_and_get():
    n, cap = 20_000, 8
    qd = PythonQueueDescriptor(maxsize=cap, queue_id="q")
    half, read = threading.Event(), threading.Event()

    def produce():
        for i in range(n):
            if i == n // 2:
                half.set()
                read.wait(timeout=10)  # hold on until the reader has looked mid-flight
            qd.put(i, timeout=10)

    got: list[int] = []

    def consume():
        for _ in range(n):
            got.append(qd.get(timeout=10))

    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=consume, daemon=True)]
    for t in threads:
        t.start()
    assert half.wait(timeout=10)
    mid = qd.statistics()
    read.set()
    readings = [mid]
    while any(t.is_alive() for t in threads):
        readings.append(qd.statistics())
    for t in threads:
        t.join(timeout=10)
    final = qd.statistics()
    for s in [*readings, final]:
        _consistent(s, cap)
    for a, b in itertools.pairwise(readings):
        assert a.total_in <= b.total_in and a.total_out <= b.total_out and a.peak <= b.peak
    assert 0 < mid.total_in < n
    assert final == QueueStats(0, cap, final.peak, n, n) and final.peak >= 1
    assert got == list(range(n))


# ---------------------------------------------------------------- concurrency
class GateLock:
    """A lock that counts the threads trying to take it, so a test can wait for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.arrived = threading.Condition()
        self.attempts = 0

    def __enter__(self) -> None:
        with self.arrived:
            self.attempts += 1
            self.arrived.notify_all()
        self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()


def test_eight_threads_touching_a_lazy_descriptor_create_one_queue(monkeypatch):
    threads_n = 8
    qd = PythonQueueDescriptor(maxsize=4, queue_id="first-touch")
    qd._lock = gate = GateLock()
    created: list[LocalQueue] = []

    def create(self):
        # The worst interleaving, forced: every thread has found no queue and is waiting for
        # the lock before the first one finishes creating it.
        with gate.arrived:
            assert gate.arrived.wait_for(lambda: gate.attempts == threads_n, timeout=10)
        created.append(LocalQueue(self.maxsize))
        return created[-1]

    monkeypatch.setattr(PythonQueueDescriptor, "_create_queue", create)
    barrier = threading.Barrier(threads_n)
    seen: list[object] = [None] * threads_n

    def touch(i: int) -> None:
        barrier.wait(timeout=10)
        seen[i] = qd.queue_instance

    threads = [threading.Thread(target=touch, args=(i,), daemon=True) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(created) == 1
    assert all(q is created[0] for q in seen) and qd.queue_instance is created[0]


def test_four_producers_two_consumers_lose_and_duplicate_nothing():
    producers, consumers, per_producer = 4, 2, 25_000
    qd = PythonQueueDescriptor(maxsize=64, queue_id="stress")
    received: list[list] = [[] for _ in range(consumers)]
    errors: list[BaseException] = []

    def produce(pid: int) -> None:
        try:
            for i in range(per_producer):
                qd.put(Packet((pid, i)), timeout=10)
            for _ in range(consumers):  # one sentinel per consumer, FIFO behind the data
                qd.put(StopSignal(f"p{pid}"), timeout=10)
        except BaseException as exc:
            errors.append(exc)

    def consume(cid: int) -> None:
        out, stops = received[cid], 0
        try:
            while stops < producers:  # 8 sentinels in all, 4 for each consumer
                item = qd.get(timeout=10)
                if isinstance(item, StopSignal):
                    stops += 1
                out.append(item)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    threads += [threading.Thread(target=consume, args=(c,), daemon=True) for c in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and errors == []

    data = Counter(p.payload for r in received for p in r if isinstance(p, Packet))
    expected = Counter((pid, i) for pid in range(producers) for i in range(per_producer))
    assert data == expected  # the multiset: nothing lost, nothing duplicated
    stops = Counter(s.sender for r in received for s in r if isinstance(s, StopSignal))
    assert stops == {f"p{pid}": consumers for pid in range(producers)}
    for r in received:  # FIFO per producer, as seen by each consumer
        for pid in range(producers):
            seq = [p.payload[1] for p in r if isinstance(p, Packet) and p.payload[0] == pid]
            assert seq == sorted(seq)
    s = qd.statistics()
    assert (s.used, s.total_in, s.total_out) == (0, 100_008, 100_008) and s.peak <= 64


# ---------------------------------------------------------------- JSON from outside
def _doc(**fields) -> str:
    d = {"queue_id": "q", "queue_type": "python", "metadata": {"maxsize": 10}}
    d.update(fields)
    return json.dumps(d)


BAD_JSON = [
    pytest.param(_doc(queue_type="kafka"),
                 r"^unknown descriptor field 'queue_type' value 'kafka'; known queue types: "
                 r"\[[^]]*'python'[^]]*\]$", id="unknown-type"),
    pytest.param(_doc(queue_type="sage.platform.queue.PythonQueueDescriptor"),
                 r"value 'sage\.platform\.queue\.PythonQueueDescriptor' \(a class or module path is "
                 r"never imported\); known queue types", id="class-path"),
    pytest.param(_doc(queue_type="os.system"),
                 r"value 'os\.system' \(a class or module path is never imported\)", id="module-path"),
    pytest.param(_doc(queue_type=None), r"'queue_type' value None; known queue types", id="null-type"),
    pytest.param(json.dumps({"queue_id": "q"}), r"'queue_type' value None", id="no-type"),
    pytest.param(_doc(metadata={"maxsize": "10"}),
                 r"^descriptor field 'metadata\.maxsize' must be an int in \[0, 10000000\], "
                 r"got str '10'$", id="maxsize-str"),
    pytest.param(_doc(metadata={"maxsize": -1}),
                 r"^descriptor field 'metadata\.maxsize' must be in \[0, 10000000\], got -1$",
                 id="maxsize-negative"),
    pytest.param(_doc(metadata={"maxsize": 10**12}),
                 r"^descriptor field 'metadata\.maxsize' must be in \[0, 10000000\], "
                 r"got 1000000000000$", id="maxsize-huge"),
    pytest.param(_doc(metadata={"maxsize": True}),
                 r"'metadata\.maxsize' must be an int in \[0, 10000000\], got bool True",
                 id="maxsize-bool"),
    pytest.param(_doc(metadata={"maxsize": 1.5}), r"'metadata\.maxsize' must be an int .* got float 1\.5",
                 id="maxsize-float"),
    pytest.param(_doc(class_name="PythonQueueDescriptor"),
                 r"^unknown descriptor field 'class_name'; allowed fields: \['created_timestamp', "
                 r"'metadata', 'queue_id', 'queue_type'\] \(class or module paths are never imported\)$",
                 id="class_name"),
    pytest.param(_doc(module="sage.platform.queue"), r"^unknown descriptor field 'module'; allowed fields",
                 id="module"),
    pytest.param(_doc(metadata={"maxsize": 1, "factory": "os.system"}),
                 r"^unknown descriptor field 'metadata\.factory' for queue type 'python'; "
                 r"allowed: \['maxsize'\]$", id="metadata-field"),
    pytest.param(_doc(metadata=[1]), r"^descriptor field 'metadata' must be an object, got list$",
                 id="metadata-list"),
    pytest.param(_doc(queue_id="../../etc passwd"), r"descriptor field 'queue_id' must be 1-200",
                 id="queue-id"),
    pytest.param(_doc(queue_id="q\n"), r"descriptor field 'queue_id' must be 1-200 .*got 'q\\n'$",
                 id="queue-id-newline"),
    pytest.param(_doc(queue_id=7), r"descriptor field 'queue_id' must be 1-200 .*got 7$", id="queue-id-int"),
    pytest.param("[]", r"^a queue descriptor must be a JSON object, got list$", id="top-list"),
    pytest.param('"python"', r"^a queue descriptor must be a JSON object, got str$", id="top-str"),
    pytest.param("3", r"^a queue descriptor must be a JSON object, got int$", id="top-int"),
    pytest.param("null", r"^a queue descriptor must be a JSON object, got NoneType$", id="top-null"),
    pytest.param("{'queue_type': 'python'}", r"^JSON descriptor is not valid JSON: ", id="single-quotes"),
    pytest.param('{"queue_type": "python"', r"^JSON descriptor is not valid JSON: ", id="truncated"),
    pytest.param("", r"^JSON descriptor is not valid JSON: ", id="empty"),
    pytest.param(b"\xff\xfe{", r"^JSON descriptor is not valid JSON: ", id="not-utf8"),
    pytest.param(" " * (10 * 1024 * 1024) + _doc(),
                 rf"^JSON descriptor too large: {10 * 1024 * 1024 + len(_doc())} bytes > "
                 rf"{MAX_JSON_BYTES}$", id="10MB"),
    pytest.param("[" * 100_000, r"^JSON descriptor too large: 100000 bytes > 65536$",
                 id="deep-and-large"),
    pytest.param("[" * 50_000, r"^JSON descriptor nested too deeply$", id="deep-list"),
    pytest.param('{"a": ' * 10_000, r"^JSON descriptor nested too deeply$", id="deep-object"),
    pytest.param('{"queue_type": "python", "metadata": {"maxsize": ' + "[" * 5000 + "]" * 5000 + "}}",
                 r"^JSON descriptor nested too deeply$", id="deep-metadata"),
    pytest.param(None, r"^a JSON descriptor must be str or bytes, got NoneType$", id="not-text"),
    pytest.param({"queue_type": "python"}, r"^a JSON descriptor must be str or bytes, got dict$",
                 id="dict-not-text"),
]


@pytest.mark.parametrize(("text", "message"), BAD_JSON)
def test_bad_json_is_refused_without_importing_or_creating_anything(text, message, creations):
    before = set(sys.modules)
    with pytest.raises(ValueError, match=message):
        BaseQueueDescriptor.from_json(text)
    assert set(sys.modules) == before
    assert creations == {}


def test_the_json_size_limit_is_exact():
    doc = _doc()
    fits = doc + " " * (MAX_JSON_BYTES - len(doc))
    assert BaseQueueDescriptor.from_json(fits).maxsize == 10
    with pytest.raises(ValueError, match="too large"):
        BaseQueueDescriptor.from_json(fits + " ")


@pytest.mark.parametrize("maxsize", ["10", -1, 10**12, True, None, 2.0])
def test_the_constructor_validates_maxsize_too(maxsize):
    with pytest.raises(ValueError, match=r"descriptor field 'maxsize' must be"):
        PythonQueueDescriptor(maxsize=maxsize)
