"""Shared fixtures: the backend parametrisation, thread-leak checks, the Ray session."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

import sage_nb as snb
from sage_nb.runtime import batching
from sage_nb.testing import no_thread_leak

BACKENDS = ["threads", "step"]
if importlib.util.find_spec("ray") is not None:
    BACKENDS.append("ray")
#: The threads backend once more, packet by packet: its default batch size made 1.
THREADS_BATCH1 = "threads-batch1"


def _params() -> list:
    names = [*BACKENDS[:1], THREADS_BATCH1, *BACKENDS[1:]]
    return [pytest.param(b, marks=pytest.mark.ray) if b == "ray" else b for b in names]


@pytest.fixture(params=_params())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every behavioural test runs on every available backend (Ray: on the shared local
    cluster); threads twice: with micro-batching (the default) and with ``batch_size=1``."""
    if request.param == THREADS_BATCH1:
        monkeypatch.setattr(batching, "DEFAULT_BATCH_SIZE", 1)
        return "threads"
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole session (Ray's own advice for fast tests)."""
    ray = pytest.importorskip("ray")
    from sage_nb.communication.ray_manager import ensure_ray

    tests = os.path.dirname(os.path.abspath(__file__))  # workers import test modules by name
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    for attempt in range(3):  # a loaded machine can time Ray's start-up out: try again
        try:
            ensure_ray(num_cpus=min(2, os.cpu_count() or 1), object_store_memory=100 * 1024 * 1024)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(1.0)
    warm = ray.remote(num_cpus=0)(type("Warm", (), {"ping": lambda self: 1})).remote()
    ray.get(warm.ping.remote(), timeout=120)  # starts Ray's driver-side threads before any leak check
    ray.kill(warm)
    yield ray
    ray.shutdown()


@pytest.fixture
def no_leak():
    """Fail the test if it leaves a thread behind; stop any job it left running."""
    with no_thread_leak(timeout=3.0):
        yield
        snb.stop_all()


@pytest.fixture(autouse=True)
def _stop_jobs():
    yield
    snb.stop_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/data golden files")
