"""Reliability cases T26-T31: partitioning and routing (reliability-cases.md §4.E).

Hash routing uses a stable hash (never the builtin ``hash()``), so a key owns the same
instance in every process; falsy keys are keys like any other; unroutable keys fail the
job at the node that extracts them; order is FIFO per (upstream, downstream) instance.
The cross-process part of T26 (fresh interpreters, PYTHONHASHSEED, Ray workers) is pinned
by the golden table in ``tests/data/hash_golden.json``, checked here through a real job.
"""

from __future__ import annotations

import ast
import json
import random
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _reliability import STRICT_THREADS, WAIT, finished, job_threads, scaled

import sage_nb as snb
from sage_nb.communication import partition

pytestmark = STRICT_THREADS

GOLDEN = Path(__file__).resolve().parent / "data" / "hash_golden.json"


class WhereAmI:
    """A map recording, for each item, the instance it reached and the key the task saw."""

    def open(self):
        self.index = self.ctx.parallel_index

    def __call__(self, item):
        return (item, self.index, self.ctx.current_key)


def _route(backend: str, items: list[Any], key, parallelism: int, name: str) -> list[tuple]:
    """Run ``items`` through ``key_by(key)`` into ``parallelism`` instances of WhereAmI."""
    p = snb.Pipeline(name)
    p.from_iterable(items, name="src").key_by(key).map(WhereAmI, name="where", parallelism=parallelism) \
        .sink(name="out")
    job = p.run(backend=backend)
    finished(job)
    return job.results("out")


# --------------------------------------------------------------------------- T26
def _mixed_keys(n: int, seed: int = 26) -> list[Any]:
    rng = random.Random(seed)
    alphabet = "abcxyz_- äöü日本🙂"

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))

    makers = [
        text,
        lambda: text().encode(),
        lambda: rng.randrange(-10**6, 10**6),
        lambda: rng.randrange(-2**70, 2**70),
        lambda: (text(), rng.randrange(100)),
        lambda: (rng.randrange(100), (text(), (rng.randrange(10), None))),
        lambda: None,
        lambda: rng.random() > 0.5,
    ]
    return [rng.choice(makers)() for _ in range(n)]


@pytest.mark.parametrize("parallelism", [4, 7])
def test_t26_hash_partition_in_a_job_matches_partition(backend, no_leak, parallelism):
    keys = _mixed_keys(scaled(backend, 10_000))
    items = list(enumerate(keys))
    routed = _route(backend, items, lambda item: item[1], parallelism, "t26")

    assert sorted(i for (i, _), _, _ in routed) == list(range(len(keys)))
    for (_, key), instance, seen_key in routed:
        assert instance == partition(key, parallelism), (key, instance)
        assert seen_key == key and type(seen_key) is type(key)


def test_t26_golden_keys_land_on_their_golden_instances(backend, no_leak):
    golden = json.loads(GOLDEN.read_text())["keys"]
    keys = [ast.literal_eval(g["key"]) for g in golden]
    for n in (4, 7):
        routed = _route(backend, list(enumerate(keys)), lambda item: item[1], n, "t26-golden")
        where = {i: instance for (i, _), instance, _ in routed}
        assert [where[i] for i in range(len(keys))] == [g[f"n{n}"] for g in golden]


# --------------------------------------------------------------------------- T27
class KeyCounter:
    """Keyed state: how many items of each key this instance has seen."""

    def open(self):
        self.index, self.counts = self.ctx.parallel_index, Counter()

    def __call__(self, item):
        key = self.ctx.current_key
        assert key == item[0]
        self.counts[key] += 1
        return (key, self.counts[key], self.index)


def _count_keys(backend: str, items: list[tuple[int, int]], parallelism: int) -> list[tuple]:
    p = snb.Pipeline("t27")
    p.from_iterable(items, name="src").key_by(lambda item: item[0]) \
        .map(KeyCounter, name="count", parallelism=parallelism).sink(name="out")
    job = p.run(backend=backend)
    finished(job)
    return job.results("out")


def test_t27_same_key_same_instance_keyed_state(backend, no_leak):
    rng = random.Random(27)
    items = [(rng.randrange(1000), j) for j in range(scaled(backend, 20_000))]
    occurrences = Counter(k for k, _ in items)
    out = _count_keys(backend, items, 4)

    instances: dict[int, set[int]] = defaultdict(set)
    running: dict[int, list[int]] = defaultdict(list)
    for key, count, instance in out:
        instances[key].add(instance)
        running[key].append(count)
    assert all(len(s) == 1 for s in instances.values()), "a key was seen by two instances"
    assert {k: c for k, c in running.items()} == {k: list(range(1, n + 1)) for k, n in occurrences.items()}
    single = _count_keys(backend, items, 1)
    assert Counter((k, c) for k, c, _ in out) == Counter((k, c) for k, c, _ in single)


# --------------------------------------------------------------------------- T28
FALSY = [0, "", False, None, (), b""]


def test_t28_falsy_keys_are_hash_partitioned(backend, no_leak):
    n = 5
    items = [(key, j) for j in range(20) for key in [*FALSY, 1, 1.0, True]]
    routed = _route(backend, items, lambda item: item[0], n, "t28")

    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for (key, _), instance, seen_key in routed:
        assert repr(seen_key) == repr(key), "the task saw another key than the one routed"
        where[type(key).__name__, repr(key)].add(instance)
    for key in [*FALSY, 1, 1.0, True]:
        assert where[type(key).__name__, repr(key)] == {partition(key, n)}, \
            f"{key!r} was not routed by its hash (round-robin?)"
    assert len(routed) == len(items)


def test_t28_equal_keys_share_a_partition():
    """The documented choice: keys equal in Python (1, 1.0, True; 0, False) share an instance."""
    for n in (2, 3, 4, 5, 7, 16):
        assert partition(1, n) == partition(1.0, n) == partition(True, n)
        assert partition(0, n) == partition(0.0, n) == partition(False, n)


# --------------------------------------------------------------------------- T29
class _Opaque:
    pass


@pytest.mark.parametrize(("key", "named"), [
    ([1, 2], "list"),
    ({"a": 1}, "dict"),
    (_Opaque(), "_Opaque"),
    (float("nan"), "nan"),
], ids=["list", "dict", "object", "nan"])
def test_t29_unroutable_keys_fail_the_job_clearly(backend, no_leak, key, named):
    p = snb.Pipeline("t29")
    p.from_iterable([1, 2, 3], name="src").map(lambda x: (key, x), name="tag") \
        .key_by(lambda item: item[0]).map(lambda x: x, name="m", parallelism=3).sink(name="out")
    job = p.run(backend=backend)
    with pytest.raises(snb.JobFailed) as info:
        job.wait(WAIT)
    e = info.value
    assert job.status is snb.JobStatus.FAILED
    assert e.node == "tag" and "tag[0]" in str(e), "the key-extracting node is named"
    assert named in str(e), f"the key type is named: {e}"
    assert isinstance(e.__cause__, TypeError)
    assert job.results("out") == []
    assert job_threads(job) == []


@pytest.mark.parametrize("parallelism", [1, 3])
@pytest.mark.parametrize(("bad", "named"), [([1, 2], "list"), (Decimal("1.5"), "Decimal")], ids=["list", "decimal"])
def test_t29_a_bad_key_among_many_fails_alike_at_any_parallelism_naming_its_item(backend, no_leak, bad,
                                                                                 named, parallelism):
    """Item 5,000 of 10,000 has a key no instance can be chosen for: with one instance as with
    three, on every backend, the job fails in the source, naming that item."""
    n = 10_000
    p = snb.Pipeline("t29-among-many")
    p.from_iterable([*range(n // 2), bad, *range(n // 2)], name="src").key_by(lambda x: x) \
        .map(lambda x: x, name="m", parallelism=parallelism).sink(name="out")
    job = p.run(backend=backend)
    with pytest.raises(snb.JobFailed, match=rf"cannot hash-partition a key of type {named}") as info:
        job.wait(WAIT)
    e = info.value
    assert (e.node, e.instance) == ("src", "src[0]") and isinstance(e.__cause__, TypeError)
    assert str(e.packet).endswith(repr(bad)), f"the item named is not the bad one: {e.packet}"
    assert len(job.results("out")) < n + 1


# --------------------------------------------------------------------------- T30
def _spread(backend: str, n: int, edge: str, parallelism: int = 4) -> list[tuple]:
    p = snb.Pipeline(f"t30-{edge}")
    s = p.from_iterable(range(n), name="src")
    s = {"round_robin": s.rebalance, "broadcast": s.broadcast,
         "hash": lambda: s.key_by(lambda x: x)}[edge]()
    s.map(WhereAmI, name="where", parallelism=parallelism).sink(name="out")
    job = p.run(backend=backend)
    finished(job)
    return job.results("out")


def test_t30_round_robin_is_balanced_and_deterministic(backend, no_leak):
    n = scaled(backend, 10_000)
    out = _spread(backend, n, "round_robin")
    assert all(instance == x % 4 for x, instance, _ in out), "round-robin in instance order"
    assert Counter(instance for _, instance, _ in out) == {i: n // 4 for i in range(4)}


def test_t30_broadcast_reaches_every_instance(request, backend, no_leak):
    n = scaled(backend, 10_000)
    out = _spread(backend, n, "broadcast")
    got: dict[int, list[int]] = defaultdict(list)
    for x, instance, _ in out:
        got[instance].append(x)
    assert {i: sorted(xs) for i, xs in got.items()} == {i: list(range(n)) for i in range(4)}


def test_t30_hash_of_distinct_keys_is_balanced(backend, no_leak):
    n = scaled(backend, 10_000)
    out = _spread(backend, n, "hash")
    counts = Counter(instance for _, instance, _ in out)
    assert sorted(counts) == [0, 1, 2, 3]
    tolerance = 0.1 if n >= 10_000 else 0.2  # fewer keys on "step": a wider (4 sigma) band
    assert all(abs(c - n / 4) <= tolerance * n / 4 for c in counts.values()), counts
    assert all(instance == partition(x, 4) for x, instance, _ in out)


def test_t30_broadcast_copies_are_not_changed_by_another_instance(request, backend, no_leak):
    class Tag:
        def open(self):
            self.index = self.ctx.parallel_index

        def __call__(self, x):
            if self.index == 1:  # a slow middle instance: the router blocks between copies
                time.sleep(0.0005)
            return (self.index, x)

    p = snb.Pipeline("t30-copies")
    p.from_iterable(range(500), name="src").broadcast().map(Tag, name="tag", parallelism=3) \
        .sink(name="out")
    job = p.run(backend=backend, queue_maxsize=4)
    finished(job)
    bad = [(i, x) for i, x in job.results("out") if not isinstance(x, int)]
    assert bad == [], f"{len(bad)} payloads were rewritten by another instance, e.g. {bad[:3]}"


# --------------------------------------------------------------------------- T31
class Numbered:
    """Instance ``i`` emits ``(i, 0), (i, 1), …``: its channel's sequence numbers."""

    def __iter__(self):
        i = self.ctx.parallel_index
        return ((i, k) for k in range(300))


@pytest.mark.parametrize("edge", ["round_robin", "hash", "rpc"])
def test_t31_per_channel_fifo(backend, no_leak, edge):
    if edge == "rpc" and backend == "step":
        pytest.skip("the step backend moves packets through in-process queues only")
    class Arrivals:
        """Numbers the items in the order its instance received them."""

        def open(self):
            self.index, self.k = self.ctx.parallel_index, 0
            self.rng = random.Random(31 + self.index)

        def __call__(self, item):
            self.k += 1
            if self.rng.random() < 0.05:
                time.sleep(0.0005)
            return (*item, self.index, self.k)

    p = snb.Pipeline("t31")
    s = p.from_source(Numbered, name="src", parallelism=3)
    s = s.rebalance() if edge == "round_robin" else s.key_by(lambda item: item[1] % 11)
    if edge == "rpc":  # through the TCP queue server
        s = s.via("rpc")
    s.map(Arrivals, name="recv", parallelism=2).sink(name="out", parallelism=2)
    job = p.run(backend=backend, queue_maxsize=8)
    finished(job)

    out = job.results("out")
    assert Counter((i, k) for i, k, _, _ in out) == Counter((i, k) for i in range(3) for k in range(300))
    for consumer in range(2):
        received = sorted((arrival, producer, seq) for producer, seq, c, arrival in out if c == consumer)
        assert [a for a, _, _ in received] == list(range(1, len(received) + 1))
        for producer in range(3):
            seqs = [seq for _, pr, seq in received if pr == producer]
            assert seqs == sorted(set(seqs)), f"src[{producer}] -> recv[{consumer}] out of order"
