"""``RPCQueueServer``: named bounded queues served to other processes over authenticated TCP.

Security, in the order a connection meets it:

- the server binds ``127.0.0.1`` unless told otherwise; any other bind needs an explicit
  ``secret``, else ``start()`` raises ValueError;
- every connection passes the standard library's mutual HMAC challenge (the handshake of
  ``multiprocessing.connection.Listener(authkey=...)``) before a single request is read;
  it runs on the connection's own thread, not in ``accept()`` as ``Listener`` does, so a
  silent peer cannot stall other clients; it reads frames of at most 256 bytes and must
  end within ``handshake_timeout``;
- **the server never unpickles anything**: a request is a small JSON header plus opaque
  item blobs that the queues keep as ``bytes``. Clients pickle what they put and unpickle
  what they get, so for them the secret is the barrier, as in ``multiprocessing``;
- frames are capped (``max_frame_bytes``); a bad frame closes that connection only.

There is no encryption: outside loopback, use a trusted network or an SSH tunnel.

Wire format, one ``Connection.send_bytes`` frame each way: a JSON object on one line,
``b"\\n"``, ``n`` big-endian uint32 item sizes, then the ``n`` item blobs.

>>> with RPCQueueServer() as server:
...     server.address[0], len(server.secret)
('127.0.0.1', 64)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any

from .local_queue import LocalQueue, QueueShutDown, QueueStats
from .queue_descriptor import _ID_RE, MAX_QUEUE_SIZE

if TYPE_CHECKING:
    import socket  # imported where used: ``import sage_nb`` stays light

    from .rpc_queue import RPCQueueDescriptor

__all__ = ["MAX_FRAME_BYTES", "SECRET_ENV", "RPCQueueServer", "WireError", "decode", "encode",
           "is_loopback", "set_io_timeout"]

MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 4096
MAX_BATCH = 65_536
SECRET_ENV = "SAGE_NB_RPC_SECRET"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class WireError(ValueError):
    """A frame that does not follow the wire format."""


def encode(header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One frame: ``header`` as one JSON line, then the item sizes and the items."""
    head = json.dumps({**header, "n": len(blobs)}, separators=(",", ":")).encode()
    return b"".join([head, b"\n", struct.pack(f"!{len(blobs)}I", *map(len, blobs)), *blobs])


def decode(frame: bytes, max_header: int = MAX_HEADER_BYTES) -> tuple[dict[str, Any], list[bytes]]:
    """Split a frame into its header and item blobs; WireError if it is malformed.

    >>> decode(encode({"op": "put"}, [b"ab", b"c"]))
    ({'op': 'put', 'n': 2}, [b'ab', b'c'])
    """
    end = frame.find(b"\n", 0, max_header + 1)
    if end < 0:
        raise WireError(f"frame has no JSON header line in its first {max_header} bytes")
    try:
        header = json.loads(frame[:end])
    except (ValueError, RecursionError) as exc:
        raise WireError(f"frame header is not JSON: {exc}") from None
    n = header.get("n") if isinstance(header, dict) else None
    if type(n) is not int or not 0 <= n <= MAX_BATCH:
        raise WireError(f"frame header must be an object with 'n' in [0, {MAX_BATCH}]")
    start = end + 1 + 4 * n
    if start > len(frame):
        raise WireError("frame is shorter than its item-size table")
    sizes = struct.unpack_from(f"!{n}I", frame, end + 1)
    if start + sum(sizes) != len(frame):
        raise WireError("frame length does not match its item sizes")
    blobs = []
    for size in sizes:
        blobs.append(frame[start:start + size])
        start += size
    return header, blobs


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface (``127.0.0.0/8``, ``::1``, localhost)."""
    import ipaddress

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def set_io_timeout(sock: socket.socket | int, seconds: float) -> None:
    """Bound every blocking read and write on a TCP socket (0: no bound) and turn Nagle off."""
    import socket

    tv = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
    s = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay between small frames
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    finally:
        if s is not sock:
            s.detach()  # the fd belongs to the caller's Connection


def _check(header: dict[str, Any], name: str, ok: Any) -> Any:
    value = header.get(name)
    if not ok(value):
        raise WireError(f"request field {name!r} is invalid: {value!r}")
    return value


def _is_timeout(v: Any) -> bool:
    return v is None or (type(v) in (int, float) and math.isfinite(v) and v >= 0)


def _take(q: LocalQueue, max_items: int, budget: int, block: bool, wait: float,
          wanted: Callable[[], bool]) -> list[bytes]:
    """Wait for an item, then take up to ``max_items`` that fit in ``budget`` bytes.

    Nothing is taken once the client has gone (``wanted()`` false): a client interrupted
    while it waited must not lose the items that arrive after it left.
    """
    with q.not_empty:
        # a waiter woken for an item that another took waits again: it checks the client too
        q._wait(q.not_empty, lambda: len(q.queue) or not wanted(), block, wait, queue.Empty)
        if not wanted():
            q.not_empty.notify()  # pass the wake-up on to a waiter that is still there
            raise EOFError("the client left while it waited")
        items: list[bytes]
        items, size, pending = [], 0, q.queue
        while len(items) < max_items and pending and (not items or size + len(pending[0]) + 4 <= budget):
            items.append(q._get())  # the documented queue.Queue hook; it counts total_out
            size += len(items[-1]) + 4
        q.not_full.notify(len(items))
    return items


class RPCQueueServer:
    """Named bounded queues (:class:`LocalQueue`) served over authenticated TCP.

    Queues are created on first use by id. Each client connection has its own thread;
    a blocking call waits at most ``wait_slice`` seconds on the server (the client repeats
    it until its own timeout), so no connection or queue waits on another, and ``close()``
    returns promptly: it wakes blocked callers with QueueShutDown and joins every thread.
    """

    wait_slice = 1.0

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: bytes | None = None, *,
                 max_queues: int = 1024, default_maxsize: int = 1024, max_clients: int = 256,
                 max_frame_bytes: int = MAX_FRAME_BYTES, handshake_timeout: float = 5.0) -> None:
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < 16):
            raise ValueError(f"secret must be at least 16 bytes, got {type(secret).__name__} of "
                             f"length {len(secret) if isinstance(secret, (bytes, str)) else '?'}; "
                             f"make one with: python -c 'import secrets; print(secrets.token_hex(32))'")
        if secret is None and is_loopback(host):
            import secrets

            secret = secrets.token_hex(32).encode()  # printable, so it fits an environment variable
        if not 1 <= default_maxsize <= MAX_QUEUE_SIZE:
            raise ValueError(f"default_maxsize must be in [1, {MAX_QUEUE_SIZE}], got {default_maxsize!r}")
        self.host, self.port, self._secret = host, port, secret
        self.max_queues, self.default_maxsize, self.max_clients = max_queues, default_maxsize, max_clients
        self.max_frame_bytes, self.handshake_timeout = max_frame_bytes, handshake_timeout
        self._queues: dict[str, LocalQueue] = {}
        self._lock = threading.Lock()
        self._clients: dict[threading.Thread, socket.socket] = {}
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._closing = False

    @property
    def secret(self) -> bytes | None:
        """The secret clients must know: the one given, or a random one for loopback (else None)."""
        return self._secret

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, read from the listening socket."""
        if self._listener is None:
            raise RuntimeError("the server is not started; call start() first")
        return self._listener.getsockname()[:2]

    def start(self) -> RPCQueueServer:
        """Bind, listen and serve on a background thread; returns ``self``."""
        if self._listener is not None:
            raise RuntimeError(f"the server is already serving on {self.address}")
        import socket

        if self._secret is None:
            raise ValueError(
                f"refusing to bind {self.host!r} without a secret: anyone who can reach the port "
                f"could use the queues. Pass secret=... (e.g. secrets.token_hex(32).encode()), or "
                f"run `sage-nb queue-server --secret-env {SECRET_ENV}` with that variable set, or "
                f"bind host='127.0.0.1'")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, self.port), family=family, backlog=128)
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"sage-nb-rpc-accept-{self.address[1]}")
        self._acceptor.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, wake blocked callers (QueueShutDown), close every socket, join threads."""
        import socket

        with self._lock:
            self._closing = True
            clients = dict(self._clients)
        for q in list(self._queues.values()):
            q.shutdown()
        for sock in [self._listener, *clients.values()]:
            if sock is not None:
                with contextlib.suppress(OSError):  # OSError: not connected any more
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
        for thread in [self._acceptor, *clients]:
            if thread is not None:
                thread.join(timeout)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> RPCQueueServer:
        return self if self._listener is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.address[0]}:{self.address[1]}" if self._listener else "not started"
        return f"RPCQueueServer({where}, {len(self._queues)} queues, {len(self._clients)} clients)"

    def descriptor(self, queue_id: str | None = None, maxsize: int | None = None) -> RPCQueueDescriptor:
        """An :class:`RPCQueueDescriptor` for a queue here, carrying the secret (never in its JSON)."""
        from .rpc_queue import RPCQueueDescriptor

        host, port = self.address
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return RPCQueueDescriptor(host, port, maxsize or self.default_maxsize, queue_id=queue_id,
                                  secret=self.secret)

    # ------------------------------------------------------------ queues
    def queue(self, queue_id: str, maxsize: int | None = None) -> LocalQueue:
        """The queue named ``queue_id``, created with ``maxsize`` (default ``default_maxsize``)."""
        q = self._queues.get(queue_id)
        if q is None:
            with self._lock:
                q = self._queues.get(queue_id)
                if q is None:
                    if not isinstance(queue_id, str) or not _ID_RE.match(queue_id):
                        raise ValueError(f"invalid queue id {queue_id!r}")
                    if len(self._queues) >= self.max_queues:
                        raise ValueError(f"this server already holds max_queues={self.max_queues} "
                                         f"queues; cannot create {queue_id!r}")
                    q = self._queues[queue_id] = LocalQueue(maxsize or self.default_maxsize)
                    if self._closing:
                        q.shutdown()
        if maxsize is not None and maxsize != q.maxsize:
            raise ValueError(f"queue {queue_id!r} exists with maxsize={q.maxsize}; "
                             f"it was asked for with maxsize={maxsize}")
        return q

    def statistics(self, queue_id: str) -> QueueStats:
        """One queue's statistics; KeyError for an unknown id."""
        try:
            return self._queues[queue_id].statistics()
        except KeyError:
            raise KeyError(f"no queue {queue_id!r} on this server; known: {sorted(self._queues)}") from None

    def statistics_all(self) -> dict[str, QueueStats]:
        """Every queue's statistics, by id."""
        return {qid: q.statistics() for qid, q in list(self._queues.items())}

    # ------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        assert self._listener is not None  # (start() binds it before this thread starts)
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # close() shut the listening socket down
            with self._lock:
                if self._closing or len(self._clients) >= self.max_clients:
                    sock.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                          name="sage-nb-rpc-client")
                self._clients[thread] = sock
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        from multiprocessing import AuthenticationError
        from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

        assert self._secret is not None  # (start() refuses to serve without one)
        conn = None
        try:
            set_io_timeout(sock, self.handshake_timeout)
            conn = Connection(os.dup(sock.fileno()))
            deliver_challenge(conn, self._secret)
            answer_challenge(conn, self._secret)
            set_io_timeout(sock, 0)  # an idle client may wait; close() wakes it
            while True:
                frame = conn.recv_bytes(self.max_frame_bytes)
                conn.send_bytes(self._handle(frame, lambda: not conn.poll()))
        except (EOFError, OSError, AuthenticationError, AssertionError, WireError):
            pass  # the peer left, stalled, failed the handshake, or broke the wire format
        except Exception:  # a bug here ends this connection only, never the server
            import logging

            logging.getLogger(__name__).exception("RPC queue server: closing a connection")
        finally:
            if conn is not None:
                conn.close()
            sock.close()
            with self._lock:
                self._clients.pop(threading.current_thread(), None)

    def _handle(self, frame: bytes, wanted: Callable[[], bool]) -> bytes:
        header, blobs = decode(frame)
        op = header.get("op")
        if op == "stats_all":
            return encode({"stats": {k: s.to_dict() for k, s in self.statistics_all().items()}})
        if op not in ("open", "put", "get", "stats"):
            raise WireError(f"unknown op {op!r}")
        try:
            q = self.queue(_check(header, "q", lambda v: isinstance(v, str)),
                           _check(header, "maxsize", lambda v: type(v) is int and 0 < v <= MAX_QUEUE_SIZE))
            if op == "open":
                return encode({"max_frame": self.max_frame_bytes, "wait_slice": self.wait_slice})
            if op == "stats":
                return encode({"stats": q.statistics().to_dict()})
            block = _check(header, "block", lambda v: type(v) is bool)
            timeout = _check(header, "timeout", _is_timeout)
            wait = min(self.wait_slice, math.inf if timeout is None else timeout)
            if op == "put":
                return encode(self._put(q, blobs, block, wait))
            limit = _check(header, "max_items", lambda v: type(v) is int and 0 < v <= MAX_BATCH)
            return encode({}, _take(q, limit, self.max_frame_bytes - MAX_HEADER_BYTES, block, wait,
                                     wanted))
        except queue.Empty:
            return encode({"err": "empty"})
        except QueueShutDown:
            return encode({"err": "shutdown"})
        except WireError:
            raise
        except ValueError as exc:
            return encode({"err": "value", "msg": str(exc)})

    @staticmethod
    def _put(q: LocalQueue, blobs: list[bytes], block: bool, wait: float) -> dict[str, Any]:
        """Put in order: wait (until ``wait`` runs out) for room for one, then fill all the room."""
        end, done = monotonic() + wait, 0
        while done < len(blobs):
            try:
                q.put(blobs[done], block, max(0.0, end - monotonic()))
            except queue.Full:
                return {"err": "full", "accepted": done}
            done += 1
            with q.mutex:
                room = len(blobs) - done if q.maxsize <= 0 else min(len(blobs) - done, q.maxsize - q._qsize())
                for blob in blobs[done:done + room]:
                    q._put(blob)  # the documented queue.Queue hook; it counts total_in and peak
                q.unfinished_tasks += room
                done += room
                if room > 0:
                    q.not_empty.notify(room)
        return {"accepted": done}
