"""Random pipelines for property tests of the step backend (hypothesis strategies).

A *spec* is plain data; :func:`build` turns it into a fresh :class:`sage_nb.Pipeline`, so the
same spec can run on several backends. The functions are module-level and deterministic.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

import sage_nb as snb

__all__ = ["WORDCOUNT_OUT", "build", "expected", "specs", "wordcount"]


def double(x: int) -> int:
    return x * 2 + 1


def keep(x: int) -> bool:
    return x % 3 != 0


def spread(x: int) -> list[int]:
    return [x, x + 1000] if x % 2 else []


def mod5(x: int) -> int:
    return x % 5


KINDS = ("map", "filter", "flat_map", "keyed", "broadcast", "union")


@st.composite
def specs(draw: Any, max_ops: int = 5) -> dict[str, Any]:
    """A random DAG: 1-2 sources, up to ``max_ops`` operators, a sink on every leaf."""
    sources = [(draw(st.lists(st.integers(0, 50), max_size=12)), draw(st.integers(1, 2)))
               for _ in range(draw(st.integers(1, 2)))]
    ops = []
    n_streams = len(sources)
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(KINDS if n_streams > 1 else KINDS[:-1]))
        first = draw(st.integers(0, n_streams - 1))
        inputs = [first]
        if kind == "union":
            inputs.append(draw(st.integers(0, n_streams - 1).filter(lambda i, f=first: i != f)))
        ops.append((kind, inputs, draw(st.integers(1, 3))))
        n_streams += 1
    return {"sources": sources, "ops": ops, "queue_maxsize": draw(st.sampled_from([1, 2, 4, 64]))}


def build(spec: dict[str, Any], name: str = "prop") -> snb.Pipeline:
    """A fresh pipeline for ``spec``; its sinks are named ``out<k>``."""
    p = snb.Pipeline(name)
    streams = [p.from_iterable(items, name=f"s{i}", parallelism=par)
               for i, (items, par) in enumerate(spec["sources"])]
    used: set[int] = set()
    for j, (kind, inputs, par) in enumerate(spec["ops"]):
        s = streams[inputs[0]]
        used.update(inputs)
        name_ = f"op{j}"
        if kind == "map":
            out = s.map(double, name=name_, parallelism=par)
        elif kind == "filter":
            out = s.filter(keep, name=name_, parallelism=par)
        elif kind == "flat_map":
            out = s.flat_map(spread, name=name_, parallelism=par)
        elif kind == "keyed":
            out = s.key_by(mod5).map(double, name=name_, parallelism=par)
        elif kind == "broadcast":
            out = s.broadcast().map(double, name=name_, parallelism=par)
        else:
            out = s.union(streams[inputs[1]]).map(double, name=name_, parallelism=par)
        streams.append(out)
    for k, s in enumerate(streams):
        if k not in used:
            s.sink(name=f"out{k}")
    return p


def expected(spec: dict[str, Any]) -> dict[str, list[int]]:
    """What each sink must receive (sorted): the semantics of the spec, without any runtime."""
    streams = [list(items) for items, _ in spec["sources"]]
    used: set[int] = set()
    for kind, inputs, par in spec["ops"]:
        xs = [x for i in inputs for x in streams[i]]
        used.update(inputs)
        if kind == "filter":
            streams.append([x for x in xs if keep(x)])
        elif kind == "flat_map":
            streams.append([y for x in xs for y in spread(x)])
        else:
            streams.append([double(x) for x in xs] * (par if kind == "broadcast" else 1))
    return {f"out{k}": sorted(s) for k, s in enumerate(streams) if k not in used}


#: What the sink of :func:`wordcount` receives, sorted.
WORDCOUNT_OUT = sorted(["A", "B", "C", "B", "C", "C", "A", "U42", "U42", "B"])


def wordcount(name: str = "wc") -> snb.Pipeline:
    """Lines split into words, hash-partitioned by word to a counting map, then collected."""
    p = snb.Pipeline(name)
    p.from_iterable(["a b c", "b c", "c a u42", "u42 b"], name="lines") \
        .flat_map(str.split, name="split", parallelism=2) \
        .key_by(str).map(str.upper, name="count", parallelism=4).sink(name="out")
    return p
