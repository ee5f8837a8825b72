"""RPC queues inside pipelines: chosen edges through a TCP queue server, and a source fed by a
producer in another process (real sockets, real processes)."""

from __future__ import annotations

import collections
import itertools
import pickle
import subprocess
import sys
import threading
import time

import pytest
from test_router import Background
from test_rpc_queue import SECRET, run_python

import sage_nb as snb
from sage_nb.communication import (
    BaseRouter,
    BroadcastGroup,
    Connection,
    Packet,
    RPCQueueDescriptor,
    RPCQueueServer,
)
from sage_nb.communication.rpc_queue import RPCQueueProxy
from sage_nb.errors import Cancelled, DeliveryError
from sage_nb.testing import wait_for


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


def test_a_killed_queue_server_fails_the_job_naming_it(no_leak):
    """T33 at job level: the server holding an edge's queue dies mid-stream (SIGKILL, another
    process); the job fails, naming the server, instead of waiting for it forever."""
    proc = run_python("from sage_nb.communication.rpc_queue import serve_main; serve_main(['--port', '0'])",
                      env={"SAGE_NB_RPC_SECRET": SECRET.decode()})
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        p = snb.Pipeline("rpc-killed")
        p.from_source(itertools.count, name="src").via("rpc").map(abs, name="m").sink(lambda x: None, name="out")
        job = p.run(rpc_server=("127.0.0.1", port, SECRET), queue_maxsize=64)
        wait_for(lambda: job.snapshot().task("out[0]").packets_in > 0, timeout=30)
        proc.kill()
        proc.wait(10)
        with pytest.raises(snb.JobFailed, match=rf"127\.0\.0\.1:{port}") as info:
            job.wait(10)  # (not a hang: within 10 s)
        assert isinstance(info.value.__cause__, ConnectionError | DeliveryError | Cancelled), info.value.__cause__
        assert job.status is snb.JobStatus.FAILED
    finally:
        proc.kill()
        proc.communicate(timeout=10)


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


@pytest.fixture
def round_trips(monkeypatch) -> collections.Counter:
    """Every call an RPC queue client makes to its server, by operation (the calls still happen)."""
    calls: collections.Counter = collections.Counter()
    call = RPCQueueProxy._call

    def counted(self, header, blobs=()):
        calls[header["op"]] += 1
        return call(self, header, blobs)

    monkeypatch.setattr(RPCQueueProxy, "_call", counted)
    return calls


def test_an_rpc_edge_moves_batches_not_a_round_trip_per_packet(no_leak, round_trips):
    p = snb.Pipeline("rpc-batches")
    p.from_iterable(range(5000), name="src").via("rpc").map(lambda x: x + 1, name="m").sink(name="out")
    job = p.run()
    assert job.wait(timeout=60).results("out") == list(range(1, 5001))
    assert round_trips["put"] <= 5000 // 20, round_trips  # a round trip per batch, not per packet
    assert job.snapshot().task("m[0]").packets_in == 5000

    round_trips.clear()
    job = p.run(batch_size=1)
    assert job.wait(timeout=60).results("out") == list(range(1, 5001))
    assert round_trips["put"] >= 5000  # packet by packet, as asked


def _blocked_rpc_router(server: RPCQueueServer, **kw) -> tuple[BaseRouter, Connection]:
    """A batching router whose only connection is an RPC queue with room for 2, holding 1 item."""
    qd = server.descriptor(queue_id=f"full-{len(kw)}-{time.monotonic_ns()}", maxsize=2)
    qd.put("filler")
    conn = Connection(0, 0, "m[0]", qd, 0, "src[0]")
    return BaseRouter("src[0]", [BroadcastGroup(0, "m", "round_robin", (conn,))], batch_size=3, **kw), conn


def test_a_batch_into_a_full_rpc_queue_blocks_cancellably_and_counts_what_went_in(no_leak):
    with RPCQueueServer() as server:
        r, c = _blocked_rpc_router(server, put_timeout=0.2)
        with pytest.raises(DeliveryError, match=r"src\[0\] -> m\[0\]: .*put_timeout=0\.2"):
            for x in "xyz":
                r.send(Packet(x))  # the third ships the batch: one fits
        assert c.packets_sent == 1 and c.queue.get_many(10) == ["filler", Packet("x")] and not r.blocked

        r, c = _blocked_rpc_router(server, cancel=threading.Event())
        sending = Background(lambda: [r.send(Packet(x)) for x in "xyz"])
        wait_for(lambda: r.blocked, timeout=5)
        assert c.queue.get_many(2) == ["filler", Packet("x")]  # room for the rest
        sending.join()
        assert sending.error is None and c.packets_sent == 3
        assert [p.payload for p in c.queue.get_many(10)] == ["y", "z"]

        cancel = threading.Event()
        r, c = _blocked_rpc_router(server, cancel=cancel)
        sending = Background(lambda: [r.send(Packet(x)) for x in "xyz"])
        wait_for(lambda: r.blocked, timeout=5)
        cancel.set()
        sending.join()
        assert isinstance(sending.error, Cancelled) and c.packets_sent == 1
