"""A Python builder for ConstrINT models, so model code need not concatenate strings.

>>> m = Model()
>>> tile, warps = m.var("TILE"), m.var("WARPS")
>>> m.add(tile * 1024 <= 232448)
>>> m.add(tile % 64 == 0)                      # 64 divides TILE
>>> m.add(tile == [64, 128, 256])              # TILE is one of these
>>> m.add((warps == 1) | (tile <= 128))        # alternatives (parenthesise each relation)
>>> m.add(32 * warps <= 1024)
>>> m.solve(order=[(tile, "largest"), (warps, "largest")], cache=False)
[{'TILE': 128, 'WARPS': 32}]

Terms support ``+``, ``*`` and ``**`` (integer power) with non-negative ints, other terms and
lists of ints (a list is a value list, "one of these values"). Relations are ``==``, ``<=``,
``>=`` (written with the sides swapped), ``<`` and ``>`` (as ``a + 1 <= b``), and ``a % b == 0``
for divisibility. Python groups as usual, so ``(x + y) * 4`` really multiplies the sum -- the
builder makes trees, not text, and the solver handles any tree (:meth:`Model.to_text` then
cannot write it, since the text language ignores parentheses).

``-``, ``/``, ``!=`` and ``^`` raise ``TypeError`` (``^`` is Python's xor, with a lower
precedence than ``+``: use ``**``). Relations cannot be used as booleans, so a chained
``1 <= x <= 4`` raises instead of silently dropping half of it; write two constraints.

:meth:`Model.add` also takes ConstrINT text, and :attr:`Model.program` is the same
:class:`~flashrnn_jax.constrint.expressions.Program` that :func:`~flashrnn_jax.constrint.parse`
makes from the equivalent text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .expressions import (
    Constraint,
    Expr,
    Number,
    Power,
    Product,
    Program,
    Relation,
    Sum,
    ValueList,
    Variable,
)
from .parser import parse

__all__ = ["Model", "Term", "Var", "Rel", "Alternatives"]


def _as_expr(x: Any) -> Expr:
    if isinstance(x, Term):
        return x.expr
    if isinstance(x, bool):
        raise TypeError("booleans are not ConstrINT terms")
    if isinstance(x, int):
        if x < 0:
            raise ValueError(f"ConstrINT has no negative numbers, got {x}")
        return Number(x)
    if isinstance(x, (list, tuple, range, set, frozenset)):
        return ValueList(tuple(x))
    if isinstance(x, Expr):
        return x
    raise TypeError(f"cannot use {x!r} ({type(x).__name__}) in a ConstrINT term")


def _flat(cls, a: Expr, b: Expr) -> Expr:
    attr = "terms" if cls is Sum else "factors"
    items: list[Expr] = []
    for e in (a, b):
        items.extend(getattr(e, attr) if isinstance(e, cls) else (e,))
    return cls(tuple(items))


def _no(what: str, hint: str):
    def method(self, *args):
        raise TypeError(f"ConstrINT has no {what}: {hint}")
    return method


class Term:
    """A term of a model; combine with ``+``, ``*``, ``**`` and compare to make relations."""

    __slots__ = ("expr",)

    def __init__(self, expr: Expr):
        self.expr = expr

    def __add__(self, other):
        return Term(_flat(Sum, self.expr, _as_expr(other)))

    def __radd__(self, other):
        return Term(_flat(Sum, _as_expr(other), self.expr))

    def __mul__(self, other):
        return Term(_flat(Product, self.expr, _as_expr(other)))

    def __rmul__(self, other):
        return Term(_flat(Product, _as_expr(other), self.expr))

    def __pow__(self, other):
        return Term(Power(self.expr, _as_expr(other)))

    def __rpow__(self, other):
        return Term(Power(_as_expr(other), self.expr))

    def __mod__(self, other):
        return _Remainder(self.expr, _as_expr(other))

    def __rmod__(self, other):
        return _Remainder(_as_expr(other), self.expr)

    def __eq__(self, other):  # type: ignore[override]
        return Rel(Relation("==", self.expr, _as_expr(other)))

    def __le__(self, other):
        return Rel(Relation("<=", self.expr, _as_expr(other)))

    def __ge__(self, other):
        return Rel(Relation("<=", _as_expr(other), self.expr))

    def __lt__(self, other):
        return Rel(Relation("<=", _flat(Sum, self.expr, Number(1)), _as_expr(other)))

    def __gt__(self, other):
        return Rel(Relation("<=", _flat(Sum, _as_expr(other), Number(1)), self.expr))

    __hash__ = None  # type: ignore[assignment]
    __sub__ = __rsub__ = __neg__ = _no("'-'", "move the term to the other side")
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _no(
        "'/'", "multiply the other side, or use 'a % b == 0' for divisibility")
    __xor__ = __rxor__ = _no("'^' in Python", "use '**' for powers ('^' is xor in Python)")
    __or__ = __ror__ = __and__ = __rand__ = _no(
        "'|' between terms", "parenthesise the relations: (x == 1) | (y <= 3)")

    def __ne__(self, other):  # type: ignore[override]
        raise TypeError("ConstrINT has no '!=': use (a + 1 <= b) | (b + 1 <= a)")

    def __bool__(self):
        raise TypeError("a ConstrINT term has no truth value")

    def __repr__(self):
        return f"Term({self.expr.key()})"


class Var(Term):
    """A named variable (positive integer)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return self.expr.name  # type: ignore[attr-defined]

    def __repr__(self):
        return f"Var({self.name})"


class _Remainder:
    """``a % b``; only ``a % b == 0`` (b divides a) is a relation."""

    __slots__ = ("dividend", "divisor")

    def __init__(self, dividend: Expr, divisor: Expr):
        self.dividend = dividend
        self.divisor = divisor

    def __eq__(self, other):  # type: ignore[override]
        if isinstance(other, bool) or not isinstance(other, int) or other != 0:
            raise ValueError("only divisibility 'a % b == 0' is supported")
        return Rel(Relation("%", self.dividend, self.divisor))

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self):
        raise TypeError("'a % b' is only usable as 'a % b == 0'")


class Rel:
    """A relation; ``rel1 | rel2`` makes alternatives."""

    __slots__ = ("relation",)

    def __init__(self, relation: Relation):
        self.relation = relation

    def __or__(self, other):
        return Alternatives((self.relation,)) | other

    def __bool__(self):
        raise TypeError(
            "a ConstrINT relation has no truth value (a chained comparison such as "
            "'1 <= x <= 4' is not supported: add two constraints)")

    def __repr__(self):
        return f"Rel({self.relation.key()})"


class Alternatives:
    """A disjunction of relations; at least one must hold."""

    __slots__ = ("relations",)

    def __init__(self, relations: Sequence[Relation]):
        self.relations = tuple(relations)

    def __or__(self, other):
        if isinstance(other, Rel):
            return Alternatives(self.relations + (other.relation,))
        if isinstance(other, Alternatives):
            return Alternatives(self.relations + other.relations)
        return NotImplemented

    def __bool__(self):
        raise TypeError("alternatives have no truth value")

    def __repr__(self):
        return "Alternatives(" + " | ".join(r.key() for r in self.relations) + ")"


def _as_constraint(c: Any) -> Constraint:
    if isinstance(c, Rel):
        return Constraint((c.relation,))
    if isinstance(c, Alternatives):
        return Constraint(c.relations)
    if isinstance(c, Relation):
        return Constraint((c,))
    if isinstance(c, Constraint):
        return c
    raise TypeError(f"not a constraint: {c!r} (compare terms with ==, <=, >= or % ... == 0)")


class Model:
    """A ConstrINT model under construction."""

    def __init__(self, text: str = ""):
        self._constraints: list[Constraint] = []
        if text:
            self.add(text)

    def var(self, name: str) -> Var:
        """The variable called ``name`` (letters, digits, '_', not starting with a digit).

        A variable is part of the model once a constraint mentions it.
        """
        return Var(Variable(name))

    def vars(self, *names: str) -> tuple[Var, ...]:
        """Several variables at once: ``a, b = m.vars("A", "B")``."""
        return tuple(self.var(n) for n in names)

    @staticmethod
    def one_of(*values: int) -> Term:
        """A value list term: ``m.one_of(2, 4, 8)`` is ``[2, 4, 8]``."""
        if len(values) == 1 and not isinstance(values[0], int):
            values = tuple(values[0])
        return Term(ValueList(tuple(values)))

    def add(self, *constraints: Any) -> None:
        """Add relations, alternatives (``r1 | r2``) or ConstrINT text (any number of
        ``;``-terminated constraints)."""
        for c in constraints:
            if isinstance(c, str):
                self._constraints.extend(parse(c).constraints)
            else:
                self._constraints.append(_as_constraint(c))

    def add_alternatives(self, *relations: Any) -> None:
        """Add one constraint that holds when at least one of ``relations`` holds."""
        rels: list[Relation] = []
        for r in relations:
            rels.extend(_as_constraint(r).alternatives)
        self._constraints.append(Constraint(tuple(rels)))

    @property
    def program(self) -> Program:
        """The model as a :class:`Program` (what the solver and the cache work on)."""
        return Program(tuple(self._constraints))

    @property
    def variables(self) -> tuple[str, ...]:
        return self.program.variables

    def to_text(self) -> str:
        """The model in the ConstrINT language (see :meth:`Program.to_text`)."""
        return self.program.to_text()

    def solve(self, **kwargs) -> list[dict[str, int]]:
        """:func:`flashrnn_jax.constrint.solve` on this model (same keyword arguments)."""
        from .solver import solve

        return solve(self.program, **kwargs)

    def __repr__(self):
        return f"Model({len(self._constraints)} constraints)"
