"""Readings of a Ray job: queue statistics in one call, task counters in one round, losses.

Mixed into :class:`~sage_nb.runtime.ray_backend.RayDispatcher`. A snapshot costs one call
to the queue manager (every queue at once) and one round of ``report()`` calls to the
task actors, answered by their control threads while their loops run. Once the job has
ended, the readings are the final ones and no actor is asked anything.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from ..communication.local_queue import QueueStats
from ..communication.ray_queue import manager_name
from ..metrics import ConnectionSnapshot, TaskSnapshot

__all__ = ["CALL_TIMEOUT", "RayReadings"]

CALL_TIMEOUT = 5.0     # seconds a control or report call may take


class RayReadings:
    """Statistics, snapshots and loss estimates (reads the dispatcher's plan, actors, reports)."""

    plan: Any
    manager: Any
    actors: dict[str, Any]
    reports: dict[str, dict[str, Any]]
    _reports_lock: threading.Lock
    job: str
    done: Any
    _inputs: dict[str, int]
    _others: list[Any]
    _running: set[str]
    _responsive: set[str]
    _stats: dict[str, QueueStats] | None
    _final_stats: dict[str, QueueStats] | None
    _manager_up: bool
    _reports_at: float

    def _get(self, ref: Any, timeout: float = CALL_TIMEOUT) -> Any:
        import ray

        return ray.get(ref, timeout=timeout)

    def _fetch_stats(self) -> dict[str, QueueStats]:
        stats = dict(self._stats or {})
        with contextlib.suppress(Exception):  # the manager is gone: the last reading stands
            raw = self._get(self.manager.stats.remote(self._inputs))
            stats.update((qid, QueueStats(*s)) for qid, s in raw.items())
        for qd in self._others:  # RPC queues and users' queues, read where they live
            with contextlib.suppress(Exception):
                stats[qd.queue_id] = qd.statistics()
        self._stats = stats
        return stats

    def queue_stats(self) -> dict[str, QueueStats]:
        """One reading of every input queue, by queue id (one call to the manager)."""
        if self._final_stats is not None:
            return dict(self._final_stats)
        stats = self._fetch_stats() if self._manager_up and not self.done.is_set() else {}
        sizes = {**self._inputs, **{qd.queue_id: qd.metadata.get("maxsize", 0) for qd in self._others}}
        return {qid: stats.get(qid) or QueueStats(0, size or None, 0, 0, 0) for qid, size in sizes.items()}

    def _gather(self, wait: float = 2.0) -> dict[str, dict[str, Any]]:
        """Every task's counters, in one round of remote calls (final reports once ended)."""
        import ray

        live = [] if self.done.is_set() else [n for n in self._running if n in self.actors]
        refs = {self.actors[n].report.remote(): n for n in live}
        if refs:
            known = [r for r, n in refs.items() if n in self._responsive]  # not one still starting
            ray.wait(known, num_returns=len(known), timeout=wait)
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            for ref in ready:
                with contextlib.suppress(Exception):
                    report = ray.get(ref, timeout=0)
                    with self._reports_lock:  # (not over the final report of a task that ended meanwhile)
                        if refs[ref] in self._running:
                            self.reports[refs[ref]] = report
        self._reports_at = time.monotonic()
        return self.reports

    def key_counts(self, name: str) -> dict[Any, int]:
        """The keys instance ``name`` counted so far: asked of its actor while it runs, from its
        final report once it ended (the actor is gone then)."""
        if not self.done.is_set() and name in self._running and name in self.actors:
            with contextlib.suppress(Exception):  # it ended meanwhile: its final report has them
                return self._get(self.actors[name].key_counts.remote())
        return dict(self.reports.get(name, {}).get("key_counts") or {})

    def task_snapshots(self, stats: dict[str, QueueStats]) -> tuple[TaskSnapshot, ...]:
        reports = self._gather()
        out = []
        for name, ctx in self.plan.contexts.items():
            r = reports[name]
            qid = ctx.input_qd.queue_id if ctx.input_qd is not None else None
            out.append(TaskSnapshot(
                name, ctx.operator, ctx.parallel_index, ctx.kind, r["state"], r.get("packets_in", 0),
                r.get("packets_out", 0), r.get("busy", 0.0), r.get("blocked", 0.0), r.get("stops", 0),
                ctx.stop_signal_num,
                stats.get(qid),  # type: ignore[arg-type]  # (None: a source, no input queue)
                qid, tuple(map(tuple, r.get("top_keys", ()))),
                tuple(r.get("last", ())), r.get("error"), r.get("unprocessed", 0), r.get("in_bundle", 0)))
        return tuple(out)

    def connection_snapshots(self, stats: dict[str, QueueStats]) -> tuple[ConnectionSnapshot, ...]:
        """Per-connection counters from the reports ``task_snapshots`` just gathered."""
        reports = self.reports if time.monotonic() - self._reports_at < 1.0 else self._gather()
        out = []
        for name, ctx in self.plan.contexts.items():
            counts = iter(reports[name].get("conns") or ())
            for g in ctx.downstream_groups:
                for c in g.connections:
                    sent, stops = next(counts, (0, 0))
                    s = stats[c.queue_descriptor.queue_id]
                    out.append(ConnectionSnapshot(
                        c.source_name, c.target_name, ctx.operator, g.target, c.broadcast_index,
                        c.parallel_index, c.target_input_index, g.strategy,
                        getattr(g.key, "__name__", None) if g.key else None, sent, stops,
                        c.queue_descriptor.queue_id, s.used, s.capacity))
        return tuple(out)

    # ------------------------------------------------------------------ losses
    def actor_lost(self, name: str, exc: BaseException) -> str:
        """The message for the death of ``name``'s actor, with how many packets may be lost."""
        ctx = self.plan.contexts[name]
        if ctx.input_qd is None:
            lost = "the items its source had not emitted yet are lost"
        else:
            qid = ctx.input_qd.queue_id
            s = self._fetch_stats().get(qid)
            done = self.reports[name].get("packets_in", 0)
            n = "?" if s is None else s.used + max(0, s.total_out - done)
            lost = f"up to {n} packet(s) queued in {qid!r} or taken but not processed are lost"
        return f"{type(exc).__name__}: the Ray actor running {name} died (killed or crashed); {lost}"

    def manager_lost(self) -> str:
        """The message for the death of the queue manager, with how many packets may be lost."""
        reports = self._gather(wait=2.0)
        sent: dict[str, int] = {}
        for n, ctx in self.plan.contexts.items():
            conns = [c for g in ctx.downstream_groups for c in g.connections]
            for c, (packets, _) in zip(conns, reports[n].get("conns", ()), strict=False):
                qid = c.queue_descriptor.queue_id
                sent[qid] = sent.get(qid, 0) + packets
        lost = {c.input_qd.queue_id: max(0, sent.get(c.input_qd.queue_id, 0) - reports[n].get("packets_in", 0))
                for n, c in self.plan.contexts.items() if c.input_qd is not None}
        worst = ", ".join(f"{q!r}: {k}" for q, k in sorted(lost.items(), key=lambda kv: -kv[1])[:3])
        return (f"QueueLost: the queue manager {manager_name(self.job)!r} holding the job's "
                f"{len(lost)} queue(s) died; up to {sum(lost.values())} packet(s) in its queues "
                f"are lost ({worst})")
