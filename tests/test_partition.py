"""The stable hash partitioner: range, equal keys, refused keys, and the same answer in every process."""

from __future__ import annotations

import ast
import collections
import enum
import fractions
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sage_nb.communication.partition import partition, stable_hash

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "hash_golden.json"

atoms = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
keys = st.recursive(atoms, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12)
# A small universe, so that equal and colliding-looking keys are drawn often.
close_keys = st.recursive(
    st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, 0.5, True, False, None, "", "1", "a", "ab",
                     b"", b"1", b"a", float("inf"), float("-inf")]),
    lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)


# ---------------------------------------------------------------- properties
@given(key=keys, n=st.integers(1, 64))
def test_partition_is_in_range(key, n):
    assert 0 <= partition(key, n) < n


@given(key=keys)
def test_stable_hash_is_a_64_bit_int_and_deterministic(key):
    h = stable_hash(key)
    assert 0 <= h < 2**64
    assert stable_hash(key) == h


@given(a=close_keys, b=close_keys)
def test_keys_share_a_hash_exactly_when_python_calls_them_equal(a, b):
    assert (stable_hash(a) == stable_hash(b)) == (a == b)


@given(i=st.integers(-(2**70), 2**70), n=st.integers(1, 64))
def test_an_int_and_its_float_share_a_partition(i, n):
    f = float(i)
    if f == i:  # only ints that a float represents exactly are equal to it
        assert partition(f, n) == partition(i, n)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 64])
def test_one_one_point_zero_and_true_share_a_partition(n):
    assert partition(1, n) == partition(1.0, n) == partition(True, n)
    assert partition(0, n) == partition(0.0, n) == partition(-0.0, n) == partition(False, n)
    assert partition((1, "a"), n) == partition((1.0, "a"), n) == partition((True, "a"), n)


def test_equal_looking_keys_of_different_types_are_different_keys():
    distinct = ["1", b"1", 1, 1.5, "", b"", (), ("",), None, "None", ("a", "b"), ("ab",),
                ("a", ("b",)), (("a",), "b")]
    assert len({stable_hash(k) for k in distinct}) == len(distinct)


class Level(enum.IntEnum):
    LOW = 1


class Colour(enum.StrEnum):
    RED = "red"


Point = collections.namedtuple("Point", "x y")


class Ratio(float):
    pass


@pytest.mark.parametrize(("key", "plain"), [
    (Level.LOW, 1),
    (Colour.RED, "red"),
    (Point(1, "a"), (1, "a")),
    ((Point(2, Colour.RED), Level.LOW), ((2, "red"), 1)),
    (Ratio(0.25), 0.25),
    (Ratio(3.0), 3),
])
def test_a_subclass_value_goes_where_the_plain_value_it_equals_goes(key, plain):
    assert key == plain and stable_hash(key) == stable_hash(plain)
    assert all(partition(key, n) == partition(plain, n) for n in (2, 3, 4, 7))


def test_a_numpy_number_or_a_fraction_goes_where_its_python_value_goes():
    np = pytest.importorskip("numpy")  # (installed with matplotlib)
    for key, plain in [(np.int64(-5), -5), (np.uint8(200), 200), (np.float64(2.5), 2.5), (np.float32(4.0), 4), (fractions.Fraction(1, 4), 0.25)]:
        assert stable_hash(key) == stable_hash(plain), key


@pytest.mark.parametrize(("key", "type_name"), [
    ([1, 2], "list"),
    ({"a": 1}, "dict"),
    ({1, 2}, "set"),
    (object(), "object"),
    (float("nan"), "float"),
    (("ok", [1]), "list"),
    ((1, (2, float("nan"))), "float"),
    (bytearray(b"x"), "bytearray"),
])
def test_unsupported_keys_raise_type_error_naming_the_type(key, type_name):
    with pytest.raises(TypeError, match=rf"cannot hash-partition .*\b{type_name}\b"):
        partition(key, 4)


# ---------------------------------------------------------------- across processes
def make_keys(count: int = 1000) -> list:
    """``count`` mixed keys, the same in every interpreter (seeded PRNG, no builtin hash)."""
    import random

    rng = random.Random(20240501)

    def atom():
        kind = rng.randrange(7)
        if kind == 0:
            return "".join(rng.choice("abcxyz019_ é日🙂") for _ in range(rng.randrange(12)))
        if kind == 1:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(10)))
        if kind == 2:
            return rng.randrange(-(10**20), 10**20)
        if kind == 3:
            return rng.choice([rng.uniform(-1e6, 1e6), float(rng.randrange(-9, 9)), 0.5])
        if kind == 4:
            return rng.random() < 0.5
        if kind == 5:
            return None
        return rng.randrange(-5, 5)

    def key(depth=0):
        if depth < 2 and rng.random() < 0.2:
            return tuple(key(depth + 1) for _ in range(rng.randrange(4)))
        return atom()

    return [key() for _ in range(count)]


NS = (2, 3, 4, 7, 64)
CHILD = textwrap.dedent(inspect.getsource(make_keys)) + textwrap.dedent(f"""
    import json
    from sage_nb.communication.partition import partition, stable_hash
    ks = make_keys()
    print(json.dumps({{"builtin": hash("u42"),
                       "hash": [stable_hash(k) for k in ks],
                       "part": {{str(n): [partition(k, n) for k in ks] for n in {NS!r}}}}}))
""")


def _run_children(seeds: list[str | None]) -> list[dict]:
    procs = []
    for seed in seeds:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if seed is not None:
            env["PYTHONHASHSEED"] = seed
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_the_same_keys_map_to_the_same_instances_in_fresh_interpreters():
    ks = make_keys()
    assert len(ks) == 1000
    assert {type(k) for k in ks} >= {str, bytes, int, float, bool, type(None), tuple}
    here = {"hash": [stable_hash(k) for k in ks],
            "part": {str(n): [partition(k, n) for k in ks] for n in NS}}
    unset, zero, other = _run_children([None, "0", "12345"])
    # The seeds really differ (so a partitioner built on hash() would be caught here) ...
    assert zero["builtin"] != other["builtin"]
    # ... and yet every interpreter agrees with this one, key by key.
    for child in (unset, zero, other):
        assert child["hash"] == here["hash"]
        assert child["part"] == here["part"]


def test_golden_table():
    rows = json.loads(GOLDEN.read_text(encoding="utf-8"))["keys"]
    ks = [ast.literal_eval(r["key"]) for r in rows]
    assert len(ks) == 20
    kinds = {type(k) for k in ks}
    assert kinds == {str, bytes, int, float, bool, type(None), tuple}
    assert {"", (), "🙂"} <= set(ks) and any(isinstance(k, int) and k < 0 for k in ks)
    assert any(isinstance(k, tuple) and any(isinstance(x, tuple) for x in k) for k in ks)
    for row, key in zip(rows, ks, strict=True):
        assert f"0x{stable_hash(key):016x}" == row["hash"], row
        assert partition(key, 4) == row["n4"], row
        assert partition(key, 7) == row["n7"], row
