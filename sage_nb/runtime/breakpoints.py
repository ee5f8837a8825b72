"""Breakpoints: pause a job when a packet, a queue or an error says so (threads and step).

``job.break_when(...)`` takes exactly one condition:

- ``packet=pred``: a packet for which ``pred(packet)`` is true enters a queue (``on=`` restricts
  the receiving node or instance). The packet is seen as it enters: its ``partition_key`` is the
  one routing gave it. Every matching delivery fires once; a packet that matches on two hops
  fires on both.
- ``first_packet="count"`` (a node), ``"count[1]"`` (an instance) or ``("split[0]", "count[1]")``
  (a connection; each end a node or an instance): the first packet delivered there. It fires once.
- ``load_above=0.8``: a delivery leaves a bounded queue at least that full (``on=`` restricts
  which). It fires when a queue crosses the line, and again only after it was seen below it.
- ``error=True``: a user function raised. The job pauses *instead of* failing, so you can
  look; resuming fails it as usual.

A hit pauses the job with nothing lost: the packet has been delivered and waits in its queue
(``job.queue_contents(instance)``). ``job.breakpoint_hit`` says where and why. On threads, the
task that hit pauses at once and the others within their current batch; on the step backend the
running stops after the step. ``job.resume()`` releases one hit at a time: when several
deliveries matched, the job stays paused on the next one. Without breakpoints the routers'
hook is ``None``: one attribute check per packet.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..communication.packet import safe_repr
from ..errors import Cancelled, GraphError, SageError, error_line
from ..graph import describe_callable

if TYPE_CHECKING:  # pragma: no cover
    from ..compiler import ExecutionGraph

__all__ = ["Breakpoint", "BreakpointHit", "Breakpoints"]


@dataclass(frozen=True)
class BreakpointHit:
    """Where and why a job paused: the receiving ``instance`` (and its ``node``), the ``sender``
    of the packet, the packet's ``seq`` and ``payload`` (repr), and ``step`` (the step event's
    index on the step backend, else None)."""

    breakpoint: int
    reason: str
    instance: str
    node: str
    sender: str | None = None
    seq: int | None = None
    payload: str | None = None
    step: int | None = None


class Breakpoint:
    """A handle on one breakpoint: ``hits`` lists what it caught; ``remove()`` deletes it."""

    def __init__(self, owner: Breakpoints, number: int, kind: str, description: str,
                 match: Callable[[Any, Any], str | None]) -> None:
        self.owner = owner
        self.id = number
        self.kind = kind
        self.description = description
        self.match = match
        self.hits: list[BreakpointHit] = []
        self.active = True

    def remove(self) -> None:
        """Delete this breakpoint; a hit it already made stays until ``job.resume()``."""
        self.owner.remove(self)

    def __repr__(self) -> str:
        state = "" if self.active else ", removed"
        return f"Breakpoint({self.id}, {self.description!r}, hits={len(self.hits)}{state})"


class Breakpoints:
    """The breakpoints of one job, installed on its runner's routers and error hook.

    ``blocking=True`` (threads): the task that hits waits, inside its own thread, until the
    job resumes. ``blocking=False`` (step): hits are only recorded; the step runner stops.
    """

    def __init__(self, plan: ExecutionGraph, runner: Any, *, blocking: bool) -> None:
        self.plan = plan
        self.runner = runner
        self.control = runner.control
        self.blocking = blocking
        self.step: int | None = None
        self.active: list[Breakpoint] = []
        self.pending: deque[BreakpointHit] = deque()
        self._lock = threading.Lock()
        self._numbers = iter(range(1, 1 << 62))

    @property
    def current(self) -> BreakpointHit | None:
        """The hit the job is paused on (the oldest not yet resumed)."""
        return self.pending[0] if self.pending else None

    # ------------------------------------------------------------------ setting
    def add(self, *, packet: Callable[[Any], Any] | None = None, first_packet: Any = None,
            load_above: float | None = None, error: bool = False, on: str | None = None) -> Breakpoint:
        given = [k for k, v in {"packet": packet, "first_packet": first_packet,
                                "load_above": load_above, "error": error or None}.items() if v is not None]
        if len(given) != 1:
            raise TypeError(f"break_when takes exactly one of packet=, first_packet=, load_above=, "
                            f"error=True; got {given or 'none'}")
        kind = given[0]
        where = self._targets(on) if on is not None else None
        if kind == "packet":
            if not callable(packet):
                raise TypeError(f"packet= needs a predicate on a Packet, got {packet!r:.60}")
            text = f"packet matches {describe_callable(packet)}" + (f" on {on}" if on else "")
            match = _packet(packet, where, text)
        elif kind == "first_packet":
            text, match = self._first(first_packet)
        elif kind == "load_above":
            text, match = self._load(load_above, where, on)
        else:
            text, match = "error" + (f" on {on}" if on else ""), _error(where)
        bp = Breakpoint(self, next(self._numbers), kind, text, match)
        with self._lock:
            self.active = [*self.active, bp]   # copied, never changed: hooks iterate it unlocked
        self._install()
        return bp

    def remove(self, bp: Breakpoint) -> None:
        with self._lock:
            self.active = [b for b in self.active if b is not bp]
            bp.active = False
        self._install()

    def _install(self) -> None:
        delivery = [b for b in self.active if b.kind != "error"]
        watch = self.watch if delivery else None
        for task in self.runner.tasks.values():
            task.router.watch = watch
        self.runner.on_error = self.on_error if any(b.kind == "error" for b in self.active) else None

    def _targets(self, spec: str) -> frozenset[str]:
        """The instances ``spec`` names: a node (every instance) or one instance."""
        if spec in self.plan.contexts:
            return frozenset([spec])
        found = frozenset(self.plan.instances(spec)) if spec in self.plan.logical else frozenset()
        if not found:
            raise GraphError(f"breakpoint: unknown node or instance {spec!r}; nodes: "
                             f"{sorted(self.plan.logical.nodes)}; instances: {sorted(self.plan.contexts)}")
        return found

    def _first(self, spec: Any) -> tuple[str, Callable[[Any, Any], str | None]]:
        if isinstance(spec, tuple) and len(spec) == 2:
            srcs, dsts = self._targets(spec[0]), self._targets(spec[1])
            conns = [c for s in srcs for g in self.plan.contexts[s].downstream_groups
                     for c in g.connections]
            if not any(c.target_name in dsts for c in conns):
                raise GraphError(f"breakpoint: no connection from {spec[0]!r} to {spec[1]!r}")
            text = f"first packet on {spec[0]} -> {spec[1]}"
            test: Callable[[Any], bool] = lambda c: c.source_name in srcs and c.target_name in dsts  # noqa: E731
        elif isinstance(spec, str):
            dsts = self._targets(spec)
            text = f"first packet into {spec}"
            test = lambda c: c.target_name in dsts  # noqa: E731
        else:
            raise TypeError(f"first_packet= takes a node or instance name, or a (source, target) "
                            f"pair of them; got {spec!r:.60}")
        fired = [False]
        lock = threading.Lock()

        def match(conn: Any, packet: Any) -> str | None:
            if not test(conn):
                return None
            with lock:
                if fired[0]:
                    return None
                fired[0] = True
            return text
        return text, match

    def _load(self, level: Any, where: frozenset[str] | None, on: str | None) -> tuple[str, Callable]:
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 1:
            raise ValueError(f"load_above= must be a fill level in (0, 1], got {level!r}")
        caps = {n: (c.input_qd.metadata.get("maxsize") or 0) for n, c in self.plan.contexts.items()
                if c.input_qd is not None and (where is None or n in where)}
        if not any(caps.values()):
            raise ValueError("load_above= needs bounded queues, but these are unbounded "
                             "(queue_maxsize=0); compile with queue_maxsize=N")
        armed = dict.fromkeys(caps, True)
        lock = threading.Lock()

        def match(conn: Any, packet: Any) -> str | None:
            cap = caps.get(conn.target_name)
            if not cap:
                return None
            used = min(cap, conn.queue.qsize() + 1)   # checked just before the packet enters
            with lock:
                if used < level * cap:
                    armed[conn.target_name] = True
                    return None
                if not armed[conn.target_name]:
                    return None
                armed[conn.target_name] = False
            return f"queue of {conn.target_name} at {used}/{cap} >= {level:.0%}"
        return f"load above {level:.0%}" + (f" on {on}" if on else ""), match

    # ------------------------------------------------------------------ firing
    def watch(self, conn: Any, packet: Any) -> Callable[[], None] | None:
        """The routers' hook, before a delivery: returns what to do after it, if anything hit."""
        hits = None
        for bp in self.active:
            if bp.kind != "error":
                try:
                    reason = bp.match(conn, packet)
                except Exception as exc:  # the user's predicate: say so, not "the sender raised"
                    raise SageError(f"breakpoint {bp.id} ({bp.description}) raised on packet #{packet.seq} "
                                    f"from {conn.source_name} to {conn.target_name}: {error_line(exc)}; fix "
                                    f"its predicate, or remove it") from exc
                if reason is not None:
                    hits = hits or []
                    hits.append((bp, BreakpointHit(
                        bp.id, reason, conn.target_name, self.plan.contexts[conn.target_name].operator,
                        conn.source_name, packet.seq, safe_repr(packet.payload, 80), self.step)))
        if hits is None:
            return None
        return lambda: self._fire(hits)

    def on_error(self, task: Any, exc: BaseException, packet: Any) -> bool:
        """The runner's error hook: True when an error breakpoint holds the failure."""
        name = task.ctx.name
        hits = [(bp, BreakpointHit(bp.id, f"error: {type(exc).__name__}: {exc}", name, task.ctx.operator,
                                   None, getattr(packet, "seq", None),
                                   None if packet is None else safe_repr(getattr(packet, "payload", packet), 80),
                                   self.step))
                for bp in self.active if bp.kind == "error" and bp.match(name, None)]
        if not hits:
            return False
        with contextlib.suppress(Cancelled):   # the job is stopping: fail as usual
            self._fire(hits[:1])
        return True

    def _fire(self, hits: list[tuple[Breakpoint, BreakpointHit]]) -> None:
        with self._lock:
            for bp, hit in hits:
                bp.hits.append(hit)
                self.pending.append(hit)
            self.control.pause()
        if self.blocking:
            self.control.resume.wait()
            if self.control.cancel.is_set():
                raise Cancelled(f"{hits[0][1].instance}: job stopping at a breakpoint")

    # ------------------------------------------------------------------ resuming
    def resume(self) -> None:
        """Release the current hit; the job runs on when no other hit is waiting."""
        with self._lock:
            if self.pending:
                self.pending.popleft()
            if not self.pending:
                self.control.unpause()

    def release(self) -> None:
        """Remove every breakpoint and let the job run (it is stopping)."""
        for bp in self.active:
            self.remove(bp)
        with self._lock:
            self.pending.clear()
            self.control.unpause()

    def clear(self) -> None:
        """Forget every waiting hit (the step backend moves on)."""
        with self._lock:
            self.pending.clear()

    def replay(self, step: int) -> None:
        """Show again the hits of a recorded step (step backend, after going back)."""
        with self._lock:
            for bp in self.active:
                for hit in bp.hits:
                    if hit.step == step:
                        self.pending.append(hit)
            if self.pending:
                self.control.pause()


def _packet(pred: Callable[[Any], Any], where: frozenset[str] | None,
            text: str) -> Callable[[Any, Any], str | None]:
    def match(conn: Any, packet: Any) -> str | None:
        if where is not None and conn.target_name not in where:
            return None
        return text if pred(packet) else None
    return match


def _error(where: frozenset[str] | None) -> Callable[[Any, Any], str | None]:
    def match(name: Any, _: Any) -> str | None:
        return "error" if where is None or name in where else None
    return match
