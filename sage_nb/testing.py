"""Helpers that users and tests share: wait for a condition, script a source, check threads.

>>> wait_for(lambda: True, timeout=1)
True
>>> list(Scripted([1, 2, 3], fail_at=None))
[1, 2, 3]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Scripted", "no_thread_leak", "wait_for"]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


class Scripted:
    """A scripted source (Beam's TestStream, in small): items, an optional per-item delay,
    an exception at item ``fail_at`` (0-based), and a gate that holds item ``hold_at`` until
    ``release()`` is called."""

    def __init__(self, items: Iterable[Any], *, delay: float = 0.0, fail_at: int | None = None,
                 exc: BaseException | None = None, hold_at: int | None = None) -> None:
        self.items = list(items)
        self.delay = delay
        self.fail_at = fail_at
        self.exc = exc or ValueError(f"scripted failure at item {fail_at}")
        self.hold_at = hold_at
        self.gate = threading.Event()
        self.emitted = 0

    def release(self) -> None:
        self.gate.set()

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(self.items):
            if i == self.fail_at:
                raise self.exc
            if i == self.hold_at:
                self.gate.wait()
            if self.delay:
                time.sleep(self.delay)
            self.emitted += 1
            yield item


@contextmanager
def no_thread_leak(timeout: float = 2.0) -> Iterator[None]:
    """Assert that the block leaves no extra thread behind (within ``timeout`` seconds)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    extra: list[threading.Thread] = []

    def settled() -> bool:
        extra[:] = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        return not extra
    try:
        wait_for(settled, timeout)
    except TimeoutError:
        raise AssertionError(f"threads left behind: {[t.name for t in extra]}") from None
