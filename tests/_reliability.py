"""Checks shared by the reliability suite: the global invariants of reliability-cases.md §4.

(a) conservation on every physical edge, (b) threads back to baseline (the ``no_leak``
fixture), (d) a terminal job state. A failed delivery or an exception that escapes a worker
thread is a silent failure, so :data:`STRICT_THREADS` turns the latter into a test error.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import sage_nb as snb
from sage_nb.metrics import JobSnapshot

__all__ = ["CONCURRENT", "IN_PROCESS", "STRICT_THREADS", "WAIT", "assert_balanced", "deadline",
           "finished", "job_threads", "main_in", "needs_concurrency", "needs_shared_state", "scaled",
           "xfail_if_concurrent"]

#: An exception escaping a worker thread fails the test (the default hook only prints it).
STRICT_THREADS = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
#: Seconds a job that must end is given; past it the test fails instead of hanging.
WAIT = 90.0
#: Backends whose jobs progress by themselves; "step" moves only inside ``wait()``/``step()``.
CONCURRENT = ("threads", "ray")
#: Backends that run user code in the test's process (user objects, events and lists are shared).
IN_PROCESS = ("threads", "step")
#: The stop deadline of reliability-cases.md §4 on Ray (threads: 2 s), actor start-up excluded.
RAY_DEADLINE = 10.0


def deadline(backend: str, seconds: float) -> float:
    """A stop deadline of ``seconds`` on threads (and step), :data:`RAY_DEADLINE` on Ray."""
    return RAY_DEADLINE if backend == "ray" else seconds


def needs_concurrency(backend: str) -> None:
    """Skip a scenario that needs a job progressing while the test watches, blocks or times it
    (blocked puts, held sources, interrupts, throughput): the step backend has none of that."""
    if backend not in CONCURRENT:
        pytest.skip(f"backend {backend!r} runs only inside job.wait()/job.step(): this scenario "
                    f"needs a job that progresses concurrently with the test")


def needs_shared_state(backend: str) -> None:
    """Skip a scenario that watches user objects (lists, events, gates, custom queues) from
    the test: on Ray they live in actor processes."""
    if backend not in IN_PROCESS:
        pytest.skip(f"backend {backend!r} runs user code in other processes: this scenario "
                    f"observes user objects shared with the test")


def scaled(backend: str, n: int) -> int:
    """``n`` items on threads; a tenth on "step" (one hop per step, every event recorded) and
    on Ray (a remote hop each), which checks the same routing in a time the suite can afford."""
    return n if backend == "threads" else max(1, n // 10)


def xfail_if_concurrent(request: pytest.FixtureRequest, backend: str, reason: str) -> None:
    """Mark a test strict-xfail where a known race can happen (not on the single-threaded "step")."""
    if backend in CONCURRENT:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


def assert_balanced(job: snb.Job) -> JobSnapshot:
    """Conservation on every physical edge of a job whose instances all ended normally:
    each instance processed what its incoming connections delivered, got one stop signal
    per incoming connection, and left nothing in its queue."""
    snap = job.snapshot()
    for t in snap.tasks:
        out = [c for c in snap.connections if c.source == t.name]
        assert [c.stops_sent for c in out] == [1] * len(out), f"{t.name}: stop signals sent {out}"
        if t.kind == "source":
            continue
        incoming = [c for c in snap.connections if c.target == t.name]
        delivered = sum(c.packets_sent for c in incoming)
        assert t.packets_in == delivered, f"{t.name}: processed {t.packets_in}, delivered {delivered}"
        assert t.stops_received == t.stops_expected == len(incoming), t
        assert t.queue is not None and t.queue.used == 0, f"{t.name}: left {t.queue}"
    return snap


def finished(job: snb.Job, timeout: float = WAIT) -> JobSnapshot:
    """Wait for ``job``; assert it FINISHED, every instance finished and the counts balance."""
    job.wait(timeout)
    assert job.status is snb.JobStatus.FINISHED, job
    snap = assert_balanced(job)
    assert {t.state for t in snap.tasks} == {"finished"}, [(t.name, t.state) for t in snap.tasks]
    return snap


def job_threads(job: snb.Job) -> list[threading.Thread]:
    """The live threads of ``job`` (threads backend: they are named ``sage-nb:<job_id>:…``)."""
    prefix = f"sage-nb:{job.job_id}:"
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def main_in(function: str, module: str) -> bool:
    """True while the main thread is inside ``module.function`` (somewhere on its stack)."""
    import sys

    frame: Any = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == function and frame.f_globals.get("__name__") == module:
            return True
        frame = frame.f_back
    return False
