"""Reliability cases T22-T24: jobs in a notebook's life (reliability-cases.md §4.D).

Re-running the cell that starts a pipeline replaces its previous job; interrupting a cell
blocked in ``job.wait()`` cancels the job; the interpreter exits cleanly with jobs running
(DESIGN §2, "Jobs in notebooks").
"""

from __future__ import annotations

import _thread
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _reliability import (
    CONCURRENT,
    STRICT_THREADS,
    deadline,
    job_threads,
    main_in,
    needs_concurrency,
)

import sage_nb as snb
from sage_nb.testing import wait_for

pytestmark = STRICT_THREADS


def _forever():
    i = 0
    while True:
        yield i
        i += 1


def _start(name: str, backend: str) -> snb.Job:
    """What the notebook cell does: build the pipeline (infinite source) and start it."""
    p = snb.Pipeline(name)
    p.from_source(_forever, name="src").map(lambda x: x * 2, name="double", parallelism=2) \
        .sink(lambda x: None, name="out")
    return p.run(backend=backend, queue_maxsize=16)


def _flowing(job: snb.Job) -> bool:
    return job.snapshot().task("out[0]").packets_in > 0


def _wait_flowing(job: snb.Job) -> None:
    """Wait until items reach the sink (a step job moves only when asked: nothing to wait for)."""
    if job.backend in CONCURRENT:
        wait_for(lambda: _flowing(job), timeout=60 if job.backend == "ray" else 10)  # Ray: actors start


# --------------------------------------------------------------------------- T22
@pytest.mark.filterwarnings("ignore:stopped job:RuntimeWarning")  # (what it says: test_job)
def test_t22_rerunning_the_cell_replaces_the_previous_job(backend, no_leak):
    baseline = threading.active_count()
    jobs = [_start("t22-cell", backend) for _ in range(5)]

    assert [j.status for j in jobs] == [snb.JobStatus.CANCELLED] * 4 + [snb.JobStatus.RUNNING]
    assert snb.jobs() == [jobs[-1]]
    for old in jobs[:-1]:
        assert job_threads(old) == []
    if backend == "threads":
        # one thread per instance, the job's linger flusher when it batches, and its stall watch
        per_job = len(jobs[-1].plan.contexts) + (jobs[-1].runner.flusher is not None) + 1
        wait_for(lambda: threading.active_count() == baseline + per_job, timeout=2)
    if backend == "ray":  # the stopped jobs' actors are gone: only the last job's are alive
        from sage_nb.runtime.ray_backend import alive_actors

        wait_for(lambda: not any(alive_actors(old.runner.job + "/") for old in jobs[:-1]), timeout=30)
        assert alive_actors(jobs[-1].runner.job + "/")
    _wait_flowing(jobs[-1])

    assert snb.stop_all() == 1
    assert jobs[-1].status is snb.JobStatus.CANCELLED and snb.jobs() == []
    wait_for(lambda: threading.active_count() == baseline, timeout=2)


def test_t22_a_different_pipeline_is_left_running(backend, no_leak):
    a = _start("t22-a", backend)
    b = _start("t22-b", backend)
    assert a.status is b.status is snb.JobStatus.RUNNING
    assert set(snb.jobs()) == {a, b}
    assert snb.stop_all() == 2 and snb.jobs() == []


# --------------------------------------------------------------------------- T23
@pytest.mark.timeout(30)
def test_t23_interrupting_the_waiting_cell_cancels_the_job(backend, no_leak):
    needs_concurrency(backend)  # on "step" user code runs in the main thread: see the report
    job = _start("t23", backend)
    _wait_flowing(job)
    sent: list[float] = []

    def press_interrupt():  # what Jupyter's Interrupt button does
        wait_for(lambda: main_in("wait", "sage_nb.runtime.job"), timeout=10)
        sent.append(time.monotonic())
        _thread.interrupt_main()

    helper = threading.Thread(target=press_interrupt, name="t23-interrupt")
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            job.wait(timeout=20)
        returned = time.monotonic()
    finally:
        helper.join(15)
    assert job.status is snb.JobStatus.CANCELLED
    assert job_threads(job) == []
    assert returned - sent[0] < deadline(backend, 2.0), "the job's tasks were not joined in time"
    assert snb.jobs() == []


def test_t23_a_cell_that_only_started_the_job_leaves_it_listed(backend, no_leak):
    job = _start("t23-started", backend)
    # the cell returned: the job runs on, is listed, and can be stopped from another cell
    _wait_flowing(job)
    assert job.status is snb.JobStatus.RUNNING and snb.jobs() == [job]
    job.stop()
    assert job.status is snb.JobStatus.CANCELLED and snb.jobs() == []
    assert job_threads(job) == []


# --------------------------------------------------------------------------- T24
SCRIPT = textwrap.dedent("""
    import json, sys
    import sage_nb as snb
    from sage_nb.testing import wait_for

    path, backend, how = sys.argv[1:4]

    def forever():
        i = 0
        while True:
            yield i
            i += 1

    class FileSink:
        def open(self):
            self.n, self.last = 0, None

        def __call__(self, x):
            self.n, self.last = self.n + 1, x

        def close(self):
            with open(path, "w") as f:
                json.dump({"items": self.n, "last": self.last, "complete": True}, f)

    p = snb.Pipeline("t24")
    p.from_source(forever, name="src").map(lambda x: x * 2, name="double", parallelism=2) \\
        .sink(FileSink, name="out")
    job = p.run(backend=backend, queue_maxsize=64)
    wait_for(lambda: job.snapshot().task("out[0]").packets_in > 100, timeout=20)
    print("running", flush=True)
    if how == "sigterm":
        job.wait()  # a script waiting for its job, ended from outside
    # else: the script simply ends with the job running
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", [
    "script-ends",
    "sigterm",
])
def test_t24_interpreter_exit_with_a_running_job(backend, tmp_path, how):
    needs_concurrency(backend)
    out = tmp_path / "sink.json"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), backend, how], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "running", proc.communicate(timeout=10)[1]
        start = time.monotonic()
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
    assert took < 5.0
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    if how == "script-ends":
        assert proc.returncode == 0, stderr
    assert out.exists(), "the sink's close() never ran"
    data = json.loads(out.read_text())
    assert data["complete"] is True and data["items"] > 100
    assert data["last"] == 2 * (data["last"] // 2), "items reached the sink doubled"
