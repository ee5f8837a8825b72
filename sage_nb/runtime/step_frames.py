"""Recording the state after each step cheaply: only what the step touched is rebuilt.

After a step, only the acting instance's counters, keys and latest payloads can have changed;
other instances change state only when their own queue changed (``busy``/``idle``) or when a
queue they write into filled up or got room again (``backpressured``). Everything else is
shared with the previous :class:`~sage_nb.runtime.recording.Frame`. The live snapshot
(:meth:`StepState.live_snapshot`) reads everything instead; the tests check they agree.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ..communication.packet import safe_repr
from ..metrics import TaskSnapshot
from .recording import Frame, StepEvent

if TYPE_CHECKING:  # pragma: no cover
    from .step_state import StepState

__all__ = ["FrameRecorder"]


class FrameRecorder:
    """Appends one frame per step to ``state.rec`` (until the recording is full)."""

    def __init__(self, state: StepState) -> None:
        self.state = state
        self.rec = state.rec
        self.runner = state.runner
        self.index = {n: k for k, n in enumerate(state.order)}
        self.qds = {qd.queue_id: qd for qd in state.qds.values()}
        self.into: dict[str, list[int]] = {q: [] for q in self.qds}
        self.out_of: dict[str, list[int]] = {n: [] for n in state.order}
        for k, (c, t, _) in enumerate(state.conns):
            self.into[c.queue_descriptor.queue_id].append(k)
            self.out_of[t.ctx.name].append(k)
        self.feeders = {q: {state.conns[k][1].ctx.name for k in ks} for q, ks in self.into.items()}
        self.full = dict.fromkeys(self.qds, False)
        self.dirty: set[str] = set()   # queue ids the current step put into or took from
        self.stats = {q: qd.statistics() for q, qd in self.qds.items()}
        self.tasks = [state.task_snapshot(n, self.stats.get(state.qid.get(n))) for n in state.order]
        self.links = [state.conn_snapshot(k, self.stats[c.queue_descriptor.queue_id])
                      for k, (c, _, _) in enumerate(state.conns)]
        self._counts: dict[str, dict[Any, int]] = {n: {} for n in state.order}
        self._seen: dict[str, dict[Any, int]] = {n: {} for n in state.order}
        self._top: dict[str, list[Any]] = {n: [] for n in state.order}
        self._last: dict[str, tuple[Any, tuple[str, ...]]] = {n: (None, ()) for n in state.order}
        self.rec.frames.append(self.frame())

    def frame(self) -> Frame:
        return Frame(self.state.status(), tuple(self.tasks), tuple(self.links),
                     len(self.rec.decisions), self.runner.error)

    def record(self, ev: StepEvent, name: str | None) -> None:
        """Keep ``ev`` (made by ``name``, None for a deadlock) and the state after it."""
        rec = self.rec
        if rec.full:
            self.dirty = set()
            if not rec.truncated:
                rec.truncated = True
                warnings.warn(f"{self.runner.plan.job_id}: the step recording keeps {rec.limit} events; "
                              f"back()/seek() reach those only (pass record_limit= to p.run to keep "
                              f"more)", RuntimeWarning, stacklevel=5)
            return
        st, stats = self.state, self.stats
        touched: set[str] = set()
        for q in self.dirty:
            s = stats[q] = self.qds[q].statistics()
            touched.add(st.owner[q])
            full = s.capacity is not None and s.used >= s.capacity
            if full != self.full[q]:   # its feeders became (or stopped being) backpressured
                self.full[q] = full
                touched |= self.feeders[q]
        touched.discard(name)
        for n in touched:
            k = self.index[n]
            self.tasks[k] = _restate(self.tasks[k], st.task_state(n), stats.get(st.qid.get(n)))
        links = {k for q in self.dirty for k in self.into[q]}
        if name is not None:
            self.tasks[self.index[name]] = st.task_snapshot(
                name, stats.get(st.qid.get(name)), self._top_keys(name), self._latest(name))
            links.update(self.out_of[name])
        for k in links:
            c = st.conns[k][0]
            self.links[k] = st.conn_snapshot(k, stats[c.queue_descriptor.queue_id])
        self.dirty = set()
        rec.events.append(ev)
        rec.decisions.extend(self.runner.trace.made)
        rec.frames.append(self.frame())

    def _top_keys(self, name: str) -> tuple[tuple[str, int], ...]:
        """``BaseTask.top_keys()`` kept up to date per step: a key's count only grows by one
        per packet, so the new top five are among the old ones and the key just counted."""
        t = self.runner.tasks[name]
        counts, top = t.key_counts, self._top[name]
        key = t.ctx.current_key
        if counts and key in counts and self._counts[name].get(key) != counts[key]:
            self._counts[name][key] = counts[key]
            seen = self._seen[name]
            seen.setdefault(key, len(seen))   # insertion order of key_counts breaks ties
            if key not in top:
                top.append(key)
            top.sort(key=lambda k: (-counts[k], seen[k]))
            del top[5:]
        return tuple((safe_repr(k), counts[k]) for k in top)

    def _latest(self, name: str) -> tuple[str, ...]:
        """``BaseTask.last_packets()``: the step runner appends one payload per packet taken."""
        last = self.runner.tasks[name].last
        seen, reprs = self._last[name]
        if last is not seen:
            reprs = (*reprs[-4:], safe_repr(last[-1], 80)) if last else ()
            self._last[name] = (last, reprs)
        return reprs


def _restate(t: TaskSnapshot, state: str, queue: Any) -> TaskSnapshot:
    """``t`` with a new state and queue reading (an instance that did not act)."""
    return TaskSnapshot(t.name, t.operator, t.parallel_index, t.kind, state, t.packets_in,
                        t.packets_out, t.busy_time, t.blocked_time, t.stops_received,
                        t.stops_expected, queue, t.queue_id, t.top_keys, t.last_packets, t.error)
