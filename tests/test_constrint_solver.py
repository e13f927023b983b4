"""ConstrINT solver: brute-force property tests, propagation on large domains, search order,
unbounded variables, the builder and the on-disk cache."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flashrnn_jax.constrint import (
    Model,
    UnboundedVariableError,
    parse,
    solve,
)
from flashrnn_jax.constrint import cache as cache_mod
from flashrnn_jax.constrint import solver as solver_mod
from flashrnn_jax.constrint.expressions import (
    Constraint,
    NotExpressibleError,
    Number,
    Power,
    Product,
    Program,
    Relation,
    Sum,
    ValueList,
    Variable,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the user's real cache directory."""
    monkeypatch.setenv("FLASHRNN_JAX_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- brute force
def _values(e, a):
    """All values a term can take under assignment ``a`` (value lists: any of their values)."""
    if isinstance(e, Number):
        return {e.value}
    if isinstance(e, Variable):
        return {a[e.name]}
    if isinstance(e, ValueList):
        return set(e.values)
    if isinstance(e, Sum):
        out = {0}
        for t in e.terms:
            out = {x + y for x in out for y in _values(t, a)}
        return out
    if isinstance(e, Product):
        out = {1}
        for t in e.factors:
            out = {x * y for x in out for y in _values(t, a)}
        return out
    assert isinstance(e, Power)
    return {b ** x for b in _values(e.base, a) for x in _values(e.exponent, a)}


def _relation_holds(r, a):
    for left in _values(r.left, a):
        for right in _values(r.right, a):
            if r.op == "==" and left == right:
                return True
            if r.op == "<=" and left <= right:
                return True
            if r.op == "%" and (left == 0 if right == 0 else left % right == 0):
                return True
    return False


def _holds(program, a):
    return all(any(_relation_holds(r, a) for r in c.alternatives) for c in program.constraints)


def _brute(program, bounds):
    names = program.variables
    out = []
    for combo in itertools.product(*(range(1, bounds[n] + 1) for n in names)):
        a = dict(zip(names, combo))
        if _holds(program, a):
            out.append(a)
    return out


def _search_key(program, order):
    direction = dict(order)
    seq = [n for n, _ in order] + [n for n in program.variables if n not in direction]
    return lambda a: tuple(-a[n] if direction.get(n) == "largest" else a[n] for n in seq)


# ----------------------------------------------------------------------------- random models
NAMES = ("A", "B", "C", "D")


@st.composite
def terms(draw, names, depth=2):
    kind = draw(st.sampled_from(["leaf", "leaf", "sum", "product", "power"] if depth else ["leaf"]))
    if kind == "leaf":
        leaf = draw(st.sampled_from(["var", "var", "var", "num", "num", "list"]))
        if leaf == "var":
            return Variable(draw(st.sampled_from(names)))
        if leaf == "num":
            return Number(draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 30, 64])))
        return ValueList(tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))))
    if kind == "sum":
        return Sum((draw(terms(names, depth - 1)), draw(terms(names, depth - 1))))
    if kind == "product":
        return Product((draw(terms(names, depth - 1)), draw(terms(names, depth - 1))))
    exponent = draw(st.one_of(st.integers(0, 3).map(Number),
                              st.sampled_from(names).map(Variable)))
    return Power(draw(terms(names, depth - 1)), exponent)


@st.composite
def problems(draw):
    n = draw(st.integers(2, 4))
    names = NAMES[:n]
    bounds = {v: draw(st.integers(1, 5)) for v in names}
    constraints = []
    for v, b in bounds.items():  # every variable is bounded, in one of several shapes
        shape = draw(st.integers(0, 3))
        if shape == 0:
            rel = Relation("<=", Variable(v), Number(b))
        elif shape == 1:
            rel = Relation("<=", Product((Number(3), Variable(v))), Number(3 * b + draw(st.integers(0, 2))))
        elif shape == 2:
            rel = Relation("<=", Power(Variable(v), Number(2)), Number(b * b + draw(st.integers(0, 2 * b))))
        else:
            rel = Relation("<=", Sum((Variable(v), Number(2))), Number(b + 2))
        constraints.append(Constraint((rel,)))
    for _ in range(draw(st.integers(1, 4))):
        alternatives = tuple(
            Relation(draw(st.sampled_from(["==", "<=", "<=", "%"])),
                     draw(terms(names)), draw(terms(names)))
            for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))))
        constraints.append(Constraint(alternatives))
    constraints = draw(st.permutations(constraints))
    program = Program(tuple(constraints))
    names_in = list(program.variables)
    ordered = draw(st.permutations(names_in))[: draw(st.integers(0, len(names_in)))]
    order = [(v, draw(st.sampled_from(["largest", "smallest"]))) for v in ordered]
    return program, bounds, order


PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(problems())
def test_all_solutions_match_brute_force_in_search_order(problem):
    program, bounds, order = problem
    expected = sorted(_brute(program, bounds), key=_search_key(program, order))
    event(f"solutions: {'none' if not expected else 'one' if len(expected) == 1 else 'many'}")
    got = solve(program, order=order, num_solutions=None, cache=False)
    for sol in got:  # sound, and complete assignments
        assert set(sol) == set(program.variables)
        assert _holds(program, sol)
    assert got == expected  # complete, and in search order


@PROPERTY
@given(problems(), st.integers(1, 4), st.data())
def test_first_solutions_and_exclusions_match_brute_force(problem, k, data):
    program, bounds, order = problem
    expected = sorted(_brute(program, bounds), key=_search_key(program, order))
    got = solve(program, order=order, num_solutions=k, cache=False)
    assert got == expected[:k]  # the first solution is the first in the search order
    if not expected:
        return
    chosen = data.draw(st.lists(st.sampled_from(expected), max_size=3))
    exclude = [{n: s[n] for n, _ in order} for s in chosen]
    kept = [s for s in expected
            if not any(all(s[n] == v for n, v in e.items()) for e in exclude)]
    assert solve(program, order=order, num_solutions=None, exclude=exclude, cache=False) == kept
    assert solve(program, order=order, num_solutions=k, exclude=exclude, cache=False) == kept[:k]


@PROPERTY
@given(problems())
def test_text_round_trip_solves_the_same(problem):
    program, _, order = problem
    try:
        text = program.to_text()
    except NotExpressibleError:
        return
    assert solve(text, order=order, num_solutions=None, cache=False) == solve(
        program, order=order, num_solutions=None, cache=False)


# ----------------------------------------------------------------------------- large domains
def test_factoring_two_primes_with_small_bounds_fails_fast():
    t0 = time.perf_counter()
    assert solve("A*B == 7919*7907; A <= 100; B <= 100;", cache=False) == []
    assert time.perf_counter() - t0 < 0.2


def test_shared_memory_tile_solves_instantly():
    text = "X * 1024 <= 232448; X % 64 == 0; X == [64,128,256];"
    t0 = time.perf_counter()
    assert solve(text, order=[("X", "largest")], cache=False) == [{"X": 128}]
    assert solve(text, num_solutions=None, cache=False) == [{"X": 64}, {"X": 128}]
    # Without the list: the largest multiple of 64 below 232448 / 1024 = 227.
    assert solve("X * 1024 <= 232448; X % 64 == 0;", order=[("X", "largest")],
                 cache=False) == [{"X": 192}]
    assert time.perf_counter() - t0 < 0.2


def test_large_domains_are_propagated_not_enumerated():
    t0 = time.perf_counter()
    text = """
        BYTES <= 2 ^ 30;  BYTES % 4096 == 0;  3 * BYTES <= 2 ^ 31 + 5;
        THREADS * REGS <= 65536;  THREADS % 32 == 0;  THREADS <= 1024;  REGS <= 255;
    """
    sol = solve(text, order=[("BYTES", "largest"), ("THREADS", "largest"), ("REGS", "largest")],
                cache=False)
    assert sol == [{"BYTES": 715825152, "THREADS": 1024, "REGS": 64}]
    assert 715825152 % 4096 == 0 and 3 * 715825152 <= 2 ** 31 + 5 < 3 * (715825152 + 4096)
    # The whole count of solutions of a 2^30-wide variable, without listing them.
    assert solve("X * Y == 2 ^ 30 * 3; X <= 2 ^ 31; Y <= 2;", num_solutions=None,
                 cache=False) == [{"X": 2 ** 29 * 3, "Y": 2}]
    # An unsatisfiable model over huge domains.
    assert solve("X % 1024 == 0; X + 1 <= 1024; Y * X == 2 ^ 40;", cache=False) == []
    assert time.perf_counter() - t0 < 1.0


def test_unsatisfiable_models_give_an_empty_list():
    assert solve("X <= 3; 4 <= X;", cache=False) == []
    assert solve("X == [0];", cache=False) == []
    assert solve("2 <= 1;", cache=False) == []
    assert solve("X == [2, 4]; X % 3 == 0;", cache=False) == []


# ----------------------------------------------------------------------------- semantics
def test_every_variable_is_assigned_and_positive():
    sols = solve("A + B <= 4; C <= 1;", num_solutions=None, cache=False)
    assert sols == [{"A": 1, "B": 1, "C": 1}, {"A": 1, "B": 2, "C": 1},
                    {"A": 1, "B": 3, "C": 1}, {"A": 2, "B": 1, "C": 1},
                    {"A": 2, "B": 2, "C": 1}, {"A": 3, "B": 1, "C": 1}]


def test_order_directions_and_tie_breaking():
    text = "A <= 3; B <= 2; A + B <= 4;"
    assert solve(text, order=[("A", "largest")], num_solutions=None, cache=False) == [
        {"A": 3, "B": 1}, {"A": 2, "B": 1}, {"A": 2, "B": 2}, {"A": 1, "B": 1}, {"A": 1, "B": 2}]
    assert solve(text, order=[("B", "largest"), ("A", "smallest")], num_solutions=3,
                 cache=False) == [{"A": 1, "B": 2}, {"A": 2, "B": 2}, {"A": 1, "B": 1}]
    assert solve(text, order={"B": "largest", "A": "largest"}, cache=False) == [{"A": 2, "B": 2}]


def test_more_solutions_than_exist_returns_all():
    assert len(solve("X <= 5;", num_solutions=100, cache=False)) == 5
    assert solve("X <= 5;", num_solutions=0, cache=False) == []


def test_exclude():
    text = "X <= 4; Y <= 2;"
    order = [("X", "largest")]
    assert solve(text, order=order, exclude=[{"X": 4}], cache=False) == [{"X": 3, "Y": 1}]
    assert solve(text, order=order, exclude=[{"X": 4, "Y": 1}], num_solutions=2,
                 cache=False) == [{"X": 4, "Y": 2}, {"X": 3, "Y": 1}]
    assert solve(text, exclude=[{}], cache=False) == []  # {} matches everything
    with pytest.raises(ValueError, match="not a variable"):
        solve(text, exclude=[{"Z": 1}], cache=False)


def test_divisibility_semantics():
    assert solve("X % 0 == 0;", cache=False) == []  # 0 divides only 0
    assert solve("0 % X == 0; X <= 2;", num_solutions=None, cache=False) == [{"X": 1}, {"X": 2}]
    assert solve("12 % X == 0;", num_solutions=None, cache=False) == [
        {"X": d} for d in (1, 2, 3, 4, 6, 12)]
    assert solve("X + 1 % 4 == 0; X <= 10;", num_solutions=None, cache=False) == [
        {"X": 3}, {"X": 7}]
    big = 2 ** 20 * 3 ** 5
    assert len(solve(f"{big} % X == 0;", num_solutions=None, cache=False)) == 21 * 6


def test_power_semantics():
    assert solve("2 ^ K == 1024;", cache=False) == [{"K": 10}]
    assert solve("2 ^ 3 ^ 2 == X;", cache=False) == [{"X": 512}]  # right-associative
    assert solve("X ^ 0 == 1; X <= 2;", num_solutions=None, cache=False) == [{"X": 1}, {"X": 2}]
    assert solve("0 ^ 0 == X;", cache=False) == [{"X": 1}]
    assert solve("X ^ 3 <= 1000; X ^ 3 + 1 <= 1001;", order=[("X", "largest")],
                 cache=False) == [{"X": 10}]
    assert solve("2 ^ N <= 2 ^ 200; N % 7 == 0;", order=[("N", "largest")],
                 cache=False) == [{"N": 196}]


def test_value_lists_inside_terms_are_existential():
    assert solve("X * [1, 2] == 8;", num_solutions=None, cache=False) == [{"X": 4}, {"X": 8}]
    assert solve("X <= [3, 5];", order=[("X", "largest")], cache=False) == [{"X": 5}]
    assert solve("[2, 7] <= X; X <= 2;", cache=False) == [{"X": 2}]
    sols = solve("X + [1, 2] == Y + [1, 2]; X <= 2; Y <= 3;", num_solutions=None, cache=False)
    assert sols == [{"X": 1, "Y": 1}, {"X": 1, "Y": 2}, {"X": 2, "Y": 1}, {"X": 2, "Y": 2},
                    {"X": 2, "Y": 3}]  # no repeats, choices not reported


def test_alternatives():
    text = "X <= 10; X == 1 | X % 4 == 0 | 9 <= X;"
    assert solve(text, num_solutions=None, cache=False) == [
        {"X": x} for x in (1, 4, 8, 9, 10)]
    assert solve("A == 1 | B <= 3; A <= 2; B <= 5;", order=[("B", "largest")],
                 num_solutions=None, cache=False) == [
        {"B": 5, "A": 1}, {"B": 4, "A": 1}, {"B": 3, "A": 1}, {"B": 3, "A": 2},
        {"B": 2, "A": 1}, {"B": 2, "A": 2}, {"B": 1, "A": 1}, {"B": 1, "A": 2}]


def test_empty_model_has_one_empty_solution():
    assert solve("# nothing\n", cache=False) == [{}]


def test_numbers_beyond_the_supported_range_are_rejected():
    with pytest.raises(ValueError, match="2\\*\\*256"):
        solve("X <= 2 ^ 300;", cache=False)


# ----------------------------------------------------------------------------- unbounded
def test_unbounded_variable_gets_its_smallest_value():
    assert solve("X % 3 == 0;", cache=False) == [{"X": 3}]
    assert solve("X * Y <= 10; Y <= 5;", order=[("Y", "largest")], cache=False) == [
        {"X": 1, "Y": 5}]
    # bounded through propagation: fine to list all
    assert len(solve("X * 4 <= Y; Y <= 12;", num_solutions=None, cache=False)) == 9 + 5 + 1


def test_unbounded_variable_cannot_be_largest_or_enumerated():
    with pytest.raises(UnboundedVariableError, match="X has no upper bound") as info:
        solve("X % 3 == 0;", order=[("X", "largest")], cache=False)
    assert info.value.variable == "X"
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnboundedVariableError):
        solve("X % 3 == 0;", num_solutions=2, cache=False)
    with pytest.raises(UnboundedVariableError):
        solve("X % 3 == 0;", exclude=[{"X": 3}], cache=False)
    # terminates even where bounds creep (X even and X + 1 even): an error, not a hang
    t0 = time.perf_counter()
    with pytest.raises(UnboundedVariableError):
        solve("X % 2 == 0; X + 1 % 2 == 0;", cache=False)
    assert time.perf_counter() - t0 < 2.0


# ----------------------------------------------------------------------------- arguments
def test_bad_arguments():
    with pytest.raises(ValueError, match="not a variable"):
        solve("X <= 2;", order=[("Y", "largest")], cache=False)
    with pytest.raises(ValueError, match="'largest' or 'smallest'"):
        solve("X <= 2;", order=[("X", "biggest")], cache=False)
    with pytest.raises(ValueError, match="twice"):
        solve("X <= 2;", order=[("X", "largest"), ("X", "smallest")], cache=False)
    with pytest.raises(TypeError, match="pairs"):
        solve("X <= 2;", order=("X", "largest"), cache=False)
    with pytest.raises(ValueError):
        solve("X <= 2;", num_solutions=-1, cache=False)
    with pytest.raises(TypeError):
        solve(42, cache=False)


# ----------------------------------------------------------------------------- builder
def test_builder_example():
    m = Model()
    x, w = m.vars("X", "W")
    m.add(x * 4 <= 64, x % 2 == 0)
    m.add_alternatives(w == 1, x <= 8)
    assert m.solve(order=[(x, "largest")], cache=False) == [{"X": 16, "W": 1}]
    assert m.program == parse("X * 4 <= 64; X % 2 == 0; W == 1 | X <= 8;")


def test_builder_matches_parser():
    m = Model()
    a, b, c = m.vars("A", "B", "C")
    m.add(a + b * c ** 2 ** a <= 70)
    m.add((a == 1) | (b <= 3) | (64 % c == 0))
    m.add(a == [2, 4, 8], b * [1, 2] <= 3 * c + 1)
    m.add(a >= 2, b < 5, c > 1)
    m.add("C <= 9;  # text works too")
    text = """A + B * C ^ 2 ^ A <= 70; A == 1 | B <= 3 | 64 % C == 0;
              A == [2, 4, 8]; B * [1, 2] <= 3 * C + 1;
              2 <= A; B + 1 <= 5; 1 + 1 <= C; C <= 9;"""
    assert m.program == parse(text)
    assert parse(m.to_text()) == m.program
    sols = m.solve(num_solutions=None, cache=False)
    assert sols and sols == solve(text, num_solutions=None, cache=False)


def test_builder_groups_like_python_and_refuses_mistakes():
    m = Model()
    x, y = m.vars("X", "Y")
    m.add((x + y) * 2 == 8, x <= y)  # a real grouping: (X + Y) * 2
    assert m.solve(num_solutions=None, cache=False) == [{"X": 1, "Y": 3}, {"X": 2, "Y": 2}]
    with pytest.raises(NotExpressibleError):
        m.to_text()
    with pytest.raises(TypeError, match="'-'"):
        x - 1
    with pytest.raises(TypeError, match=r"\*\*"):
        x ^ 2
    with pytest.raises(TypeError, match="chained"):
        1 <= x <= 4
    with pytest.raises(TypeError, match="!="):
        x != 3
    with pytest.raises(ValueError, match="divisibility"):
        x % 2 == 1
    with pytest.raises(ValueError, match="negative"):
        x + (-1)
    with pytest.raises(ValueError, match="invalid variable name"):
        m.var("2x")


# ----------------------------------------------------------------------------- cache
def _cache_files():
    d = cache_mod.cache_dir()
    return sorted(d.glob("*.json")) if d.exists() else []


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHRNN_JAX_CACHE_DIR", str(tmp_path / "x"))
    assert cache_mod.cache_dir() == tmp_path / "x" / "constrint"
    monkeypatch.delenv("FLASHRNN_JAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.cache_dir() == tmp_path / "xdg" / "flashrnn_jax" / "constrint"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_mod.cache_dir() == tmp_path / "home" / ".cache" / "flashrnn_jax" / "constrint"


def test_cache_hit_returns_the_stored_result(monkeypatch):
    text = "X <= 100; X % 7 == 0;"
    first = solve(text, order=[("X", "largest")])
    assert first == [{"X": 98}] and len(_cache_files()) == 1

    def no_search(self):
        raise AssertionError("searched although cached")

    monkeypatch.setattr(solver_mod._Search, "run", no_search)
    assert solve(text, order=[("X", "largest")]) == first
    # Comments and layout do not matter; the model does.
    assert solve("X <= 100;   # bound\nX % 7 == 0;", order=[("X", "largest")]) == first


def test_cache_keys_cover_every_input():
    text = "X <= 100; X % 7 == 0;"
    answers = [
        solve(text, order=[("X", "largest")]),
        solve(text, order=[("X", "smallest")]),
        solve(text, order=[("X", "largest")], num_solutions=2),
        solve(text, order=[("X", "largest")], exclude=[{"X": 98}]),
        solve("X <= 100; X % 11 == 0;", order=[("X", "largest")]),
    ]
    assert answers == [[{"X": 98}], [{"X": 7}], [{"X": 98}, {"X": 91}], [{"X": 91}],
                       [{"X": 99}]]
    assert len(_cache_files()) == 5
    # and again, now from the cache
    assert solve(text, order=[("X", "smallest")]) == [{"X": 7}]
    assert solve("X <= 100; X % 11 == 0;", order=[("X", "largest")]) == [{"X": 99}]


@pytest.mark.parametrize("garbage", [
    b"", b"{not json", b"\xff\xfe", b"[]", b'{"request": 1, "solutions": []}',
])
def test_corrupted_cache_files_are_ignored(garbage):
    text = "X <= 10; X % 5 == 0;"
    assert solve(text, order=[("X", "largest")]) == [{"X": 10}]
    (path,) = _cache_files()
    path.write_bytes(garbage)
    assert solve(text, order=[("X", "largest")]) == [{"X": 10}]
    assert json.loads(path.read_text())["solutions"] == [{"X": 10}]  # rewritten


def test_tampered_cache_solutions_are_ignored():
    text = "X <= 10; X % 5 == 0;"
    solve(text, order=[("X", "largest")])
    (path,) = _cache_files()
    for bad in ([{"X": 7}], [{"X": 10}, {"X": 10}], [{"Y": 10}], [{"X": "10"}], {"X": 10},
                [{"X": 10}, {"X": 5}]):
        record = json.loads(path.read_text())
        record["solutions"] = bad
        path.write_text(json.dumps(record))
        assert solve(text, order=[("X", "largest")]) == [{"X": 10}]


def test_cache_disabled_writes_nothing():
    solve("X <= 3;", cache=False)
    assert _cache_files() == []


def test_unwritable_cache_is_harmless(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FLASHRNN_JAX_CACHE_DIR", str(blocker))
    assert solve("X <= 3;", order=[("X", "largest")]) == [{"X": 3}]


# ----------------------------------------------------------------------------- packaging
def test_modules_do_not_import_jax():
    code = f"""
import sys, types
sys.modules["jax"] = None  # any 'import jax' fails
pkg = types.ModuleType("flashrnn_jax")
pkg.__path__ = [{str(REPO / "flashrnn_jax")!r}]
sys.modules["flashrnn_jax"] = pkg  # skip flashrnn_jax/__init__.py, which imports jax
from flashrnn_jax.constrint import solve
assert solve("X <= 3;", order=[("X", "largest")], cache=False) == [{{"X": 3}}]
import flashrnn_jax.constrint.builder, flashrnn_jax.constrint.cache
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
