"""RPC queues: a real server, real sockets, real processes (T33, T37, T38 for ``rpc_queue``)."""

from __future__ import annotations

import base64
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path

import psutil
import pytest

from sage_nb.communication import (
    BaseQueueDescriptor,
    QueueShutDown,
    RPCQueueDescriptor,
    RPCQueueServer,
)
from sage_nb.communication.rpc_server import encode
from sage_nb.testing import no_thread_leak, wait_for

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]
SECRET = b"test-secret-0123456789abcdef"


@pytest.fixture
def server():
    with no_thread_leak(timeout=5.0), RPCQueueServer(secret=SECRET, handshake_timeout=1.0) as srv:
        yield srv


def run_python(code: str, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- descriptors (T38)
def test_descriptor_round_trips_through_json_without_its_secret():
    qd = RPCQueueDescriptor(port=5000, maxsize=10, queue_id="orders", secret=SECRET)
    text = qd.to_json()
    back = BaseQueueDescriptor.from_json(text)
    assert back == qd and back.metadata == qd.metadata == {
        "host": "127.0.0.1", "port": 5000, "maxsize": 10, "connect_timeout": 3.0}
    assert SECRET.decode() not in text + repr(qd) + repr(back)
    assert not back.is_initialized() and qd.clone("other").metadata == qd.metadata


@pytest.mark.parametrize(("metadata", "field"), [
    ({"host": "evil.example.com"}, "metadata.host"),
    ({"host": "10.0.0.7"}, "metadata.host"),
    ({"port": 0}, "metadata.port"),
    ({"port": 70000}, "metadata.port"),
    ({"port": "5000"}, "metadata.port"),
    ({"maxsize": "10"}, "metadata.maxsize"),
    ({"maxsize": -1}, "metadata.maxsize"),
    ({"maxsize": 10**12}, "metadata.maxsize"),
    ({"connect_timeout": 0}, "metadata.connect_timeout"),
    ({"connect_timeout": 61}, "metadata.connect_timeout"),
    ({"connect_timeout": True}, "metadata.connect_timeout"),
    ({"secret": "s3cr3t"}, "metadata.secret"),
    ({"class_path": "os.system"}, "metadata.class_path"),
])
def test_bad_descriptor_json_is_rejected_before_any_socket(monkeypatch, metadata, field):
    def no_socket(*args, **kw):
        raise AssertionError("a socket was opened while validating a descriptor")
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    good = {"host": "127.0.0.1", "port": 5000, "maxsize": 10, "connect_timeout": 3.0}
    data = {"queue_id": "q", "queue_type": "rpc_queue", "metadata": {**good, **metadata}}
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        BaseQueueDescriptor.from_dict(data)


def test_hosts_outside_loopback_need_the_allowlist(monkeypatch):
    monkeypatch.setenv("SAGE_NB_RPC_HOSTS", "queues.internal, 10.0.0.5")
    assert RPCQueueDescriptor("queues.internal", 5000).host == "queues.internal"
    assert RPCQueueDescriptor("10.0.0.5", 5000).host == "10.0.0.5"
    for host in ("::1", "localhost", "127.0.0.2"):
        assert RPCQueueDescriptor(host, 5000).host == host
    with pytest.raises(ValueError, match="SAGE_NB_RPC_HOSTS"):
        RPCQueueDescriptor("10.0.0.6", 5000)


def test_a_missing_secret_is_an_error_not_an_open_door(monkeypatch):
    monkeypatch.delenv("SAGE_NB_RPC_SECRET", raising=False)
    with pytest.raises(ValueError, match="SAGE_NB_RPC_SECRET"):
        RPCQueueDescriptor(port=5000).get_queue()


# ---------------------------------------------------------------- queue semantics
def test_put_get_batches_and_statistics(server):
    qd = server.descriptor(queue_id="q", maxsize=4)
    qd.put("a")
    qd.put_many(["b", "c", "d"])
    assert (qd.qsize(), qd.full(), qd.empty()) == (4, True, False)
    with pytest.raises(queue.Full):
        qd.put_nowait("e")
    assert qd.get() == "a"
    assert qd.get_many(2) == ["b", "c"]
    assert qd.get_nowait() == "d"
    with pytest.raises(queue.Empty):
        qd.get_nowait()
    stats = qd.statistics()
    assert (stats.used, stats.capacity, stats.peak, stats.total_in, stats.total_out) == (0, 4, 4, 4, 4)
    other = server.descriptor(queue_id="other", maxsize=2)
    other.put({"nested": [1, 2]})
    everything = qd.queue_instance.statistics_all()
    assert {k: s.used for k, s in everything.items()} == {"q": 0, "other": 1}
    assert everything == server.statistics_all()


def test_timeouts_raise_the_stdlib_types(server):
    server.wait_slice = 0.2  # a timeout longer than one server-side wait is repeated by the client
    qd = server.descriptor(queue_id="t", maxsize=1)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        qd.get(timeout=0.7)
    assert 0.7 <= time.monotonic() - t0 < 3
    qd.put(1)
    with pytest.raises(queue.Full) as info:
        qd.put_many([2, 3], timeout=0.3)
    assert info.value.accepted == 0
    with pytest.raises(ValueError, match="timeout"):
        qd.get(timeout=-1)


def test_put_many_reports_how_many_items_went_in(server):
    qd = server.descriptor(queue_id="partial", maxsize=3)
    with pytest.raises(queue.Full) as info:
        qd.put_many([1, 2, 3, 4, 5], timeout=0.2)
    assert info.value.accepted == 3
    assert qd.get_many(10) == [1, 2, 3]


def test_a_blocked_get_on_one_queue_does_not_delay_another(server):
    server.wait_slice = 5.0  # a call queued behind the blocked get would wait this long
    qa = server.descriptor(queue_id="A", maxsize=4)
    qb = server.descriptor(queue_id="B", maxsize=4)
    qa.get_queue()  # the queue exists on the server before the reader blocks on it
    got: list = []
    reader = threading.Thread(target=lambda: got.append(qa.get(timeout=30)))
    reader.start()
    wait_for(lambda: server.queue("A").not_empty._waiters, timeout=5)  # blocked on the server
    elapsed: list[float] = []

    def use_b() -> None:
        t0 = time.monotonic()
        for i in range(50):
            qb.put(i)
            assert qb.get() == i
        elapsed.append(time.monotonic() - t0)
    other = threading.Thread(target=use_b)
    other.start()
    other.join(10)
    assert elapsed and elapsed[0] < 2.0 and reader.is_alive()
    qa.put("unblock")
    reader.join(10)
    assert got == ["unblock"]


def test_one_descriptor_shared_by_a_blocked_consumer_and_a_producer(server):
    server.wait_slice = 5.0
    qd = server.descriptor(queue_id="shared", maxsize=4)
    qd.get_queue()
    got: list = []
    consumer = threading.Thread(target=lambda: got.append(qd.get(timeout=30)))
    consumer.start()
    wait_for(lambda: server.queue("shared").not_empty._waiters, timeout=5)
    t0 = time.monotonic()
    qd.put("x")
    consumer.join(10)
    assert got == ["x"] and time.monotonic() - t0 < 2.0


def test_closing_the_server_wakes_a_blocked_get(server):
    qd = server.descriptor(queue_id="w", maxsize=4)
    qd.get_queue()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            qd.get()
        except (QueueShutDown, ConnectionError) as exc:
            errors.append(exc)
    consumer = threading.Thread(target=consume)
    consumer.start()
    wait_for(lambda: server.queue("w").not_empty._waiters, timeout=5)
    t0 = time.monotonic()
    server.close()
    consumer.join(5)
    assert len(errors) == 1 and time.monotonic() - t0 < 3


def test_clone_reaches_the_same_server_queue_and_a_new_id_another(server):
    qd = server.descriptor(queue_id="orig", maxsize=4)
    twin, other = qd.clone(), qd.clone("other")
    assert twin.queue_id == "orig" and twin == qd and other.queue_id == "other"
    qd.put("shared")
    assert twin.get(timeout=5) == "shared"
    other.put("apart")
    assert qd.qsize() == 0 and other.qsize() == 1


def test_a_client_that_leaves_while_blocked_takes_nothing_with_it(server):
    server.wait_slice = 30.0
    qd = server.descriptor(queue_id="left", maxsize=4)
    qd.get_queue()
    conn = Client(server.address, authkey=SECRET)  # a get that is abandoned, like a Ctrl+C
    conn.send_bytes(encode({"op": "get", "q": "left", "maxsize": 4, "block": True, "timeout": None,
                            "max_items": 10}))
    wait_for(lambda: server.queue("left").not_empty._waiters, timeout=5)
    conn.close()
    qd.put("kept")
    assert qd.get(timeout=5) == "kept"
    wait_for(lambda: len(server._clients) == 1, timeout=5)  # the abandoned connection is closed


def test_a_pickled_descriptor_reaches_the_same_queue_from_another_process(server):
    qd = server.descriptor(queue_id="pickled", maxsize=8)
    qd.put("before")
    blob = pickle.dumps(qd)
    assert qd.is_initialized() and not pickle.loads(blob).is_initialized()
    code = ("import base64, pickle, sys; qd = pickle.loads(base64.b64decode(sys.argv[1])); "
            "print(qd.get(timeout=10)); qd.put('from child')")
    proc = run_python(code, base64.b64encode(blob).decode(), env={"SAGE_NB_RPC_SECRET": ""})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "before" and qd.get(timeout=10) == "from child"


# ---------------------------------------------------------------- T33: across processes, loudly
def test_10000_items_cross_processes_in_order(server):
    qd = server.descriptor(queue_id="t33", maxsize=100)
    code = ("import sys\n"
            "from sage_nb.communication import BaseQueueDescriptor\n"
            "qd = BaseQueueDescriptor.from_json(sys.argv[1])\n"
            "for i in range(5000):\n    qd.put(i)\n"
            "for start in range(5000, 10000, 500):\n    qd.put_many(list(range(start, start + 500)))\n")
    proc = run_python(code, qd.to_json(), env={"SAGE_NB_RPC_SECRET": SECRET.decode()})
    received: list[int] = []
    while len(received) < 10_000:
        received.extend(qd.get_many(256, timeout=20))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert received == list(range(10_000))
    with pytest.raises(queue.Empty):
        qd.get_nowait()
    assert server.statistics("t33").total_in == 10_000


def test_an_unreachable_server_raises_connection_error_within_the_timeout():
    port = free_port()
    qd = RPCQueueDescriptor(port=port, secret=SECRET)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        qd.put("lost?")
    assert time.monotonic() - t0 < 3.0 and not qd.is_initialized()


def test_a_silent_host_raises_within_connect_timeout(monkeypatch):
    monkeypatch.setenv("SAGE_NB_RPC_HOSTS", "10.255.255.1")  # not routable: no answer at all
    qd = RPCQueueDescriptor("10.255.255.1", 5000, connect_timeout=0.5, secret=SECRET)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=r"10\.255\.255\.1:5000"):
        qd.get_queue()
    assert time.monotonic() - t0 < 2.0


def test_a_killed_server_fails_the_client_loudly():
    proc = run_python("from sage_nb.communication.rpc_queue import serve_main; serve_main(['--port', '0'])",
                      env={"SAGE_NB_RPC_SECRET": SECRET.decode()})
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        qd = RPCQueueDescriptor(port=port, queue_id="k", secret=SECRET)
        qd.put(1)
        proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            qd.get(timeout=30)
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.communicate(timeout=10)


# ---------------------------------------------------------------- T37: not an RCE
class Evil:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def read_frame(sock: socket.socket) -> bytes:
    size = struct.unpack("!i", sock.recv(4, socket.MSG_WAITALL))[0]
    return sock.recv(size, socket.MSG_WAITALL)


def assert_closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> None:
    sock.settimeout(timeout)  # a socket.timeout here means the server kept the connection
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass


def test_default_bind_is_loopback():
    with RPCQueueServer() as srv:
        host, port = srv.address
        assert host == "127.0.0.1" and len(srv.secret) >= 32
        listening = [c.laddr for c in psutil.Process().net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert [a.ip for a in listening] == ["127.0.0.1"]


def test_non_loopback_bind_without_a_secret_is_refused():
    srv = RPCQueueServer(host="0.0.0.0")
    with pytest.raises(ValueError, match=r"without a secret.*secret="):
        srv.start()
    with pytest.raises(ValueError, match="at least 16 bytes"):
        RPCQueueServer(host="0.0.0.0", secret=b"short")


def test_a_wrong_secret_is_rejected(server):
    qd = RPCQueueDescriptor(port=server.address[1], secret=b"not-the-secret-at-all")
    with pytest.raises(ConnectionError, match="refused"):
        qd.get_queue()
    assert server.statistics_all() == {}


def proof_that_payload_is_live(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Evil(proof))).close()
    assert proof.exists()


ATTACKS = {
    "crafted_pickle": lambda marker: (lambda p: struct.pack("!i", len(p)) + p)(pickle.dumps(Evil(marker))),
    "garbage": lambda marker: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4,
    "negative_length": lambda marker: b"\xde\xad\xbe\xef" * 64,
    "length_2_31": lambda marker: struct.pack("!I", 2**31) + b"x" * 100,
    "length_2_40": lambda marker: struct.pack("!iQ", -1, 2**40) + b"x" * 100,
    "truncated": lambda marker: struct.pack("!i", 200) + b"x" * 10,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_frames_are_dropped_and_the_server_keeps_serving(server, tmp_path, attack):
    proof_that_payload_is_live(tmp_path)
    marker = tmp_path / "marker"
    with socket.create_connection(server.address, timeout=5) as sock:
        assert read_frame(sock).startswith(b"#CHALLENGE#")
        sock.sendall(ATTACKS[attack](marker))
        good = server.descriptor(queue_id="good", maxsize=4)  # served while the attacker is connected
        good.put("still serving")
        assert good.get(timeout=5) == "still serving"
        assert_closed_by_peer(sock)  # truncated: closed by the 1 s handshake timeout
    assert not marker.exists()


def test_unauthenticated_multiprocessing_client_is_cut_off_before_unpickling(server, tmp_path):
    marker = tmp_path / "marker"
    conn = Client(server.address)  # no authkey: skips the challenge and just sends a pickle
    conn.send(Evil(marker))
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            conn.recv_bytes()
    conn.close()
    assert not marker.exists()


def test_the_server_never_unpickles_even_after_authentication(server, tmp_path):
    marker = tmp_path / "marker"
    conn = Client(server.address, authkey=SECRET)
    conn.send_bytes(encode({"op": "put", "q": "stored", "maxsize": 4, "block": False, "timeout": None},
                           [pickle.dumps(Evil(marker))]))
    assert conn.recv_bytes() == encode({"accepted": 1})
    conn.send(Evil(marker))  # a pickled frame instead of the wire format: the connection is closed
    with pytest.raises((EOFError, ConnectionResetError)):
        conn.recv_bytes()
    conn.close()
    assert not marker.exists() and server.statistics("stored").used == 1


def test_hostile_connections_keep_memory_and_threads_bounded(server, tmp_path):
    rss = psutil.Process().memory_info().rss
    for i in range(200):
        attack = sorted(ATTACKS)[i % len(ATTACKS)]
        if attack == "truncated":
            continue  # each one would cost a handshake timeout; covered above
        with socket.create_connection(server.address, timeout=5) as sock:
            read_frame(sock)
            sock.sendall(ATTACKS[attack](tmp_path / "marker"))
            assert_closed_by_peer(sock)
    assert psutil.Process().memory_info().rss - rss < 20 * 2**20
    wait_for(lambda: len(server._clients) == 0, timeout=5)
    assert not (tmp_path / "marker").exists()


# ---------------------------------------------------------------- the command line
def test_queue_server_command_serves_until_sigterm():
    proc = run_python("import sys; from sage_nb.communication.rpc_queue import serve_main; "
                      "sys.exit(serve_main(['--port', '0', '--secret-env', 'MY_SECRET']))",
                      env={"MY_SECRET": SECRET.decode()})
    try:
        line = proc.stdout.readline()
        assert "serving RPC queues on 127.0.0.1:" in line
        qd = RPCQueueDescriptor(port=int(line.rsplit(":", 1)[1]), queue_id="cli", secret=SECRET)
        qd.put_many([1, 2])
        assert qd.get_many(5) == [1, 2]
        qd.clear_cache()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_queue_server_command_prints_a_generated_secret_and_refuses_open_binds():
    proc = run_python("import sys; from sage_nb.communication.rpc_queue import serve_main; "
                      "sys.exit(serve_main(['--port', '0']))", env={"SAGE_NB_RPC_SECRET": ""})
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        secret = proc.stdout.readline().strip().split("=", 1)[1].encode()
        qd = RPCQueueDescriptor(port=port, secret=secret)
        qd.put("ok")
        assert qd.get() == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    refused = run_python("import sys; from sage_nb.communication.rpc_queue import serve_main; "
                         "sys.exit(serve_main(['--host', '0.0.0.0', '--port', '0']))",
                         env={"SAGE_NB_RPC_SECRET": ""})
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "without a secret" in err
