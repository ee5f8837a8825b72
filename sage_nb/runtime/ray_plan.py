"""What the Ray backend sends to its actors: Ray queues in the plan, pickled task and service specs.

Everything here runs on the driver, before any actor starts, so a function that cannot
be pickled is reported naming its node (T35), not as an actor crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

from ..communication.queue_descriptor import PythonQueueDescriptor
from ..communication.ray_queue import RayQueueDescriptor
from ..errors import BackendError
from .sources import _calls, _is_generator_function

__all__ = ["instance_spec", "materialise_sources", "service_spec", "strided", "use_ray_queues"]


def use_ray_queues(plan: Any, job: str) -> str:
    r"""Make the in-process queues of ``plan`` :class:`RayQueueDescriptor`\ s of one manager, in
    place (same ids and sizes), so the plan describes what runs; returns the manager's job.

    A plan compiled with Ray queues of one job keeps them (and that job); RPC queues stay
    as they are; a ``from_queue`` source keeps the user's queue, which must be reachable
    from an actor.
    """
    external = {id(c.input_qd) for c in plan.contexts.values() if c.kind == "source" and c.input_qd}
    for c in plan.contexts.values():
        if id(c.input_qd) in external and isinstance(c.input_qd, PythonQueueDescriptor):
            raise BackendError(f"source {c.operator!r} reads an in-process queue ({c.input_qd!r}) that "
                               f"a Ray actor cannot reach; give from_queue a RayQueueDescriptor or an "
                               f"RPCQueueDescriptor")
    owned = [qd for qd in plan.queues() if id(qd) not in external]
    jobs = {qd.job for qd in owned if isinstance(qd, RayQueueDescriptor)}
    if len(jobs) > 1:
        raise BackendError(f"the plan's Ray queues belong to several jobs {sorted(jobs)}; compile "
                           f"it with one queue_factory")
    job = jobs.pop() if jobs else job
    new = {qd.queue_id: RayQueueDescriptor(maxsize=qd.maxsize, queue_id=qd.queue_id, job=job)
           for qd in owned if isinstance(qd, PythonQueueDescriptor)}

    def swap(qd: Any) -> Any:
        return new.get(qd.queue_id, qd) if isinstance(qd, PythonQueueDescriptor) else qd

    for ctx in plan.contexts.values():
        if ctx.input_qd is not None and id(ctx.input_qd) not in external:
            ctx.input_qd = swap(ctx.input_qd)
        if ctx.response_qd is not None:
            ctx.response_qd = swap(ctx.response_qd)
        ctx.service_qds = {s: swap(qd) for s, qd in ctx.service_qds.items()}
        for g in ctx.downstream_groups:
            for c in g.connections:
                c.queue_descriptor, c._queue = swap(c.queue_descriptor), None
    for sctx in plan.services.values():
        sctx.request_qd = swap(sctx.request_qd)
        sctx.response_qds = {k: swap(qd) for k, qd in sctx.response_qds.items()}
    return job


def _dumps(what: str, obj: Any) -> bytes:
    """cloudpickle (functions from notebooks and test modules travel by value or by name)."""
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:
        raise BackendError(f"{what} cannot be sent to a Ray actor: {type(exc).__name__}: {exc}; define "
                           f"its functions at module level or in the notebook, without locks, open "
                           f"files or sockets in their closures") from exc


def materialise_sources(plan: Any) -> None:
    """Replace, in ``plan``, each ``from_iterable`` iterator that actors cannot share (a parallel
    source) or receive (a generator) by the list of its items: instances then take strides."""
    for d in plan.logical.nodes.values():
        items = d.get("items")
        if d["kind"] == "source" and items is not None and not isinstance(items, Sequence) and \
                (d.get("parallelism", 1) > 1 or not _picklable(items)):
            d["items"] = list(items)


def _source_attrs(attrs: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A source's attributes as one actor needs them: a parallel function source is strided."""
    fn, p = attrs.get("fn"), ctx.parallelism
    if fn is not None and p > 1 and not isinstance(fn, type):
        attrs = {**attrs, "fn": strided(fn, ctx.parallel_index, p, _is_generator_function(fn))}
    return attrs


def _picklable(obj: Any) -> bool:
    from ray import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception:
        return False
    return True


def instance_spec(plan: Any, ctx: Any, put_timeout: float | None, trace_rate: float,
                  collect: bool, batch: int, linger: float) -> bytes:
    """The pickled spec a :class:`TaskActor` builds its task from."""
    attrs = plan.logical.nodes[ctx.operator]
    if ctx.kind == "source":
        attrs = _source_attrs(attrs, ctx)
    spec = {"ctx": ctx, "attrs": attrs, "put_timeout": put_timeout, "trace_rate": trace_rate,
            "collect": collect, "batch": batch, "linger": linger}
    return _dumps(f"node {ctx.operator!r} (instance {ctx.name})", spec)


def service_spec(sctx: Any, spec: Any) -> bytes:
    return _dumps(f"service {sctx.name!r}", (sctx, spec))


def strided(fn: Any, index: int, parallelism: int, generator: bool) -> Any:
    """A generator function: instance ``index`` of ``parallelism`` keeps items index, index+p, ...
    of its own run of a source function (a generator shared between actors cannot exist)."""
    def items():
        run = iter(fn()) if generator else _calls(fn)
        yield from islice(run, index, None, parallelism)
    return items
