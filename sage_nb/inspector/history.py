"""What an inspector remembers between snapshots: counters for rates, loads for the timeline.

>>> h = LoadHistory(maxlen=4)
>>> for i in range(10):
...     h.add(float(i), {"count[0]": i / 10})
>>> len(h.times) <= 4, h.times[-1]
(True, 9.0)
"""

from __future__ import annotations

from collections import deque

from ..metrics import JobSnapshot
from .tables import Counters, Rates, counters, rates

__all__ = ["LoadHistory", "RateWindow", "queue_loads"]


class RateWindow:
    """Rates over the last ``window`` seconds of snapshots (smooth at 10 updates a second)."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._readings: deque[Counters] = deque()

    def reset(self) -> None:
        self._readings.clear()

    def add(self, snap: JobSnapshot) -> None:
        c = counters(snap)
        if self._readings and c.elapsed < self._readings[-1].elapsed:   # another job: start over
            self._readings.clear()
        self._readings.append(c)
        while len(self._readings) > 2 and c.elapsed - self._readings[1].elapsed >= self.window:
            self._readings.popleft()

    def rates(self, *, average: bool = False) -> Rates:
        """Rates over the window; ``average=True`` (a finished job): over the whole run."""
        if not self._readings:
            return Rates({}, {}, {}, {}, average=True)
        newest = self._readings[-1]
        if average or len(self._readings) < 2:
            return rates(None, newest)
        return rates(self._readings[0], newest)


def queue_loads(snap: JobSnapshot) -> dict[str, float]:
    """Load of every bounded input queue, named by the instance that owns it."""
    return {t.name: t.queue.load for t in snap.tasks if t.queue is not None and t.queue.capacity}


class LoadHistory:
    """Buffer load per queue over time; thinned by half whenever it reaches ``maxlen`` points."""

    def __init__(self, maxlen: int = 1200) -> None:
        self.maxlen = maxlen
        self.times: list[float] = []
        self.loads: dict[str, list[float]] = {}
        self.peaks: dict[str, float] = {}      # the queues' own peak fill, from their statistics
        self.job_id: str | None = None

    def clear(self) -> None:
        self.times.clear()
        self.loads.clear()
        self.peaks.clear()

    def add_snapshot(self, snap: JobSnapshot) -> None:
        if snap.job_id != self.job_id:
            self.clear()
            self.job_id = snap.job_id
        self.peaks = {t.name: t.queue.peak / t.queue.capacity for t in snap.tasks
                      if t.queue is not None and t.queue.capacity}
        if self.times and snap.elapsed <= self.times[-1]:
            return
        self.add(snap.elapsed, queue_loads(snap))

    def add(self, t: float, loads: dict[str, float]) -> None:
        n = len(self.times)
        for name in loads.keys() - self.loads.keys():
            self.loads[name] = [0.0] * n
        self.times.append(t)
        for name, series in self.loads.items():
            series.append(loads.get(name, 0.0))
        if len(self.times) >= self.maxlen:       # keep the whole run, at half the resolution
            self.times = self.times[::-2][::-1]
            self.loads = {k: v[::-2][::-1] for k, v in self.loads.items()}

    def __len__(self) -> int:
        return len(self.times)
