"""Building the logical graph: the fluent API, the attribute schema, validation at build time."""

from __future__ import annotations

import networkx as nx
import pytest

import sage_nb as snb
from sage_nb.graph import validate


def test_pipeline_builds_documented_attributes():
    p = snb.Pipeline("wc")
    words = p.from_iterable(["a b"], name="lines").flat_map(str.split, name="split", parallelism=2)
    words.key_by(str.lower).map(len, name="count", parallelism=3).sink(name="out")
    g = p.graph
    assert isinstance(g, nx.DiGraph)
    assert list(g.nodes) == ["lines", "split", "count", "out"]
    assert g.nodes["split"]["kind"] == "flat_map" and g.nodes["split"]["parallelism"] == 2
    assert g.edges["split", "count"] == {"input_index": 0, "strategy": "hash", "key": str.lower}
    assert g.edges["lines", "split"] == {"input_index": 0}
    assert g.nodes["out"]["fn"] is None


def test_broadcast_and_connect_set_edges():
    p = snb.Pipeline("b")
    a = p.from_iterable([1], name="a")
    b = p.from_iterable([2], name="b")
    a.broadcast().connect(b).co_map([str, repr], name="cm", parallelism=2).sink(name="out")
    assert p.graph.edges["a", "cm"]["strategy"] == "broadcast"
    assert p.graph.edges["a", "cm"]["input_index"] == 0
    assert p.graph.edges["b", "cm"]["input_index"] == 1


def test_default_names_are_unique_and_readable():
    p = snb.Pipeline("n")
    s = p.from_iterable([1])
    s.map(abs).map(abs).sink()
    assert list(p.graph.nodes) == ["source", "abs", "abs_2", "sink"]


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, "2", True])
def test_parallelism_is_checked_at_once(bad):
    p = snb.Pipeline("par")
    s = p.from_iterable([1], name="src")
    with pytest.raises(snb.GraphError, match=r"node 'm': parallelism must be an int in \[1, 256\], got"):
        s.map(abs, name="m", parallelism=bad)
    assert "m" not in p.graph  # a rejected operator leaves no trace


def test_duplicate_name_names_the_node():
    p = snb.Pipeline("dup")
    s = p.from_iterable([1], name="x")
    with pytest.raises(snb.GraphError, match=r"duplicate name 'x' in pipeline 'dup'"):
        s.map(abs, name="x")


def test_non_callable_function_is_refused():
    p = snb.Pipeline("nc")
    with pytest.raises(snb.GraphError, match=r"node 'm': the map function must be callable .*got int 3"):
        p.from_iterable([1]).map(3, name="m")


def test_co_map_needs_one_function_per_input():
    p = snb.Pipeline("cm")
    a, b = p.from_iterable([1], name="a"), p.from_iterable([2], name="b")
    with pytest.raises(snb.GraphError, match=r"co_map 'cm' has 1 functions, so it needs inputs 0..0"):
        a.connect(b).co_map([str], name="cm")


def _raw(*edges, **kinds):
    g = nx.DiGraph(name="raw")
    for n, kind in kinds.items():
        attrs = {"kind": kind}
        if kind == "source":
            attrs["items"] = [1, 2]
        elif kind not in ("sink",):
            attrs["fn"] = abs
        g.add_node(n, **attrs)
    g.add_edges_from(edges)
    return g


def test_cycle_is_reported_with_its_path():
    g = _raw(("s", "a"), ("a", "b"), ("b", "a"), ("b", "out"), s="source", a="map", b="map", out="sink")
    with pytest.raises(snb.GraphError, match=r"the graph has a cycle: 'a' -> 'b' -> 'a'"):
        validate(g)


def test_self_loop_is_a_cycle():
    g = _raw(("s", "a"), ("a", "a"), ("a", "out"), s="source", a="map", out="sink")
    with pytest.raises(snb.GraphError, match="cycle"):
        snb.compile(g)


def test_edge_to_unknown_node():
    g = _raw(("s", "parse"), ("parse", "count"), s="source", parse="map")
    with pytest.raises(snb.GraphError, match=r"edge 'parse' -> 'count' refers to unknown node 'count'; "
                                             r"known nodes: \['parse', 's'\]"):
        validate(g)


def test_node_without_path_to_sink():
    g = _raw(("s", "a"), ("s", "out"), s="source", a="map", out="sink")
    with pytest.raises(snb.GraphError, match=r"node 'a' has no path to a sink; add .sink\(\) after it"):
        validate(g)


def test_operator_without_input_and_source_with_input():
    g = _raw(("a", "out"), a="map", out="sink")
    with pytest.raises(snb.GraphError, match=r"node 'a' \(map\) has no input"):
        validate(g)
    g = _raw(("s", "t"), ("t", "out"), s="source", t="source", out="sink")
    with pytest.raises(snb.GraphError, match=r"source 't' cannot have inputs"):
        validate(g)


def test_multigraph_and_empty_graph_are_refused():
    with pytest.raises(snb.GraphError, match=r"a MultiDiGraph has parallel edges, which are not supported: use nx\.DiGraph\(graph\)"):
        validate(nx.MultiDiGraph())
    with pytest.raises(snb.GraphError, match=r"must be a networkx\.DiGraph \(a Pipeline's \.graph, or one "
                                            r"built by hand\), got dict"):
        snb.run({"src": "out"})
    with pytest.raises(snb.GraphError, match="the graph is empty"):
        validate(nx.DiGraph())


def test_unknown_kind_and_strategy():
    g = _raw(("s", "out"), s="source", out="sink")
    g.nodes["out"]["kind"] = "window"
    with pytest.raises(snb.GraphError, match=r"node 'out': unknown kind 'window'"):
        validate(g)
    g = _raw(("s", "out"), s="source", out="sink")
    g.edges["s", "out"]["strategy"] = "random"
    with pytest.raises(snb.GraphError, match=r"edge 's' -> 'out': unknown strategy 'random'"):
        validate(g)
    g.edges["s", "out"]["strategy"] = "hash"
    with pytest.raises(snb.GraphError, match=r"the key of edge 's' -> 'out' must be callable"):
        validate(g)


def test_hand_built_graph_runs():
    g = nx.DiGraph(name="hand")
    g.add_node("src", kind="source", items=range(10), parallelism=2)
    g.add_node("sq", kind="map", fn=lambda x: x * x, parallelism=3)
    g.add_node("out", kind="sink")
    g.add_edge("src", "sq", strategy="hash", key=lambda x: x % 3)
    g.add_edge("sq", "out")
    job = snb.run(g)
    assert sorted(job.wait(timeout=10).results("out")) == [x * x for x in range(10)]


def test_a_misspelt_attribute_of_a_hand_built_graph_is_refused_not_ignored():
    g = nx.DiGraph(name="typo")
    g.add_node("src", kind="source", items=range(10), pos=(0, 0))  # (pos: the user's own, for drawing)
    g.add_node("sq", kind="map", fn=abs, paralelism=3)
    g.add_node("out", kind="sink")
    g.add_edges_from([("src", "sq"), ("sq", "out")])
    with pytest.raises(snb.GraphError, match=r"node 'sq': unknown attribute 'paralelism'; did you mean 'parallelism'\?"):
        snb.run(g)
    del g.nodes["sq"]["paralelism"]
    g.edges["src", "sq"]["stratgy"] = "broadcast"
    with pytest.raises(snb.GraphError, match=r"edge 'src' -> 'sq': unknown attribute 'stratgy'; did you mean 'strategy'"):
        snb.compile(g)
    del g.edges["src", "sq"]["stratgy"]
    assert sorted(snb.run(g).wait(timeout=10).results("out")) == list(range(10))


def test_no_thread_starts_for_an_invalid_graph(no_leak):
    g = _raw(("s", "a"), ("a", "b"), ("b", "a"), ("b", "out"), s="source", a="map", b="map", out="sink")
    with pytest.raises(snb.GraphError):
        snb.run(g)
    assert snb.jobs() == []
