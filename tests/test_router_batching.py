"""``BaseRouter`` with ``batch_size > 1``: per-packet routing, deliveries shipped per connection in
batches, exact counters, stop signals behind the data, honest blocking."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_router import Background, ListTracer, contents, group, payloads

from sage_nb.communication import BaseRouter, Bundle, Packet, StopSignal, shipping
from sage_nb.communication import router as router_module
from sage_nb.errors import Cancelled, DeliveryError
from sage_nb.testing import wait_for

SENDER = "src[0]"


def router(*groups, batch_size: int = 4, **kw) -> BaseRouter:
    r = BaseRouter(SENDER, list(groups), batch_size=batch_size, **kw)
    for c in r.connections:  # as after a first delivery: the router knows the queues (no reader waits)
        c.receiver = c.queue
    return r


def test_a_reader_waiting_for_input_gets_each_packet_at_once():
    g = group(0, "m", "round_robin", 1)
    r = BaseRouter(SENDER, [g], batch_size=100)
    r.send(Packet("first"))  # the router does not know the queue yet: it ships, and learns it
    assert payloads(g) == [["first"]]
    q = g.connections[0].queue
    q.get_many(10)
    reader = Background(lambda: q.get_many(10))
    wait_for(lambda: q.hungry, timeout=5)
    r.send(Packet("awaited"))
    reader.join()
    assert [p.payload for p in reader.result] == ["awaited"]
    r.send(Packet("buffered"))
    assert payloads(g) == [[]] and r.buffered() == 1


def sent(r: BaseRouter) -> list[int]:
    return [c.packets_sent for c in r.connections]


def test_packets_wait_in_the_buffer_until_a_batch_is_full_and_count_once_delivered():
    g = group(0, "m", "round_robin", 2)
    r = router(g, batch_size=3)
    for x in range(4):
        r.send(Packet(x))
    assert payloads(g) == [[], []] and sent(r) == [0, 0] and r.buffered() == 4
    r.send(Packet(4))
    assert payloads(g) == [[0, 2, 4], []] and sent(r) == [3, 0]
    assert [c.batches_sent for c in r.connections] == [1, 0]
    r.flush()
    assert payloads(g) == [[0, 2, 4], [1, 3]] and sent(r) == [3, 2] and r.buffered() == 0


def test_a_batch_never_exceeds_the_receiving_queue():
    g = group(0, "m", "round_robin", 1, maxsize=2)
    r = router(g, batch_size=256)
    assert r.connections[0].batch_limit == 2
    r.send(Packet("a"))
    r.send(Packet("b"))
    assert payloads(g) == [["a", "b"]]


def test_the_stop_signal_ships_the_buffer_and_travels_behind_it():
    g = group(0, "m", "hash", 2, key=lambda x: x)
    r = router(g, batch_size=100)
    for x in range(6):
        r.send(Packet(x))
    assert r.send_stop_signal() == 2
    for c in g.connections:
        items = c.queue.peek(100)
        assert items[-1] == StopSignal(SENDER, 0)
        assert all(isinstance(p, Packet) for p in items[:-1])
    assert sum(sent(r)) == 6 and [c.stops_sent for c in r.connections] == [1, 1]


@given(strategies=st.lists(st.sampled_from(["round_robin", "hash", "broadcast"]), min_size=1, max_size=3),
       n=st.integers(1, 4), batch_size=st.integers(2, 9), count=st.integers(0, 60),
       keyed=st.lists(st.booleans(), max_size=60))
def test_routing_and_order_are_those_of_batch_size_1(strategies, n, batch_size, count, keyed):
    def run(bs: int) -> tuple[list, list, list]:
        groups = [group(i, f"t{i}", s, n, key=(lambda x: x % 5) if s == "hash" else None)
                  for i, s in enumerate(strategies)]
        r, tracer = router(*groups, batch_size=bs), ListTracer()
        r.tracer = tracer
        for x in range(count):
            own = {"partition_key": x % 3} if x < len(keyed) and keyed[x] else {}
            r.send(Packet(x, **own))
        r.send_stop_signal()
        queued = [[(getattr(p, "payload", p), getattr(p, "partition_key", None), getattr(p, "input_index", -1))
                   for p in c.queue.peek(10**6)] for g in groups for c in g.connections]
        decisions = [(d.group, d.strategy, d.chosen) for d in tracer.decisions]
        return queued, decisions, [(c.packets_sent, c.stops_sent) for c in r.connections]

    assert run(batch_size) == run(1)


@given(strategy=st.sampled_from(["round_robin", "hash", "broadcast"]), n=st.integers(1, 4),
       batch_size=st.integers(2, 9), sizes=st.lists(st.integers(0, 70), max_size=6))
def test_send_many_routes_and_orders_as_send_does_one_by_one(strategy, n, batch_size, sizes):
    def run(bs: int, many: bool) -> tuple[list, list]:
        g = group(0, "t", strategy, n, key=(lambda x: x % 5) if strategy == "hash" else None)
        r = router(g, batch_size=bs)
        r.tracer = ListTracer()
        x = 0
        for size in sizes:
            chunk = [Packet(x + i) for i in range(size)]
            x += size
            if many:
                assert r.send_many(chunk) == size * (n if strategy == "broadcast" else 1)
            else:
                for p in chunk:
                    r.send(p)
        r.send_stop_signal()
        queued = [[(getattr(p, "payload", p), getattr(p, "partition_key", None),
                    getattr(p, "partition_strategy", None)) for p in c.queue.peek(10**6)] for c in g.connections]
        return queued, [(c.packets_sent, c.stops_sent) for c in r.connections]

    assert run(batch_size, True) == run(1, False)


def test_breakpoints_see_each_packet_enter_its_queue_behind_what_was_buffered():
    g = group(0, "m", "round_robin", 1)
    r = router(g, batch_size=10)
    r.send(Packet("a"))
    seen = []
    r.watch = lambda c, p: (lambda: seen.append([q.payload for q in c.queue.peek()]))
    r.send(Packet("b"))
    assert seen == [["a", "b"]] and sent(r) == [2]


def _full(maxsize: int = 2, **kw) -> tuple[BaseRouter, object]:
    g = group(0, "m", "round_robin", 1, maxsize=maxsize)
    c = g.connections[0]
    c.queue.put("filler")
    return router(g, batch_size=maxsize, **kw), c


def test_a_partly_delivered_batch_counts_what_went_in_and_fails_after_put_timeout():
    r, c = _full(put_timeout=0.05)
    with pytest.raises(DeliveryError, match=r"src\[0\] -> m\[0\]: .*put_timeout=0\.05"):
        r.send(Packet("x"))
        r.send(Packet("y"))
    assert [getattr(p, "payload", p) for p in c.queue.peek()] == ["filler", "x"]
    assert c.packets_sent == 1 and [p.payload for p in c.batch] == ["y"] and not r.blocked
    assert r.blocked_time >= 0.05


def test_a_blocked_batch_is_cancellable_and_completes_in_order_when_room_appears():
    cancel = threading.Event()
    r, c = _full(maxsize=2, cancel=cancel)
    r.send(Packet("x"))
    call = Background(lambda: r.send(Packet("y")))
    wait_for(lambda: r.blocked, timeout=5)
    assert c.queue.get() == "filler"
    call.join()
    assert call.error is None and [p.payload for p in c.queue.peek()] == ["x", "y"] and c.packets_sent == 2

    cancel = threading.Event()
    r, c = _full(maxsize=2, cancel=cancel)
    r.send(Packet("x"))
    call = Background(lambda: r.send(Packet("y")))
    wait_for(lambda: r.blocked, timeout=5)
    cancel.set()
    call.join()
    assert isinstance(call.error, Cancelled) and c.packets_sent == 1


def test_a_flush_that_does_not_wait_puts_what_fits_and_keeps_the_rest_in_order():
    r, c = _full(maxsize=3)
    c.batch_limit = 10
    for x in "abc":
        r.send(Packet(x))
    assert r._ship(c, block=False)
    assert [getattr(p, "payload", p) for p in c.queue.peek()] == ["filler", "a", "b"]
    assert [p.payload for p in c.batch] == ["c"] and c.packets_sent == 2
    c.queue.get_many(10)
    r.flush()
    assert [p.payload for p in c.queue.peek()] == ["c"] and c.packets_sent == 3


@contextlib.contextmanager
def flushing(r: BaseRouter, linger: float = 0.002, failed=None):
    """The job's flusher over ``r``, running in a thread; stopped and joined at the end."""
    from sage_nb.runtime.batching import Flusher

    done, cancel = threading.Event(), threading.Event()
    f = Flusher([r], linger, done, cancel, failed)
    flusher = threading.Thread(target=f.run)
    flusher.start()
    try:
        yield
    finally:
        done.set()
        f.stop()
        flusher.join(5)
    assert not flusher.is_alive()


def test_the_flusher_ships_what_waited_longer_than_linger():
    g = group(0, "m", "round_robin", 1)
    r = router(g, batch_size=100)
    with flushing(r):
        for n, x in enumerate(["lonely", "again"], 1):  # the flusher sleeps until a buffer fills
            r.send(Packet(x))
            started = time.monotonic()
            wait_for(lambda n=n: g.connections[0].packets_sent == n, timeout=5)
            assert time.monotonic() - started < 1.0
    assert payloads(g) == [["lonely", "again"]]


# keys of every supported type, equal ones of different types among them (1, 1.0, True)
MIXED_KEYS = [0, "a", (1, "b"), 2.5, None, b"x", 1, 1.0, True, ("a", (None, 2.0)), "", -7, 10**20]


@given(strategy=st.sampled_from(["round_robin", "hash", "broadcast"]), n=st.sampled_from([1, 2, 3, 4, 8, 9]),
       batch_size=st.integers(2, 9), input_index=st.integers(0, 1),
       sizes=st.lists(st.integers(0, 40), max_size=6), singles=st.lists(st.booleans(), max_size=6),
       step=st.integers(1, 5))
def test_a_bundle_routes_orders_and_counts_as_its_packets_one_by_one(strategy, n, batch_size, input_index,
                                                                      sizes, singles, step):
    """Bundles (and single packets between them) reach the same queues in the same order, with
    the same trace ids, input and counters as the same packets sent one by one; the trace is
    offered each bundle's first decision, the one the packet would have had. (A hash split is
    made by C-level passes up to 8 instances, by a loop above.)"""
    x, bundles = 0, []
    for size in sizes:
        bundles.append(Bundle.fresh(list(range(x, x + size))))
        x += size

    def run(one_by_one: bool) -> tuple[list, list, list]:
        g = group(0, "t", strategy, n, input_index=input_index,
                  key=(lambda v: MIXED_KEYS[v * step % len(MIXED_KEYS)]) if strategy == "hash" else None)
        r = router(g, batch_size=batch_size)   # a bundle longer than batch_size goes in pieces
        r.tracer = ListTracer()
        for i, b in enumerate(bundles):
            if one_by_one:
                for p in b.packets():
                    r.send(p)
            else:
                deliveries = r.send_bundle(Bundle(b.payloads[:], b.seqs, b.created))
                assert deliveries == len(b) * (n if strategy == "broadcast" else 1)
            if i < len(singles) and singles[i]:
                r.send(Packet(-i, seq=-i))
        r.send_stop_signal()
        queued = [[(m.payload, m.seq, m.input_index, m.partition_key, m.partition_strategy)
                   if isinstance(m, Packet) else m for m in c.queue.peek(10**6)] for c in g.connections]
        decisions = {d.seq: (d.strategy, d.chosen) for d in r.tracer.decisions}
        return queued, decisions, [(c.packets_sent, c.stops_sent) for c in r.connections]

    queued, decisions, counts = run(False)
    queued_1, decisions_1, counts_1 = run(True)
    assert (queued, counts) == (queued_1, counts_1)
    assert decisions.items() <= decisions_1.items()
    assert {b.seqs[0] for b in bundles if b} <= set(decisions)


def test_a_hash_split_remembers_a_bounded_number_of_keys_and_routes_the_others_alike(monkeypatch):
    monkeypatch.setattr(shipping, "OWNERS_CACHE", 16)
    monkeypatch.setattr(router_module, "OWNERS_CACHE", 16)

    def run(one_by_one: bool, keys: list) -> tuple[list, BaseRouter]:
        g = group(0, "t", "hash", 4, key=lambda v: keys[v])
        r = router(g, batch_size=1000)
        for b in (Bundle.fresh(list(range(len(keys)))[:40]), Bundle.fresh(list(range(40, len(keys))))):
            if one_by_one:
                for p in b.packets():
                    r.send(p)
            else:
                r.send_bundle(b)
        r.flush()
        return [[(p.payload, p.partition_key) for p in c.queue.peek(10**6)] for c in g.connections], r

    for keys in ([f"k{i}" for i in range(100)],   # more new keys in one bundle than are remembered
                 [i % 12 for i in range(100)],     # fewer: remembered after the first bundle
                 [(i % 3, str(i % 20)) for i in range(100)]):
        split, r = run(False, keys)
        assert split == run(True, keys)[0]
        assert len(r._owners) <= 16


@pytest.mark.parametrize(("bad", "message"), [
    ([1], "cannot hash-partition a key of type list"),
    (float("nan"), "cannot hash-partition the float key nan"),
    (("ok", {"a"}), "cannot hash-partition a key of type set"),
])
def test_a_bundle_with_a_key_that_cannot_be_partitioned_fails_saying_why(bad, message):
    g = group(0, "t", "hash", 4, key=lambda v: bad if v == 3 else v)
    r = router(g, batch_size=100)
    with pytest.raises(TypeError, match=message):
        r.send_bundle(Bundle.fresh(list(range(6))))
    assert r.send_bundle(Bundle.fresh([10, 11])) == 2  # the router goes on with good keys
    r.flush()
    assert sorted(p.payload for c in g.connections for p in c.queue.peek(100)) == [10, 11]


def test_a_bundle_waits_for_room_cancellably_and_fails_after_put_timeout():
    r, c = _full(maxsize=2, put_timeout=0.05)
    with pytest.raises(DeliveryError, match=r"src\[0\] -> m\[0\]: .*put_timeout=0\.05"):
        r.send_bundle(Bundle.fresh(["x", "y"]))     # room for one: the bundle waits for two
    assert c.packets_sent == 0 and c.queue.qsize() == 1 and not r.blocked

    cancel = threading.Event()
    r, c = _full(maxsize=2, cancel=cancel)
    call = Background(lambda: r.send_bundle(Bundle.fresh(["x", "y"])))
    wait_for(lambda: r.blocked, timeout=5)
    assert c.queue.get() == "filler"
    call.join()
    assert call.error is None and c.packets_sent == 2 and [p.payload for p in c.queue.peek()] == ["x", "y"]

    r, c = _full(maxsize=2, cancel=(cancel := threading.Event()))
    call = Background(lambda: r.send_bundle(Bundle.fresh(["x", "y"])))
    wait_for(lambda: r.blocked, timeout=5)
    cancel.set()
    call.join()
    assert isinstance(call.error, Cancelled) and c.packets_sent == 0


def test_bundles_go_as_packets_to_a_breakpoint_a_broadcast_or_without_batching():
    g = group(0, "m", "round_robin", 2)
    r = router(g, batch_size=8)
    assert r.bundles()
    r.watch = lambda c, p: None
    assert not r.bundles()
    r.send_bundle(Bundle.fresh(["a", "b"]))
    assert all(isinstance(m, Packet) for c in g.connections for m in c.queue.queue)
    assert router(group(0, "m", "hash", 2, key=len), batch_size=8).bundles()
    assert not router(group(0, "m", "broadcast", 2), batch_size=8).bundles()
    assert not router(group(0, "m", "round_robin", 2), batch_size=1).bundles()


# --------------------------------------------------------------------------- a source's items
def test_a_source_gathers_its_items_and_routes_them_as_one_bundle_per_instance():
    g = group(0, "m", "round_robin", 2)
    r = router(g, batch_size=3)
    gather = r.gatherer()
    for x in range(5):
        gather(x)
    assert payloads(g) == [[], []] and r.buffered() == 5  # no reader waits: a batch for each first
    gather(5)
    assert payloads(g) == [[0, 2, 4], [1, 3, 5]] and sent(r) == [3, 3]
    assert [c.batches_sent for c in r.connections] == [1, 1]  # one entry each
    ids = [p.seq for items in contents(g) for p in items]
    assert sorted(ids) == list(range(min(ids), min(ids) + 6))  # taken at once, in order
    gather(6)
    r.flush()  # the task is about to wait, pause or end: what was gathered goes
    gather(7)
    r.send_stop_signal()  # and before the stop signals
    assert [[getattr(p, "payload", p) for p in items] for items in contents(g)] == \
        [[0, 2, 4, 6, StopSignal(SENDER, 0)], [1, 3, 5, 7, StopSignal(SENDER, 0)]]
    assert r.buffered() == 0


def test_a_gathered_item_goes_at_once_to_a_reader_that_waits():
    g = group(0, "m", "round_robin", 1)
    r = router(g, batch_size=100)
    gather = r.gatherer()
    q = g.connections[0].queue
    reader = Background(lambda: q.get_many(10))
    wait_for(lambda: q.hungry, timeout=5)
    gather("awaited")
    reader.join()
    assert [p.payload for p in reader.result[0].packets()] == ["awaited"]
    gather("kept")  # nobody waits now
    assert r.buffered() == 1


def test_gathered_items_are_split_by_key_as_packets_sent_one_by_one():
    def key(v: int) -> int:
        return v % 5

    gathered, one_by_one = group(0, "m", "hash", 3, key=key), group(0, "m", "hash", 3, key=key)
    r, r1 = router(gathered, batch_size=100), router(one_by_one, batch_size=100)
    gather = r.gatherer()
    for x in range(12):
        gather(x)
        r1.send(Packet(x))
    r.flush()
    r1.flush()
    assert payloads(gathered) == payloads(one_by_one)
    assert [[(p.partition_key, p.partition_strategy) for p in items] for items in contents(gathered)] == \
        [[(p.partition_key, p.partition_strategy) for p in items] for items in contents(one_by_one)]


def test_a_key_that_cannot_be_partitioned_fails_when_its_item_is_gathered():
    g = group(0, "m", "hash", 2, key=lambda v: [v] if v == 3 else v)
    r = router(g, batch_size=100)
    gather = r.gatherer()
    for x in range(3):
        gather(x)
    with pytest.raises(TypeError, match="cannot hash-partition a key of type list"):
        gather(3)  # in the source's thread: the error names this item
    r.send_stop_signal()  # what came before goes on
    assert sorted(p.payload for items in contents(g) for p in items if p.__class__ is Packet) == [0, 1, 2]


def test_the_flusher_routes_a_sources_items_only_when_it_need_not_wait():
    g = group(0, "m", "round_robin", 1, maxsize=2)
    r = router(g, batch_size=4)
    gather = r.gatherer()
    q = g.connections[0].queue
    q.put(Packet("x"))
    q.put(Packet("y"))
    gather("a")
    assert not r.route_gathered(block=False) and r.buffered() == 1  # the queue is full
    q.get_many(10)
    with r.gather_lock:  # the source is routing
        assert not r.route_gathered(block=False)
    assert r.route_gathered(block=False) and payloads(g) == [["a"]] and r.buffered() == 0


def test_the_flusher_routes_what_a_busy_source_gathered():
    g = group(0, "m", "round_robin", 1)
    r = router(g, batch_size=100)
    with flushing(r):
        gather = r.gatherer()
        gather("lonely")  # then the source is busy in user code: the flusher routes it
        wait_for(lambda: g.connections[0].packets_sent == 1, timeout=5)
    assert payloads(g) == [["lonely"]]


def test_a_slice_of_a_sources_items_is_taken_in_one_call_and_routed_as_gather_would():
    g = group(0, "m", "round_robin", 2)
    r = router(g, batch_size=3)
    take, due = r.slice_gatherer()
    items = iter(range(20))
    assert take(items, 4) == 4 and r.kept_count() == 4
    due()
    assert payloads(g) == [[], []]  # no reader waits: a batch for each instance first
    assert take(items, 100) == 2  # no further ahead than that
    assert next(items) == 6 and r.kept_count() == 6  # (nothing more was pulled)
    due()
    assert payloads(g) == [[0, 2, 4], [1, 3, 5]] and [c.batches_sent for c in r.connections] == [1, 1]
    assert take(iter(["x"]), 5) == 5 and r.kept_count() == 7 and r.buffered() == 1  # the items ended
    assert not r.slicing


def test_a_keyed_slice_fails_naming_the_item_whose_key_failed_and_keeps_the_ones_before():
    g = group(0, "m", "hash", 2, key=lambda v: 1 // (v - 3))
    r = router(g, batch_size=100)
    take, _ = r.slice_gatherer()
    with pytest.raises(ZeroDivisionError):
        take(iter(range(10)), 10)
    assert r.gather_failed == (3,) and r.gathered == [0, 1, 2] and r.gathered_keys == [-1, -1, -1]
    r.send_stop_signal()  # what came before goes on
    assert sorted(p.payload for items in contents(g) for p in items if p.__class__ is Packet) == [0, 1, 2]


def test_the_flusher_routes_what_a_source_kept_while_its_code_blocks_mid_slice():
    """``list.extend`` appends each item as it comes: the flusher sees them (``slicing`` tells it
    to look) and routes them although the slice has not ended."""
    g = group(0, "m", "round_robin", 1)
    r = router(g, batch_size=100)
    routed = threading.Event()
    seen_slicing = []

    def items():
        yield from ("a", "b")
        seen_slicing.append(r.slicing)
        routed.wait(10)  # until the sink side has them
        yield "c"

    with flushing(r):
        source = Background(lambda: r.slice_gatherer()[0](items(), 10))
        wait_for(lambda: g.connections[0].packets_sent == 2, timeout=5)
    routed.set()  # (the flusher has stopped: "c" stays kept, however slow this thread is)
    source.join()
    assert seen_slicing == [True] and payloads(g) == [["a", "b"]] and r.gathered == ["c"]
    assert r.kept_count() == 3 and not r.slicing


class _BrokenTracer(ListTracer):
    """A tracer that fails on its first decision, once."""

    def record(self, decision) -> None:
        if not self.decisions:
            self.decisions.append(decision)
            raise ValueError("no trace for you")
        super().record(decision)


def test_an_error_while_the_flusher_routes_is_reported_with_its_router_not_lost():
    """When routing raises in the flusher's thread (here the trace), the flusher tells the job
    (which fails naming the source) and goes on."""
    g = group(0, "m", "round_robin", 1)
    r = router(g, batch_size=100)
    r.tracer = _BrokenTracer()
    errors: list[tuple[BaseRouter, BaseException]] = []
    with flushing(r, failed=lambda router, exc: errors.append((router, exc))):
        r.gatherer()("first")
        wait_for(lambda: errors, timeout=5)
        r.send(Packet("after"))  # the flusher still ships
        wait_for(lambda: g.connections[0].packets_sent == 1, timeout=5)
    assert errors[0][0] is r and str(errors[0][1]) == "no trace for you"
