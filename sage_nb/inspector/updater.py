"""The one background thread of an inspector, and the registry that keeps it unique.

The thread reads a snapshot from its :class:`~sage_nb.inspector.source.Source`, hands it to
``apply`` (which only sets traits), and sleeps on an :class:`threading.Event` so that
``stop()`` and ``wake()`` end the wait at once. In step mode ``tick`` runs first on every
round: while the user plays a recording, it makes the step (so Play never depends on the
browser's timers or on messages from it). It never prints: output from a thread lands in whichever cell
happens to run, so problems are reported through ``on_error`` (a trait) instead.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from ..metrics import JobSnapshot
from .source import Source

__all__ = ["MAX_RATE", "MIN_RATE", "Registry", "Updater"]

MAX_RATE = 10.0     # updates a second, at most
MIN_RATE = 1.0      # at least: the thread notices the end of a job within a second
IDLE_INTERVAL = 1.0  # also the longest wait: the end of a job is seen within a second
DUTY = 0.02         # the share of one core (and of the GIL) the updates may take from the job
POLL = 0.2          # how often a sleeping updater checks whether its job has ended


class Updater:
    """Calls ``apply(snapshot)`` at ``rate()`` updates a second until the source is finished.

    ``tick()``, when given, runs before each read (the Play button's step); it returns
    True when it moved something (the next round then comes at ``rate``, not at idle pace).
    ``updates`` and ``cpu`` count the updates made while the job ran and the seconds of this
    thread's CPU they took (the last one, after the job's end, costs the job nothing).
    """

    def __init__(self, source: Source, apply: Callable[[JobSnapshot], None], rate: Callable[[], float],
                 on_error: Callable[[str], None], name: str,
                 on_exit: Callable[[], None] = lambda: None,
                 tick: Callable[[], bool] | None = None) -> None:
        self.source = source
        self.apply = apply
        self.rate = rate
        self.on_error = on_error
        self.on_exit = on_exit
        self.tick = tick
        self._stop = threading.Event()
        self._nudge = threading.Event()     # ends the current wait: stop() or wake()
        self._costs: deque[float] = deque(maxlen=5)
        self.updates = 0
        self.cpu = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to end and wait up to ``timeout`` s; True when it has ended."""
        self._stop.set()
        self._nudge.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wake(self) -> None:
        """End the current wait now (Play was pressed)."""
        self._nudge.set()

    def _interval(self, idle: bool) -> float:
        """Seconds to the next update: the rate asked for, slower if updates are costly.

        An update that took ``c`` seconds of this thread's CPU waits at least ``c / DUTY``:
        the inspector never takes more than ``DUTY`` of a core (and of the GIL) from the job.
        The cheapest of the last few updates counts, so one slow update (a timeline
        rendering) does not stall the next ones. A source whose job only moves when the
        inspector steps it (``shares_cpu`` false) has nothing to share the core with.
        """
        rate = min(MAX_RATE, max(MIN_RATE, self.rate()))
        budget = min(self._costs) / DUTY if self._costs and self.source.shares_cpu else 0.0
        return min(IDLE_INTERVAL, max(1.0 / rate, budget, IDLE_INTERVAL if idle else 0.0))

    def _sleep(self, interval: float) -> None:
        """Wait ``interval`` s, waking early on ``stop()``, ``wake()`` or when the job ends or changes."""
        deadline = time.monotonic() + interval
        while not self._stop.is_set() and not self.source.changed():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._nudge.wait(min(left, POLL)):
                self._nudge.clear()
                return

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = time.thread_time()
                ticked = self.tick() if self.tick is not None else False
                snap = self.source.read()
                if snap is not None and not self._stop.is_set():
                    self.apply(snap)
                cost = time.thread_time() - start
                if self.source.finished:
                    return
                if ticked or snap is not None:
                    self._costs.append(cost)
                    self.updates += 1
                    self.cpu += cost
                self._sleep(self._interval(idle=snap is None and not ticked))
        except Exception as exc:   # shown in the widget; the job itself is not affected
            self.on_error(f"inspector stopped updating: {exc!r}\n{traceback.format_exc()}")
        finally:
            self.on_exit()


class Registry:
    """At most one open inspector per key (a job or a pipeline): a new one closes the old one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}

    def claim(self, key: str, owner: Any) -> None:
        with self._lock:
            previous = self._items.get(key)
            self._items[key] = owner
        if previous is not None and previous is not owner:
            previous.close()

    def release(self, key: str, owner: Any) -> None:
        with self._lock:
            if self._items.get(key) is owner:
                del self._items[key]

    def get(self, key: str) -> Any:
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
