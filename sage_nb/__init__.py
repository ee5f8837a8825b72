"""sage_nb — see and debug how a streaming dataflow routes its packets, in Jupyter.

>>> import sage_nb as snb
>>> p = snb.Pipeline("hello")
>>> p.from_iterable(["a b", "b"]).flat_map(str.split).key_by(str).map(str.upper, parallelism=2).sink(name="out")
Stream('out')
>>> sorted(p.run().wait(timeout=10).results("out"))
['A', 'B', 'B']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .compiler import ExecutionGraph
from .errors import (
    BackendError,
    GraphError,
    JobFailed,
    SageError,
    ServiceError,
    StallError,
    StallWarning,
)
from .graph import Pipeline
from .runtime.job import Job, JobStatus
from .runtime.manager import JobManager
from .runtime.task import END

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = [
    "END",
    "BackendError",
    "ExecutionGraph",
    "GraphError",
    "Inspector",
    "Job",
    "JobFailed",
    "JobStatus",
    "Pipeline",
    "SageError",
    "ServiceError",
    "StallError",
    "StallWarning",
    "compile",
    "jobs",
    "load_recording",
    "run",
    "stop_all",
]


def compile(graph: nx.DiGraph, **options: Any) -> ExecutionGraph:
    """Compile a logical ``networkx.DiGraph`` (see :mod:`sage_nb.graph` for its attributes)."""
    return JobManager.compile(graph, **options)


def run(graph: nx.DiGraph, backend: str = "threads", **options: Any) -> Job:
    """Compile and start a raw ``networkx.DiGraph``; returns the :class:`Job`.

    ``options`` are those of :meth:`Pipeline.run <sage_nb.graph.Pipeline.run>`, among them
    ``batch_size`` (micro-batching, default 1024; 1 delivers packet by packet), ``linger`` and
    ``chain`` (operator chaining, default False).
    """
    return JobManager.default().run(graph, backend=backend, **options)


def jobs() -> list[Job]:
    """The jobs still running in this process."""
    return JobManager.default().jobs()


def stop_all() -> int:
    """Cancel every running job; returns how many were stopped."""
    return JobManager.default().stop_all()


def __getattr__(name: str) -> Any:
    if name == "Inspector":  # widgets load only when asked for (import sage_nb stays fast)
        from .inspector import Inspector
        return Inspector
    if name == "load_recording":  # recordings (JSON files) too
        from .runtime.recording import load_recording
        return load_recording
    raise AttributeError(f"module 'sage_nb' has no attribute {name!r}")
