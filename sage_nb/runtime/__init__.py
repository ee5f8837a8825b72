"""The runtime: tasks, the dispatcher, jobs and the job manager."""

from .context import ServiceContext, TaskContext
from .dispatcher import Dispatcher
from .job import Job, JobStatus, plan_snapshot
from .manager import JobManager
from .task import END, BaseTask

__all__ = ["END", "BaseTask", "Dispatcher", "Job", "JobManager", "JobStatus", "ServiceContext",
           "TaskContext", "plan_snapshot"]
