"""Reliability cases T17-T20: errors and failures (reliability-cases.md §4.C).

Policy (DESIGN §2): the first exception from user code fails the job; ``job.wait()``
raises :class:`sage_nb.JobFailed` chaining it and naming node, instance and packet; the
sources stop, what was already emitted downstream of the failure drains, every thread ends.
"""

from __future__ import annotations

import time
import traceback

import pytest
from _reliability import CONCURRENT, IN_PROCESS, STRICT_THREADS, WAIT, deadline, job_threads

import sage_nb as snb
from sage_nb.testing import wait_for

pytestmark = STRICT_THREADS


def _failed(job: snb.Job) -> pytest.ExceptionInfo[snb.JobFailed]:
    """Wait for ``job`` to fail; every task must have stopped within the stop deadline
    (2 s, Ray 10 s) of the moment the job was seen FAILED."""
    failed_at = None
    if job.backend in CONCURRENT:  # a step job moves only inside wait()
        wait_for(lambda: job.status is not snb.JobStatus.RUNNING, timeout=WAIT)
        failed_at = time.monotonic()
    with pytest.raises(snb.JobFailed) as info:
        job.wait(WAIT)
    if failed_at is not None:
        assert time.monotonic() - failed_at < deadline(job.backend, 2.0), "tasks took too long to stop"
    assert job.status is snb.JobStatus.FAILED
    assert job_threads(job) == []
    return info


def _forever():
    i = 0
    while True:
        yield i
        i += 1


# --------------------------------------------------------------------------- T17
@pytest.mark.parametrize("maxsize", [1024, 4], ids=["roomy", "source-blocked"])
def test_t17_operator_raises_on_packet_37(backend, no_leak, maxsize):
    def explode_at_37(x):
        if x == 37:
            raise ValueError(f"cannot parse item {x}")
        return x

    p = snb.Pipeline("t17")
    p.from_iterable(range(1, 101), name="src").map(explode_at_37, name="parse").sink(name="out")
    job = p.run(backend=backend, queue_maxsize=maxsize)
    e = _failed(job).value

    cause = e.__cause__
    assert type(cause) is ValueError and str(cause) == "cannot parse item 37"
    assert (e.node, e.instance) == ("parse", "parse[0]")
    assert str(e.packet).endswith("37")
    assert "parse[0]" in str(e) and "'parse'" in str(e) and "cannot parse item 37" in str(e)
    assert "explode_at_37" in "".join(traceback.format_exception(cause))
    assert "explode_at_37" in e.traceback_text

    snap = job.snapshot()
    assert job.results("out") == list(range(1, 37)), "exactly the 36 items before the failure"
    assert snap.task("parse[0]").state == "failed" and snap.task("parse[0]").packets_out == 36
    assert snap.task("out[0]").packets_in == 36
    assert 37 <= snap.task("src[0]").packets_out <= 100
    assert snap.error is not None and snap.error.node == "parse"
    assert snap.task("parse[0]").error.startswith("ValueError")


@pytest.mark.parametrize("source", ["generator", "in-memory"])
def test_t17_a_key_function_raising_names_the_source_and_the_item(backend, no_leak, source):
    """The key function of a ``key_by`` edge runs where an item is routed: one by one for a
    generator's items (on Ray: as they are gathered), a chunk at a time for an in-memory
    source's. Either way the error names the source's instance and item 37, and exactly the
    items before it arrive."""
    def key(x):
        if x == 37:
            raise KeyError(f"no key for {x}")
        return x % 3

    def items():
        yield from range(1, 101)

    p = snb.Pipeline("t17-key")
    src = p.from_source(items, name="src") if source == "generator" else p.from_iterable(range(1, 101), name="src")
    src.key_by(key).map(abs, name="m", parallelism=2).sink(name="out")
    job = p.run(backend=backend)
    e = _failed(job).value
    assert (e.node, e.instance) == ("src", "src[0]")
    assert type(e.__cause__) is KeyError and "no key for 37" in str(e)
    assert str(e.packet).endswith(" 37") or e.packet == "37", e.packet
    assert sorted(job.results("out")) == list(range(1, 37))


# --------------------------------------------------------------------------- T18
def _broken_source():
    yield from range(10)
    raise RuntimeError("source broke after 10 items")


def _broken_sink(x):
    if x == 5:
        raise RuntimeError("sink broke on item 5")


class _BrokenClose:
    seen: list[int] = []

    def __call__(self, x):
        _BrokenClose.seen.append(x)

    def close(self):
        raise OSError("flush failed")


@pytest.mark.parametrize(("where", "node", "message"), [
    ("source", "src", "source broke after 10 items"),
    ("sink", "out", "sink broke on item 5"),
    ("close", "out", "flush failed"),
])
def test_t18_failure_in_source_sink_and_close(backend, no_leak, where, node, message):
    _BrokenClose.seen = []
    p = snb.Pipeline(f"t18-{where}")
    src = p.from_source(_broken_source, name="src") if where == "source" else \
        p.from_iterable(range(10), name="src")
    m = src.map(lambda x: x, name="m")
    m.sink({"source": None, "sink": _broken_sink, "close": _BrokenClose}[where], name="out")
    job = p.run(backend=backend)
    e = _failed(job).value

    assert e.node == node and message in str(e)
    assert message in str(e.__cause__) and e.__cause__.__traceback__ is not None
    snap = job.snapshot()
    assert snap.task(f"{node}[0]").state == "failed"
    if where == "source":
        assert job.results("out") == list(range(10)), "what the source emitted still drains"
    if where == "close" and backend in IN_PROCESS:
        assert _BrokenClose.seen == list(range(10)), "processing succeeded; close() failed anyway"
    assert {t.state for t in snap.tasks} <= {"finished", "failed", "cancelled"}


# --------------------------------------------------------------------------- T19
def test_t19_one_of_four_parallel_instances_fails(backend, no_leak):
    class Worker:
        def open(self):
            self.index, self.k = self.ctx.parallel_index, 0

        def __call__(self, x):
            self.k += 1
            if self.index == 2 and self.k == 50:
                raise ValueError("instance 2 broke")
            time.sleep(0.0002)
            return x

    p = snb.Pipeline("t19")
    p.from_source(_forever, name="src").map(Worker, name="work", parallelism=4).sink(
        lambda x: None, name="out")
    job = p.run(backend=backend, queue_maxsize=64)
    e = _failed(job).value  # the other 3 instances and the other tasks stopped in time

    assert (e.node, e.instance) == ("work", "work[2]") and "instance 2 broke" in str(e)
    snap = job.snapshot()
    states = {t.name: t.state for t in snap.tasks}
    assert states.pop("work[2]") == "failed"
    assert set(states.values()) <= {"finished", "cancelled"}, states


# --------------------------------------------------------------------------- T20
@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()],
                         ids=["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_t20_base_exceptions_in_user_code_fail_the_job(backend, no_leak, exc):
    def boom(x):
        if x == 5:
            raise exc
        return x

    p = snb.Pipeline("t20")
    p.from_iterable(range(20), name="src").map(boom, name="boom").sink(name="out")
    job = p.run(backend=backend)
    e = _failed(job).value
    if backend in IN_PROCESS:
        assert e.__cause__ is exc
    else:  # raised in an actor: the same exception, unpickled
        assert type(e.__cause__) is type(exc) and e.__cause__.args == exc.args
    assert (e.node, e.instance) == ("boom", "boom[0]") and type(exc).__name__ in str(e)
    assert job.error is not None and job.error.message.startswith(type(exc).__name__)
    assert job.results("out") == list(range(5))


# --------------------------------------------------------------------------- user reprs
class _NoRepr:
    """A payload whose repr raises: the runtime shows it by its type, never fails on it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _fail_on_3(x: _NoRepr) -> _NoRepr:
    if x.n == 3:
        raise ValueError("item 3")
    return x


def test_a_payload_whose_repr_raises_neither_fails_nor_hides_a_failure(backend, no_leak):
    p = snb.Pipeline("no-repr")
    p.from_iterable([_NoRepr(i) for i in range(6)], name="src").key_by(lambda x: x.n % 2) \
        .map(lambda x: x, name="m", parallelism=2).sink(name="out")
    job = p.run(backend=backend).wait(WAIT)  # traced, counted, shown in snapshots: no repr needed
    assert sorted(x.n for x in job.results("out")) == list(range(6))
    shown = [t.last_packets for t in job.snapshot().tasks if t.last_packets]
    assert shown and all(s == "<_NoRepr object: its repr raised RuntimeError>" for row in shown for s in row)

    p = snb.Pipeline("no-repr-fails")
    p.from_iterable([_NoRepr(i) for i in range(6)], name="src").map(_fail_on_3, name="m").sink(name="out")
    job = p.run(backend=backend)
    with pytest.raises(snb.JobFailed, match=r"m\[0\] \('m'\) raised on packet .*<_NoRepr object: its repr "
                                            r"raised RuntimeError>: ValueError: item 3") as info:
        job.wait(WAIT)
    assert job.error.message == "ValueError: item 3" and isinstance(info.value.__cause__, ValueError)
