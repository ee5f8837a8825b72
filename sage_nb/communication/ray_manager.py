"""``RayQueueManager``: the queues of one job, held by one threaded Ray actor.

SAGE's manager was a single-threaded actor: one consumer blocked in ``get`` held its only
thread and starved every other queue (the "distributed queue deadlock", fixed there by
never blocking, i.e. by dropping backpressure). Here every queue has its own lock and
conditions and the actor runs many threads, so a caller blocked on one queue never delays
another, and full queues still block their producers. Every wait is bounded by the
caller's ``wait`` (a slice of its timeout), so cancelled callers never pile up.

Items arrive as chunks -- one pickled list per ``put`` -- and are never unpickled here; an
entry is a slice of a chunk, so capacity and ``get`` count items exactly while one actor
call moves a whole batch. The clients count a Bundle as its packets (a slice may end inside
one: the client cuts it there), so capacity counts packets. This module imports Ray only inside its functions:
:func:`manager_handle` wraps the class with ``ray.remote`` where the manager is created.

>>> m = RayQueueManager("doc")
>>> m.put("q", 2, b"<three pickled items>", 0, 3, 0.0)
(2, 'full')
>>> m.get("q", 2, 10, 0.0, 0)
([(1, b'<three pickled items>', 0, 2)], 'ok')
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Sequence
from time import monotonic
from typing import Any

from ..errors import BackendError, SageError

__all__ = ["MANAGER_THREADS", "NAMESPACE", "QueueLost", "RayQueueManager", "ensure_ray", "kill_manager",
           "manager_handle", "manager_name"]

NAMESPACE = "sage_nb"
WORKER_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_ray_worker")
MANAGER_THREADS = 256  # more than the calls that can wait in a job's manager at once
_HANDLES: dict[str, tuple[Any, Any]] = {}   # job -> (ray session id, manager handle)
_CLOSED: set[str] = set()                    # jobs whose manager this process killed: never recreated


class _Queue:
    __slots__ = ("entries", "lock", "maxsize", "not_empty", "not_full", "peak", "shut", "total_in",
                 "total_out", "used")

    def __init__(self, maxsize: int, shut: bool) -> None:
        self.entries: deque[list] = deque()   # [chunk id, pickled list, start, stop]
        self.maxsize, self.shut = maxsize, shut
        self.used = self.peak = self.total_in = self.total_out = 0
        self.lock = threading.Lock()
        self.not_empty = threading.Condition(self.lock)
        self.not_full = threading.Condition(self.lock)

    def stats(self) -> tuple:
        with self.lock:
            return (self.used, self.maxsize or None, self.peak, self.total_in, self.total_out)


class RayQueueManager:
    """The queues of one job, inside one threaded actor (``ray.remote``, ``max_concurrency`` =
    more threads than callers can block at once).

    Items arrive as chunks (one pickled list per ``put``) and are never unpickled here;
    an entry is a slice of a chunk, so backpressure and ``get_many`` count items exactly.
    Each queue has its own lock and conditions: a caller blocked on one queue never delays
    another, and every wait is bounded by the caller's ``wait``.
    """

    def __init__(self, job: str) -> None:
        self.job = job
        self.queues: dict[str, _Queue] = {}
        self.closed = False
        self._lock = threading.Lock()
        self._chunks = itertools.count(1)

    def _queue(self, qid: str, maxsize: int) -> _Queue:
        q = self.queues.get(qid)
        if q is None:
            with self._lock:
                q = self.queues.get(qid)
                if q is None:
                    q = self.queues[qid] = _Queue(maxsize, self.closed)
        return q

    def put(self, qid: str, maxsize: int, blob: bytes, start: int, stop: int,
            wait: float) -> tuple[int, str]:
        """Store items ``[start, stop)`` of ``blob``; returns (stored up to, status)."""
        q = self._queue(qid, maxsize)
        cid = next(self._chunks)
        deadline = monotonic() + wait
        with q.lock:
            while True:
                if q.shut:
                    return start, "shutdown"
                room = q.maxsize - q.used if q.maxsize else stop - start
                if room > 0:
                    k = min(room, stop - start)
                    q.entries.append([cid, blob, start, start + k])
                    q.used += k
                    q.total_in += k
                    q.peak = max(q.peak, q.used)
                    start += k
                    q.not_empty.notify_all()
                    if start == stop:
                        return stop, "ok"
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return start, "full"
                q.not_full.wait(remaining)

    def get(self, qid: str, maxsize: int, max_items: int, wait: float,
            have: int) -> tuple[list, str]:
        """Take up to ``max_items``: a list of (chunk id, blob or None if the caller ``have``s it,
        start, stop), and a status: ok | empty | shutdown."""
        q = self._queue(qid, maxsize)
        deadline = monotonic() + wait
        with q.lock:
            while True:
                if q.shut:
                    return [], "shutdown"
                if q.used:
                    return self._take(q, max(1, max_items), have), "ok"
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return [], "empty"
                q.not_empty.wait(remaining)

    @staticmethod
    def _take(q: _Queue, max_items: int, have: int) -> list:
        out, n = [], 0
        entries = q.entries
        while n < max_items and entries:
            e = entries[0]
            cid, blob, s, t = e
            k = min(t - s, max_items - n)
            out.append((cid, None if cid == have else blob, s, s + k))
            have = cid
            if s + k == t:
                entries.popleft()
            else:
                e[2] = s + k
            n += k
        q.used -= n
        q.total_out += n
        q.not_full.notify_all()
        return out

    def stats(self, specs: dict[str, int] | None = None) -> dict[str, tuple]:
        """``{queue_id: (used, capacity, peak, total_in, total_out)}`` for ``specs`` (id ->
        maxsize; queues not used yet read as empty) or for every queue the manager holds."""
        if specs is None:
            return {qid: q.stats() for qid, q in list(self.queues.items())}
        return {qid: self.queues[qid].stats() if qid in self.queues else (0, size or None, 0, 0, 0)
                for qid, size in specs.items()}

    def shutdown(self, qids: Sequence[str] | None = None) -> None:
        """Wake every blocked caller of ``qids`` (default: every queue, and queues made later)."""
        if qids is None:
            with self._lock:
                self.closed = True
        for qid in list(self.queues) if qids is None else qids:
            q = self._queue(qid, 0)
            with q.lock:
                q.shut = True
                q.not_empty.notify_all()
                q.not_full.notify_all()

    def ping(self) -> str:
        return self.job

    def peek(self, qid: str, n: int) -> list:
        """Up to ``n`` entries at the head of the queue, left in place (for ``queue_contents``)."""
        q = self.queues.get(qid)
        if q is None:
            return []
        out, k = [], 0
        with q.lock:
            for cid, blob, s, t in q.entries:
                if k >= n:
                    break
                out.append((cid, blob, s, min(t, s + n - k)))
                k += out[-1][3] - s
        return out


class QueueLost(SageError, ConnectionError):
    """The actor holding a Ray queue is gone (killed or crashed): the items in it are lost."""


# ---------------------------------------------------------------------------- reaching it
def ensure_ray(**init: Any) -> Any:
    """The ``ray`` module, initialised: joins the running session or cluster, else starts a
    local one (all the machine's CPUs, no dashboard; ``init`` adds ``ray.init`` options).
    Never ``address="auto"``.

    The workers of a local Ray started here get ``sage_nb/_ray_worker`` first on their
    ``PYTHONPATH`` (see the module there): it makes each actor start about four times
    faster where Jupyter's jsonschema extras are installed.
    """
    try:
        import ray
    except ModuleNotFoundError:
        raise BackendError("Ray queues and backend='ray' need the 'ray' package: "
                           "pip install 'sage-nb[ray]'") from None

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [WORKER_PATH, before]))
        try:  # the raylet and its workers inherit this environment; the driver keeps its own
            ray.init(**{"include_dashboard": False, "log_to_driver": False, **init})
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before
    return ray


def manager_name(job: str) -> str:
    return f"sage_nb.queues:{job}"


def manager_handle(job: str, *, create: bool = True, handle: Any = None,
                   threads: int = MANAGER_THREADS) -> Any:
    """The handle of ``job``'s queue manager (cached per process and Ray session).

    Only a driver creates a missing manager (with ``threads`` threads: more than the calls
    that can wait in it at once); an actor that finds none raises QueueLost, so a queue
    whose manager died is never silently recreated empty.
    """
    ray = ensure_ray()
    ctx = ray.get_runtime_context()
    session = ctx.get_job_id()
    if handle is not None:
        _HANDLES[job] = (session, handle)
        return handle
    cached = _HANDLES.get(job)
    if cached is not None and cached[0] == session:
        return cached[1]
    name = manager_name(job)
    if job in _CLOSED:
        raise QueueLost(f"the queues of job {job!r} are gone: its manager {name!r} was killed when "
                        f"the job ended (read a finished job through job.snapshot())")
    try:
        handle = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        if not create or ctx.get_actor_id() is not None:
            raise QueueLost(f"no queue manager {name!r} in namespace {NAMESPACE!r}: the job's "
                            f"queues were never created here or the manager is gone") from None
        try:
            handle = _manager_class(ray).options(
                name=name, namespace=NAMESPACE, num_cpus=0, max_restarts=0, max_task_retries=0,
                max_concurrency=threads).remote(job)
        except ValueError:  # another driver created it in between
            handle = ray.get_actor(name, namespace=NAMESPACE)
    _HANDLES[job] = (session, handle)
    return handle


def kill_manager(job: str) -> None:
    """Kill ``job``'s queue manager (its queues and their items go with it); this process will
    not create it again."""
    import ray

    cached = _HANDLES.pop(job, None)
    _CLOSED.add(job)
    if not ray.is_initialized():
        return
    handle = cached[1] if cached else None
    if handle is None:
        try:
            handle = ray.get_actor(manager_name(job), namespace=NAMESPACE)
        except ValueError:
            return
    ray.kill(handle, no_restart=True)


_REMOTE: dict[str, Any] = {}


def _manager_class(ray: Any) -> Any:
    if "manager" not in _REMOTE:
        _REMOTE["manager"] = ray.remote(RayQueueManager)
    return _REMOTE["manager"]
