"""The one background thread of an inspector, and the registry that keeps it unique.

The thread reads a snapshot from its :class:`~sage_nb.inspector.source.Source`, hands it to
``apply`` (which only sets traits), and sleeps on an :class:`threading.Event` so that
``stop()`` wakes it at once. It never prints: output from a thread lands in whichever cell
happens to run, so problems are reported through ``on_error`` (a trait) instead.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from ..metrics import JobSnapshot
from .source import Source

__all__ = ["MAX_RATE", "MIN_RATE", "Registry", "Updater"]

MAX_RATE = 10.0     # updates a second, at most
MIN_RATE = 1.0      # at least: the thread notices the end of a job within a second
IDLE_INTERVAL = 1.0


class Updater:
    """Calls ``apply(snapshot)`` at ``rate()`` updates a second until the source is finished."""

    def __init__(self, source: Source, apply: Callable[[JobSnapshot], None], rate: Callable[[], float],
                 on_error: Callable[[str], None], name: str,
                 on_exit: Callable[[], None] = lambda: None) -> None:
        self.source = source
        self.apply = apply
        self.rate = rate
        self.on_error = on_error
        self.on_exit = on_exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to end and wait up to ``timeout`` s; True when it has ended."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _interval(self, idle: bool) -> float:
        rate = min(MAX_RATE, max(MIN_RATE, self.rate()))
        return max(1.0 / rate, IDLE_INTERVAL if idle else 0.0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                snap = self.source.read()
                if snap is not None and not self._stop.is_set():
                    self.apply(snap)
                if self.source.finished:
                    return
                self._stop.wait(self._interval(idle=snap is None))
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
