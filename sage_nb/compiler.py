"""Compile a logical graph into an ``ExecutionGraph``: one node per parallel instance.

Pure and deterministic: the same graph and options give the same plan (``to_dict()``).
No thread, actor or socket is created; queue descriptors stay lazy.

>>> import sage_nb as snb
>>> p = snb.Pipeline("demo")
>>> p.from_iterable(range(4), name="src").map(abs, name="m", parallelism=2).sink(name="out")
Stream('out')
>>> plan = p.compile(job_id="demo-1")
>>> list(plan.graph.nodes)
['src[0]', 'm[0]', 'm[1]', 'out[0]']
>>> plan.contexts["out[0]"].upstreams
{0: ('m[0]', 'm[1]')}
"""

from __future__ import annotations

import itertools
import pickle
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .communication.connection import Connection
from .communication.queue_descriptor import BaseQueueDescriptor, PythonQueueDescriptor
from .communication.router import BroadcastGroup
from .errors import GraphError
from .graph import describe_callable, validate
from .runtime.context import IN_MEMORY_TYPES, ServiceContext, TaskContext

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = ["DEFAULT_QUEUE_MAXSIZE", "ExecutionGraph", "chain_edges", "compile_graph", "needs_rpc"]

#: Capacity of every input queue unless ``queue_maxsize=`` says otherwise (0: unbounded).
DEFAULT_QUEUE_MAXSIZE = 1024
_job_numbers: dict[str, Any] = {}
_CHAINABLE = ("map", "filter", "flat_map", "sink")


def _next_job_id(pipeline: str) -> str:
    counter = _job_numbers.setdefault(pipeline, itertools.count(1))
    return f"{_safe(pipeline)}-{next(counter)}"


def _safe(text: str, limit: int = 60) -> str:
    """``text`` reduced to the characters a queue id allows (names may hold anything)."""
    return re.sub(r"[^\w.\[\]\-]", "_", text)[:limit]


def _wants_rpc(logical: nx.DiGraph, op: str) -> bool:
    return any(d.get("queue") == "rpc" for _, _, d in logical.in_edges(op, data=True))


def _rpc_factory(server: Any, logical: nx.DiGraph) -> Callable[[str, int], BaseQueueDescriptor]:
    """Descriptors on ``server`` for the operators whose inputs go through RPC queues."""
    def make(queue_id: str, maxsize: int) -> BaseQueueDescriptor:
        if server is None:
            raise GraphError("edges with queue='rpc' need an RPC queue server: pass rpc_server="
                             "RPCQueueServer(...) or (host, port, secret), or use p.run(), which "
                             "starts one for the job")
        size = maxsize or DEFAULT_QUEUE_MAXSIZE
        if hasattr(server, "descriptor"):
            return server.descriptor(queue_id, size)
        from .communication.rpc_queue import RPCQueueDescriptor
        host, port, secret = server
        return RPCQueueDescriptor(host, port, size, queue_id=queue_id, secret=secret)
    return make


def chain_edges(logical: nx.DiGraph) -> set[tuple[str, str]]:
    """The logical edges ``chain=True`` fuses: ``u -> v`` where ``u`` feeds only ``v``, ``v`` is
    fed only by ``u``, both have the same parallelism, ``v`` is a map, filter, flat_map or sink,
    and the edge is a plain round-robin one in process (no key, no broadcast, no RPC queue).
    Instance ``i`` of ``v`` then runs inside instance ``i`` of ``u``'s task. A source whose items
    come from user code or a queue (``from_source``, ``from_queue``, ``from_iterable`` of an
    iterator) keeps a thread of its own: the operators after it would otherwise run one item at
    a time, since an item may not wait while the source's code does."""
    out = set()
    for u, v, d in logical.edges(data=True):
        du, dv = logical.nodes[u], logical.nodes[v]
        if du["kind"] == "source" and type(du.get("items")) not in IN_MEMORY_TYPES:
            continue
        if (dv["kind"] in _CHAINABLE and logical.out_degree(u) == 1 and logical.in_degree(v) == 1
                and du.get("parallelism", 1) == dv.get("parallelism", 1)
                and d.get("strategy", "round_robin") == "round_robin" and d.get("key") is None
                and d.get("queue") != "rpc"):
            out.add((u, v))
    return out


def needs_rpc(logical: nx.DiGraph) -> bool:
    """Whether some edge of ``logical`` asks for an RPC queue."""
    return any(d.get("queue") == "rpc" for _, _, d in logical.edges(data=True))


def _label(fn: Any) -> str | None:
    if fn is None:
        return None
    return getattr(fn, "__name__", None) or type(fn).__name__


class ExecutionGraph:
    """The physical plan: ``graph`` (instances and connections), ``contexts``, ``services``.

    Physical node attributes: ``operator``, ``kind``, ``parallel_index``, ``ctx``.
    Physical edge attributes: ``connection`` (a :class:`Connection`), ``strategy``, ``key_label``.
    """

    def __init__(self, job_id: str, pipeline: str, logical: nx.DiGraph, graph: nx.DiGraph,
                 contexts: dict[str, TaskContext], services: dict[str, ServiceContext],
                 options: dict[str, Any]) -> None:
        self.job_id = job_id
        self.pipeline = pipeline
        self.logical = logical
        self.graph = graph
        self.contexts = contexts
        self.services = services
        self.options = options

    def instances(self, operator: str) -> list[str]:
        return [n for n, d in self.graph.nodes(data=True) if d["operator"] == operator]

    def queues(self) -> list[BaseQueueDescriptor]:
        """Every queue descriptor of the plan, once each."""
        qds = [c.input_qd for c in self.contexts.values() if c.input_qd is not None]
        qds += [c.response_qd for c in self.contexts.values() if c.response_qd is not None]
        qds += [s.request_qd for s in self.services.values()]
        return qds

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (callables as ``module:qualname``)."""
        ops = []
        for name, d in self.logical.nodes(data=True):
            fn = d.get("fn")
            fns = fn if isinstance(fn, list) else [fn]
            ops.append({"name": name, "kind": d["kind"], "parallelism": d.get("parallelism", 1),
                        "fn": [describe_callable(f).split(" (")[0] for f in fns if f is not None]})
        edges = [{"source": u, "target": v, "strategy": d.get("strategy", "round_robin"),
                  "key": _label(d.get("key")), "input_index": d.get("input_index", 0)}
                 for u, v, d in self.logical.edges(data=True)]
        return {"job_id": self.job_id, "pipeline": self.pipeline, "options": dict(self.options),
                "operators": ops, "edges": edges,
                "instances": [c.to_dict() for c in self.contexts.values()],
                "services": [s.to_dict() for s in self.services.values()]}

    def __repr__(self) -> str:
        return (f"ExecutionGraph({self.job_id!r}, {self.logical.number_of_nodes()} operators, "
                f"{self.graph.number_of_nodes()} instances, {self.graph.number_of_edges()} connections)")


def compile_graph(logical: nx.DiGraph, *, job_id: str | None = None,
                  queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE, service_timeout: float = 10.0,
                  queue_factory: Callable[[str, int], BaseQueueDescriptor] | None = None,
                  rpc_server: Any = None, chain: bool = False) -> ExecutionGraph:
    """Validate ``logical`` and build its :class:`ExecutionGraph`.

    ``queue_maxsize`` bounds every input queue (0: unbounded); ``job_id`` names the job
    and prefixes every queue id, so two jobs never share a queue; ``queue_factory(queue_id,
    maxsize)`` makes the descriptors (default: :class:`PythonQueueDescriptor`);
    ``rpc_server`` (an ``RPCQueueServer``, or ``(host, port, secret)``) holds the input queues
    of operators whose incoming edges say ``queue="rpc"`` (``p.run()`` starts one if needed).
    """
    import networkx as nx  # imported on first use: `import sage_nb` stays fast

    validate(logical)
    if type(chain) is not bool:
        raise GraphError(f"chain must be True or False, got {chain!r}")
    if job_id is not None and (not isinstance(job_id, str) or not job_id):
        raise GraphError(f"job_id must be a non-empty string, got {job_id!r}")
    if isinstance(service_timeout, bool) or not isinstance(service_timeout, int | float) or not service_timeout > 0:
        raise GraphError(f"service_timeout must be a number of seconds > 0, got {service_timeout!r}")
    chained = chain_edges(logical) if chain else set()
    pipeline = logical.graph.get("name") or "pipeline"
    job_id = job_id or _next_job_id(pipeline)
    make_q = queue_factory or (lambda qid, size: PythonQueueDescriptor(maxsize=size, queue_id=qid))
    PythonQueueDescriptor(maxsize=queue_maxsize)  # validates the size with the usual message
    order = list(nx.topological_sort(logical))
    names = {op: [f"{op}[{i}]" for i in range(logical.nodes[op].get("parallelism", 1))] for op in order}
    service_specs = logical.graph.get("services", {})
    job_id = _safe(job_id, 100)
    every = [inst for op in order for inst in names[op]]
    ids = {inst: f"{job_id}.{k}.{_safe(inst)}" for k, inst in enumerate(every)}
    make_rpc = _rpc_factory(rpc_server, logical)
    inputs = {inst: (make_rpc if _wants_rpc(logical, op) else make_q)(f"{ids[inst]}.in", queue_maxsize)
              for op in order if logical.nodes[op]["kind"] != "source" for inst in names[op]}
    for op in order:  # from_queue sources read the user's queue (a private handle on it)
        qd = logical.nodes[op].get("queue_descriptor")
        if qd is not None:
            inputs[names[op][0]] = qd if not qd.can_serialize else pickle.loads(pickle.dumps(qd))
    responses = {inst: make_q(f"{ids[inst]}.reply", 0) for inst in every} if service_specs else {}

    phys = nx.DiGraph(name=pipeline, job_id=job_id)
    contexts: dict[str, TaskContext] = {}
    for op in order:
        d = logical.nodes[op]
        out_edges = list(logical.out_edges(op, data=True))
        in_edges = list(logical.in_edges(op, data=True))
        upstreams: dict[int, tuple[str, ...]] = {}
        for u, _, e in in_edges:
            i = e.get("input_index", 0)
            upstreams[i] = upstreams.get(i, ()) + tuple(names[u])
        fed_by = next((u for u, _, _ in in_edges if (u, op) in chained), None)
        for i, inst in enumerate(names[op]):
            groups = []
            for b, (_, v, e) in enumerate(out_edges):
                forward = (op, v) in chained  # instance i feeds instance i only
                targets = [(i, names[v][i])] if forward else list(enumerate(names[v]))
                conns = tuple(Connection(b, j, t, inputs[t], e.get("input_index", 0), inst, chained=forward)
                              for j, t in targets)
                groups.append(BroadcastGroup(b, v, e.get("strategy", "round_robin"), conns, e.get("key")))
            ups: dict[int, tuple[str, ...]] = \
                upstreams if fed_by is None else {k: (names[fed_by][i],) for k in upstreams}
            contexts[inst] = TaskContext(
                job_id=job_id, name=inst, operator=op, kind=d["kind"], parallel_index=i,
                parallelism=len(names[op]), input_qd=inputs.get(inst), groups=tuple(groups),
                upstreams=ups, chained_from=None if fed_by is None else names[fed_by][i],
                keyed_input=any(e.get("strategy") == "hash" for _, _, e in in_edges),
                response_qd=responses.get(inst),
                service_qds={s: None for s in service_specs},  # type: ignore[misc]  # (set below)
                service_timeout=service_timeout)
            phys.add_node(inst, operator=op, kind=d["kind"], parallel_index=i, ctx=contexts[inst])
    for inst, ctx in contexts.items():
        for g in ctx.downstream_groups:
            for c in g.connections:
                phys.add_edge(inst, c.target_name, connection=c, strategy=g.strategy,
                              key_label=_label(g.key))
    services = {}
    for k, (s, spec) in enumerate(service_specs.items()):
        services[s] = ServiceContext(job_id=job_id, name=s, request_qd=make_q(f"{job_id}.svc{k}.{_safe(s)}", 0),
                                     response_qds=responses, workers=spec.workers)
    for ctx in contexts.values():
        ctx.service_qds = {s: services[s].request_qd for s in service_specs}
    options: dict[str, Any] = {"queue_maxsize": queue_maxsize, "service_timeout": service_timeout,
                               "chain": chain}
    if chained:
        options["chained"] = sorted(f"{u}->{v}" for u, v in chained)
    return ExecutionGraph(job_id, pipeline, logical, phys, contexts, services, options)
