"""``Connection``: a physical edge with value semantics, counters and the load of its queue."""

from __future__ import annotations

import pickle

import pytest

from sage_nb.communication import (
    BaseRouter,
    BroadcastGroup,
    Connection,
    Packet,
    PythonQueueDescriptor,
)


def _conn(**changes) -> Connection:
    fields = {"broadcast_index": 0, "parallel_index": 1, "target_name": "count[1]",
              "queue_descriptor": PythonQueueDescriptor(maxsize=4, queue_id="count[1].in"),
              "target_input_index": 0, "source_name": "split[0]"}
    fields.update(changes)
    return Connection(**fields)


def test_connections_are_equal_when_they_are_the_same_physical_edge():
    a, b = _conn(), _conn()  # two descriptor objects, one queue id
    assert a is not b and a.queue_descriptor is not b.queue_descriptor
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: "x"}[b] == "x"


@pytest.mark.parametrize("change", [
    {"broadcast_index": 1},
    {"parallel_index": 0},
    {"target_name": "count[2]"},
    {"queue_descriptor": PythonQueueDescriptor(maxsize=4, queue_id="other.in")},
    {"target_input_index": 1},
    {"source_name": "split[1]"},
], ids=lambda c: next(iter(c)))
def test_connections_differing_in_any_part_of_the_edge_are_different(change):
    assert _conn() != _conn(**change)
    assert len({_conn(), _conn(**change)}) == 2


def test_counters_do_not_change_identity():
    a, b = _conn(), _conn()
    a.packets_sent, a.stops_sent = 5, 1
    assert a == b and hash(a) == hash(b)
    assert a != "split[0]->count[1]"


def test_counters_count_what_a_router_delivered():
    c = _conn()
    assert (c.packets_sent, c.stops_sent) == (0, 0)
    r = BaseRouter("split[0]", [BroadcastGroup(0, "count", "round_robin", (c,))])
    r.send(Packet("a"))
    r.send(Packet("b"))
    r.send_stop_signal()
    assert (c.packets_sent, c.stops_sent) == (2, 1)


def test_buffer_load_of_a_bounded_queue():
    c = _conn()
    assert c.get_buffer_load() == 0.0
    for i in range(3):
        c.queue.put(i)
    assert c.get_buffer_load() == 0.75
    c.queue.put(3)
    assert c.get_buffer_load() == 1.0
    c.queue.get()
    assert c.get_buffer_load() == 0.75


def test_buffer_load_of_an_unbounded_queue_is_zero():
    c = _conn(queue_descriptor=PythonQueueDescriptor(maxsize=0, queue_id="u"))
    for i in range(1000):
        c.queue.put(i)
    assert c.get_buffer_load() == 0.0


def test_the_queue_is_the_descriptors_lazy_queue():
    qd = PythonQueueDescriptor(maxsize=4, queue_id="q")
    c = _conn(queue_descriptor=qd)
    assert not qd.is_initialized()  # building a connection creates no queue
    assert c.queue is qd.queue_instance and c.queue is c.queue


def test_name_dict_and_repr():
    c = _conn(target_input_index=1)
    assert c.name == "split[0]->count[1]"
    assert c.to_dict() == {"source": "split[0]", "target": "count[1]", "broadcast_index": 0,
                           "parallel_index": 1, "target_input_index": 1, "queue_id": "count[1].in",
                           "chained": False}
    assert repr(c) == "Connection('split[0]' -> 'count[1]', group=0, input=1, queue='count[1].in')"


def test_a_connection_with_a_lazy_descriptor_pickles():
    c = _conn()
    c.packets_sent = 3
    back = pickle.loads(pickle.dumps(c))
    assert back == c and back.packets_sent == 3
    back.queue.put("x")  # reaches a queue of its own in the new place
    assert back.queue.qsize() == 1


def test_a_connection_holding_a_live_queue_refuses_to_pickle():
    c = _conn()
    c.queue.put("x")
    with pytest.raises(TypeError, match=r"call to_serializable_descriptor\(\) first"):
        pickle.dumps(c)
