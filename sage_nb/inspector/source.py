"""What an inspector watches: a job, a pipeline (its newest job, else its compiled plan) or a snapshot.

A source only ever calls ``job.snapshot()`` (plus ``pause()`` / ``resume()`` and the key
panel's ``what_if()`` when the user asks, and ``breakpoint_hit`` / ``queue_contents()`` while a
breakpoint holds the job): the inspector never touches a queue or a task. Step jobs and recordings have their own source,
:class:`~sage_nb.inspector.stepping.StepSource`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..metrics import JobSnapshot

__all__ = ["JobLike", "Source", "make_source"]


@runtime_checkable
class JobLike(Protocol):
    """The part of :class:`sage_nb.runtime.job.Job` the inspector uses."""

    job_id: str

    @property
    def done(self) -> bool: ...

    def snapshot(self) -> JobSnapshot: ...


class Source:
    """Hands out snapshots; ``read()`` returns None when nothing new can be seen yet."""

    #: True once no further snapshot will ever differ (the thread can end)
    finished: bool = False
    #: True when a job runs beside the inspector: updates keep within a CPU budget
    shares_cpu: bool = True
    key: str = ""
    label: str = ""

    def read(self) -> JobSnapshot | None:
        raise NotImplementedError

    def changed(self) -> bool:
        """Cheap: has something happened that the next ``read()`` must show at once (the job
        ended, a new job started)?"""
        return False

    def job(self) -> Any:
        return None

    def halt(self) -> tuple[Any, tuple[Any, ...]] | None:
        """The breakpoint hit holding the job and its instance's queue contents, or None."""
        job = self.job()
        hit = None if job is None else getattr(job, "breakpoint_hit", None)
        if hit is None:
            return None
        try:
            queued = tuple(job.queue_contents(hit.instance))
        except Exception:    # no queue to peek on this backend: show the hit alone
            queued = ()
        return hit, queued

    def control(self, action: str) -> None:
        """Pause or resume the current job (``action`` is 'pause' or 'resume'), if it runs."""
        job = self.job()
        if job is None or getattr(job, "done", True):
            return
        getattr(job, action)()


class SnapshotSource(Source):
    """A frozen snapshot: shown once, nothing to follow."""

    def __init__(self, snap: JobSnapshot) -> None:
        self.snap = snap
        self.key = f"snapshot:{snap.job_id}:{id(snap)}"
        self.label = snap.pipeline

    def read(self) -> JobSnapshot | None:
        if self.finished:
            return None
        self.finished = True
        return self.snap


class JobSource(Source):
    """One job: live until it is done, then one last (complete) snapshot."""

    def __init__(self, job: JobLike) -> None:
        self._job = job
        self.key = f"job:{job.job_id}"
        self.label = str(getattr(job, "pipeline_name", job.job_id))

    def job(self) -> Any:
        return self._job

    def changed(self) -> bool:
        return not self.finished and bool(self._job.done)

    def read(self) -> JobSnapshot | None:
        if self.finished:
            return None
        done = bool(self._job.done)      # read before the snapshot: a done job's snapshot is final
        snap = self._job.snapshot()
        self.finished = done
        return snap


class PipelineSource(Source):
    """A pipeline: its newest job while there is one, else its compiled plan with zero counters.

    It keeps following: when the pipeline runs again, the inspector switches to the new job.
    """

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.key = f"pipeline:{pipeline.name}"
        self.label = str(pipeline.name)
        self._job: Any = None
        self._job_final = False
        self._plan_shown = False

    def job(self) -> Any:
        return self._job

    def _latest(self) -> Any:
        from ..runtime.manager import JobManager

        return JobManager.default().latest(self.pipeline.name)

    def _plan(self) -> JobSnapshot:
        from ..runtime.job import plan_snapshot

        return plan_snapshot(self.pipeline.compile())

    def changed(self) -> bool:
        job = self._job
        return self._latest() is not job or (job is not None and not self._job_final and bool(job.done))

    def read(self) -> JobSnapshot | None:
        latest = self._latest()
        if latest is not None and latest is not self._job:
            self._job, self._job_final = latest, False
        if self._job is None:
            if self._plan_shown:
                return None
            self._plan_shown = True
            return self._plan()
        if self._job_final:
            return None
        self._job_final = bool(self._job.done)
        return self._job.snapshot()


def make_source(target: Any) -> Source:
    """The source for ``target``: a job, a pipeline, a :class:`JobSnapshot`, a recording or a
    :class:`Source`."""
    from .stepping import StepSource, is_recording, is_step_job

    if isinstance(target, Source):
        return target
    if isinstance(target, JobSnapshot):
        return SnapshotSource(target)
    if is_recording(target) or is_step_job(target):
        return StepSource(target)
    if callable(getattr(target, "snapshot", None)) and hasattr(target, "job_id"):
        return JobSource(target)
    if callable(getattr(target, "compile", None)) and hasattr(target, "name"):
        return PipelineSource(target)
    raise TypeError(f"Inspector needs a job (p.run()), a Pipeline, a JobSnapshot or a Recording, "
                    f"not {type(target).__name__}: {target!r:.80}")
