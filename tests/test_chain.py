"""Operator chaining (``chain=True``): fused instances, the same answers, per-node counters and errors."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from _reliability import STRICT_THREADS, WAIT, finished

import sage_nb as snb
from sage_nb.compiler import chain_edges

pytestmark = STRICT_THREADS


def inc(x):
    return x + 1


def even(x):
    return x % 2 == 0


def words(line):
    return line.split()


def linear(n: int = 2000, parallelism: int = 1) -> snb.Pipeline:
    p = snb.Pipeline("chain-linear")
    p.from_iterable(range(n), name="src", parallelism=parallelism) \
        .map(inc, name="m", parallelism=parallelism) \
        .filter(even, name="f", parallelism=parallelism).sink(name="out")
    return p


def test_chain_edges_fuse_only_one_to_one_unkeyed_edges_of_equal_parallelism():
    p = snb.Pipeline("shapes")
    src = p.from_iterable(range(3), name="src", parallelism=2)
    a = src.map(inc, name="a", parallelism=2)           # src -> a: chained
    b = a.map(inc, name="b", parallelism=3)             # other parallelism
    c = b.key_by(lambda x: x).map(inc, name="c", parallelism=3)  # hash
    d = c.broadcast().map(inc, name="d", parallelism=3)  # broadcast
    d.map(inc, name="e", parallelism=3).sink(name="out1", parallelism=3)  # e -> out1: chained
    d.sink(name="out2", parallelism=3)  # d feeds two operators: neither edge chained
    assert chain_edges(p.graph) == {("src", "a"), ("e", "out1")}


def test_a_source_that_runs_user_code_keeps_its_own_thread_and_what_follows_is_still_fused(no_leak):
    """Fused after a generator, the operators would run one item at a time (an item may not
    wait while the generator does); the generator's items cross one queue instead."""
    def numbers():
        yield from range(5000)

    sources = (lambda p: p.from_source(numbers, name="src"), lambda p: p.from_iterable(iter(range(5000)), name="src"))
    for make in sources:
        p = snb.Pipeline("chain-generator")
        make(p).map(inc, name="m").filter(even, name="f").sink(name="out")
        assert chain_edges(p.graph) == {("m", "f"), ("f", "out")}
        job = p.run(chain=True)
        snap = finished(job, WAIT)
        assert job.results("out") == [x + 1 for x in range(5000) if (x + 1) % 2 == 0]
        assert [c.strategy for c in snap.connections] == ["round_robin", "chained", "chained"]
        assert sorted(t.name.rsplit(":", 1)[1] for t in job.runner.backend.threads) == ["flusher", "m[0]", "src[0]"]


def test_a_co_map_and_rpc_edges_are_not_chained():
    p = snb.Pipeline("co")
    x = p.from_iterable(range(3), name="x")
    y = p.from_iterable(range(3), name="y")
    x.connect(y).co_map([inc, inc], name="join").via("rpc").map(inc, name="m").sink(name="out")
    assert chain_edges(p.graph) == {("m", "out")}


def test_chained_plan_is_forward_and_runs_fewer_threads(no_leak):
    job = linear(parallelism=2).run(chain=True)
    finished(job, WAIT)
    plan = job.plan
    assert plan.contexts["m[1]"].chained_from == "src[1]"
    assert plan.contexts["f[1]"].upstreams == {0: ("m[1]",)}
    assert plan.contexts["out[0]"].upstreams == {0: ("f[0]", "f[1]")}  # parallelism 2 -> 1: a queue
    assert sorted(plan.graph.successors("src[0]")) == ["m[0]"]
    threads = [t.name.rsplit(":", 1)[1] for t in job.runner.backend.threads]
    assert sorted(threads) == ["flusher", "out[0]", "src[0]", "src[1]"]


@pytest.mark.parametrize("batch_size", [1, None])
def test_chained_results_and_counters_equal_unchained(no_leak, batch_size):
    runs = {}
    for chain in (False, True):
        snap = finished(linear().run(chain=chain, batch_size=batch_size), WAIT)
        runs[chain] = snap
    plain, fused = runs[False], runs[True]
    assert [t.packets_in for t in fused.tasks] == [t.packets_in for t in plain.tasks] == [2000, 2000, 2000, 1000]
    assert [c.packets_sent for c in fused.connections] == [2000, 2000, 1000]
    assert {c.strategy for c in fused.connections} == {"chained"}
    assert {e[2] for e in fused.logical_edges} == {"chained"}
    assert {c.strategy for c in plain.connections} == {"round_robin"}


def test_chained_sink_keeps_order_and_key_counts_after_a_hash(no_leak):
    p = snb.Pipeline("chain-wc")
    lines = ["a b a", "c a b"] * 200
    p.from_iterable(lines, name="src").flat_map(words, name="split") \
        .key_by(lambda w: w).map(str.upper, name="up", parallelism=2).sink(name="out", parallelism=2)
    job = p.run(chain=True)
    snap = finished(job, WAIT)
    assert Counter(job.results("out")) == {"A": 600, "B": 400, "C": 200}
    assert chain_edges(p.graph) == {("src", "split"), ("up", "out")}
    ups = {t.name: dict(t.top_keys) for t in snap.tasks if t.operator == "up"}
    assert sum(sum(k.values()) for k in ups.values()) == 1200


def test_an_error_in_a_chained_operator_names_it(no_leak):
    def boom(x):
        if x == 500:
            raise ValueError("bad item 500")
        return x

    p = snb.Pipeline("chain-err")
    p.from_iterable(range(1000), name="src").map(inc, name="m").map(boom, name="check").sink(name="out")
    job = p.run(chain=True)
    with pytest.raises(snb.JobFailed) as info:
        job.wait(WAIT)
    assert (info.value.node, info.value.instance) == ("check", "check[0]")
    assert isinstance(info.value.__cause__, ValueError)
    assert "in boom" in info.value.traceback_text and "500" in str(info.value.packet)
    states = {t.name: t.state for t in job.snapshot().tasks}
    assert states["check[0]"] == "failed" and states["m[0]"] == "finished"
    assert job.results("out") == list(range(1, 500))  # what came before the failure still arrives


class Collect:
    """A sink class: open() and close() run once, in the chain's thread."""

    opened = closed = 0
    got: list = []

    def open(self):
        type(self).opened += 1

    def __call__(self, x):
        self.got.append(x)

    def close(self):
        type(self).closed += 1


def test_open_and_close_of_chained_operators_run_once(no_leak):
    Collect.opened = Collect.closed = 0
    Collect.got = []
    p = snb.Pipeline("chain-close")
    p.from_iterable(range(10), name="src").map(inc, name="m").sink(Collect, name="out")
    finished(p.run(chain=True), WAIT)
    assert (Collect.opened, Collect.closed, Collect.got) == (1, 1, list(range(1, 11)))


class FailingOpen:
    def open(self):
        raise RuntimeError("cannot open")

    def __call__(self, x):
        return x


def test_a_chained_operator_that_cannot_open_fails_the_job_naming_it(no_leak):
    p = snb.Pipeline("chain-open")
    p.from_iterable(range(10), name="src").map(FailingOpen, name="m").sink(name="out")
    job = p.run(chain=True)
    with pytest.raises(snb.JobFailed) as info:
        job.wait(WAIT)
    assert info.value.instance == "m[0]" and "cannot open" in str(info.value.__cause__)
    assert {t.name: t.state for t in job.snapshot().tasks}["out[0]"] == "finished"


def test_a_slow_source_hands_each_item_over_at_once(no_leak):
    """The sink gets item k before the source produces item k+1: nothing waits for a batch."""
    got = threading.Event()
    missed = []

    def items():
        for k in range(5):
            got.clear()
            yield k
            if not got.wait(WAIT):
                missed.append(k)

    p = snb.Pipeline("chain-slow")
    p.from_source(items, name="src").map(inc, name="m").sink(lambda x: got.set(), name="out")
    finished(p.run(chain=True), WAIT)
    assert missed == []


def test_stop_cancels_a_running_chain(no_leak):
    import itertools

    p = snb.Pipeline("chain-stop")
    p.from_source(itertools.count, name="src").map(inc, name="m").sink(lambda x: None, name="out")
    job = p.run(chain=True)
    job.stop(drain=False, timeout=WAIT)
    assert job.status is snb.JobStatus.CANCELLED
    assert {t.state for t in job.snapshot().tasks} == {"cancelled"}


def test_drain_ends_a_chain_with_every_emitted_packet_delivered(no_leak):
    import itertools

    seen = []
    p = snb.Pipeline("chain-drain")
    p.from_source(itertools.count, name="src").map(inc, name="m").sink(seen.append, name="out")
    job = p.run(chain=True)
    job.stop(drain=True, timeout=WAIT)
    snap = job.snapshot()
    assert job.status is snb.JobStatus.FINISHED
    assert seen == list(range(1, len(seen) + 1))
    assert snap.tasks[0].packets_in == len(seen)


def test_services_from_a_chained_operator(no_leak):
    p = snb.Pipeline("chain-svc")
    p.service("table", dict, {1: "one", 2: "two"})

    class Lookup:
        def __call__(self, x):
            return self.ctx.call_service("table", "get", x)

    p.from_iterable([1, 2, 3], name="src").map(Lookup, name="look").sink(name="out")
    assert finished(p.run(chain=True), WAIT) and \
        snb.JobManager.default().latest("chain-svc").results("out") == ["one", "two", None]


def test_delivery_breakpoints_need_chain_false(no_leak):
    job = linear().run(chain=True, paused=True)
    with pytest.raises(snb.BackendError, match="chain=False"):
        job.break_when(first_packet="out")
    bp = job.break_when(error=True)  # errors still pause a chained job
    job.resume()
    finished(job, WAIT)
    assert bp.hits == []


def test_chain_must_be_a_bool():
    with pytest.raises(snb.GraphError, match="chain must be True or False"):
        linear().compile(chain="yes")


def _forward_run(backend: str) -> None:
    job = linear(200, parallelism=2).run(backend=backend, chain=True)
    snap = finished(job, WAIT)
    assert sorted(job.results("out")) == [x for x in range(1, 201) if x % 2 == 0]
    assert {c.strategy for c in snap.connections} == {"round_robin"}
    assert {e[2] for e in snap.logical_edges} == {"round_robin"}
    assert len(snap.connections) == 6  # src->m and m->f forward (2 + 2), f->out (2)


def test_the_step_backend_runs_a_chained_plan_through_forward_queues(no_leak):
    _forward_run("step")


@pytest.mark.ray
def test_ray_runs_a_chained_plan_through_forward_queues(ray_session, no_leak):
    _forward_run("ray")


def test_the_inspector_shows_chained_operators_as_separate_nodes(no_leak):
    import xml.etree.ElementTree as ET

    from sage_nb.inspector.svg import graph_svg
    from sage_nb.inspector.view import graph_view

    snap = finished(linear(parallelism=2).run(chain=True), WAIT)
    for view, nodes in (("logical", {"src", "m", "f", "out"}),
                        ("physical", {"src[0]", "src[1]", "m[0]", "m[1]", "f[0]", "f[1]", "out[0]"})):
        frame = graph_view(snap, view)
        assert {n["id"] for n in frame["nodes"]} == nodes
        labels = Counter(e["label"] for e in frame["edges"])
        assert labels["chained"] == (2 if view == "logical" else 4), labels
        assert {e["load_text"] for e in frame["edges"] if e["strategy"] == "chained"} == {"no queue"}
        svg = ET.tostring(graph_svg(frame), encoding="unicode")
        assert svg.count('stroke-dasharray="6 4"') == labels["chained"]


def test_cancel_stops_a_chained_slow_sink_within_one_item(no_leak):
    """Plain items go straight into the chained sink; a cancel still cuts its batch short."""
    import time

    seen, reached = [], threading.Event()

    def slow(x):
        seen.append(x)
        if len(seen) == 20:
            reached.set()
        time.sleep(0.005)  # slow user code, not an ordering device

    p = snb.Pipeline("chain-cancel")
    p.from_iterable(range(10_000), name="src").map(inc, name="m").sink(slow, name="out")
    job = p.run(chain=True)
    assert reached.wait(WAIT)
    job.stop(drain=False, timeout=WAIT)
    at_stop = len(seen)
    snap = job.snapshot()
    assert job.status is snb.JobStatus.CANCELLED and len(seen) == at_stop < 10_000
    out = snap.task("out[0]")
    assert out.packets_in == len(seen) and seen == list(range(1, len(seen) + 1))
    assert out.packets_in + out.unprocessed == snap.task("m[0]").packets_out
