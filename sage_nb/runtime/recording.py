"""Recordings of step jobs: every event, and the state of the job after each one.

A step job (``backend="step"``) records as it goes. ``job.back()`` and ``job.seek(i)`` read the
recording, and ``job.save_recording(path)`` writes it as JSON. :func:`load_recording` reads it back
without the pipeline's code, so a teacher can ship a run and students can step through it.

Positions count events: position ``i`` is the state after the first ``i`` events, and position 0
is the state before anything ran. ``StepEvent.index`` is 1-based, so ``events[i - 1]`` is the event
that led to position ``i``.

>>> ev = StepEvent(1, "packet", "lines[0]", seq=1, payload="'a b'", targets=("split[0]",),
...                outputs=("'a b'",), routes=("split: round-robin counter 0 → 1 → split[0]",))
>>> str(ev)
"#1 lines[0] packet #1 'a b' → split[0]"
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..communication.local_queue import QueueStats
from ..communication.packet import safe_repr
from ..communication.router import RoutingDecision
from ..errors import SageError
from ..metrics import ConnectionSnapshot, ErrorInfo, JobSnapshot, OperatorSnapshot, TaskSnapshot

__all__ = ["RECORD_LIMIT", "TRACE_MAXLEN", "QueuedPacket", "Recording", "StepEvent", "load_recording"]

FORMAT = "sage_nb.recording"
VERSION = 1
RECORD_LIMIT = 100_000   # events kept for back()/seek() unless record_limit= says otherwise
TRACE_MAXLEN = 2000      # routing decisions shown in a snapshot (like metrics.Trace)


@dataclass(frozen=True)
class StepEvent:
    """One step of a step job: one packet (or stop signal) moved one hop.

    ``kind`` is one of:

    - ``"packet"``: a source emitted an item, or ``instance`` took a data packet from its input
      queue, ran the user function and routed the outputs;
    - ``"stop"``: ``instance`` took a stop signal from its input queue;
    - ``"finish"``: ``instance`` ended its stream (``close()``, one stop signal per connection);
    - ``"deliver"``: an output that waited in ``instance``'s outbox (its target queue was full)
      entered the queue;
    - ``"discard"``: a failed instance threw away a packet of its input (the job is failing);
    - ``"error"``: a user function raised, or nothing could move (deadlock); see ``error``.

    ``sender`` is the instance that put the taken item into the queue (None for a source's own
    item); ``targets`` names the receiving instance of each delivery, in order, and ``outputs``
    the payload of each; ``routes`` explains the routing decisions of the step.
    """

    index: int
    kind: str
    instance: str
    seq: int | None = None
    payload: str | None = None
    sender: str | None = None
    queue: str | None = None
    targets: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    error: str | None = None

    def __str__(self) -> str:
        what = f" #{self.seq} {self.payload}" if self.seq is not None else ""
        came = f" from {self.sender}" if self.sender else ""
        went = f" → {', '.join(self.targets)}" if self.targets else ""
        err = f": {self.error}" if self.error else ""
        return f"#{self.index} {self.instance} {self.kind}{what}{came}{went}{err}"


@dataclass(frozen=True)
class QueuedPacket:
    """A packet or stop signal waiting in an input queue (``job.queue_contents``).

    ``age`` is, on the step backend, the number of steps since it entered this queue; on the
    threads backend, the seconds since its source emitted it. ``seq`` is None for a stop signal.
    """

    seq: int | None
    kind: str                # "packet" | "stop"
    payload: str             # repr, at most 80 characters; "stop from split[0]" for a stop signal
    sender: str | None
    input_index: int
    key: str | None          # repr of the partition key of a keyed packet
    age: float


class Frame(NamedTuple):
    """The state after one event: what a snapshot needs (shared objects where unchanged)."""

    status: str
    tasks: tuple[TaskSnapshot, ...]
    connections: tuple[ConnectionSnapshot, ...]
    trace: int                   # routing decisions made so far
    error: ErrorInfo | None


Entry = tuple  # (seq, kind, payload repr, sender, step, input_index, key repr): one item of a queue


class Recording:
    """The events of a step job and the state after each of them.

    ``events`` lists them in order, ``len(recording)`` counts them, ``snapshot(i)`` gives the
    :class:`~sage_nb.metrics.JobSnapshot` at position ``i`` (``0 <= i <= len(recording)``), and
    ``queue_contents(instance, i)`` lists what waited in a queue at that point. A live step
    job appends to its recording; a loaded one is read-only.
    """

    def __init__(self, shape: dict[str, Any], limit: int = RECORD_LIMIT) -> None:
        self.shape = shape
        self.limit = limit
        self.events: list[StepEvent] = []
        self.frames: list[Frame] = []
        self.decisions: list[RoutingDecision] = []
        self.queue_log: dict[str, list[Entry]] = {}
        self.truncated = False

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        more = ", truncated" if self.truncated else ""
        return f"Recording({self.shape['job_id']!r}, {len(self)} events{more})"

    @property
    def full(self) -> bool:
        return len(self.events) >= self.limit

    # ------------------------------------------------------------------ reading
    def _frame(self, i: int) -> Frame:
        if type(i) is not int or not 0 <= i < len(self.frames):
            raise IndexError(f"position {i!r} is outside the recording: use 0..{len(self.frames) - 1}")
        return self.frames[i]

    def snapshot(self, i: int) -> JobSnapshot:
        """The snapshot after the first ``i`` events (0: before the first one)."""
        f = self._frame(i)
        s = self.shape
        trace = tuple(self.decisions[max(0, f.trace - TRACE_MAXLEN):f.trace])
        return JobSnapshot(s["job_id"], s["pipeline"], "step", f.status, 0.0, s["operators"],
                           s["logical_edges"], f.tasks, f.connections, trace, 0, f.error,
                           {"step": i, "policy": s["policy"]})

    def queue_contents(self, instance: str, i: int, limit: int | None = 20) -> tuple[QueuedPacket, ...]:
        """What waited in ``instance``'s input queue at position ``i``, oldest first."""
        qid = queue_of(self.shape, instance)
        task = self._frame(i).tasks[self.shape["instances"].index(instance)]
        stats = task.queue
        entries = self.queue_log.get(qid, [])[stats.total_out:stats.total_in] if stats else []
        return queued(entries, i, limit)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the recording as JSON (plain data: no code, no pickle)."""
        path = Path(path)
        path.write_text(json.dumps(_dump(self), separators=(",", ":")))
        return path


def load_recording(path: str | Path) -> Recording:
    """Read a recording written by ``job.save_recording(path)``; no user code is needed.

    The file is validated as data: nothing in it is imported or unpickled.
    """
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"the 'format' field is not {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r} is not supported (this is version {VERSION})")
        return _load(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SageError(f"{path}: not a sage_nb recording ({type(exc).__name__}: {exc}); write one "
                        f"with job.save_recording(path) on a backend='step' job") from exc


def queue_of(shape: dict[str, Any], instance: str) -> str:
    qid = shape["queues"].get(instance)
    if qid is None:
        if instance in shape["instances"]:
            raise ValueError(f"{instance!r} is a source: it has no input queue")
        raise KeyError(f"no instance named {instance!r}; instances: {shape['instances']}")
    return qid


def queued(entries: list[Entry], now: int, limit: int | None) -> tuple[QueuedPacket, ...]:
    """The queue entries as :class:`QueuedPacket`, aged in steps at step ``now``."""
    if limit is not None:
        entries = entries[:limit]
    return tuple(QueuedPacket(seq, kind, payload, sender, index, key, float(now - step))
                 for seq, kind, payload, sender, step, index, key in entries)


# ---------------------------------------------------------------------- JSON
def _dump(rec: Recording) -> dict[str, Any]:
    tasks: dict[int, int] = {}
    conns: dict[int, int] = {}
    errors: dict[int, int] = {}
    task_rows: list[dict] = []
    conn_rows: list[dict] = []
    error_rows: list[dict] = []

    def ref(obj: Any, index: dict[int, int], rows: list[dict]) -> int:
        k = index.get(id(obj))
        if k is None:
            k = index[id(obj)] = len(rows)
            rows.append(asdict(obj))
        return k

    frames = [{"status": f.status, "trace": f.trace,
               "tasks": [ref(t, tasks, task_rows) for t in f.tasks],
               "connections": [ref(c, conns, conn_rows) for c in f.connections],
               "error": None if f.error is None else ref(f.error, errors, error_rows)}
              for f in rec.frames]
    s = rec.shape
    return {"format": FORMAT, "version": VERSION, "truncated": rec.truncated, "limit": rec.limit,
            "shape": {**s, "operators": [asdict(o) for o in s["operators"]]},
            "events": [asdict(e) for e in rec.events],
            "decisions": [_decision(d) for d in rec.decisions],
            "queue_log": rec.queue_log, "tasks": task_rows, "connections": conn_rows,
            "errors": error_rows, "frames": frames}


def _load(data: dict[str, Any]) -> Recording:
    s = data["shape"]
    shape = {**s, "operators": tuple(OperatorSnapshot(o["name"], o["kind"], o["parallelism"],
                                                      tuple(o["instances"])) for o in s["operators"]),
             "logical_edges": tuple(tuple(e) for e in s["logical_edges"])}
    rec = Recording(shape, data["limit"])
    rec.truncated = bool(data["truncated"])
    rec.events = [StepEvent(**{k: tuple(v) if isinstance(v, list) else v  # type: ignore[arg-type]
                               for k, v in e.items()}) for e in data["events"]]
    rec.decisions = [_undecision(d) for d in data["decisions"]]
    rec.queue_log = {q: [tuple(e) for e in entries] for q, entries in data["queue_log"].items()}
    tasks = [_task(t) for t in data["tasks"]]
    conns = [ConnectionSnapshot(**c) for c in data["connections"]]
    errors = [ErrorInfo(**e) for e in data["errors"]]
    rec.frames = [Frame(f["status"], tuple(tasks[k] for k in f["tasks"]),
                        tuple(conns[k] for k in f["connections"]), int(f["trace"]),
                        None if f["error"] is None else errors[f["error"]]) for f in data["frames"]]
    return rec


def _task(d: dict[str, Any]) -> TaskSnapshot:
    d = dict(d)
    d["queue"] = None if d["queue"] is None else QueueStats(**d["queue"])
    d["top_keys"] = tuple(tuple(k) for k in d["top_keys"])
    d["last_packets"] = tuple(d["last_packets"])
    return TaskSnapshot(**d)


def _decision(d: RoutingDecision) -> dict[str, Any]:
    row = {f: getattr(d, f) for f in d.__dataclass_fields__}
    row["key"] = _key(d.key)
    return row


def _undecision(row: dict[str, Any]) -> RoutingDecision:
    row = dict(row)
    row["key"] = _unkey(row["key"])
    row["chosen"], row["targets"] = tuple(row["chosen"]), tuple(row["targets"])
    return RoutingDecision(**row)


class _Repr:
    """A key that JSON cannot hold, shown by its repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _key(key: Any) -> Any:
    if key is None or type(key) in (str, int, float, bool):
        return key
    if type(key) is tuple:
        return {"tuple": [_key(k) for k in key]}
    if type(key) is bytes:
        return {"bytes": key.hex()}
    return {"repr": safe_repr(key)}


def _unkey(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "tuple" in value:
        return tuple(_unkey(k) for k in value["tuple"])
    if "bytes" in value:
        return bytes.fromhex(value["bytes"])
    return _Repr(str(value["repr"]))
