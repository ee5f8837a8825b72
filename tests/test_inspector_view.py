"""The inspector's pure functions: snapshot -> view model, without Jupyter or a browser."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_inspector_fakes import HOSTILE, decision, make_snapshot

from sage_nb.inspector import layout, palette
from sage_nb.inspector.history import LoadHistory, RateWindow
from sage_nb.inspector.tables import (
    connection_ids,
    counters,
    format_rate,
    key_distribution,
    packet_path,
    rates,
    routing_rows,
    strategy_label,
)
from sage_nb.inspector.view import graph_view, status_view, stops_text


def edge(graph, edge_id):
    return next(e for e in graph["edges"] if e["id"] == edge_id)


def node(graph, node_id):
    return next(n for n in graph["nodes"] if n["id"] == node_id)


# ----------------------------------------------------------------------------- colours
@pytest.mark.parametrize(("pct", "level"), [(0, "green"), (59, "green"), (60, "green"), (61, "amber"),
                                            (85, "amber"), (86, "red"), (100, "red")])
def test_load_levels_follow_nifi_thresholds(pct, level):
    assert palette.load_level(pct / 100) == level


def test_load_percent_shows_a_nonempty_queue_and_unbounded_queues():
    assert palette.load_percent(0, 1024) == 0
    assert palette.load_percent(1, 1024) == 1        # 0.1 % still reads as "not empty"
    assert palette.load_percent(512, 1024) == 50
    assert palette.load_percent(5, None) is None


def test_logical_state_is_the_most_urgent_instance_state():
    assert palette.aggregate_state(["finished", "finished"]) == "finished"
    assert palette.aggregate_state(["finished", "idle"]) == "idle"
    assert palette.aggregate_state(["busy", "backpressured", "idle"]) == "backpressured"
    assert palette.aggregate_state(["busy", "failed"]) == "failed"


def test_every_task_state_has_a_colour_and_a_legend_entry():
    from sage_nb.metrics import TASK_STATES

    legend = {s["state"] for s in palette.legend()["states"]}
    assert set(TASK_STATES) <= legend
    assert [lv["level"] for lv in palette.legend()["levels"]] == ["green", "amber", "red"]


# ----------------------------------------------------------------------------- graph view
def test_physical_view_edge_loads_and_colours():
    snap = make_snapshot(used={"count[0]": 59, "count[1]": 60, "count[2]": 85, "count[3]": 86})
    g = graph_view(snap, "physical")
    got = {e["id"]: (e["pct"], e["level"], e["load_text"]) for e in g["edges"] if e["source"] == "src[0]"}
    assert got == {"src[0]->count[0]": (59, "green", "59%"), "src[0]->count[1]": (60, "green", "60%"),
                   "src[0]->count[2]": (85, "amber", "85%"), "src[0]->count[3]": (86, "red", "86%")}
    assert edge(g, "src[0]->count[3]")["color"] == palette.LEVEL_COLORS["red"]
    assert edge(g, "src[0]->count[3]")["stroke"] == palette.LEVEL_COLORS["red"]
    assert edge(g, "src[0]->count[0]")["stroke"] == palette.EDGE_IDLE


def test_logical_view_has_one_node_per_operator_and_strategy_labels():
    snap = make_snapshot(used={"count[2]": 90}, sent={"src[0]->count[0]": 3, "src[0]->count[2]": 4})
    g = graph_view(snap, "logical")
    assert [n["id"] for n in g["nodes"]] == ["src", "count", "out"]
    e = edge(g, "src->count")
    assert (e["label"], e["pct"], e["level"], e["packets"]) == ("hash(word)", 90, "red", 7)
    assert edge(g, "count->out")["label"] == "round-robin"
    assert node(g, "count")["lines"][0].startswith("\N{MULTIPLICATION SIGN}4")


def test_node_states_colours_and_stop_signals():
    snap = make_snapshot(states={"count[0]": "idle", "count[1]": "draining", "out[0]": "finished"},
                         stops={"count[1]": (2, 3)})
    g = graph_view(snap, "physical")
    assert node(g, "count[0]")["state"] == "idle"
    assert node(g, "count[0]")["fill"] == palette.STATE_COLORS["idle"][0]
    assert "stop signals 2/3" in node(g, "count[1]")["lines"]
    assert node(g, "out[0]")["state"] == "finished"
    assert stops_text(0, 3, "busy") == "" and stops_text(3, 3, "finished") == ""


def test_backpressure_is_derived_from_blocked_time():
    before = make_snapshot(elapsed=1.0)
    after = make_snapshot(elapsed=2.0, blocked={"src[0]": 0.8})   # 800 ms blocked in the last second
    window = RateWindow()
    window.add(before)
    window.add(after)
    g = graph_view(after, "physical", window.rates())
    assert node(g, "src[0]")["state"] == "backpressured"
    assert node(g, "count[0]")["state"] == "busy"


def test_the_likely_bottleneck_is_the_working_instance_behind_a_full_queue():
    # count[1]'s queue is 90 % full while it works; count[2]'s too, but it waits on its own outputs
    snap = make_snapshot(used={"count[0]": 85, "count[1]": 90, "count[2]": 90},
                         states={"count[2]": "backpressured", "src[0]": "backpressured"})
    g = graph_view(snap, "physical")
    assert [n["id"] for n in g["nodes"] if n["bottleneck"]] == ["count[1]"]  # 85 % is not over 85 %
    assert snap.bottlenecks() == ("count[1]",)
    rows = dict(node(g, "count[1]")["details"]["rows"])
    assert rows["likely bottleneck"].startswith("its input queue is over 85 % full")
    assert "likely bottleneck" not in dict(node(g, "count[2]")["details"]["rows"])
    logical = graph_view(snap, "logical")
    assert [n["id"] for n in logical["nodes"] if n["bottleneck"]] == ["count"]
    assert dict(node(logical, "count")["details"]["rows"])["likely bottleneck"].startswith("count[1]: its")
    # blocked time counts as waiting too; an unbounded queue is never full
    window, later = RateWindow(), make_snapshot(elapsed=2.0, used={"count[1]": 90}, blocked={"count[1]": 0.8})
    window.add(make_snapshot(elapsed=1.0))
    window.add(later)
    assert not node(graph_view(later, "physical", window.rates()), "count[1]")["bottleneck"]
    assert make_snapshot(used={"count[1]": 90}, capacity=None).bottlenecks() == ()
    assert make_snapshot(used={"count[1]": 90}, states={"count[1]": "finished"}).bottlenecks() == ()
    # once the queue count[1] writes into is full too, what reads it holds both back: out[0] is the cause
    held = make_snapshot(used={"count[1]": 90, "out[0]": 90})
    assert held.held_back() == {"src[0]", "count[0]", "count[1]", "count[2]", "count[3]"}
    assert held.bottlenecks() == ("out[0]",)
    assert [n["id"] for n in graph_view(held, "physical")["nodes"] if n["bottleneck"]] == ["out[0]"]
    assert [n["id"] for n in graph_view(held, "logical")["nodes"] if n["bottleneck"]] == ["out"]
    assert palette.legend()["bottleneck"]["label"] == "likely bottleneck"


def test_failed_instance_is_red_even_if_it_reports_another_state():
    from sage_nb.metrics import ErrorInfo

    err = ErrorInfo("count", "count[2]", "ZeroDivisionError: division by zero", "'x'", "Traceback ...")
    g = graph_view(make_snapshot(status="FAILED", error=err), "logical")
    assert node(g, "count")["state"] == "failed"
    assert node(g, "count")["fill"] == palette.STATE_COLORS["failed"][0]


def test_names_are_kept_as_data_not_markup():
    snap = make_snapshot(ops=((HOSTILE, "source", 1), ("out", "sink", 1)),
                         edges=((HOSTILE, "out", "round_robin", None, 0),))
    g = graph_view(snap, "logical")
    assert g["nodes"][0]["id"] == HOSTILE                  # escaping is the renderers' job
    assert g["edges"][0]["id"] == f"{HOSTILE}->out"


def test_labels_never_overlap_nodes_or_each_other():
    snap = make_snapshot(ops=(("a", "source", 3), ("b", "map", 4), ("c", "map", 3), ("d", "sink", 2)),
                         edges=(("a", "b", "hash", "k", 0), ("b", "c", "broadcast", None, 0),
                                ("c", "d", "round_robin", None, 0), ("a", "d", "round_robin", None, 1)))
    for view in ("logical", "physical"):
        g = graph_view(snap, view)
        w, h = g["label_size"]
        labels = [layout.Box(e["lx"] - w / 2, e["ly"] - h / 2, w, h) for e in g["edges"]]
        nodes = [layout.Box(n["x"], n["y"], n["w"], n["h"]) for n in g["nodes"]]
        for i, a in enumerate(labels):
            assert all(_overlap(a, b) == 0 for b in labels[i + 1:] + nodes), view
        assert all(b.x >= 0 and b.y >= 0 and b.x + b.w <= g["width"] and b.y + b.h <= g["height"]
                   for b in labels + nodes)


def _overlap(a, b):
    dx = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    dy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    return dx * dy if dx > 0 and dy > 0 else 0


def test_layers_go_left_to_right_in_topological_order():
    cols = layout.layers(["s", "a", "b", "j"], [("s", "a"), ("s", "b"), ("a", "j"), ("b", "j"), ("s", "j")])
    assert cols == [["s"], ["a", "b"], ["j"]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-500, 500), max_size=30), st.floats(1, 60))
def test_pack_keeps_order_and_spacing(ideals, size):
    ideals = sorted(ideals)
    out = layout.pack(ideals, size)
    assert len(out) == len(ideals)
    assert all(b - a >= size - 1e-6 for a, b in itertools.pairwise(out))


# ----------------------------------------------------------------------------- tables
def test_routing_rows_explain_each_strategy():
    trace = [decision(5, "src[0]", "count", "hash", key="u42", chosen=(2,)),
             decision(6, "count[2]", "out", "round_robin", size=1, rr=(5, 6)),
             decision(7, "split[0]", "lengths", "broadcast", size=3, chosen=(0, 1, 2))]
    rows = routing_rows(trace)
    assert [r["seq"] for r in rows] == [7, 6, 5]              # newest first
    hashed = rows[2]
    assert (hashed["packet"], hashed["from"], hashed["to"], hashed["strategy"]) == (
        "#5", "src[0]", "count[2]", "hash")
    assert hashed["explain"].startswith("hash('u42') = 0x") and hashed["explain"].endswith("mod 4 = 2")
    assert rows[1]["explain"] == "round-robin counter 5 → 6"
    assert rows[0]["explain"] == "broadcast to 3" and rows[0]["to"] == "lengths[0], lengths[1], lengths[2]"


def test_packet_path_follows_every_hop_of_a_seq():
    trace = (decision(9, "src[0]", "count", "hash", key="a", chosen=(1,)),
             decision(8, "src[0]", "count", "hash", key="b", chosen=(0,)),
             decision(9, "count[1]", "out", "round_robin", size=1, rr=(0, 0)))
    snap = make_snapshot(trace=trace)
    assert packet_path(snap, 9, "physical") == ["src[0]->count[1]", "count[1]->out[0]"]
    assert packet_path(snap, 9, "logical") == ["src->count", "count->out"]
    assert packet_path(snap, 42, "physical") == []


def test_key_distribution_and_skew():
    sent = {"src[0]->count[0]": 10, "src[0]->count[1]": 20, "src[0]->count[2]": 30, "src[0]->count[3]": 60}
    snap = make_snapshot(sent=sent, top_keys={"count[3]": (("'the'", 50), ("'a'", 10))})
    (table,) = key_distribution(snap)
    assert table["operator"] == "count" and table["key_label"] == "word"
    assert [i["packets"] for i in table["instances"]] == [10, 20, 30, 60]
    assert table["skew"] == 2.0 and table["skew_level"] == "red"          # 60 / mean 30
    assert table["instances"][3]["top_keys"] == [["'the'", 50], ["'a'", 10]]
    empty = key_distribution(make_snapshot())[0]
    assert empty["skew"] is None and empty["skew_text"] == "\N{EN DASH}"


def test_rates_from_two_snapshots_and_averages():
    a = counters(make_snapshot(elapsed=1.0, sent={"src[0]->count[0]": 10}))
    b = counters(make_snapshot(elapsed=3.0, sent={"src[0]->count[0]": 50}))
    r = rates(a, b)
    assert r.edges["src[0]->count[0]"] == 20.0 and not r.average
    assert rates(None, b).edges["src[0]->count[0]"] == pytest.approx(50 / 3) and rates(None, b).average
    assert format_rate(0) == "0/s" and format_rate(7.25) == "7.2/s" and format_rate(1234) == "1.2k/s"


def test_connection_ids_are_unique_when_a_pair_feeds_two_inputs():
    snap = make_snapshot(ops=(("a", "source", 1), ("j", "co_map", 1)),
                         edges=(("a", "j", "round_robin", None, 0), ("a", "j", "round_robin", None, 1)))
    assert connection_ids(snap) == ["a[0]->j[0]#0", "a[0]->j[0]#1"]
    assert len({e["id"] for e in graph_view(snap, "logical")["edges"]}) == 2


def test_strategy_labels_and_status_line():
    assert strategy_label("hash", "word") == "hash(word)" and strategy_label("round_robin") == "round-robin"
    s = status_view(make_snapshot(states={"out[0]": "finished"}, sent={"src[0]->count[0]": 3}))
    assert (s["status"], s["finished"], s["instances"], s["packets"]) == ("RUNNING", 1, 6, 3)


def test_load_history_restarts_for_a_new_job_and_stays_bounded():
    h = LoadHistory(maxlen=10)
    for i in range(25):
        h.add_snapshot(make_snapshot(elapsed=float(i), used={"count[0]": i}))
    assert len(h) < 10 and h.times[-1] == 24.0 and h.loads["count[0]"][-1] == 0.24
    h.add_snapshot(make_snapshot(job_id="fake-2", elapsed=0.5))
    assert h.times == [0.5]
