"""Services: shared objects called from many operator instances through their context."""

from __future__ import annotations

import threading

import pytest

import sage_nb as snb


class Lookup:
    """A service: answers from a table, counts its calls, can fail on purpose."""

    def __init__(self, table):
        self.table = table
        self.calls = 0
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            self.calls += 1
        if key == "boom":
            raise KeyError("boom is not allowed")
        return self.table.get(key, 0)

    def slow(self, event):
        event.wait(5)
        return "late"


class Enrich:
    def __call__(self, x):
        return x, self.ctx.call_service("lookup", "get", x % 5)


def test_service_serves_many_instances_with_replies_matched(backend):
    p = snb.Pipeline("svc")
    p.service("lookup", Lookup, {i: i * 100 for i in range(5)}, workers=2)
    p.from_iterable(range(200), parallelism=2).map(Enrich, name="enrich", parallelism=4).sink(name="out")
    out = p.run(backend=backend).wait(timeout=30).results("out")
    assert sorted(out) == [(x, (x % 5) * 100) for x in range(200)]


def test_service_error_raises_in_caller_with_service_named(backend):
    class Caller:
        def __call__(self, x):
            return self.ctx.call_service("lookup", "get", "boom")

    p = snb.Pipeline("svc-err")
    p.service("lookup", Lookup, {})
    p.from_iterable([1]).map(Caller, name="caller").sink(name="out")
    with pytest.raises(snb.JobFailed, match=r"service 'lookup' raised in get\(\): KeyError") as info:
        p.run(backend=backend).wait(timeout=30)
    assert isinstance(info.value.__cause__, snb.ServiceError)
    assert isinstance(info.value.__cause__.__cause__, KeyError)


def test_missing_service_is_named(backend):
    class Caller:
        def __call__(self, x):
            return self.ctx.call_service("nope", "get", 1)

    p = snb.Pipeline("svc-missing")
    p.service("lookup", Lookup, {})
    p.from_iterable([1]).map(Caller, name="caller").sink(name="out")
    with pytest.raises(snb.JobFailed, match=r"no service named 'nope'; known services: \['lookup'\]"):
        p.run(backend=backend).wait(timeout=30)


def test_service_timeout_is_configurable_and_late_reply_is_dropped():
    release = threading.Event()

    class Caller:
        def __call__(self, x):
            if x == 0:
                try:
                    self.ctx.call_service("lookup", "slow", release, timeout=0.05)
                except snb.ServiceError as exc:
                    assert "did not answer slow() within 0.05 s" in str(exc)
                    release.set()
                    return "timed out"
            return self.ctx.call_service("lookup", "get", 1)

    p = snb.Pipeline("svc-timeout")
    p.service("lookup", Lookup, {1: "one"})
    p.from_iterable([0, 1, 2]).map(Caller, name="caller").sink(name="out")
    # the late reply "late" to call #1 must not answer calls #2 and #3
    assert p.run().wait(timeout=30).results("out") == ["timed out", "one", "one"]


def test_failing_service_constructor_fails_the_job(no_leak):
    def broken():
        raise RuntimeError("cannot connect to the database")

    p = snb.Pipeline("svc-broken")
    p.service("db", broken)
    p.from_iterable([1]).sink(name="out")
    with pytest.raises(snb.JobFailed, match=r"service db.*cannot connect to the database"):
        p.run().wait(timeout=10)
