"""``RayQueueDescriptor``: a bounded queue held by the job's ``RayQueueManager`` actor.

A Ray queue is addressed only by ``queue_id``: every process or actor that touches a
descriptor with the same ``job`` and ``queue_id`` reaches the same queue, through one
named, non-detached manager actor per job (``sage_nb.queues:<job>`` in the ``sage_nb``
namespace; :mod:`~sage_nb.communication.ray_manager`), whose threads and per-queue locks let a
caller blocked on queue A never delay queue B (SAGE's single-threaded manager deadlocked on
exactly that). Blocking calls behave like ``queue.Queue`` (``queue.Empty``/``queue.Full``,
backpressure when full); ``put_many``/``get_many`` move a whole batch in one actor call,
as one pickled chunk; ``statistics_all()`` reads every queue of the job in one call.

Ray is imported only when a queue is first used: ``import sage_nb`` never imports it.
If Ray is not running, the first use starts a local Ray (or joins the cluster that
``ray start`` or ``RAY_ADDRESS`` points at) -- unless ``local_fallback=True`` asked for
an in-process :class:`SimpleTestQueue`, which ``repr`` then shows.

>>> qd = RayQueueDescriptor(maxsize=2, queue_id="demo", job="doc", local_fallback=True)
>>> qd.to_json()
'{"queue_id": "demo", "queue_type": "ray_queue", "metadata": {"maxsize": 2, "job": "doc", "local_fallback": true}}'
"""

from __future__ import annotations

import os
import pickle
import queue
import re
import threading
import uuid
from bisect import bisect_right
from itertools import accumulate
from time import monotonic
from typing import Any

from .local_queue import LocalQueue, QueueShutDown, QueueStats
from .packet import Bundle
from .queue_descriptor import MAX_QUEUE_SIZE, BaseQueueDescriptor, int_field
from .ray_manager import (
    NAMESPACE,
    QueueLost,
    ensure_ray,
    kill_manager,
    manager_handle,
    manager_name,
)

__all__ = ["NAMESPACE", "SLICE", "QueueLost", "RayQueueDescriptor", "RayQueueProxy", "SimpleTestQueue",
           "encode", "ensure_ray", "kill_manager", "manager_handle", "manager_name", "units"]

SLICE = 1.0          # seconds one blocking call waits inside the manager before the client re-asks
REPLY_GRACE = 30.0   # extra seconds a reply may take before the manager counts as hung
_JOB_RE = re.compile(r"^[\w.:\[\]@+\-]{1,160}$")
_DEFAULT_JOB = f"default-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SimpleTestQueue(LocalQueue):
    """The in-process stand-in for a Ray queue (``local_fallback=True`` outside any Ray session)."""


def _check_job(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _JOB_RE.match(value):
        raise ValueError(f"descriptor field {name!r} must be 1-160 characters of letters, digits "
                         f"and _.:[]@+-, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"descriptor field {name!r} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------- the client side
def encode(items: list) -> bytes:
    """Pickle a batch; cloudpickle only for what plain pickle refuses (functions, local classes)."""
    try:
        return pickle.dumps(items, 5)
    except Exception:
        from ray import cloudpickle
        return cloudpickle.dumps(items, 5)


def units(items: list) -> int:
    """The packets ``items`` hold, as a Ray queue counts them: a Bundle its packets, any other item one."""
    return sum(len(x) if x.__class__ is Bundle else 1 for x in items)


def _starts(items: list) -> list[int] | None:
    """Where each item of a decoded chunk starts, in packets; None when no Bundle is among them
    (then item ``i`` is packet ``i``)."""
    if not any(x.__class__ is Bundle for x in items):
        return None
    return list(accumulate((len(x) if x.__class__ is Bundle else 1 for x in items), initial=0))


def _cut(items: list, starts: list[int], s: int, t: int) -> list:
    """The items holding packets ``[s, t)`` of a chunk, the Bundles at either end cut to them."""
    out: list = []
    i = bisect_right(starts, s) - 1
    while s < t:
        x, a, b = items[i], starts[i], starts[i + 1]
        if x.__class__ is Bundle and (s > a or t < b):
            x = x.pick(slice(s - a, min(t, b) - a))
        out.append(x)
        s, i = b, i + 1
    return out


class RayQueueProxy:
    """One queue of a job's manager, seen from this process (what ``queue_instance`` returns).

    Blocking calls wait inside the manager in slices of ``SLICE`` seconds, until their
    own timeout; every ``ray.get`` has a deadline. A dead manager raises QueueLost.
    """

    def __init__(self, handle: Any, queue_id: str, maxsize: int, job: str) -> None:
        self.handle, self.queue_id, self.maxsize, self.job = handle, queue_id, maxsize, job
        self._local = threading.local()  # per thread: the last chunk it decoded (see ``have``)

    def __repr__(self) -> str:
        return f"RayQueueProxy({self.queue_id!r} via {manager_name(self.job)!r})"

    def __reduce__(self):
        return (RayQueueProxy, (self.handle, self.queue_id, self.maxsize, self.job))

    def call(self, ref: Any, wait: float = 0.0) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=wait + REPLY_GRACE)
        except ray.exceptions.RayActorError as exc:
            raise QueueLost(f"queue {self.queue_id!r}: its queue manager {manager_name(self.job)!r} "
                            f"is gone ({type(exc).__name__}); the items it held are lost") from exc
        except ray.exceptions.GetTimeoutError:
            raise QueueLost(f"queue {self.queue_id!r}: queue manager {manager_name(self.job)!r} did "
                            f"not answer within {wait + REPLY_GRACE:.0f} s") from None

    # ------------------------------------------------------------ batches
    def put_blob(self, blob: bytes, start: int, stop: int, wait: float) -> tuple[int, str]:
        """Low level: store items ``[start, stop)`` of a pickled batch, waiting up to ``wait`` s;
        returns (stored up to, status: ok | full | shutdown)."""
        return self.call(self.submit_put(blob, start, stop, wait), wait)

    def submit_put(self, blob: bytes, start: int, stop: int, wait: float) -> Any:
        """:meth:`put_blob` without waiting for the reply: the ref to pass to :meth:`call`."""
        return self.handle.put.remote(self.queue_id, self.maxsize, blob, start, stop, wait)

    def put_many(self, items: list, block: bool = True, timeout: float | None = None) -> None:
        """Put every item in order (one actor call per wait slice); partial on Full, like LocalQueue.
        A :class:`Bundle` counts its packets (and may be stored in parts as room allows)."""
        if not items:
            return
        blob, start, stop = encode(list(items)), 0, units(items)
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            start, status = self.put_blob(blob, start, stop, _slice(block, deadline))
            if status == "ok":
                return
            if status == "shutdown":
                raise QueueShutDown(f"queue {self.queue_id!r} was shut down: its job is stopping")
            if not block or (deadline is not None and monotonic() >= deadline):
                raise queue.Full

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """Wait for at least one item, then take up to ``max_items`` (one actor call)."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            wait = _slice(block, deadline)
            ref = self.handle.get.remote(self.queue_id, self.maxsize, max_items, wait, self._have())
            entries, status = self.call(ref, wait)
            if status == "ok":
                return self._decode(entries)
            if status == "shutdown":
                raise QueueShutDown(f"queue {self.queue_id!r} was shut down: its job is stopping")
            if not block or (deadline is not None and monotonic() >= deadline):
                raise queue.Empty

    def request(self, max_items: int, wait: float) -> Any:
        """Start a ``get_many`` without waiting: pass the ref to :meth:`receive` (one at a time)."""
        return self.handle.get.remote(self.queue_id, self.maxsize, max_items, wait, self._have())

    def receive(self, ref: Any, wait: float = 0.0) -> list:
        """The items of a :meth:`request` (``[]`` if it timed out empty)."""
        entries, status = self.call(ref, wait)
        if status == "shutdown":
            raise QueueShutDown(f"queue {self.queue_id!r} was shut down: its job is stopping")
        return self._decode(entries)

    def _have(self) -> int:
        cache = getattr(self._local, "cache", None)
        return 0 if cache is None else cache[0]

    def _decode(self, entries: list) -> list:
        out: list = []
        cid, items, starts = getattr(self._local, "cache", None) or (0, [], None)
        for eid, blob, s, t in entries:
            if blob is not None:
                cid, items = eid, pickle.loads(blob)
                starts = _starts(items)
            out += items[s:t] if starts is None else _cut(items, starts, s, t)
        self._local.cache = (cid, items, starts)
        return out

    # ------------------------------------------------------------ queue.Queue's language
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_many([item], block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.get_many(1, block, timeout)[0]

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def peek(self, n: int = 20) -> list:
        """The ``n`` oldest items (a Bundle's packets one by one), left in the queue."""
        out: list = []
        for _, blob, s, t in self.call(self.handle.peek.remote(self.queue_id, n)):
            items = pickle.loads(blob)
            starts = _starts(items)
            for x in items[s:t] if starts is None else _cut(items, starts, s, t):
                out.extend(x.packets() if x.__class__ is Bundle else (x,))
        return out

    def statistics(self) -> QueueStats:
        ref = self.handle.stats.remote({self.queue_id: self.maxsize})
        return QueueStats(*self.call(ref)[self.queue_id])

    def qsize(self) -> int:
        return self.statistics().used

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self.maxsize) and self.qsize() >= self.maxsize

    def shutdown(self, immediate: bool = True) -> None:
        """Wake every blocked caller of this queue with QueueShutDown (in every process)."""
        self.call(self.handle.shutdown.remote([self.queue_id]))


def _slice(block: bool, deadline: float | None) -> float:
    if not block:
        return 0.0
    if deadline is None:
        return SLICE
    return max(0.0, min(SLICE, deadline - monotonic()))


# ---------------------------------------------------------------------------- the descriptor
class RayQueueDescriptor(BaseQueueDescriptor):
    """A queue in ``job``'s ``RayQueueManager`` actor, shared by every process that names it.

    ``maxsize=0`` is unbounded. ``job`` names the manager (default: one per driver
    process). The descriptor always pickles: a copy in another actor reaches the same
    queue. ``clone()`` keeps the settings and names *another* queue (a Ray queue is
    addressed only by its id). ``local_fallback=True`` uses an in-process
    :class:`SimpleTestQueue` when no Ray session is running (shown by ``repr``).
    """

    queue_type = "ray_queue"
    _schema = {"maxsize": int_field(0, MAX_QUEUE_SIZE), "job": _check_job,
               "local_fallback": _check_bool}

    def __init__(self, maxsize: int = 1024, queue_id: str | None = None, job: str | None = None,
                 local_fallback: bool = False) -> None:
        self.maxsize = int_field(0, MAX_QUEUE_SIZE)("maxsize", maxsize)
        self.job = _check_job("job", _DEFAULT_JOB if job is None else job)
        self.local_fallback = _check_bool("local_fallback", local_fallback)
        super().__init__(queue_id)

    @property
    def metadata(self) -> dict[str, Any]:
        return {"maxsize": self.maxsize, "job": self.job, "local_fallback": self.local_fallback}

    @property
    def can_serialize(self) -> bool:
        return not isinstance(self._queue_instance, SimpleTestQueue)

    @property
    def is_local(self) -> bool:
        """True when this descriptor fell back to an in-process queue."""
        return isinstance(self._queue_instance, SimpleTestQueue)

    def _create_queue(self) -> Any:
        if self.local_fallback and not _ray_running():
            return SimpleTestQueue(self.maxsize)
        return RayQueueProxy(manager_handle(self.job), self.queue_id, self.maxsize, self.job)

    def clone(self, new_queue_id: str | None = None) -> RayQueueDescriptor:
        """Same settings and manager, another queue id (so another queue)."""
        return type(self)(**self.metadata, queue_id=new_queue_id)

    def statistics_all(self) -> dict[str, QueueStats]:
        """Every queue of this descriptor's job, in one call to its manager."""
        q = self.queue_instance
        if isinstance(q, SimpleTestQueue):
            return {self.queue_id: q.statistics()}
        return {qid: QueueStats(*s) for qid, s in q.call(q.handle.stats.remote()).items()}

    def shutdown(self) -> None:
        """Wake every caller blocked on this queue, in any process, with QueueShutDown."""
        self.queue_instance.shutdown()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_queue_instance"] = None  # the proxy is rebuilt (from the job's name) where it lands
        return state

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.is_local:
            text = text[:-1] + "; local fallback: in-process SimpleTestQueue, not shared with other processes)"
        return text


def _ray_running() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
