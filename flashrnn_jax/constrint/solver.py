"""Depth-first search over propagated domains, and :func:`solve`, the entry point.

Search order
============

Variables are decided one at a time in a fixed sequence: first the ``order`` variables in the
order given, then every other variable in order of first appearance in the model. Each ``order``
variable tries its values from the largest or from the smallest, as asked; every other variable
from the smallest. After each decision the domains are propagated
(:mod:`~flashrnn_jax.constrint.propagation`), so values that cannot be part of a solution are
skipped without being tried one by one: a variable whose domain is ``[1, 2**30]`` but must be a
multiple of 64 and at most ``232448 // 1024`` costs a handful of steps.

Solutions therefore come out sorted lexicographically by that sequence (descending for
``"largest"`` variables, ascending otherwise); the first solution is the best one in that order.

Unbounded variables
===================

Every variable ranges over 1, 2, 3, ... with no upper limit unless constraints give one. The
search never walks an infinite domain:

* a ``"largest"`` variable with no upper bound after propagation raises
  :class:`UnboundedVariableError` (there is no largest value to start from);
* a ``"smallest"`` (or unordered) variable with no upper bound gets its smallest consistent
  value; if the search must go on to the *next* value of such a variable -- because the first
  led to no solution (or only an excluded one), or because more solutions are wanted -- it
  raises :class:`UnboundedVariableError` instead of possibly running forever.

So a model whose variables are all bounded (directly, ``X <= 1024``, or through other
constraints, ``X * 4 <= Y; Y <= 64``) always terminates, and asking for more solutions than
exist returns all of them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

from . import cache as _cache
from .expressions import Program
from .parser import parse
from .propagation import INF, CompiledModel, narrow

__all__ = ["solve", "UnboundedVariableError", "SOLVER_VERSION"]

#: Part of every cache key; bump it whenever the meaning or the order of results changes.
SOLVER_VERSION = 1

_DIRECTIONS = ("largest", "smallest")


class UnboundedVariableError(ValueError):
    """The search would have to enumerate a variable that has no upper bound.

    Attribute ``variable``: the name of that variable.
    """

    def __init__(self, variable: str, reason: str):
        self.variable = variable
        super().__init__(
            f"variable {variable} has no upper bound after propagation, so the search cannot "
            f"{reason}; bound it with a constraint such as '{variable} <= 1024;'"
        )


class _Search:
    def __init__(self, model: CompiledModel, order: Sequence[tuple[str, str]],
                 num_solutions: int | None, exclude: Sequence[tuple[tuple[str, int], ...]]):
        self.model = model
        names = model.names
        ordered = [name for name, _ in order]
        rest = [name for name in names if name not in set(ordered)]
        self.seq = [model.index(n) for n in ordered + rest]
        self.largest = [d == "largest" for _, d in order] + [False] * len(rest)
        position = {v: p for p, v in enumerate(self.seq)}
        # Each exclusion is checked once its last variable (in search order) is decided.
        self.exclusions: list[list[tuple[tuple[int, int], ...]]] = [[] for _ in self.seq]
        self.exclude_all = False
        for entry in exclude:
            if not entry:
                self.exclude_all = True
                continue
            idx = tuple((model.index(k), v) for k, v in entry)
            last = max(position[i] for i, _ in idx)
            self.exclusions[last].append(idx)
        self.limit = num_solutions
        self.solutions: list[dict[str, int]] = []
        self.done = num_solutions is not None and num_solutions <= 0

    def run(self) -> list[dict[str, int]]:
        model = self.model
        if self.done or self.exclude_all or model.unsatisfiable:
            return []
        lo, hi, vals = model.initial_domains()
        if not model.propagate(lo, hi, vals):
            return []
        needed = len(self.seq) + (model.n_vars - model.n_named) + 100
        old_limit = sys.getrecursionlimit()
        if needed + 200 > old_limit:
            sys.setrecursionlimit(needed + 1000)
        try:
            self._dfs(0, lo, hi, vals)
        finally:
            if needed + 200 > old_limit:
                sys.setrecursionlimit(old_limit)
        return self.solutions

    def _excluded(self, pos: int, lo: list) -> bool:
        for entry in self.exclusions[pos]:
            for i, v in entry:
                if lo[i] != v:
                    break
            else:
                return True
        return False

    def _dfs(self, pos: int, lo: list, hi: list, vals: list) -> None:
        if pos == len(self.seq):
            self._leaf(lo, hi, vals)
            return
        model = self.model
        i = self.seq[pos]
        largest = self.largest[pos]
        while True:
            l = lo[i]
            h = hi[i]
            if largest:
                if h >= INF:
                    raise UnboundedVariableError(model.names[i],
                                                 "start from its largest value")
                v = h
            else:
                v = l
            if l == h:
                if not self._excluded(pos, lo):
                    self._dfs(pos + 1, lo, hi, vals)
                return
            lo2, hi2, vals2 = lo[:], hi[:], vals[:]
            lo2[i] = hi2[i] = v
            if vals2[i] is not None:
                vals2[i] = (v,)
            if model.propagate(lo2, hi2, vals2, (i,)) and not self._excluded(pos, lo2):
                self._dfs(pos + 1, lo2, hi2, vals2)
                if self.done:
                    return
            # Remove v and go on with the rest of the domain.
            if h >= INF:
                raise UnboundedVariableError(
                    model.names[i], f"go past the value {v} to look for further solutions")
            if largest:
                ok = narrow(i, l, v - 1, lo, hi, vals)
            else:
                ok = narrow(i, v + 1, h, lo, hi, vals)
            if not ok or not model.propagate(lo, hi, vals, (i,)):
                return

    def _leaf(self, lo: list, hi: list, vals: list) -> None:
        model = self.model
        if model.n_vars > model.n_named:
            point = _complete_aux(model, lo, hi, vals)
            if point is None:
                return
        else:
            point = lo
            if not model.satisfied(point):
                return
        self.solutions.append({name: point[k] for k, name in enumerate(model.names)})
        if self.limit is not None and len(self.solutions) >= self.limit:
            self.done = True


def _complete_aux(model: CompiledModel, lo: list, hi: list, vals: list) -> list | None:
    """Find values for the value-list choices (all finite) that satisfy every constraint."""
    aux = [v for v in range(model.n_named, model.n_vars)]

    def dfs(k: int, lo, hi, vals):
        while k < len(aux) and lo[aux[k]] == hi[aux[k]]:
            k += 1
        if k == len(aux):
            return lo if model.satisfied(lo) else None
        i = aux[k]
        candidates = vals[i] if vals[i] is not None else range(lo[i], hi[i] + 1)
        for v in candidates:
            lo2, hi2, vals2 = lo[:], hi[:], vals[:]
            lo2[i] = hi2[i] = v
            vals2[i] = (v,)
            if model.propagate(lo2, hi2, vals2, (i,)):
                found = dfs(k + 1, lo2, hi2, vals2)
                if found is not None:
                    return found
        return None

    return dfs(0, lo, hi, vals)


def assignment_satisfies(model: CompiledModel, assignment: Mapping[str, int]) -> bool:
    """Whether a complete assignment of the named variables satisfies the model."""
    lo, hi, vals = model.initial_domains()
    for k, name in enumerate(model.names):
        v = assignment[name]
        if not (lo[k] <= v <= hi[k]) or (vals[k] is not None and v not in vals[k]):
            return False
        lo[k] = hi[k] = v
        if vals[k] is not None:
            vals[k] = (v,)
    if model.unsatisfiable or not model.propagate(lo, hi, vals):
        return False
    if model.n_vars > model.n_named:
        return _complete_aux(model, lo, hi, vals) is not None
    return model.satisfied(lo)


# ----------------------------------------------------------------------------- front end
def _as_program(model: Any) -> Program:
    if isinstance(model, str):
        return parse(model)
    if isinstance(model, Program):
        return model
    program = getattr(model, "program", None)  # a builder Model
    if isinstance(program, Program):
        return program
    raise TypeError(
        f"solve() takes ConstrINT text, a Program or a Model, got {type(model).__name__}")


def _variable_name(var: Any) -> str:
    if isinstance(var, str):
        return var
    name = getattr(var, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"expected a variable name or a builder variable, got {var!r}")


def _normalize_order(program: Program, order: Any) -> tuple[tuple[str, str], ...]:
    items: Iterable = order.items() if isinstance(order, Mapping) else order
    if isinstance(items, str):
        raise TypeError("order must be a sequence of (variable, 'largest' | 'smallest') pairs")
    known = set(program.variables)
    result, seen = [], set()
    for item in items:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise TypeError(
                "order must be a sequence of (variable, 'largest' | 'smallest') pairs, "
                f"got the item {item!r}")
        name = _variable_name(item[0])
        direction = item[1]
        if direction not in _DIRECTIONS:
            raise ValueError(
                f"order direction for {name} must be 'largest' or 'smallest', got {direction!r}")
        if name not in known:
            raise ValueError(
                f"order names {name!r}, which is not a variable of the model "
                f"(variables: {', '.join(program.variables) or 'none'})")
        if name in seen:
            raise ValueError(f"order names {name!r} twice")
        seen.add(name)
        result.append((name, direction))
    return tuple(result)


def _normalize_exclude(program: Program, exclude: Any) -> tuple[tuple[tuple[str, int], ...], ...]:
    if isinstance(exclude, Mapping):
        raise TypeError("exclude must be a sequence of assignments (dicts), not one dict")
    known = set(program.variables)
    result = []
    for entry in exclude:
        if not isinstance(entry, Mapping):
            raise TypeError(f"each exclude entry must be a dict of variable values, got {entry!r}")
        items = []
        for k, v in entry.items():
            name = _variable_name(k)
            if name not in known:
                raise ValueError(
                    f"exclude names {name!r}, which is not a variable of the model "
                    f"(variables: {', '.join(program.variables) or 'none'})")
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"exclude value for {name} must be an int, got {v!r}")
            items.append((name, v))
        result.append(tuple(sorted(items)))
    return tuple(sorted(set(result)))


def _valid_cached(program: Program, model: CompiledModel, solutions: Any,
                  num_solutions: int | None,
                  exclude: tuple[tuple[tuple[str, int], ...], ...]) -> bool:
    if not isinstance(solutions, list):
        return False
    if num_solutions is not None and len(solutions) > num_solutions:
        return False
    names = set(program.variables)
    seen = set()
    for sol in solutions:
        if not isinstance(sol, dict) or set(sol) != names:
            return False
        if any(isinstance(v, bool) or not isinstance(v, int) for v in sol.values()):
            return False
        frozen = tuple(sorted(sol.items()))
        if frozen in seen:
            return False
        seen.add(frozen)
        for entry in exclude:
            if all(sol[k] == v for k, v in entry):
                return False
        if not assignment_satisfies(model, sol):
            return False
    return True


def solve(model: Any, *, order: Any = (), num_solutions: int | None = 1,
          exclude: Iterable[Mapping[str, int]] = (), cache: bool = True) -> list[dict[str, int]]:
    """Solve a ConstrINT model and return up to ``num_solutions`` solutions.

    ``model``: ConstrINT text (see :mod:`flashrnn_jax.constrint.parser` for the language), a
    :class:`~flashrnn_jax.constrint.expressions.Program`, or a builder
    :class:`~flashrnn_jax.constrint.builder.Model`.

    ``order``: ``(variable, "largest" | "smallest")`` pairs (or a dict of them). These
    variables are decided first, in that order, each trying its values from the largest or the
    smallest; the other variables follow in order of appearance, smallest first. Solutions
    come in that order, so the first one is the best.

    ``num_solutions``: how many solutions to return (``None``: all of them). Fewer come back
    when fewer exist; an unsatisfiable model gives ``[]``.

    ``exclude``: assignments to skip, as dicts of variable values (usually of the ``order``
    variables): a solution that agrees with any one of them on all of its keys is not returned.

    ``cache``: look the answer up in, and store it into, the on-disk cache
    (:mod:`flashrnn_jax.constrint.cache`).

    Every solution assigns every variable of the model (value-list choices are not variables)
    and satisfies every constraint. Raises :class:`ConstrintSyntaxError` for bad text and
    :class:`UnboundedVariableError` where the search would have to enumerate a variable with no
    upper bound (see the module documentation).

    >>> solve("X * 1024 <= 232448; X % 64 == 0; X == [64, 128, 256];",
    ...       order=[("X", "largest")], cache=False)
    [{'X': 128}]
    """
    program = _as_program(model)
    order_n = _normalize_order(program, order)
    exclude_n = _normalize_exclude(program, exclude)
    if num_solutions is not None:
        if isinstance(num_solutions, bool) or not isinstance(num_solutions, int):
            raise TypeError(f"num_solutions must be an int or None, got {num_solutions!r}")
        if num_solutions < 0:
            raise ValueError(f"num_solutions must be >= 0, got {num_solutions}")
    compiled = CompiledModel(program)
    request = None
    if cache:
        request = {
            "solver_version": SOLVER_VERSION,
            "program": program.key(),
            "order": [list(p) for p in order_n],
            "num_solutions": num_solutions,
            "exclude": [[list(item) for item in entry] for entry in exclude_n],
        }
        cached = _cache.load(request)
        if cached is not None and _valid_cached(program, compiled, cached, num_solutions,
                                                exclude_n):
            return [{name: sol[name] for name in program.variables} for sol in cached]
    solutions = _Search(compiled, order_n, num_solutions, exclude_n).run()
    if cache:
        _cache.store(request, solutions)
    return solutions
