"""Packets and stop signals: keys (falsy ones too), derived packets, equality, pickling."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sage_nb.communication import Bundle, Packet, StopSignal
from sage_nb.communication.packet import Picked

FALSY_KEYS = [0, "", False, (), None, b"", 0.0]


# ---------------------------------------------------------------- keys
def test_a_plain_packet_is_not_keyed():
    p = Packet("x")
    assert not p.is_keyed()
    assert (p.partition_key, p.partition_strategy, p.input_index) == (None, None, 0)


@pytest.mark.parametrize("key", FALSY_KEYS, ids=repr)
def test_a_falsy_key_is_a_key(key):
    p = Packet("x", partition_key=key)
    assert p.is_keyed()
    assert p.partition_key is key
    assert p.partition_strategy == "hash"


def test_an_explicit_strategy_is_kept():
    assert Packet("x", partition_key="k", partition_strategy="broadcast").partition_strategy == "broadcast"
    b = Packet("x", partition_strategy="broadcast")
    assert b.is_keyed() and b.partition_key is None


def test_an_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown partition_strategy 'random'; use one of "
                                         r"\['round_robin', 'hash', 'broadcast'\]"):
        Packet("x", partition_key=1, partition_strategy="random")


# ---------------------------------------------------------------- derived packets
@pytest.mark.parametrize("key", FALSY_KEYS, ids=repr)
def test_inherit_partition_info_keeps_key_strategy_trace_and_origin(key):
    p = Packet("a b", input_index=1, partition_key=key, partition_strategy="hash")
    q = p.inherit_partition_info("a")
    assert q is not p
    assert q.payload == "a" and p.payload == "a b"
    assert (q.partition_key, q.partition_strategy, q.input_index) == (key, "hash", 1)
    assert q.is_keyed()
    assert (q.seq, q.created) == (p.seq, p.created)


def test_inherit_partition_info_of_an_unkeyed_packet_stays_unkeyed():
    q = Packet("a b").inherit_partition_info("a")
    assert not q.is_keyed()
    assert q.partition_key is None


def test_update_key_rekeys_a_copy():
    p = Packet("x", input_index=2)
    q = p.update_key(0)
    assert (q.partition_key, q.partition_strategy, q.input_index, q.payload) == (0, "hash", 2, "x")
    assert (q.seq, q.created) == (p.seq, p.created)
    assert not p.is_keyed()  # the original is untouched
    assert p.update_key("k", "broadcast").partition_strategy == "broadcast"
    # "else the current one": a broadcast packet stays broadcast, round robin becomes hash
    assert Packet("x", partition_strategy="broadcast").update_key(1).partition_strategy == "broadcast"
    rr = Packet("x", partition_strategy="round_robin")
    assert rr.update_key(1).partition_strategy == "hash"


def test_derive_drops_routing_but_keeps_trace_and_origin():
    p = Packet("x", input_index=3, partition_key="k")
    q = p.derive("y")
    assert (q.payload, q.input_index, q.partition_key, q.partition_strategy) == ("y", 0, None, None)
    assert not q.is_keyed()
    assert (q.seq, q.created) == (p.seq, p.created)
    assert p.partition_key == "k"


def test_copy_shares_the_payload_and_may_change_the_input_index():
    payload = {"n": 1}
    p = Packet(payload, input_index=0, partition_key=None)
    q = p.copy()
    r = p.copy(input_index=2)
    assert q is not p and q == p and q.payload is payload
    assert (q.seq, q.created) == (p.seq, p.created)
    assert r.input_index == 2 and p.input_index == 0
    assert (r.partition_key, r.partition_strategy) == (None, "hash")
    q.input_index = 5
    assert p.input_index == 0


# ---------------------------------------------------------------- identity
def test_each_packet_gets_a_new_trace_id():
    seqs = [Packet(i).seq for i in range(100)]
    assert len(set(seqs)) == 100
    assert seqs == sorted(seqs)


def test_equality_ignores_seq_and_created():
    assert Packet("a", seq=1, created=1.0) == Packet("a", seq=2, created=2.0)


@pytest.mark.parametrize("other", [
    Packet("b"),
    Packet("a", input_index=1),
    Packet("a", partition_key=None),
    Packet("a", partition_key="k"),
    Packet("a", partition_key="k", partition_strategy="broadcast"),
])
def test_packets_differing_in_content_or_routing_are_unequal(other):
    assert Packet("a") != other


def test_packets_are_unhashable_and_not_equal_to_other_types():
    with pytest.raises(TypeError):
        hash(Packet("a"))
    assert Packet("a") != "a"
    assert Packet("a") != StopSignal("a")


def test_repr_names_trace_id_payload_input_and_key():
    p = Packet("hi", input_index=1, partition_key=0, seq=7)
    assert repr(p) == "Packet(#7 'hi' input=1 key=0/hash)"
    assert repr(Packet("hi", seq=8)) == "Packet(#8 'hi' input=0)"


payloads = st.recursive(st.none() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False),
                        lambda inner: st.lists(inner, max_size=3), max_leaves=8)


@given(payload=payloads, input_index=st.integers(0, 5),
       key=st.sampled_from(["unset", 0, "", None, (), "k"]),
       strategy=st.sampled_from([None, "hash", "broadcast", "round_robin"]))
def test_pickle_round_trip_keeps_everything(payload, input_index, key, strategy):
    kwargs = {} if key == "unset" else {"partition_key": key}
    p = Packet(payload, input_index, partition_strategy=strategy, **kwargs)
    q = pickle.loads(pickle.dumps(p))
    assert q == p
    assert (q.seq, q.created, q.is_keyed()) == (p.seq, p.created, p.is_keyed())
    assert (q.partition_key, q.partition_strategy) == (p.partition_key, p.partition_strategy)


# ---------------------------------------------------------------- stop signals
def test_stop_signal_names_sender_and_input():
    s = StopSignal("split[1]", 2)
    assert (s.sender, s.input_index, s.name) == ("split[1]", 2, "split[1]")
    assert StopSignal("split[1]").input_index == 0
    assert repr(s) == "StopSignal(sender='split[1]', input_index=2)"


def test_stop_signal_is_frozen():
    s = StopSignal("a[0]")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sender = "b[0]"  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


def test_stop_signals_are_hashable_values():
    assert StopSignal("a[0]", 1) == StopSignal("a[0]", 1)
    assert StopSignal("a[0]", 1) != StopSignal("a[0]", 0)
    assert StopSignal("a[0]", 1) != StopSignal("a[1]", 1)
    seen = {StopSignal("a[0]"), StopSignal("a[0]"), StopSignal("a[1]"), StopSignal("a[0]", 1)}
    assert len(seen) == 3
    assert pickle.loads(pickle.dumps(StopSignal("a[0]", 1))) == StopSignal("a[0]", 1)


def test_a_hash_shares_trace_ids_are_listed_only_when_asked_and_pickle_as_a_list():
    ids = Picked(range(100, 110), bytes([1, 0, 0, 1, 1, 0, 0, 0, 0, 1]), 4)
    assert len(ids) == 4 and ids[0] == 100 and ids._items is None  # (the first: without the list)
    piece = ids[1:3]
    assert len(piece) == 2 and ids._items is None and list(piece) == [103, 104]
    b = Bundle(["a", "b", "c", "d"], ids, 0.0, keys=[1, 2, 3, 4])
    back = pickle.loads(pickle.dumps(b))
    assert back.seqs == [100, 103, 104, 109] and [p.seq for p in back.packets()] == [100, 103, 104, 109]
    assert [p.seq for p in b.pick(slice(2, None)).packets()] == [104, 109]
