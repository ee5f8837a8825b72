"""``JobManager``: compiles plans, starts jobs and keeps the registry of live jobs.

Re-running the notebook cell that starts a pipeline stops that pipeline's previous job
first; ``sage_nb.jobs()`` lists the live jobs and ``sage_nb.stop_all()`` stops them; at
interpreter exit every live job is cancelled (its sinks' ``close()`` still runs).
"""

from __future__ import annotations

import atexit
import difflib
import os
import signal
import threading
import warnings
from typing import TYPE_CHECKING, Any

from .. import compiler
from ..errors import BackendError
from ..graph import validate
from .batching import QUEUE_BATCHES, check_batching
from .job import Job

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = ["JobManager"]

_COMPILE_OPTIONS = {"job_id", "queue_maxsize", "service_timeout", "queue_factory", "rpc_server", "chain"}
# the run options (Job, Dispatcher, RayDispatcher, StepRunner; which backend takes which is checked there)
_RUN_OPTIONS = {"paused", "stall_timeout", "put_timeout", "batch_size", "linger", "policy", "record_limit"}


class JobManager:
    """The job registry; ``JobManager.default()`` is the one the public API uses."""

    _default: JobManager | None = None

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> JobManager:
        if cls._default is None:
            cls._default = cls()
        return cls._default

    @staticmethod
    def compile(graph: nx.DiGraph, **options: Any) -> compiler.ExecutionGraph:
        """Compile a logical graph (see :func:`sage_nb.compiler.compile_graph`)."""
        return compiler.compile_graph(graph, **options)

    def submit(self, plan: compiler.ExecutionGraph | Job, backend: str = "threads", **options: Any) -> Job:
        """Start ``plan`` (or a job not started yet); the pipeline's previous job, if still
        running, is stopped first."""
        job = plan if isinstance(plan, Job) else Job(plan, backend, **options)
        for old in self.jobs():
            if old.pipeline_name == job.pipeline_name:
                warnings.warn(f"stopped job {old.job_id!r}: a job of pipeline {job.pipeline_name!r} started "
                              f"({job.job_id!r}); give pipelines different names to run them side by "
                              f"side", RuntimeWarning, stacklevel=4)
                old.stop(drain=False)
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.done] + [job]
        _install_sigterm_handler()
        return job.start()

    def run(self, graph: nx.DiGraph, backend: str = "threads", **options: Any) -> Job:
        """Compile ``graph`` with the compile options among ``options`` and submit it."""
        unknown = sorted(set(options) - _COMPILE_OPTIONS - _RUN_OPTIONS)
        if unknown:
            known = sorted(_COMPILE_OPTIONS | _RUN_OPTIONS)
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BackendError(f"unknown run option {unknown[0]!r}{hint}; the options are {', '.join(known)}")
        validate(graph)  # (before anything reads it)
        compile_opts = {k: v for k, v in options.items() if k in _COMPILE_OPTIONS}
        run_opts = {k: v for k, v in options.items() if k not in _COMPILE_OPTIONS}
        if backend == "threads" and "queue_maxsize" not in compile_opts:  # room for enough batches
            size, _ = check_batching(run_opts.get("batch_size"), run_opts.get("linger"))
            compile_opts["queue_maxsize"] = default_queue_maxsize(size)
        server = None
        if compiler.needs_rpc(graph) and compile_opts.get("rpc_server") is None:
            from ..communication.rpc_server import RPCQueueServer  # a loopback server for this job
            server = compile_opts["rpc_server"] = RPCQueueServer().start()
        try:
            job = Job(self.compile(graph, **compile_opts), backend, **run_opts)
        except BaseException:
            if server is not None:
                server.close()
            raise
        if server is not None:
            job.runner.closers.append(server.close)
        return self.submit(job)

    def jobs(self) -> list[Job]:
        """The jobs that are still running, oldest first."""
        with self._lock:
            return [j for j in self._jobs if not j.done]

    def latest(self, pipeline: str) -> Job | None:
        """The newest job of ``pipeline`` (running or not), if any is known."""
        with self._lock:
            return next((j for j in reversed(self._jobs) if j.pipeline_name == pipeline), None)

    def stop_all(self) -> int:
        """Cancel every running job and wait for its threads; returns how many were stopped."""
        live = self.jobs()
        for job in live:
            job.stop(drain=False)
        return len(live)


def default_queue_maxsize(batch_size: int) -> int:
    """The capacity of a threads job's queues when ``queue_maxsize`` is not given: the
    compiler's default, or ``QUEUE_BATCHES`` batches if that is more (``make bench``: with
    room for 4 batches the default pipeline ran at half the rate it has with 16).

    >>> default_queue_maxsize(1), default_queue_maxsize(1024)
    (1024, 16384)
    """
    return max(compiler.DEFAULT_QUEUE_MAXSIZE, QUEUE_BATCHES * batch_size)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stop every job (sinks' close() runs), then die of SIGTERM as the default action would."""
    _stop_all_at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    """In a script's main thread with the default SIGTERM action, stop jobs cleanly on SIGTERM.

    Never replaces a handler somebody else installed (a Jupyter kernel has its own)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


@atexit.register
def _stop_all_at_exit() -> None:
    if JobManager._default is not None:
        JobManager._default.stop_all()
