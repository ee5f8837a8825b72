"""``RPCQueueDescriptor``: a bounded queue held by an :class:`RPCQueueServer` in another process.

The descriptor is inert data (host, port, maxsize, connect timeout, queue id) until its
``queue_instance`` is touched; then it connects, authenticates and creates the queue on
the server. An unreachable server raises ConnectionError naming ``host:port`` within
``connect_timeout`` — there is never a silent fallback to an in-process queue.

The secret never appears in ``to_dict()``, ``to_json()`` or ``repr()``: it is passed as
``secret=`` or read from the ``SAGE_NB_RPC_SECRET`` environment variable at connection time.
Pickling keeps an explicitly passed secret (pickle is a trusted process hand-off, e.g. to a
Ray actor) and drops the live connection. Hosts must be loopback or listed, comma-separated,
in ``SAGE_NB_RPC_HOSTS``, so a descriptor from outside cannot point a worker anywhere.

>>> with RPCQueueServer() as server:
...     qd = server.descriptor(maxsize=8, queue_id="demo")
...     qd.put_many(["a", "b"]); qd.get_many(10)
['a', 'b']
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
from collections.abc import Iterable, Sequence
from time import monotonic
from typing import Any

from .local_queue import QueueShutDown, QueueStats
from .queue_descriptor import MAX_QUEUE_SIZE, BaseQueueDescriptor, int_field
from .rpc_server import (
    MAX_HEADER_BYTES,
    SECRET_ENV,
    RPCQueueServer,
    WireError,
    decode,
    encode,
    is_loopback,
    set_io_timeout,
)

__all__ = ["DEFAULT_PORT", "HOSTS_ENV", "RPCQueueDescriptor", "RPCQueueProxy", "RPCQueueServer",
           "serve_main"]

DEFAULT_PORT = 47470
HOSTS_ENV = "SAGE_NB_RPC_HOSTS"
REPLY_TIMEOUT = 30.0  # a live server answers within its wait slice; this only catches a hung one


def _check_host(name: str, value: Any) -> str:
    allowed = [h.strip().lower() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
    if not isinstance(value, str) or not (is_loopback(value) or value.lower() in allowed):
        raise ValueError(f"descriptor field {name!r} is {value!r}, which is not an allowed RPC host; "
                         f"allowed: loopback (127.0.0.1, ::1, localhost) and the hosts listed "
                         f"comma-separated in ${HOSTS_ENV} (now {allowed})")
    return value


def _check_timeout(name: str, value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= 60:
        raise ValueError(f"descriptor field {name!r} must be a number of seconds in (0, 60], got {value!r}")
    return value


class RPCQueueDescriptor(BaseQueueDescriptor):
    """A queue on an :class:`RPCQueueServer`, reached over authenticated TCP (``queue.Queue`` semantics)."""

    queue_type = "rpc_queue"
    host: str               # (set, checked, from _schema in __init__)
    port: int
    maxsize: int
    connect_timeout: float
    _schema = {"host": _check_host, "port": int_field(1, 65535), "maxsize": int_field(1, MAX_QUEUE_SIZE),
               "connect_timeout": _check_timeout}

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, maxsize: int = 1024,
                 connect_timeout: float = 3.0, queue_id: str | None = None,
                 secret: bytes | None = None) -> None:
        settings = {"host": host, "port": port, "maxsize": maxsize, "connect_timeout": connect_timeout}
        for key, value in settings.items():
            setattr(self, key, self._schema[key](key, value))
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ValueError(f"secret must be non-empty bytes, got {type(secret).__name__}")
        self._secret = secret
        super().__init__(queue_id)

    @property
    def metadata(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "maxsize": self.maxsize,
                "connect_timeout": self.connect_timeout}

    def _create_queue(self) -> RPCQueueProxy:
        secret = self._secret or os.environ.get(SECRET_ENV, "").encode()
        if not secret:
            raise ValueError(f"RPC queue {self.queue_id!r} at {self.host}:{self.port} needs the "
                             f"server's secret: pass secret=... or set ${SECRET_ENV}")
        return RPCQueueProxy(self.host, self.port, self.queue_id, self.maxsize, secret,
                             self.connect_timeout)

    def clone(self, new_queue_id: str | None = None) -> RPCQueueDescriptor:
        """Same server, settings and secret. A server queue *is* its id, so ``clone()`` reaches
        this very queue (through its own connections) and ``clone("other")`` another one."""
        return type(self)(**self.metadata, queue_id=new_queue_id or self.queue_id, secret=self._secret)

    def clear_cache(self) -> None:
        """Close this process's connections; the next access reconnects to the same server queue."""
        with self._lock:
            proxy, self._queue_instance = self._queue_instance, None
        if proxy is not None:
            proxy.close()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_queue_instance"] = None  # sockets stay in this process
        return state


class RPCQueueProxy:
    """A thread-safe client for one server queue: ``put/get/*_nowait/put_many/get_many/...``.

    Each call borrows an idle authenticated connection (or opens one), so a thread blocked
    in ``get`` never delays a ``put`` from another thread. Blocking calls repeat short
    server-side waits until their own timeout, then raise ``queue.Empty``/``queue.Full``.
    Items are pickled here and unpickled by the client that gets them; the server only
    stores bytes. A lost server raises ConnectionError; ``close()`` makes later calls raise
    QueueShutDown (calls in flight finish within one wait slice). As with any RPC, a ``put``
    interrupted mid-call (Ctrl+C) may or may not have happened; an interrupted ``get`` takes
    nothing with it.
    """

    puts_batches = True  # a router delivers a batch with put_many: one round trip, not one per item

    def __init__(self, host: str, port: int, queue_id: str, maxsize: int, secret: bytes,
                 connect_timeout: float = 3.0) -> None:
        self.where, self.queue_id, self.maxsize = f"{host}:{port}", queue_id, maxsize
        self._address, self._secret, self._connect_timeout = (host, port), secret, connect_timeout
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._max_frame, self._slice = 1 << 20, 1.0
        reply, _ = self._call({"op": "open"})
        self._max_frame, self._slice = reply["max_frame"], reply["wait_slice"]

    def __repr__(self) -> str:
        return f"RPCQueueProxy({self.queue_id!r} at {self.where}{', closed' if self._closed else ''})"

    # ------------------------------------------------------------ queue API
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_many([item], block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.get_many(1, block, timeout)[0]

    def put_nowait(self, item: Any) -> None:
        self.put_many([item], False)

    def get_nowait(self) -> Any:
        return self.get_many(1, False)[0]

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: float | None = None) -> None:
        """Put every item in order, in as few round trips as the frame limit allows.

        On timeout raises ``queue.Full`` whose ``accepted`` attribute counts the items put.
        """
        import pickle

        blobs = [pickle.dumps(item, pickle.HIGHEST_PROTOCOL) for item in items]
        budget = self._max_frame - MAX_HEADER_BYTES
        if any(len(b) + 4 > budget for b in blobs):
            raise ValueError(f"an item pickles to more than the server's frame limit of {budget} bytes")
        deadline, sent = _deadline(block, timeout), 0
        while sent < len(blobs):
            end, size = sent, 0
            while end < len(blobs) and end - sent < 65_536 and size + len(blobs[end]) + 4 <= budget:
                size += len(blobs[end]) + 4
                end += 1
            reply, _ = self._call({"op": "put", "block": block, "timeout": self._wait(deadline)},
                                  blobs[sent:end])
            sent += reply["accepted"]
            if reply.get("err") == "full" and not _more_time(deadline):
                exc = queue.Full(f"RPC queue {self.queue_id!r} at {self.where} stayed full; "
                                 f"{sent} of {len(blobs)} items were put")
                exc.accepted = sent  # type: ignore[attr-defined]
                raise exc

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """Wait for at least one item, then return up to ``max_items`` of them (oldest first)."""
        if type(max_items) is not int or not 0 < max_items <= 65_536:
            raise ValueError(f"max_items must be an int in [1, 65536], got {max_items!r}")
        import pickle

        deadline = _deadline(block, timeout)
        while True:
            reply, blobs = self._call({"op": "get", "max_items": max_items, "block": block,
                                       "timeout": self._wait(deadline)})
            if "err" not in reply:
                return [pickle.loads(b) for b in blobs]
            if not _more_time(deadline):
                raise queue.Empty

    def statistics(self) -> QueueStats:
        """used, capacity, peak, total in, total out — read on the server in one call."""
        return QueueStats(**self._call({"op": "stats"})[0]["stats"])

    def statistics_all(self) -> dict[str, QueueStats]:
        """Every queue on the server, in one call."""
        return {k: QueueStats(**v) for k, v in self._call({"op": "stats_all"})[0]["stats"].items()}

    def qsize(self) -> int:
        return self.statistics().used

    def empty(self) -> bool:
        return self.statistics().used == 0

    def full(self) -> bool:
        s = self.statistics()
        return s.used >= s.capacity  # type: ignore[operator]  # (server queues are bounded)

    def close(self) -> None:
        """Close idle connections; later calls raise QueueShutDown."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------ transport
    def _wait(self, deadline: float | None) -> float:
        return self._slice if deadline is None else max(0.0, min(self._slice, deadline - monotonic()))

    def _call(self, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> tuple[dict[str, Any], list]:
        conn = self._borrow()
        try:
            conn.send_bytes(encode({**header, "q": self.queue_id, "maxsize": self.maxsize}, blobs))
            frame = conn.recv_bytes()
            reply, items = decode(frame, max_header=len(frame))
        except BaseException as exc:
            conn.close()  # a half-done exchange leaves the stream unusable
            if isinstance(exc, (OSError, EOFError, WireError)):
                raise ConnectionError(f"lost the RPC queue server at {self.where} "
                                      f"(queue {self.queue_id!r}): {exc!r}") from exc
            raise
        self._give_back(conn)
        err = reply.get("err")
        if err == "shutdown":
            raise QueueShutDown(f"RPC queue {self.queue_id!r} at {self.where} was shut down")
        if err == "value":
            raise ValueError(f"RPC queue server {self.where}: {reply.get('msg')}")
        return reply, items

    def _borrow(self) -> Any:
        with self._lock:
            if self._closed:
                raise QueueShutDown(f"RPC queue proxy {self.queue_id!r} at {self.where} is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < 16:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> Any:
        import socket
        from multiprocessing import AuthenticationError
        from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

        try:
            sock = socket.create_connection(self._address, timeout=self._connect_timeout)
        except OSError as exc:
            raise ConnectionError(
                f"cannot reach the RPC queue server at {self.where} within {self._connect_timeout} s "
                f"({exc}); start one with `sage-nb queue-server --port {self._address[1]}`") from exc
        sock.setblocking(True)
        set_io_timeout(sock, self._connect_timeout)
        conn = Connection(sock.detach())
        try:
            answer_challenge(conn, self._secret)
            deliver_challenge(conn, self._secret)
        except (AuthenticationError, AssertionError, OSError, EOFError) as exc:
            conn.close()
            raise ConnectionError(f"the RPC queue server at {self.where} refused this client: "
                                  f"{exc!r}; check that both use the same secret (${SECRET_ENV})") from exc
        set_io_timeout(conn.fileno(), REPLY_TIMEOUT + self._slice)
        return conn


def _deadline(block: bool, timeout: float | None) -> float | None:
    """When a blocking call gives up: None is never; a non-blocking call gets one try."""
    if not block:
        return monotonic()
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return None if timeout is None else monotonic() + timeout


def _more_time(deadline: float | None) -> bool:
    return deadline is None or monotonic() < deadline


def serve_main(argv: list[str] | None = None) -> int:
    """``sage-nb queue-server [--host H] [--port P] [--secret-env VAR]``: serve until Ctrl+C/SIGTERM.

    The secret comes from the environment variable ``VAR`` (default ``SAGE_NB_RPC_SECRET``);
    if it is unset on loopback, a random one is generated and printed as an ``export`` line.
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="sage-nb queue-server", description=serve_main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--secret-env", default=SECRET_ENV, metavar="VAR",
                        help=f"environment variable holding the secret (default {SECRET_ENV})")
    args = parser.parse_args(argv)
    raw = os.environ.get(args.secret_env)
    try:
        server = RPCQueueServer(args.host, args.port, raw.encode() if raw else None).start()
    except (ValueError, OSError) as exc:
        print(f"sage-nb queue-server: {exc}", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        host, port = server.address
        print(f"sage-nb queue-server: serving RPC queues on {host}:{port}", flush=True)
        if not raw:
            assert server.secret is not None  # (generated on loopback; start() refuses otherwise)
            print(f"export {args.secret_env}={server.secret.decode()}", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    return 0
