"""Packets and stop signals: what travels through a connection.

A :class:`Packet` carries a payload plus the routing information the router needs.
Its ``seq`` (a trace id) and ``created`` (origin time, ``time.monotonic()``) are kept
by the packets derived from it, so a packet's path and its end-to-end latency can be
followed through the graph.

>>> p = Packet("a b", partition_key=0, partition_strategy="hash")
>>> p.is_keyed(), p.partition_key
(True, 0)
>>> q = p.inherit_partition_info("a")
>>> (q.payload, q.partition_key, q.seq == p.seq)
('a', 0, True)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, islice
from typing import Any

__all__ = ["STRATEGIES", "Bundle", "Packet", "Picked", "StopSignal", "safe_repr"]

STRATEGIES = ("round_robin", "hash", "broadcast")
_UNSET: Any = object()
_seq = itertools.count(1)
_next_seq = _seq.__next__
_monotonic = time.monotonic
_new = object.__new__


class Packet:
    """One data item in flight, with its routing information.

    A packet is *keyed* when it carries a partition strategy (``"hash"`` or
    ``"broadcast"``). Any value is a key, including ``0``, ``""``, ``False``, ``()``
    and ``None``: passing ``partition_key=`` alone makes the packet hash-keyed.
    """

    __slots__ = ("created", "input_index", "partition_key", "partition_strategy", "payload", "seq")

    def __init__(self, payload: Any, input_index: int = 0, partition_key: Any = _UNSET,
                 partition_strategy: str | None = None, seq: int | None = None,
                 created: float | None = None) -> None:
        self.payload = payload
        self.input_index = input_index
        if partition_key is _UNSET:
            self.partition_key = None
        else:
            self.partition_key = partition_key
            partition_strategy = partition_strategy or "hash"
        if partition_strategy is not None and partition_strategy not in STRATEGIES:
            raise ValueError(f"unknown partition_strategy {partition_strategy!r}; "
                             f"use one of {list(STRATEGIES)}")
        self.partition_strategy = partition_strategy
        self.seq = next(_seq) if seq is None else seq
        self.created = time.monotonic() if created is None else created

    @classmethod
    def fresh(cls, payload: Any) -> Packet:
        """``Packet(payload)`` for a source's hot loop: unkeyed, input 0, a new trace id, now."""
        p = _new(cls)
        p.payload, p.input_index, p.partition_key, p.partition_strategy = payload, 0, None, None
        p.seq, p.created = _next_seq(), _monotonic()
        return p

    @classmethod
    def fresh_many(cls, payloads: list[Any]) -> list[Packet]:
        """``[Packet.fresh(x) for x in payloads]`` in one loop, created at the same instant."""
        out: list[Packet]  # (a declaration only)
        now, new, out = _monotonic(), _new, []
        append = out.append
        for x in payloads:
            p = new(cls)
            p.payload, p.input_index, p.partition_key, p.partition_strategy = x, 0, None, None
            p.seq, p.created = _next_seq(), now
            append(p)
        return out

    def is_keyed(self) -> bool:
        """True when the packet's own strategy overrides the edge's default."""
        return self.partition_strategy is not None

    def inherit_partition_info(self, new_payload: Any) -> Packet:
        """A packet for ``new_payload`` with this packet's key, strategy, trace id and origin time."""
        return Packet(new_payload, self.input_index, _UNSET if self.partition_strategy is None
                      else self.partition_key, self.partition_strategy, self.seq, self.created)

    def derive(self, payload: Any) -> Packet:
        """An unkeyed packet for ``payload`` with this packet's trace id and origin time."""
        p = Packet.__new__(Packet)
        p.payload, p.input_index, p.partition_key, p.partition_strategy = payload, 0, None, None
        p.seq, p.created = self.seq, self.created
        return p

    def update_key(self, new_key: Any, new_strategy: str | None = None) -> Packet:
        """A copy keyed by ``new_key`` (strategy ``new_strategy``, else the current one, else hash)."""
        strategy = new_strategy or (self.partition_strategy if self.partition_strategy != "round_robin"
                                    else None) or "hash"
        return Packet(self.payload, self.input_index, new_key, strategy, self.seq, self.created)

    def copy(self, input_index: int | None = None) -> Packet:
        """The same packet (payload shared, not copied), optionally for another input index."""
        p = Packet.__new__(Packet)
        p.payload, p.partition_key, p.partition_strategy = (
            self.payload, self.partition_key, self.partition_strategy)
        p.input_index = self.input_index if input_index is None else input_index
        p.seq, p.created = self.seq, self.created
        return p

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return (self.payload, self.input_index, self.partition_key, self.partition_strategy) == (
            other.payload, other.input_index, other.partition_key, other.partition_strategy)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __reduce__(self):
        return (_rebuild, (self.payload, self.input_index, self.partition_key,
                           self.partition_strategy, self.seq, self.created))

    def __repr__(self) -> str:
        key = f" key={self.partition_key!r}/{self.partition_strategy}" if self.is_keyed() else ""
        return f"Packet(#{self.seq} {self.payload!r} input={self.input_index}{key})"



def safe_repr(value: Any, limit: int | None = None) -> str:
    """``repr(value)``, cut to ``limit`` characters; a stand-in naming the type if that repr
    raises (a user object's repr never fails a job, an error report or a snapshot).

    >>> class Odd:
    ...     def __repr__(self): raise RuntimeError("no")
    >>> safe_repr(Odd()), safe_repr("abcdef", 3)
    ('<Odd object: its repr raised RuntimeError>', "'ab")
    """
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<{type(value).__name__} object: its repr raised {type(exc).__name__}>"
    return text if limit is None else text[:limit]


def _rebuild(payload, input_index, key, strategy, seq, created) -> Packet:
    p = Packet.__new__(Packet)
    p.payload, p.input_index, p.partition_key, p.partition_strategy = payload, input_index, key, strategy
    p.seq, p.created = seq, created
    return p


@dataclass(frozen=True, slots=True)
class StopSignal:
    """End of stream on one physical connection.

    ``sender`` is the sending instance (e.g. ``"split[1]"``) and ``input_index`` the
    logical input of the receiver that this connection feeds. A task finishes after it
    has received one stop signal from every incoming connection.

    >>> StopSignal("split[1]", 0)
    StopSignal(sender='split[1]', input_index=0)
    """

    sender: str
    input_index: int = 0

    @property
    def name(self) -> str:
        """SAGE's name for the sender."""
        return self.sender


class Picked(Sequence[int]):
    """The items of ``seqs`` where ``where`` (a mask of bytes, or a slice) is true, ``n`` of them,
    listed on first use: the trace ids of a hash share (``Shipper._hash_shares``), made only
    if a packet of it is traced, fails or is asked for as an object. A slice of it is one too.

    >>> ids = Picked(range(10, 15), b"\\x01\\x00\\x01\\x00\\x01", 3)
    >>> len(ids), ids[1], list(ids), list(ids[1:]), len(ids[:2])
    (3, 12, [10, 12, 14], [12, 14], 2)
    """

    __slots__ = ("_items", "_n", "_seqs", "_where")
    _items: list[int] | None  # (a declaration only: the slot)

    def __init__(self, seqs: Sequence[int], where: bytes | slice, n: int) -> None:
        self._seqs, self._where, self._n, self._items = seqs, where, n, None

    def _list(self) -> list[int]:
        items = self._items
        if items is None:  # (two threads may both make it: the same list)
            where = self._where
            items = self._items = list(compress(self._seqs, where)) if where.__class__ is bytes \
                else list(self._seqs)[where]  # type: ignore[index]
        return items

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if self._items is None:
            if i.__class__ is slice:
                return Picked(self, i, len(range(self._n)[i]))
            if i == 0 and self._n and self._where.__class__ is bytes:  # (a trace's first packet)
                return self._seqs[self._where.index(1)]
        return self._list()[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._list())

    def __reduce__(self):  # pickled as the list it stands for
        return (list, (self._list(),))


class Bundle:
    """Packets for one input, by column: what a batching router ships between the tasks of a
    threads job when no packet object is needed (``len()`` packets, one queue entry).
    ``seqs`` are the packets' trace ids (a ``range`` for fresh ones), ``created`` their common
    origin time, ``keys`` their hash keys (None: unkeyed). A receiver that needs packets asks
    :meth:`packets`.

    >>> b = Bundle.fresh(["a", "b", "c"])
    >>> len(b), [p.payload for p in b.packets()] == ["a", "b", "c"], b.seqs[1] == b.seqs[0] + 1
    (3, True, True)
    >>> [p.payload for p in b.pick(slice(1, None, 2)).packets()], len(b.keep([1, 0, 1]))
    (['b'], 2)
    >>> Bundle(["x"], [7], 0.0, keys=["k"]).packet(0)
    Packet(#7 'x' input=0 key='k'/hash)
    """

    __slots__ = ("created", "input_index", "keys", "payloads", "seqs")

    def __init__(self, payloads: list[Any], seqs: Sequence[int], created: float, input_index: int = 0,
                 keys: list[Any] | None = None) -> None:
        self.payloads, self.seqs, self.created, self.input_index = payloads, seqs, created, input_index
        self.keys = keys

    @classmethod
    def fresh(cls, payloads: list[Any]) -> Bundle:
        """New packets for ``payloads``: consecutive trace ids (taken at once), created now."""
        n = len(payloads)
        if not n:
            return cls(payloads, range(0), _monotonic())
        last = next(islice(_seq, n - 1, None))  # C-level: no other thread takes an id between
        return cls(payloads, range(last - n + 1, last + 1), _monotonic())

    def __len__(self) -> int:
        return len(self.payloads)

    def __reduce__(self):  # by column: a Ray queue's chunk pickles a few lists, not an object per packet
        return (Bundle, (self.payloads, self.seqs, self.created, self.input_index, self.keys))

    def pick(self, where: slice) -> Bundle:
        """The packets at ``where`` (a slice), in order, keys included."""
        return Bundle(self.payloads[where], self.seqs[where], self.created, self.input_index,
                      None if self.keys is None else self.keys[where])

    def select(self, mask: Any, keys: list[Any] | None = None) -> Bundle:
        """The packets whose ``mask`` entry is true, in order, with ``keys`` (theirs, if any)."""
        mask = list(mask)
        return Bundle(list(compress(self.payloads, mask)), list(compress(self.seqs, mask)),
                      self.created, self.input_index, None if keys is None else list(compress(keys, mask)))

    def keep(self, mask: list[Any]) -> Bundle:
        """The packets whose ``mask`` entry is true, unkeyed (a filter's output)."""
        return self.select(mask)

    def with_payloads(self, payloads: list[Any]) -> Bundle:
        """The same packets, unkeyed, carrying ``payloads`` (a map's output: one result each)."""
        return Bundle(payloads, self.seqs, self.created, self.input_index)

    def packet(self, i: int) -> Packet:
        """Packet ``i`` as an object."""
        keys = self.keys
        return _rebuild(self.payloads[i], self.input_index, None if keys is None else keys[i],
                        None if keys is None else "hash", self.seqs[i], self.created)

    def packets(self) -> list[Packet]:
        """Every packet as an object, in order."""
        out: list[Packet]  # (a declaration only)
        new, out, created, index = _new, [], self.created, self.input_index
        append = out.append
        strategy = None if self.keys is None else "hash"
        for x, seq, key in zip(self.payloads, self.seqs, self.keys or itertools.repeat(None, len(self)),
                               strict=True):
            p = new(Packet)
            p.payload, p.input_index, p.partition_key, p.partition_strategy = x, index, key, strategy
            p.seq, p.created = seq, created
            append(p)
        return out

    def __repr__(self) -> str:
        return f"Bundle({len(self)} packets from #{self.seqs[0] if len(self) else '-'}, input={self.input_index})"
