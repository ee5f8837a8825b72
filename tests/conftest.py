"""Shared fixtures: the backend parametrisation and thread-leak checks."""

from __future__ import annotations

import os

import pytest

import sage_nb as snb
from sage_nb.runtime import batching
from sage_nb.testing import no_thread_leak

BACKENDS = ["threads", "step"]  # "ray" joins when its backend lands
#: The threads backend once more, packet by packet: its default batch size made 1.
THREADS_BATCH1 = "threads-batch1"


@pytest.fixture(params=[*BACKENDS[:1], THREADS_BATCH1, *BACKENDS[1:]])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every behavioural test runs on every available backend; threads twice: with
    micro-batching (the default) and with ``batch_size=1``."""
    if request.param == THREADS_BATCH1:
        monkeypatch.setattr(batching, "DEFAULT_BATCH_SIZE", 1)
        return "threads"
    return request.param


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
