"""The public API is pinned: names users import (DESIGN §3)."""

from __future__ import annotations

import builtins

import sage_nb


def test_all_is_pinned():
    assert sorted(sage_nb.__all__) == sorted([
        "END", "BackendError", "ExecutionGraph", "GraphError", "Inspector", "Job", "JobFailed",
        "JobStatus", "Pipeline", "SageError", "ServiceError", "StallError", "StallWarning", "compile",
        "jobs", "load_recording", "run", "stop_all",
    ])


def test_no_public_name_shadows_a_builtin_except_the_designed_compile():
    shadowing = {n for n in sage_nb.__all__ if hasattr(builtins, n)}
    assert shadowing == {"compile"}  # DESIGN §3 fixes snb.compile(graph); never `from sage_nb import *`


def test_seed_names_are_importable():
    from sage_nb.communication import (  # noqa: F401
        BaseQueueDescriptor,
        BaseRouter,
        Connection,
        Packet,
        PythonQueueDescriptor,
        StopSignal,
    )
    from sage_nb.runtime import BaseTask, Dispatcher, JobManager, ServiceContext, TaskContext  # noqa: F401
