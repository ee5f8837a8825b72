"""A hash partitioner that gives the same answer in every process and every Python run.

The builtin ``hash()`` is salted per process for str and bytes (``PYTHONHASHSEED``), so
SAGE's Ray workers disagreed about which instance owns a key. Here a key is encoded
canonically and hashed with BLAKE2b (64 bits). Keys that Python considers equal share a
partition: ``1``, ``1.0`` and ``True`` go to the same instance, and a subclass's value (an
``IntEnum`` or ``StrEnum`` member, a namedtuple) or a NumPy number goes where the plain value
it equals goes.

>>> partition("u42", 4) == partition("u42", 4)
True
>>> partition(1, 7) == partition(1.0, 7) == partition(True, 7)
True
>>> stable_hash(None) == stable_hash(None)
True
"""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any

from .packet import safe_repr

__all__ = ["SUPPORTED_KEY_TYPES", "partition", "stable_hash"]

SUPPORTED_KEY_TYPES = "str, bytes, int, float, bool, None or tuples of them"
# (and their subclasses, NumPy's numbers and fractions: partitioned as the plain value they equal)


def _encode(key: Any, out: bytearray) -> None:
    if isinstance(key, str):  # (subclasses too: a StrEnum member is its string)
        data = str.encode(key, "utf-8", "surrogatepass")
        out += b"S%d:" % len(data) + data
    elif isinstance(key, int):  # bool, IntEnum
        out += b"I%d;" % int(key)
    elif isinstance(key, float):
        key = float(key)
        if math.isnan(key):
            raise TypeError("cannot hash-partition the float key nan: NaN is not equal to itself, so "
                            "equal keys could not meet; replace it (e.g. with None)")
        if key.is_integer():
            out += b"I%d;" % int(key)
        else:
            out += b"F" + repr(key).encode() + b";"
    elif key is None:
        out += b"N"
    elif isinstance(key, bytes):
        out += b"B%d:" % len(key) + bytes(key)
    elif isinstance(key, tuple):  # a namedtuple too
        out += b"T%d(" % len(key)
        for item in key:
            _encode(item, out)
        out += b")"
    elif isinstance(key, numbers.Integral):  # NumPy integers (the ABCs last: slower to check)
        _encode(int(key), out)
    elif isinstance(key, numbers.Real):  # NumPy floats, Fraction
        _encode(float(key), out)
    else:
        raise TypeError(f"cannot hash-partition a key of type {type(key).__name__} ({safe_repr(key, 60)}); keys "
                        f"must be {SUPPORTED_KEY_TYPES} (a list can become a tuple)")


def stable_hash(key: Any) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and Python run."""
    buf = bytearray()
    _encode(key, buf)
    return int.from_bytes(hashlib.blake2b(buf, digest_size=8).digest(), "big")


def partition(key: Any, n: int) -> int:
    """The instance in ``range(n)`` that owns ``key``."""
    if n < 1:
        raise ValueError(f"cannot partition over {n} instances; n must be >= 1")
    return stable_hash(key) % n
