"""Build the logical graph: the ``Pipeline`` fluent builder, the attribute schema, validation.

The logical graph is a ``networkx.DiGraph`` whose nodes are operators and whose edges
carry the routing strategy. A hand-built graph with the same attributes works too.

Node attributes:
    ``kind`` — ``"source" | "map" | "flat_map" | "filter" | "co_map" | "sink"``;
    ``fn`` — the user callable or class (a source: a callable, a generator function or a class;
    a co_map: a list of callables, or a class with ``map0``, ``map1``, …; a sink: ``None`` to collect);
    ``items`` — a source's iterable (``from_iterable``); ``parallelism`` — instances (default 1).
Edge attributes:
    ``strategy`` — ``"round_robin"`` (default) | ``"hash"`` | ``"broadcast"``;
    ``key`` — the key function of a ``hash`` edge; ``input_index`` — the target's input (default 0);
    ``queue`` — ``"python"`` (default) or ``"rpc"``: the kind of the target's input queues (every
    edge into one operator must agree, since each instance has one input queue).
A source may also read an external queue: ``queue_descriptor`` instead of ``items``/``fn``
(``Pipeline.from_queue``; the stream ends when ``sage_nb.END`` is read).
Graph attributes: ``name``; ``services`` — ``{name: ServiceSpec}``.

>>> p = Pipeline("wordcount")
>>> words = p.from_iterable(["a b", "b c a"], name="lines").flat_map(str.split, name="split")
>>> words.key_by(lambda w: w).map(len, name="count", parallelism=3).sink(name="out")
Stream('out')
>>> sorted(p.graph.nodes), p.graph.edges["split", "count"]["strategy"]
(['count', 'lines', 'out', 'split'], 'hash')
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .communication.packet import STRATEGIES
from .errors import GraphError

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

    from .compiler import ExecutionGraph
    from .runtime.job import Job

__all__ = ["KINDS", "MAX_PARALLELISM", "QUEUE_KINDS", "ConnectedStreams", "Pipeline", "ServiceSpec", "Stream",
           "describe_callable", "validate"]

KINDS = ("source", "map", "flat_map", "filter", "co_map", "sink")
QUEUE_KINDS = ("python", "rpc")
MAX_PARALLELISM = 256


@dataclass(frozen=True)
class ServiceSpec:
    """A long-lived object operators call through ``ctx.call_service(name, method, ...)``."""

    factory: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    workers: int = 1


def describe_callable(fn: Any) -> str:
    """``module:qualname (file:line)`` for messages, or the repr of anything else."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    where = ""
    with contextlib.suppress(TypeError, OSError):
        where = f" ({inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]})"
    module = getattr(fn, "__module__", None) or getattr(getattr(fn, "__objclass__", None), "__module__", "?")
    return f"{module}:{name}{where}"


def _check_parallelism(name: str, parallelism: Any) -> int:
    if type(parallelism) is not int or not 1 <= parallelism <= MAX_PARALLELISM:
        raise GraphError(f"node {name!r}: parallelism must be an int in [1, {MAX_PARALLELISM}], "
                         f"got {parallelism!r}")
    return parallelism


def _check_callable(name: str, what: str, fn: Any) -> None:
    if not callable(fn):
        raise GraphError(f"node {name!r}: {what} must be callable (a function or a class), "
                         f"got {type(fn).__name__} {fn!r:.60}")


def _co_map_arity(name: str, fn: Any) -> int:
    if isinstance(fn, (list, tuple)):
        for f in fn:
            _check_callable(name, "every co_map function", f)
        return len(fn)
    if isinstance(fn, type):
        n = 0
        while callable(getattr(fn, f"map{n}", None)):
            n += 1
        if n:
            return n
    raise GraphError(f"node {name!r}: co_map needs a list of functions (one per input) or a class "
                     f"with methods map0, map1, …; got {fn!r:.60}")


NODE_ATTRS = ("kind", "fn", "items", "parallelism", "queue_descriptor")
EDGE_ATTRS = ("strategy", "key", "input_index", "queue")


def _check_spelling(what: str, attrs: dict[str, Any], known: tuple[str, ...]) -> None:
    """A hand-built graph's misspelt attribute (``paralelism``) would be ignored: refuse it.
    Attributes of other names (``pos``, ``color`` for drawing) are the user's own."""
    for a in attrs:
        if isinstance(a, str) and a not in known:
            close = difflib.get_close_matches(a, known, n=1, cutoff=0.8)
            if close:
                raise GraphError(f"{what}: unknown attribute {a!r}; did you mean {close[0]!r}?")


def _check_node(g: nx.DiGraph, name: str) -> None:
    attrs = g.nodes[name]
    _check_spelling(f"node {name!r}", attrs, NODE_ATTRS)
    kind = attrs.get("kind")
    if kind not in KINDS:
        if "kind" not in attrs:
            users = [f"{u!r} -> {v!r}" for u, v in [*g.in_edges(name), *g.out_edges(name)]]
            if users:
                raise GraphError(f"edge {users[0]} refers to unknown node {name!r}; known nodes: "
                                 f"{sorted(str(n) for n in g.nodes if 'kind' in g.nodes[n])}")
        raise GraphError(f"node {name!r}: unknown kind {kind!r}; use one of {list(KINDS)}")
    _check_parallelism(name, attrs.get("parallelism", 1))
    fn = attrs.get("fn")
    if kind == "source":
        given = [k for k in ("items", "fn", "queue_descriptor") if attrs.get(k) is not None
                 or (k == "items" and "items" in attrs)]
        if len(given) != 1:
            raise GraphError(f"source {name!r} needs exactly one of 'items' (an iterable), 'fn' "
                             f"(a callable or generator function) or 'queue_descriptor'; got {given}")
        if fn is not None:
            _check_callable(name, "the source function", fn)
        elif "items" in attrs and not isinstance(attrs["items"], Iterable):
            raise GraphError(f"source {name!r}: items must be iterable, got {type(attrs['items']).__name__}")
    elif kind == "co_map":
        _co_map_arity(name, fn)
    elif not (kind == "sink" and fn is None):
        _check_callable(name, f"the {kind} function", fn)


def _check_inputs(g: nx.DiGraph, name: str) -> None:
    kind = g.nodes[name]["kind"]
    edges = list(g.in_edges(name, data=True))
    if kind == "source":
        if edges:
            raise GraphError(f"source {name!r} cannot have inputs, but has {[u for u, _, _ in edges]}")
        return
    if not edges:
        raise GraphError(f"node {name!r} ({kind}) has no input; connect an upstream operator to it")
    indexes = sorted(d.get("input_index", 0) for _, _, d in edges)
    queues = {d.get("queue", "python") for _, _, d in edges}
    if not queues <= set(QUEUE_KINDS) or len(queues) > 1:
        raise GraphError(f"edges into {name!r} ask for queue kinds {sorted(queues)}; each instance has "
                         f"one input queue, so they must agree on one of {list(QUEUE_KINDS)}")
    if kind == "co_map":
        n = _co_map_arity(name, g.nodes[name].get("fn"))
        if indexes != list(range(n)):
            raise GraphError(f"co_map {name!r} has {n} functions, so it needs inputs 0..{n - 1} once each; "
                             f"its edges have input_index {indexes}")
    for u, _, d in edges:
        strategy = d.get("strategy", "round_robin")
        if strategy not in STRATEGIES:
            raise GraphError(f"edge {u!r} -> {name!r}: unknown strategy {strategy!r}; use one of "
                             f"{list(STRATEGIES)}")
        if strategy == "hash":
            _check_callable(name, f"the key of edge {u!r} -> {name!r}", d.get("key"))
        if type(d.get("input_index", 0)) is not int or d.get("input_index", 0) < 0:
            raise GraphError(f"edge {u!r} -> {name!r}: input_index must be an int >= 0, "
                             f"got {d.get('input_index')!r}")


def validate(g: Any) -> None:
    """Raise :class:`GraphError` for anything that cannot run; see the module docstring."""
    import networkx as nx  # imported on first use: `import sage_nb` stays fast
    if not isinstance(g, nx.DiGraph):
        raise GraphError(f"a pipeline graph must be a networkx.DiGraph (a Pipeline's .graph, or one "
                         f"built by hand), got {type(g).__name__}")
    if g.is_multigraph():
        raise GraphError(f"a {type(g).__name__} has parallel edges, which are not supported: use "
                         f"nx.DiGraph(graph), or add a map to carry the second edge")
    if g.number_of_nodes() == 0:
        raise GraphError("the graph is empty; add a source (from_iterable / from_source) and a sink")
    for name in g.nodes:
        _check_node(g, name)
    for u, v, d in g.edges(data=True):
        _check_spelling(f"edge {u!r} -> {v!r}", d, EDGE_ATTRS)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        pass
    else:
        path = " -> ".join(repr(u) for u, _ in cycle) + f" -> {cycle[0][0]!r}"
        raise GraphError(f"the graph has a cycle: {path}; a dataflow must be acyclic to end")
    for name in g.nodes:
        _check_inputs(g, name)
        if g.nodes[name]["kind"] == "sink" and g.out_degree(name):
            raise GraphError(f"sink {name!r} cannot have outputs, but feeds {list(g.successors(name))}")
    sinks = {n for n in g.nodes if g.nodes[n]["kind"] == "sink"}
    for name in g.nodes:
        if name not in sinks and not sinks & nx.descendants(g, name):
            raise GraphError(f"node {name!r} has no path to a sink; add .sink() after it "
                             f"(its results would be lost)")


class Pipeline:
    """A named pipeline under construction; ``p.graph`` is its logical ``networkx.DiGraph``."""

    def __init__(self, name: str = "pipeline") -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"a pipeline name must be a non-empty str, got {name!r}")
        import networkx as nx

        self.name = name
        self.graph = nx.DiGraph(name=name, services={})
        self._used: set[int] = set()  # the ids of source iterators a run has used up

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, {self.graph.number_of_nodes()} operators)"

    def _unique(self, name: str | None, fn: Any, kind: str) -> str:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise GraphError(f"an operator name must be a non-empty str, got {name!r}")
            if name in self.graph:
                raise GraphError(f"duplicate name {name!r} in pipeline {self.name!r}; names must be "
                                 f"unique: {sorted(self.graph.nodes)}")
            return name
        base = getattr(fn, "__name__", "") if fn is not None else ""
        base = base if base.isidentifier() else kind
        name, n = base, 1
        while name in self.graph:
            n += 1
            name = f"{base}_{n}"
        return name

    def add_node(self, kind: str, inputs: list[Stream], *, name: str | None, parallelism: int,
                 fn: Any = None, **attrs: Any) -> Stream:
        """Add an operator fed by ``inputs`` (input ``i`` ← ``inputs[i]``) and validate it."""
        node = self._unique(name, fn, kind)
        _check_parallelism(node, parallelism)
        g = self.graph
        for s in inputs:
            if s.node not in g:
                raise GraphError(f"stream {s.node!r} is not part of pipeline {self.name!r}")
        if len({s.node for s in inputs}) < len(inputs):
            raise GraphError(f"{node!r} is fed twice by the same operator; insert a map to feed two inputs")
        g.add_node(node, kind=kind, fn=fn, parallelism=parallelism, **attrs)
        try:
            for i, s in enumerate(inputs):
                g.add_edge(s.node, node, input_index=i, **s.edge)
            _check_node(g, node)
            _check_inputs(g, node)
        except GraphError:
            g.remove_node(node)  # a rejected operator leaves no trace
            raise
        return Stream(self, node)

    def from_iterable(self, items: Iterable[Any], *, name: str | None = None,
                      parallelism: int = 1) -> Stream:
        """A bounded source. With ``parallelism > 1`` the items are split between instances
        (a sequence by stride: instance ``i`` gets ``items[i::p]``; any other iterable is
        shared, each item going to exactly one instance)."""
        if not isinstance(items, Iterable):
            raise GraphError(f"from_iterable needs an iterable, got {type(items).__name__}")
        return self.add_node("source", [], name=name or "source", parallelism=parallelism, items=items)

    def from_source(self, fn: Callable[..., Any], *, name: str | None = None,
                    parallelism: int = 1) -> Stream:
        """A source from a generator function (called once, items split between instances),
        a class (one instance per parallel instance, iterated; use ``self.ctx.parallel_index``),
        or a plain callable called repeatedly (return ``sage_nb.END`` to end the stream)."""
        _check_callable(name or "source", "from_source's argument", fn)
        return self.add_node("source", [], name=name, parallelism=parallelism, fn=fn)

    def from_queue(self, descriptor: Any, *, name: str | None = None) -> Stream:
        """A source fed through a queue descriptor, e.g. an ``RPCQueueDescriptor`` that a
        producer in another process puts into; the stream ends when it reads ``sage_nb.END``."""
        if not hasattr(descriptor, "queue_instance"):
            raise GraphError(f"from_queue needs a queue descriptor, got {type(descriptor).__name__}")
        return self.add_node("source", [], name=name or "queue", parallelism=1,
                             queue_descriptor=descriptor)

    def service(self, name: str, factory: Callable[..., Any], *args: Any, workers: int = 1,
                **kwargs: Any) -> None:
        """Declare a service: ``factory(*args, **kwargs)`` is built once per job and serves
        ``ctx.call_service(name, method, ...)`` calls from ``workers`` threads."""
        _check_callable(name, "a service factory", factory)
        if name in self.graph.graph["services"]:
            raise GraphError(f"duplicate service {name!r}; known: {sorted(self.graph.graph['services'])}")
        self.graph.graph["services"][name] = ServiceSpec(factory, args, kwargs, workers)

    def compile(self, **options: Any) -> ExecutionGraph:
        """Compile into an :class:`~sage_nb.compiler.ExecutionGraph` (see ``sage_nb.compile``)."""
        from .compiler import compile_graph
        return compile_graph(self.graph, **options)

    def run(self, backend: str = "threads", *, batch_size: int | None = None,
            linger: float | None = None, **options: Any) -> Job:
        """Compile and start a job (stopping this pipeline's previous job first).

        Options: the compile options (``queue_maxsize``, ``job_id``, …, see ``compile``; on
        threads with batching the queues hold 16 batches unless ``queue_maxsize`` is given),
        ``put_timeout`` (seconds a full queue may block a delivery before the job fails),
        ``paused`` (start paused, e.g. to set breakpoints first), ``stall_timeout`` (seconds;
        a job in which nothing moved that long while an instance waited for room in a full
        queue fails with :class:`~sage_nb.errors.StallError`; by default such a job only warns,
        once, after 10 s: see ``job.stall``), and micro-batching:

        - ``batch_size`` (default 1024): packets travel between tasks in batches of up to this
          many per connection (never more than the receiving queue holds). Routing stays per
          packet; ``batch_size=1`` delivers packet by packet, as the step backend does.
        - ``linger`` (default 0.005 s): the longest a routed packet waits for its batch when
          traffic is light (a receiver waiting for input gets its packets at once).
        - On Ray, packets always travel in batches, one actor call each (default 1024 per
          connection, linger 2 ms); ``batch_size``/``linger`` set them there too, and
          ``batch_size=1`` makes one actor call per packet.
        - ``chain=True`` (default False) fuses consecutive operators: where an operator feeds
          only one other with the same parallelism over a plain round-robin edge (no key, no
          broadcast, no RPC queue), instance ``i`` of the second runs inside instance ``i``'s
          task of the first, which hands it its packets directly (no queue, no thread). The
          inspector still shows both nodes, their counters and an edge labelled "chained";
          errors name the operator that raised. Delivery breakpoints need ``chain=False``.
          On the step and Ray backends a chained edge is a forward edge through a queue.

        >>> p = Pipeline("doc-run")
        >>> p.from_iterable(range(6)).map(lambda x: x * x).sink(name="out")
        Stream('out')
        >>> p.run(batch_size=4, linger=0.001).wait(timeout=10).results("out")
        [0, 1, 4, 9, 16, 25]
        >>> p.run(chain=True).wait(timeout=10).results("out")
        [0, 1, 4, 9, 16, 25]
        >>> p.run(batch_size=0)
        Traceback (most recent call last):
        ...
        sage_nb.errors.BackendError: batch_size must be an int in [1, 65536], got 0; use batch_size=1 to deliver packet by packet
        """
        from .runtime.manager import JobManager
        if batch_size is not None:
            options["batch_size"] = batch_size
        if linger is not None:
            options["linger"] = linger
        # a source's iterator (a generator, iter(...)) is used up by the first run: not silently again
        iterators = {op: d["items"] for op, d in self.graph.nodes(data=True)
                     if isinstance(d.get("items"), Iterator)}
        for op, items in iterators.items():
            if id(items) in self._used:
                raise GraphError(f"source {op!r} reads an iterator ({type(items).__name__}), which this "
                                 f"pipeline's first run used up; to run it again, give from_iterable a "
                                 f"list or a range, or from_source a generator function")
        job = JobManager.default().run(self.graph, backend=backend, **options)
        self._used.update(id(items) for items in iterators.values())
        return job


class _Operators:
    """The operators that can follow a stream (or several connected streams)."""

    def _then(self, kind: str, fn: Any, name: str | None, parallelism: int) -> Stream:
        raise NotImplementedError

    # (a ``type`` too: a user function class is instantiated once per parallel instance)
    def map(self, fn: Callable[[Any], Any] | type, *, name: str | None = None,
            parallelism: int = 1) -> Stream:
        """Apply ``fn`` to every item (its result, even None, is forwarded)."""
        return self._then("map", fn, name, parallelism)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]] | type, *, name: str | None = None,
                 parallelism: int = 1) -> Stream:
        """Apply ``fn`` and forward every item of the iterable it returns."""
        return self._then("flat_map", fn, name, parallelism)

    def filter(self, fn: Callable[[Any], Any] | type, *, name: str | None = None,
               parallelism: int = 1) -> Stream:
        """Forward the items for which ``fn`` is truthy."""
        return self._then("filter", fn, name, parallelism)

    def sink(self, fn: Callable[[Any], Any] | type | None = None, *, name: str | None = None,
             parallelism: int = 1) -> Stream:
        """End the stream: collect items (``job.results(name)``) or call ``fn`` on each."""
        return self._then("sink", fn, name if name or fn else "sink", parallelism)


class Stream(_Operators):
    """The output of one operator; the methods add the next operator after it."""

    def __init__(self, pipeline: Pipeline, node: str, edge: dict[str, Any] | None = None) -> None:
        self.pipeline, self.node, self.edge = pipeline, node, edge or {}

    def __repr__(self) -> str:
        return f"Stream({self.node!r})"

    def _then(self, kind: str, fn: Any, name: str | None, parallelism: int) -> Stream:
        return self.pipeline.add_node(kind, [self], name=name, parallelism=parallelism, fn=fn)

    def key_by(self, key: Callable[[Any], Any]) -> Stream:
        """Hash-partition the next edge by ``key(item)``: equal keys meet at one instance, the
        same one in every process. A key is a str, bytes, int, float, bool, None or a tuple of
        them, or a value equal to one (an ``IntEnum`` member, a namedtuple, a NumPy number)."""
        _check_callable(self.node, "key_by's key", key)
        return Stream(self.pipeline, self.node, {**self.edge, "strategy": "hash", "key": key})

    def broadcast(self) -> Stream:
        """Send every item to every instance of the next operator (on threads and step, the same
        object to each: a function that changes its input in place changes it for the others;
        return a new value instead)."""
        return Stream(self.pipeline, self.node, {**self.edge, "strategy": "broadcast"})

    def rebalance(self) -> Stream:
        """Round-robin the next edge (the default)."""
        return Stream(self.pipeline, self.node, {**self.edge, "strategy": "round_robin"})

    def via(self, queue: str) -> Stream:
        """Carry the next edge through ``queue`` = ``"rpc"`` (a TCP queue server) or ``"python"``."""
        if queue not in QUEUE_KINDS:
            raise GraphError(f"unknown queue kind {queue!r}; use one of {list(QUEUE_KINDS)}")
        return Stream(self.pipeline, self.node, {**self.edge, "queue": queue})

    def connect(self, *others: Stream) -> ConnectedStreams:
        """Several streams into one operator; input ``i`` is the ``i``-th stream (see ``co_map``)."""
        return ConnectedStreams([self, *others])

    union = connect


class ConnectedStreams(_Operators):
    """Streams feeding one operator: ``co_map`` per input, or ``map``/``sink``/… on all of them."""

    def __init__(self, streams: list[Stream]) -> None:
        if any(s.pipeline is not streams[0].pipeline for s in streams):
            raise GraphError("cannot connect streams of different pipelines")
        self.streams = streams

    def connect(self, *others: Stream) -> ConnectedStreams:
        return ConnectedStreams([*self.streams, *others])

    def _then(self, kind: str, fn: Any, name: str | None, parallelism: int) -> Stream:
        return self.streams[0].pipeline.add_node(kind, self.streams, name=name, parallelism=parallelism,
                                                 fn=fn)

    def co_map(self, fns: Any, *, name: str | None = None, parallelism: int = 1) -> Stream:
        """Apply ``fns[i]`` (or method ``map{i}`` of a class) to the items of input ``i``."""
        return self._then("co_map", list(fns) if isinstance(fns, tuple) else fns, name or "co_map",
                          parallelism)
