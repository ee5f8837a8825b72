"""Property: micro-batching changes how packets travel, never what arrives nor in which order.

For random DAGs (the shapes of ``test_property_dags``), random batch sizes, linger times,
queue sizes and operator chaining on or off, every sink receives the multiset a batch size of 1 gives (the reference
interpreter's), and every physical connection is FIFO: each operator tags what it emits with
its instance and a counter, and every receiver checks that the tags of each sender arrive in
increasing order.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any
from unittest import mock

import networkx as nx
import pytest
from _reliability import STRICT_THREADS, finished
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_property_dags import MAX_DELIVERED, dags, expected_outputs, mod7

import sage_nb as snb
from sage_nb.runtime import sources as sources_module

pytestmark = STRICT_THREADS

_received: dict[str, list[Any]] = defaultdict(list)
_lock = threading.Lock()


class _Tagged:
    """Applies ``f`` to an item's value, tags each output ``(instance, n)`` and checks that the
    items of every sender arrive in the order it sent them."""

    kind = "map"

    @staticmethod
    def f(x: Any) -> Any:  # pragma: no cover - set per node
        return x

    def open(self) -> None:
        self.n, self.last = 0, {}

    def _check(self, item: tuple) -> Any:
        value, (sender, k) = item
        assert k > self.last.get(sender, -1), f"{self.ctx.name}: {sender} #{k} after #{self.last[sender]}"
        self.last[sender] = k
        return value

    def _tag(self, value: Any) -> tuple:
        self.n += 1
        return value, (self.ctx.name, self.n)

    def __call__(self, item: tuple) -> Any:
        value = self._check(item)
        if self.kind == "sink":
            with _lock:
                _received[self.ctx.operator].append(value)
            return None
        if self.kind == "map":
            return self._tag(self.f(value))
        if self.kind == "filter":
            return [self._tag(value)] if self.f(value) else []
        return [self._tag(y) for y in self.f(value)]


def _key(item: tuple) -> int:
    return mod7(item[0])


def _generator(items: list) -> Any:
    def items_one_by_one():
        yield from items
    return items_one_by_one


def tagged(g: nx.DiGraph, generators: bool = False) -> nx.DiGraph:
    """``g`` with tagging operators (a filter becomes a flat_map keeping 0 or 1 item); with
    ``generators``, every source is one instance that yields its items from a generator
    function (they travel gathered, not as an in-memory sequence's chunks; same outputs)."""
    h = g.copy()
    for v, d in h.nodes(data=True):
        if d["kind"] == "source":
            if generators:
                d["parallelism"] = 1
            p = d["parallelism"]  # a sequence is split by stride between the instances
            d["items"] = [(x, (f"{v}[{i % p}]", i)) for i, x in enumerate(d["items"])]
            if generators:
                d["fn"] = _generator(d.pop("items"))
            continue
        kind = d["kind"]
        d["fn"] = type(f"Tagged_{v}", (_Tagged,), {"kind": kind, "f": staticmethod(d["fn"] or (lambda x: x))})
        if kind == "filter":
            d["kind"] = "flat_map"
    for _, _, e in h.edges(data=True):
        if e.get("key") is not None:
            e["key"] = _key
    return h


@pytest.mark.timeout(180)
@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(g=dags(), batch_size=st.sampled_from([1, 2, 3, 7, 64, 256]),
       linger=st.sampled_from([0.0005, 0.002, 0.05]), queue_maxsize=st.sampled_from([1, 3, 64, 1024]),
       chain=st.booleans(), generators=st.sampled_from([False, True, True]))
def test_batching_keeps_outputs_and_per_connection_order(no_leak, g, batch_size, linger, queue_maxsize,
                                                         chain, generators):
    expected = expected_outputs(g)
    assume(sum(sum(c.values()) for c in expected.values()) <= MAX_DELIVERED)
    sinks = [v for v in g.nodes if g.nodes[v]["kind"] == "sink"]
    _received.clear()
    # a generator source is timed every 2 items instead of 256: these few items also go in slices
    with mock.patch.object(sources_module, "TIMED_RUN", 2 if generators else sources_module.TIMED_RUN):
        job = snb.run(tagged(g, generators), batch_size=batch_size, linger=linger, queue_maxsize=queue_maxsize,
                      chain=chain)
        snap = finished(job)
    for sink in sinks:
        assert Counter(_received[sink]) == expected[sink], sink
    sent = sum(c.packets_sent for c in snap.connections)
    assert sent == sum(t.packets_in for t in snap.tasks if t.kind != "source")
