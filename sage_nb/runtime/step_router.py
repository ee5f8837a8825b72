"""Routing on the step backend: deliveries that never block, decisions stamped by step.

:class:`StepRouter` is a :class:`~sage_nb.communication.router.BaseRouter` (same groups, same
strategies, same counters) whose ``_put`` never waits: an item for a full queue waits in the
router's ``outbox`` until a later ``"deliver"`` step. :class:`StepTrace` keeps every routing
decision, with its step index as its ``time``, so two runs record the same decisions.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ..communication.router import BaseRouter, RoutingDecision
from ..metrics import Trace
from .recording import TRACE_MAXLEN

if TYPE_CHECKING:  # pragma: no cover
    from .step_state import StepState
    from .task import BaseTask

__all__ = ["StepRouter", "StepTrace"]


class StepTrace(Trace):
    """Records every routing decision (no sampling), stamped with its step index."""

    def __init__(self) -> None:
        super().__init__(maxlen=TRACE_MAXLEN)
        self.step = 0
        self.made: list[RoutingDecision] = []   # this step's decisions

    def sample(self) -> bool:
        return True

    def record(self, decision: RoutingDecision) -> None:
        # the router built this decision for us alone: stamp it with the step, not the clock
        object.__setattr__(decision, "time", float(self.step))
        self.events.append(decision)
        self.made.append(decision)


class StepRouter(BaseRouter):
    """A router whose deliveries never block: an item for a full queue waits in ``outbox``."""

    def __init__(self, state: StepState, task: BaseTask) -> None:
        super().__init__(task.ctx.name, task.ctx.downstream_groups)
        self.state = state
        self.outbox: deque[tuple[Any, Any]] = deque()

    # (its own _put: the base's buffers stay off, so the base never passes put=)
    def _put(self, conn: Any, item: Any) -> None:  # type: ignore[override]
        text = self.state.routed(conn, item)
        q = conn.queue
        if self.outbox or 0 < q.maxsize <= len(q.queue):   # keep FIFO behind what waits
            self.outbox.append((conn, item))
        else:
            self.state.enqueue(self.name, conn, item, text)
