"""Serialisable queue descriptors: a queue named by id, created lazily where it is used.

A descriptor is inert data (type, id, a few settings) until its ``queue_instance`` is
first touched; then it creates its queue exactly once, even when many threads touch it
at the same time. Descriptors round-trip through ``to_dict()/from_dict()`` and
``to_json()/from_json()``; JSON from outside is validated field by field and nothing
in it is ever imported or unpickled.

>>> qd = PythonQueueDescriptor(maxsize=4, queue_id="demo")
>>> qd
PythonQueueDescriptor('demo', maxsize=4, lazy)
>>> qd.to_json()
'{"queue_id": "demo", "queue_type": "python", "metadata": {"maxsize": 4}}'
>>> BaseQueueDescriptor.from_json(qd.to_json()) == qd
True
>>> qd.put("x"); qd.get()
'x'
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from .local_queue import LocalQueue, QueueStats

__all__ = ["MAX_JSON_BYTES", "MAX_QUEUE_SIZE", "BaseQueueDescriptor", "PythonQueueDescriptor"]

MAX_QUEUE_SIZE = 10_000_000
MAX_JSON_BYTES = 64 * 1024
_ID_RE = re.compile(r"^[\w.:/\[\]@+\-]{1,200}\Z")  # \Z: "$" would accept a trailing newline
_REGISTRY: dict[str, type[BaseQueueDescriptor]] = {}
_TOP_FIELDS = {"queue_id", "queue_type", "metadata", "created_timestamp"}


def int_field(low: int, high: int) -> Callable[[str, Any], int]:
    """A validator for an integer metadata field in [low, high] (bools and strings refused)."""
    def check(name: str, value: Any) -> int:
        if type(value) is not int:
            raise ValueError(f"descriptor field {name!r} must be an int in [{low}, {high}], "
                             f"got {type(value).__name__} {value!r}")
        if not low <= value <= high:
            raise ValueError(f"descriptor field {name!r} must be in [{low}, {high}], got {value!r}")
        return value
    return check


class BaseQueueDescriptor(ABC):
    """A serialisable handle on a queue, addressed by ``queue_id``.

    Subclasses set ``queue_type``, ``_schema`` (metadata field → validator) and implement
    ``_create_queue()``. Equality and hashing use ``(queue_type, queue_id)``: two
    descriptors are equal when they reach the same queue.
    """

    queue_type: ClassVar[str]
    _schema: ClassVar[dict[str, Callable[[str, Any], Any]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "queue_type" in cls.__dict__:
            _REGISTRY[cls.queue_type] = cls

    def __init__(self, queue_id: str | None = None) -> None:
        if queue_id is None:
            queue_id = f"{self.queue_type}_{uuid.uuid4().hex[:8]}"
        if not isinstance(queue_id, str) or not _ID_RE.match(queue_id):
            raise ValueError(f"descriptor field 'queue_id' must be 1-200 characters of letters, digits "
                             f"and _.:/[]@+-, got {queue_id!r}")
        self.queue_id = queue_id
        self._queue_instance: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ settings
    @property
    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """The settings that recreate this descriptor (JSON-safe)."""

    @property
    def can_serialize(self) -> bool:
        """Whether this descriptor can cross a process boundary as it is."""
        return True

    @abstractmethod
    def _create_queue(self) -> Any:
        """Create the queue object; called once, under the descriptor's lock."""

    # ------------------------------------------------------------ lazy queue
    @property
    def queue_instance(self) -> Any:
        """The queue, created on first access (exactly once, thread-safe)."""
        q = self._queue_instance
        if q is None:
            with self._lock:
                q = self._queue_instance
                if q is None:
                    q = self._queue_instance = self._create_queue()
        return q

    def get_queue(self) -> Any:
        return self.queue_instance

    def is_initialized(self) -> bool:
        return self._queue_instance is not None

    def clear_cache(self) -> None:
        """Forget the queue: the next access creates a new, empty one."""
        with self._lock:
            self._queue_instance = None

    # ------------------------------------------------------------ queue proxy
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.queue_instance.put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.queue_instance.get(block, timeout)

    def put_nowait(self, item: Any) -> None:
        self.queue_instance.put(item, False)

    def get_nowait(self) -> Any:
        return self.queue_instance.get(False)

    def put_many(self, items: list, block: bool = True, timeout: float | None = None) -> None:
        self.queue_instance.put_many(items, block, timeout)

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        return self.queue_instance.get_many(max_items, block, timeout)

    def qsize(self) -> int:
        return self.queue_instance.qsize()

    def empty(self) -> bool:
        return self.queue_instance.empty()

    def full(self) -> bool:
        return self.queue_instance.full()

    def statistics(self) -> QueueStats:
        """used, capacity, peak, total in, total out — one consistent reading."""
        return self.queue_instance.statistics()

    # ------------------------------------------------------------ copies
    def clone(self, new_queue_id: str | None = None) -> BaseQueueDescriptor:
        """A descriptor with the same settings and a new id; shares the live queue if any."""
        twin = type(self)(**self.metadata, queue_id=new_queue_id)
        twin._queue_instance = self._queue_instance
        return twin

    def to_serializable_descriptor(self) -> BaseQueueDescriptor:
        """This descriptor if it can cross processes, else an uninitialised copy (same id, settings)."""
        if self.can_serialize:
            return self
        return type(self)(**self.metadata, queue_id=self.queue_id)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"queue_id": self.queue_id, "queue_type": self.queue_type, "metadata": self.metadata}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> BaseQueueDescriptor:
        """Rebuild a descriptor from ``to_dict()`` output, validating every field.

        Raises ValueError naming the offending field for an unknown ``queue_type``, a class
        or module path, unknown fields, or settings of the wrong type or range.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a queue descriptor must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - _TOP_FIELDS)
        if unknown:
            raise ValueError(f"unknown descriptor field {unknown[0]!r}; allowed fields: "
                             f"{sorted(_TOP_FIELDS)} (class or module paths are never imported)")
        qtype = data.get("queue_type")
        target = _REGISTRY.get(qtype) if isinstance(qtype, str) else None
        if target is None:
            hint = " (a class or module path is never imported)" if isinstance(qtype, str) and "." in qtype else ""
            raise ValueError(f"unknown descriptor field 'queue_type' value {qtype!r}{hint}; "
                             f"known queue types: {sorted(_REGISTRY)}")
        if cls is not BaseQueueDescriptor and not issubclass(target, cls):
            raise ValueError(f"descriptor field 'queue_type' is {qtype!r}, but {cls.__name__} "
                             f"expects {cls.queue_type!r}")
        meta = data.get("metadata", {})
        if not isinstance(meta, dict):
            raise ValueError(f"descriptor field 'metadata' must be an object, got {type(meta).__name__}")
        extra = sorted(set(map(str, meta)) - set(target._schema))
        if extra:
            raise ValueError(f"unknown descriptor field 'metadata.{extra[0]}' for queue type "
                             f"{qtype!r}; allowed: {sorted(target._schema)}")
        kwargs = {k: check(f"metadata.{k}", meta[k]) for k, check in target._schema.items() if k in meta}
        return target(**kwargs, queue_id=data.get("queue_id"))

    @classmethod
    def from_json(cls, text: str | bytes) -> BaseQueueDescriptor:
        """Parse and validate a JSON descriptor (at most 64 KiB)."""
        if not isinstance(text, (str, bytes)):
            raise ValueError(f"a JSON descriptor must be str or bytes, got {type(text).__name__}")
        if len(text) > MAX_JSON_BYTES:
            raise ValueError(f"JSON descriptor too large: {len(text)} bytes > {MAX_JSON_BYTES}")
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("JSON descriptor nested too deeply") from None
        except ValueError as exc:
            raise ValueError(f"JSON descriptor is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------ identity
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseQueueDescriptor):
            return NotImplemented
        return (self.queue_type, self.queue_id) == (other.queue_type, other.queue_id)

    def __hash__(self) -> int:
        return hash((self.queue_type, self.queue_id))

    def __repr__(self) -> str:
        settings = "".join(f", {k}={v!r}" for k, v in self.metadata.items())
        state = "initialized" if self.is_initialized() else "lazy"
        return f"{type(self).__name__}({self.queue_id!r}{settings}, {state})"

    def __getstate__(self) -> dict[str, Any]:
        if not self.can_serialize:
            raise TypeError(f"{self!r} holds a live in-process queue and cannot be pickled; "
                            f"call to_serializable_descriptor() first")
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class PythonQueueDescriptor(BaseQueueDescriptor):
    """An in-process bounded queue (:class:`LocalQueue`, a ``queue.Queue``); ``maxsize=0`` is unbounded.

    Once initialised it holds a live queue and cannot be pickled;
    ``to_serializable_descriptor()`` gives an uninitialised copy.
    """

    queue_type = "python"
    _schema = {"maxsize": int_field(0, MAX_QUEUE_SIZE)}

    def __init__(self, maxsize: int = 0, queue_id: str | None = None) -> None:
        self.maxsize = int_field(0, MAX_QUEUE_SIZE)("maxsize", maxsize)
        super().__init__(queue_id)

    @property
    def metadata(self) -> dict[str, Any]:
        return {"maxsize": self.maxsize}

    @property
    def can_serialize(self) -> bool:
        return self._queue_instance is None

    def _create_queue(self) -> LocalQueue:
        return LocalQueue(self.maxsize)
