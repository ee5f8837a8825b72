"""``BaseRouter``: strategies, groups, stop signals, honest blocking deliveries and routing traces."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sage_nb.communication import (
    BaseRouter,
    BroadcastGroup,
    Connection,
    Packet,
    PythonQueueDescriptor,
    RoutingDecision,
    StopSignal,
)
from sage_nb.communication import router as router_module
from sage_nb.communication.partition import partition, stable_hash
from sage_nb.errors import Cancelled, DeliveryError, ProtocolError
from sage_nb.testing import wait_for

SENDER = "src[0]"
FALSY_KEYS = [0, "", False, (), None, b""]


def group(index: int, target: str, strategy: str, n: int, *, maxsize: int = 0, input_index: int = 0,
          key=None) -> BroadcastGroup:
    conns = tuple(Connection(index, i, f"{target}[{i}]",
                             PythonQueueDescriptor(maxsize=maxsize, queue_id=f"{target}[{i}].in"),
                             input_index, SENDER)
                  for i in range(n))
    return BroadcastGroup(index, target, strategy, conns, key)


def contents(g: BroadcastGroup) -> list[list]:
    """What each instance's queue holds, oldest first (nothing is removed)."""
    return [c.queue.peek(10**6) for c in g.connections]


def payloads(g: BroadcastGroup) -> list[list]:
    return [[p.payload for p in items] for items in contents(g)]


class ListTracer:
    """The smallest tracer: samples everything (or nothing) and keeps the decisions."""

    def __init__(self, sampling: bool = True) -> None:
        self.sampling = sampling
        self.asked = 0
        self.decisions: list[RoutingDecision] = []

    def sample(self) -> bool:
        self.asked += 1
        return self.sampling

    def record(self, decision: RoutingDecision) -> None:
        self.decisions.append(decision)


class Background:
    """Run ``fn`` in a thread and keep what it returned or raised."""

    def __init__(self, fn) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the delivery stayed blocked"


hashable_keys = st.recursive(
    st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(), st.floats(allow_nan=False),
              st.booleans(), st.none()),
    lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)


# ---------------------------------------------------------------- round robin
@given(count=st.integers(0, 300), n=st.integers(1, 16))
def test_round_robin_spreads_any_number_of_packets_within_one(count, n):
    g = group(0, "m", "round_robin", n)
    r = BaseRouter(SENDER, [g])
    assert [r.send(Packet(i)) for i in range(count)] == [1] * count
    sizes = [len(q) for q in payloads(g)]
    assert sum(sizes) == count and max(sizes) - min(sizes) <= 1
    # deterministic in instance order: instance i gets packets i, i + n, i + 2n, ...
    assert payloads(g) == [list(range(i, count, n)) for i in range(n)]


def test_round_robin_counts_per_group():
    a, b = group(0, "a", "round_robin", 2), group(1, "b", "round_robin", 3)
    r = BaseRouter(SENDER, [a, b])
    for i in range(5):
        assert r.send(Packet(i)) == 2
    assert payloads(a) == [[0, 2, 4], [1, 3]]
    assert payloads(b) == [[0, 3], [1, 4], [2]]
    assert r.get_connections_info()["a"]["round_robin_position"] == 1
    assert r.get_connections_info()["b"]["round_robin_position"] == 2


def test_round_robin_counts_per_router_instance():
    g = group(0, "m", "round_robin", 3)
    first, second = BaseRouter("src[0]", [g]), BaseRouter("src[1]", [g])
    first.send(Packet("f0"))
    second.send(Packet("s0"))
    first.send(Packet("f1"))
    assert payloads(g) == [["f0", "s0"], ["f1"], []]


def test_round_robin_packets_arrive_unkeyed():
    g = group(0, "m", "round_robin", 2, input_index=1)
    BaseRouter(SENDER, [g]).send(Packet("x", input_index=0, partition_strategy="round_robin"))
    (p,) = contents(g)[0]
    assert (p.partition_key, p.partition_strategy, p.input_index) == (None, None, 1)


# ---------------------------------------------------------------- hash
@given(key=hashable_keys, n=st.integers(1, 16))
def test_the_same_key_always_goes_to_the_same_instance(key, n):
    g, h = group(0, "m", "hash", n), group(0, "m", "hash", n)
    one, other = BaseRouter("src[0]", [g]), BaseRouter("src[1]", [h])
    for router in (one, other, one):
        router.send(Packet("v", partition_key=key))
    expected = partition(key, n)
    assert [len(q) for q in payloads(g)] == [2 if i == expected else 0 for i in range(n)]
    assert [len(q) for q in payloads(h)] == [1 if i == expected else 0 for i in range(n)]


@pytest.mark.parametrize("key", FALSY_KEYS, ids=repr)
def test_falsy_keys_are_hashed_not_round_robined(key):
    g = group(0, "m", "round_robin", 4)
    r = BaseRouter(SENDER, [g])
    for _ in range(4):
        r.send(Packet("v", partition_key=key))
    got = contents(g)
    assert len(got[partition(key, 4)]) == 4
    assert all(p.partition_key == key and p.partition_strategy == "hash" for p in got[partition(key, 4)])


def test_a_packets_own_strategy_wins_over_the_group_default():
    rr = group(0, "rr", "round_robin", 4)
    r = BaseRouter(SENDER, [rr])
    for _ in range(5):
        r.send(Packet("v", partition_key="k"))
    assert [len(q) for q in payloads(rr)] == [5 if i == partition("k", 4) else 0 for i in range(4)]

    bc = group(0, "bc", "round_robin", 3)
    assert BaseRouter(SENDER, [bc]).send(Packet("all", partition_strategy="broadcast")) == 3
    assert payloads(bc) == [["all"], ["all"], ["all"]]

    hashed = group(0, "h", "hash", 4)
    r = BaseRouter(SENDER, [hashed])
    for i in range(4):
        r.send(Packet(i, partition_strategy="round_robin"))
    assert payloads(hashed) == [[0], [1], [2], [3]]


def test_a_key_function_on_the_group_hashes_the_payload():
    users = ["ann", "bob", "cyd", "dee", "eve", "fay"]
    g = group(0, "count", "hash", 3, key=lambda p: p["user"])
    r = BaseRouter(SENDER, [g])
    for u in users * 2:
        r.send(Packet({"user": u}))
    got = contents(g)
    for u in users:
        owner = partition(u, 3)
        assert sum(p.payload["user"] == u for p in got[owner]) == 2
    for i, items in enumerate(got):
        assert all(partition(p.partition_key, 3) == i and p.partition_strategy == "hash" for p in items)


def test_the_groups_key_function_wins_over_a_key_the_packet_inherited():
    own, inherited = "a", next(k for k in map(str, range(100)) if partition(k, 4) != partition("a", 4))
    g = group(0, "count", "hash", 4, key=lambda p: p["user"])
    BaseRouter(SENDER, [g]).send(Packet({"user": own}, partition_key=inherited))
    (p,) = contents(g)[partition(own, 4)]
    assert p.partition_key == own


# ---------------------------------------------------------------- broadcast and groups
@given(count=st.integers(0, 40), n=st.integers(1, 8))
def test_broadcast_delivers_every_packet_to_every_instance(count, n):
    g = group(0, "m", "broadcast", n)
    r = BaseRouter(SENDER, [g])
    assert [r.send(Packet(i)) for i in range(count)] == [n] * count
    assert payloads(g) == [list(range(count))] * n


def test_every_group_gets_its_own_copy_with_its_own_input_index():
    a = group(0, "a", "round_robin", 2, input_index=0)
    b = group(1, "b", "broadcast", 2, input_index=1)
    c = group(2, "c", "hash", 3, input_index=2)
    r = BaseRouter(SENDER, [a, b, c])
    payload = {"shared": True}
    packet = Packet(payload)
    assert r.send(packet) == 1 + 2 + 1
    delivered = [p for g in (a, b, c) for items in contents(g) for p in items]
    assert len(delivered) == 4 and len({id(p) for p in delivered}) == 4
    assert all(p.payload is payload and p.seq == packet.seq for p in delivered)
    assert [p.input_index for p in delivered] == [0, 1, 1, 2]
    assert [(p.partition_key, p.partition_strategy) for p in delivered] == [
        (None, None), (None, "broadcast"), (None, "broadcast"), (None, "hash")]
    assert contents(c)[partition(None, 3)] == [delivered[-1]]


def test_send_returns_the_number_of_deliveries_and_counts_them():
    a, b = group(0, "a", "broadcast", 4), group(1, "b", "hash", 2)
    r = BaseRouter(SENDER, [a, b])
    assert r.send(Packet("x")) == 5
    assert [c.packets_sent for c in r.connections] == [1, 1, 1, 1] + [
        int(i == partition(None, 2)) for i in range(2)]


# ---------------------------------------------------------------- end of stream
def test_send_stop_signal_puts_one_stop_per_connection_behind_the_data():
    a = group(0, "a", "round_robin", 2, input_index=0)
    b = group(1, "b", "broadcast", 3, input_index=1)
    r = BaseRouter(SENDER, [a, b])
    for i in range(4):
        r.send(Packet(i))
    assert r.send_stop_signal() == 5
    for g, input_index in ((a, 0), (b, 1)):
        for items in contents(g):
            assert items[-1] == StopSignal(SENDER, input_index)
            assert all(isinstance(p, Packet) for p in items[:-1]) and len(items) > 1
    assert [[p.payload for p in items[:-1]] for items in contents(a)] == [[0, 2], [1, 3]]
    assert [c.stops_sent for c in r.connections] == [1] * 5


def test_send_after_the_stop_signal_is_a_protocol_error():
    g = group(0, "m", "broadcast", 2)
    r = BaseRouter(SENDER, [g])
    r.send_stop_signal()
    with pytest.raises(ProtocolError, match=r"^src\[0\]: send\(\) after send_stop_signal\(\)"):
        r.send(Packet("late"))
    assert [len(items) for items in contents(g)] == [1, 1]
    assert [c.packets_sent for c in g.connections] == [0, 0]


# ---------------------------------------------------------------- blocked deliveries
def _full_router(**kw) -> tuple[BaseRouter, Connection]:
    g = group(0, "m", "round_robin", 1, maxsize=1)
    (c,) = g.connections
    c.queue.put("filler")
    return BaseRouter(SENDER, [g], poll_interval=0.01, **kw), c


def _assert_not_delivered(call: Background, router: BaseRouter, c: Connection) -> None:
    assert call.result is None  # send() never returned a count
    assert c.queue.peek() == ["filler"]
    assert c.packets_sent == 0 and not router.blocked


def test_a_blocked_delivery_is_cancelled_by_the_cancel_event():
    cancel = threading.Event()
    r, c = _full_router(cancel=cancel)
    call = Background(lambda: r.send(Packet("late")))
    wait_for(lambda: r.blocked, timeout=5)
    cancel.set()
    call.join()
    assert isinstance(call.error, Cancelled)
    assert re.fullmatch(r"src\[0\]: job stopping; not delivered to m\[0\]", str(call.error))
    _assert_not_delivered(call, r, c)


def test_a_blocked_delivery_is_cancelled_when_the_queue_shuts_down():
    r, c = _full_router()
    call = Background(lambda: r.send(Packet("late")))
    wait_for(lambda: r.blocked, timeout=5)
    c.queue.shutdown()
    call.join()
    assert isinstance(call.error, Cancelled)
    _assert_not_delivered(call, r, c)


def test_a_delivery_to_a_queue_already_shut_down_is_cancelled():
    r, c = _full_router()
    c.queue.get()
    c.queue.shutdown()
    with pytest.raises(Cancelled, match="not delivered to m"):
        r.send(Packet("late"))
    assert c.queue.peek() == [] and c.packets_sent == 0


def test_a_blocked_delivery_fails_after_put_timeout():
    r, c = _full_router(put_timeout=0.05)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"^src\[0\] -> m\[0\]: queue 'm\[0\]\.in' stayed full for "
                                            r"\d+\.\d s \(put_timeout=0\.05\); the packet was not delivered$"):
        r.send(Packet("late"))
    assert time.monotonic() - started >= 0.05
    assert r.blocked_time >= 0.05
    assert c.queue.peek() == ["filler"] and c.packets_sent == 0 and not r.blocked


def test_a_blocked_stop_signal_is_cancellable_too():
    cancel = threading.Event()
    r, c = _full_router(cancel=cancel)
    call = Background(r.send_stop_signal)
    wait_for(lambda: r.blocked, timeout=5)
    cancel.set()
    call.join()
    assert isinstance(call.error, Cancelled)
    assert c.queue.peek() == ["filler"] and c.stops_sent == 0


def test_a_blocked_delivery_completes_when_room_appears():
    r, c = _full_router(cancel=threading.Event())
    call = Background(lambda: r.send(Packet("late")))
    wait_for(lambda: r.blocked, timeout=5)
    assert c.queue.get() == "filler"
    call.join()
    assert call.error is None and call.result == 1
    assert [p.payload for p in c.queue.peek()] == ["late"] and c.packets_sent == 1


# ---------------------------------------------------------------- routing traces
def test_a_hash_decision_is_recorded_and_explained():
    g = group(0, "count", "hash", 4)
    r = BaseRouter(SENDER, [g])
    r.tracer = tracer = ListTracer()
    packet = Packet("v", partition_key="u42")
    r.send(packet)
    (d,) = tracer.decisions
    chosen = partition("u42", 4)
    assert (d.seq, d.sender, d.group, d.strategy, d.key) == (packet.seq, SENDER, "count", "hash", "u42")
    assert (d.hash_value, d.group_size, d.chosen, d.targets) == (
        stable_hash("u42"), 4, (chosen,), (f"count[{chosen}]",))
    assert (d.rr_before, d.rr_after) == (None, None)
    assert abs(d.time - time.time()) < 60
    m = re.fullmatch(r"hash\('u42'\) = 0x([0-9a-f]{4})… mod 4 = (\d)", d.explain())
    assert m, d.explain()
    assert int(m.group(1), 16) == stable_hash("u42") >> 48 and int(m.group(2)) == chosen


def test_round_robin_decisions_record_the_counter_before_and_after():
    g = group(0, "m", "round_robin", 8)
    r = BaseRouter(SENDER, [g])
    for i in range(5):
        r.send(Packet(i))
    r.tracer = tracer = ListTracer()
    r.send(Packet(5))
    (d,) = tracer.decisions
    assert (d.strategy, d.key, d.hash_value, d.group_size) == ("round_robin", None, None, 8)
    assert (d.rr_before, d.rr_after, d.chosen, d.targets) == (5, 6, (5,), ("m[5]",))
    assert d.explain() == "round-robin counter 5 → 6"
    r.send(Packet(6))
    r.send(Packet(7))
    assert tracer.decisions[-1].explain() == "round-robin counter 7 → 0"


def test_broadcast_decisions_name_every_instance():
    g = group(0, "m", "broadcast", 3)
    r = BaseRouter(SENDER, [g])
    r.tracer = tracer = ListTracer()
    r.send(Packet("x"))
    (d,) = tracer.decisions
    assert (d.strategy, d.group_size, d.chosen, d.targets) == ("broadcast", 3, (0, 1, 2),
                                                               ("m[0]", "m[1]", "m[2]"))
    assert d.explain() == "broadcast to 3"


def test_one_decision_per_group_in_group_order():
    r = BaseRouter(SENDER, [group(0, "a", "round_robin", 2), group(1, "b", "hash", 2)])
    r.tracer = tracer = ListTracer()
    r.send(Packet("x"))
    assert [(d.group, d.strategy) for d in tracer.decisions] == [("a", "round_robin"), ("b", "hash")]


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    calls: Counter = Counter()

    def counting(key):
        calls["stable_hash"] += 1
        return stable_hash(key)

    monkeypatch.setattr(router_module, "stable_hash", counting)
    return calls


def test_without_a_tracer_nothing_is_recorded(hash_calls):
    g = group(0, "count", "hash", 4)
    r = BaseRouter(SENDER, [g])
    unattached = ListTracer()
    assert r.tracer is None
    for i in range(10):
        r.send(Packet(i, partition_key=f"u{i}"))
    assert unattached.decisions == [] and unattached.asked == 0
    assert hash_calls["stable_hash"] == 0  # no trace, no extra work
    assert sum(len(q) for q in payloads(g)) == 10


def test_an_unsampled_decision_costs_nothing(hash_calls):
    r = BaseRouter(SENDER, [group(0, "count", "hash", 4)])
    r.tracer = tracer = ListTracer(sampling=False)
    for i in range(10):
        r.send(Packet(i, partition_key=f"u{i}"))
    assert tracer.asked == 10 and tracer.decisions == []
    assert hash_calls["stable_hash"] == 0
    r.tracer = sampled = ListTracer()
    r.send(Packet(0, partition_key="u0"))
    assert len(sampled.decisions) == 1 and hash_calls["stable_hash"] == 1
