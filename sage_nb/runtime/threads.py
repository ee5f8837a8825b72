"""The threads backend: one daemon thread per task instance and per service worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ThreadsBackend"]


class ThreadsBackend:
    """Starts callables in named daemon threads and joins them with a deadline.

    Threads are daemons so that a job left running never blocks interpreter exit; an
    ``atexit`` hook (see :mod:`sage_nb.runtime.manager`) cancels and joins them first.
    """

    name = "threads"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.threads: list[threading.Thread] = []

    def spawn(self, target: Callable[[], None], label: str) -> None:
        t = threading.Thread(target=target, name=f"sage-nb:{self.job_id}:{label}", daemon=True)
        self.threads.append(t)
        t.start()

    def join(self, timeout: float) -> list[str]:
        """Join every thread within ``timeout`` seconds; return the names still alive."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]
