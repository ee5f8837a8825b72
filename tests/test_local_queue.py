"""``LocalQueue``: stdlib queue semantics, statistics, batches, and a shutdown that wakes blocked callers."""

from __future__ import annotations

import queue
import threading

import pytest

from sage_nb.communication import Bundle, LocalQueue, QueueShutDown, QueueStats
from sage_nb.testing import wait_for


def _waiters(cond: threading.Condition) -> int:
    """How many threads wait on ``cond`` (so a test knows a call is really blocked)."""
    return len(cond._waiters)  # type: ignore[attr-defined]


class Blocked:
    """Run ``fn`` in a thread and keep what it returned or raised."""

    def __init__(self, fn) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self) -> None:
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the call stayed blocked"


def test_fifo_and_stdlib_exceptions():
    q = LocalQueue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0)
    assert [q.get(), q.get_nowait()] == [1, 2]
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)


def test_unbounded_queue_never_fills():
    q = LocalQueue()
    for i in range(1000):
        q.put_nowait(i)
    assert not q.full()
    s = q.statistics()
    assert (s.used, s.capacity, s.load) == (1000, None, 0.0)


def test_statistics_count_in_out_and_peak():
    q = LocalQueue(maxsize=4)
    assert q.statistics() == QueueStats(0, 4, 0, 0, 0)
    for i in range(3):
        q.put(i)
    assert q.get() == 0
    q.put(3)
    q.put(4)
    s = q.statistics()
    assert s == QueueStats(used=4, capacity=4, peak=4, total_in=5, total_out=1)
    assert s.load == 1.0
    assert q.get_many(3) == [1, 2, 3]
    s = q.statistics()
    assert s == QueueStats(used=1, capacity=4, peak=4, total_in=5, total_out=4)
    assert s.load == 0.25
    assert s.to_dict() == {"used": 1, "capacity": 4, "peak": 4, "total_in": 5, "total_out": 4}


def test_get_many_and_put_many_and_peek():
    q = LocalQueue(maxsize=10)
    q.put_many(list("abcde"))
    assert q.peek(3) == ["a", "b", "c"]
    assert q.peek() == list("abcde")
    assert q.qsize() == 5  # peek removes nothing
    assert q.get_many(2) == ["a", "b"]
    assert q.get_many(100) == ["c", "d", "e"]
    with pytest.raises(queue.Empty):
        q.get_many(5, block=False)


def test_get_many_wakes_blocked_producers():
    q = LocalQueue(maxsize=2)
    q.put_many([1, 2])
    producers = [Blocked(lambda i=i: q.put(10 + i)) for i in range(2)]
    wait_for(lambda: _waiters(q.not_full) == 2, timeout=5)
    assert q.get_many(2) == [1, 2]
    for p in producers:
        p.join()
        assert p.error is None
    assert sorted(q.get_many(2)) == [10, 11]


def test_shutdown_wakes_a_blocked_put():
    q = LocalQueue(maxsize=1)
    q.put("filler")
    put = Blocked(lambda: q.put("late"))
    wait_for(lambda: _waiters(q.not_full) == 1, timeout=5)
    assert not put.done.is_set()
    q.shutdown()
    put.join()
    assert isinstance(put.error, QueueShutDown)
    assert q.peek() == ["filler"]  # the blocked item was not added; queued items stay visible
    assert q.statistics().total_in == 1


def test_shutdown_wakes_a_blocked_get():
    q = LocalQueue(maxsize=1)
    get = Blocked(q.get)
    wait_for(lambda: _waiters(q.not_empty) == 1, timeout=5)
    assert not get.done.is_set()
    q.shutdown()
    get.join()
    assert isinstance(get.error, QueueShutDown)
    assert get.result is None


def test_shutdown_wakes_every_blocked_caller_at_once():
    full, empty = LocalQueue(maxsize=1), LocalQueue(maxsize=1)
    full.put(0)
    calls = [Blocked(lambda: full.put(1)) for _ in range(3)] + [Blocked(empty.get) for _ in range(3)]
    wait_for(lambda: _waiters(full.not_full) == 3 and _waiters(empty.not_empty) == 3, timeout=5)
    full.shutdown()
    empty.shutdown()
    for c in calls:
        c.join()
        assert isinstance(c.error, QueueShutDown)


@pytest.mark.parametrize("call", [
    lambda q: q.put(1),
    lambda q: q.put_nowait(1),
    lambda q: q.get(),
    lambda q: q.get_nowait(),
    lambda q: q.get_many(3),
    lambda q: q.put_many([1]),
])
def test_calls_after_shutdown_raise(call):
    q = LocalQueue(maxsize=3)
    q.put("x")
    q.shutdown()
    with pytest.raises(QueueShutDown, match="shut down"):
        call(q)
    assert q.statistics().used == 1


# --------------------------------------------------------------------------- batches in
def test_offer_puts_what_fits_in_order_and_counts_items():
    q = LocalQueue(maxsize=3)
    assert q.offer(["a", "b"]) == 2
    assert q.offer(["c", "d", "e"]) == 1          # room for one: the rest stays with the caller
    assert q.offer(["c", "d", "e"], 1) == 1       # full: nothing put
    assert q.get_many(10) == ["a", "b", "c"]
    assert q.offer(["c", "d", "e"], 1) == 3
    assert q.statistics() == QueueStats(used=2, capacity=3, peak=3, total_in=5, total_out=3)


def test_put_many_waits_for_room_and_reports_what_it_put_on_timeout():
    q = LocalQueue(maxsize=2)
    with pytest.raises(queue.Full) as info:
        q.put_many([1, 2, 3], timeout=0.01)
    assert info.value.accepted == 2 and q.get_many(5) == [1, 2]
    b = Blocked(lambda: q.put_many(list(range(5))))
    got: list = []
    while len(got) < 5:
        got += q.get_many(5)
    b.join()
    assert got == [0, 1, 2, 3, 4] and b.error is None


def test_getters_counts_callers_waiting_for_an_item_and_shutdown_wakes_put_many():
    q = LocalQueue(maxsize=1)
    assert q.getters == 0
    b = Blocked(lambda: q.get_many(4))
    wait_for(lambda: q.getters == 1)
    q.put("x")
    b.join()
    assert b.result == ["x"] and q.getters == 0
    q.put("full")
    b = Blocked(lambda: q.put_many(["y"]))
    wait_for(lambda: _waiters(q.not_full) == 1)
    q.shutdown()
    b.join()
    assert isinstance(b.error, QueueShutDown)
    with pytest.raises(QueueShutDown):
        q.offer(["z"])


@pytest.mark.parametrize("backlog", [5, 256, 300, 2048, 3000])
def test_get_many_takes_in_order_whatever_the_backlog(backlog):
    q = LocalQueue(0)
    q.put_many(list(range(backlog)))
    got = []
    while q.qsize():
        batch = q.get_many(256)
        assert 1 <= len(batch) <= 256
        got += batch
    assert got == list(range(backlog))
    assert q.statistics().total_out == backlog


def test_a_bundle_is_one_entry_that_counts_its_packets():
    q = LocalQueue(maxsize=5)
    q.put("a")
    b = Bundle.fresh(["b", "c", "d"])
    q.put_bundle(b)
    assert q.qsize() == 4 and not q.full()
    assert q.statistics() == QueueStats(used=4, capacity=5, peak=4, total_in=4, total_out=0)
    assert [getattr(m, "payload", m) for m in q.peek()] == ["a", "b", "c", "d"]   # packets, not entries
    assert [m.seq for m in q.peek()[1:]] == list(b.seqs)
    with pytest.raises(queue.Full):
        q.put_bundle(Bundle.fresh(["e", "f"]), False)     # room for one packet, not for two
    q.put("e")
    assert q.full() and q.get_many(2) == ["a", b]          # a bundle comes whole, past max_items
    assert q.statistics() == QueueStats(used=1, capacity=5, peak=5, total_in=5, total_out=4)


def test_a_bundle_waits_for_room_for_all_its_packets_and_shutdown_wakes_it():
    q = LocalQueue(maxsize=3)
    q.put(1)
    q.put(2)
    call = Blocked(lambda: q.put_bundle(Bundle.fresh(["x", "y"])))
    wait_for(lambda: _waiters(q.not_full) == 1, 5)
    assert q.get() == 1                 # room for all of it
    call.join()
    assert call.error is None and q.qsize() == 3
    call = Blocked(lambda: q.put_bundle(Bundle.fresh(["z"])))
    wait_for(lambda: _waiters(q.not_full) == 1, 5)
    q.shutdown()
    call.join()
    assert isinstance(call.error, QueueShutDown) and q.qsize() == 3


def test_a_bundle_larger_than_the_queue_enters_it_when_empty():
    q = LocalQueue(maxsize=2)
    q.put_bundle(Bundle.fresh([1, 2, 3]), False)
    assert q.qsize() == 3 and q.full()
    with pytest.raises(queue.Full):
        q.put(4, False)
