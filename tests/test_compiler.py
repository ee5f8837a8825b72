"""The compiler: pure, deterministic plans pinned by golden files, per-job queue ids."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import sage_nb as snb
from sage_nb.communication import PythonQueueDescriptor

GOLDEN = Path(__file__).parent / "data"


def ident(x):
    return x


def key_of(x):
    return x


def wordcount() -> snb.Pipeline:
    p = snb.Pipeline("wordcount")
    words = p.from_iterable(["a b"], name="lines").flat_map(str.split, name="split", parallelism=2)
    words.key_by(key_of).map(ident, name="count", parallelism=3).sink(name="out")
    return p


def diamond() -> snb.Pipeline:
    p = snb.Pipeline("diamond")
    src = p.from_iterable(range(3), name="src", parallelism=2)
    a = src.map(ident, name="a")
    b = src.broadcast().map(ident, name="b", parallelism=2)
    a.connect(b).co_map([ident, ident], name="join").sink(name="out")
    return p


def with_service() -> snb.Pipeline:
    p = snb.Pipeline("svc")
    p.service("lookup", dict)
    p.from_iterable([1], name="src").map(ident, name="m", parallelism=2).sink(name="out")
    return p


def chained() -> snb.Pipeline:
    p = snb.Pipeline("chained")
    src = p.from_iterable(range(3), name="src", parallelism=2)
    src.map(ident, name="m", parallelism=2).filter(bool, name="f", parallelism=2) \
        .map(ident, name="one").sink(name="out")
    return p


@pytest.mark.parametrize("build", [wordcount, diamond, with_service, chained])
def test_to_dict_is_pinned_by_golden_file(build, request):
    plan = build().compile(job_id="golden", chain=build is chained)
    got = json.loads(json.dumps(plan.to_dict()))
    path = GOLDEN / f"plan_{build.__name__}.json"
    if request.config.getoption("--update-golden"):
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"{path} is missing: run pytest --update-golden once and review it"
    assert got == json.loads(path.read_text())


def test_compile_is_deterministic():
    assert wordcount().compile(job_id="j").to_dict() == wordcount().compile(job_id="j").to_dict()


def test_physical_graph_has_one_node_per_instance_and_one_edge_per_connection():
    plan = wordcount().compile(job_id="j")
    assert list(plan.graph.nodes) == ["lines[0]", "split[0]", "split[1]", "count[0]", "count[1]",
                                      "count[2]", "out[0]"]
    assert plan.graph.number_of_edges() == 2 + 2 * 3 + 3
    edge = plan.graph.edges["split[1]", "count[2]"]
    assert edge["strategy"] == "hash" and edge["key_label"] == "key_of"
    conn = edge["connection"]
    assert (conn.broadcast_index, conn.parallel_index, conn.target_input_index) == (0, 2, 0)
    # every upstream instance writes into the one input queue of the downstream instance
    assert conn.queue_descriptor is plan.contexts["count[2]"].input_qd


def test_stop_signals_counted_per_incoming_physical_connection():
    plan = diamond().compile(job_id="j")
    join = plan.contexts["join[0]"]
    assert join.upstreams == {0: ("a[0]",), 1: ("b[0]", "b[1]")}
    assert join.stop_signal_num == 3
    assert plan.contexts["b[1]"].upstreams == {0: ("src[0]", "src[1]")}
    assert plan.contexts["src[0]"].stop_signal_num == 0


def test_queue_ids_are_unique_per_job():
    p = wordcount()
    one, two = p.compile(), p.compile()
    ids_one = {qd.queue_id for qd in one.queues()}
    ids_two = {qd.queue_id for qd in two.queues()}
    assert len(ids_one) == len(one.queues()) and not ids_one & ids_two


def test_plan_is_inert_and_lazy():
    plan = wordcount().compile(job_id="j", queue_maxsize=7)
    assert all(isinstance(qd, PythonQueueDescriptor) and not qd.is_initialized() for qd in plan.queues())
    assert plan.contexts["count[0]"].input_qd.maxsize == 7
    pickle.loads(pickle.dumps([qd for qd in plan.queues()]))  # lazy descriptors pickle


def test_current_key_is_set_or_looked_up_and_a_lookup_does_not_travel():
    ctx = wordcount().compile(job_id="j").contexts["count[0]"]
    assert ctx.keyed_input and ctx.current_key is None
    ctx._key_at = lambda: "looked up"  # (the runtime's, while a bundle is processed)
    assert ctx.current_key == "looked up"
    assert pickle.loads(pickle.dumps(ctx)).current_key is None  # a copy has no lookup of this process
    ctx.current_key = "set"
    assert ctx.current_key == "set" and ctx._key_at is None


def test_names_with_any_characters_compile():
    p = snb.Pipeline("odd names")
    p.from_iterable([1], name="stage_2").map(ident, name="<img src=x onerror=alert(1)>").sink(name="a b_3")
    plan = p.compile()
    assert "<img src=x onerror=alert(1)>[0]" in plan.contexts
    assert p.run().wait(timeout=10).results("a b_3") == [1]


def test_service_contexts():
    plan = with_service().compile(job_id="j")
    svc = plan.services["lookup"]
    assert sorted(svc.response_qds) == ["m[0]", "m[1]", "out[0]", "src[0]"]
    assert plan.contexts["m[1]"].service_qds["lookup"] is svc.request_qd


def test_bad_queue_maxsize_is_refused():
    with pytest.raises(ValueError, match=r"'maxsize' must be an int in \[0, 10000000\], got str '8'"):
        wordcount().compile(queue_maxsize="8")
