"""RPC queues inside pipelines: chosen edges through a TCP queue server, and a source fed by a
producer in another process (real sockets, real processes)."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
import time

import pytest

import sage_nb as snb
from sage_nb.communication import RPCQueueDescriptor, RPCQueueServer


def test_rpc_edge_gives_the_same_answers(no_leak):
    p = snb.Pipeline("rpc-edge")
    p.from_iterable(range(2000), parallelism=2).key_by(lambda x: x % 7).via("rpc") \
        .map(lambda x: (x % 7, x), name="m", parallelism=3).sink(name="out")
    job = p.run()
    out = job.wait(timeout=60).results("out")
    assert sorted(x for _, x in out) == list(range(2000))
    assert isinstance(job.plan.contexts["m[1]"].input_qd, RPCQueueDescriptor)
    assert not isinstance(job.plan.contexts["out[0]"].input_qd, RPCQueueDescriptor)
    # per (producer, consumer) FIFO holds through the TCP queue
    snap = job.snapshot()
    assert sum(t.packets_in for t in snap.tasks if t.operator == "m") == 2000


def test_external_producer_feeds_a_source(no_leak):
    with RPCQueueServer() as server:
        qd = server.descriptor(queue_id="feed", maxsize=64)
        p = snb.Pipeline("fed")
        p.from_queue(qd, name="feed").map(lambda x: x + 1, name="inc").sink(name="out")
        job = p.run()
        code = ("import pickle, sys, sage_nb as snb\n"
                "qd = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
                "for i in range(0, 5000, 100):\n"
                "    qd.put_many(list(range(i, i + 100)))\n"
                "qd.put(snb.END)\n")
        subprocess.run([sys.executable, "-c", code, pickle.dumps(qd).hex()], check=True, timeout=60)
        assert job.wait(timeout=60).results("out") == list(range(1, 5001))


def test_cancel_with_rpc_queues_is_prompt(no_leak):
    p = snb.Pipeline("rpc-cancel")
    p.from_source(itertools.count).via("rpc").map(abs).sink(lambda x: time.sleep(0.001), name="slow")
    job = p.run(queue_maxsize=8)
    start = time.monotonic()
    job.stop()
    assert job.status is snb.JobStatus.CANCELLED
    assert time.monotonic() - start < 3.0


def test_rpc_edges_need_a_server_at_compile_time():
    p = snb.Pipeline("rpc-compile")
    p.from_iterable([1]).via("rpc").sink(name="out")
    with pytest.raises(snb.GraphError, match=r"edges with queue='rpc' need an RPC queue server"):
        p.compile()


def test_edges_into_one_operator_must_agree_on_the_queue_kind():
    p = snb.Pipeline("rpc-mixed")
    a, b = p.from_iterable([1], name="a"), p.from_iterable([2], name="b")
    with pytest.raises(snb.GraphError, match=r"edges into 'm' ask for queue kinds \['python', 'rpc'\]"):
        a.via("rpc").union(b).map(abs, name="m")
    with pytest.raises(snb.GraphError, match="unknown queue kind 'zmq'"):
        a.via("zmq")
