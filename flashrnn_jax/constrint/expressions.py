"""The model representation shared by the parser, the builder, the solver and the cache.

A ConstrINT model (a :class:`Program`) is a conjunction of :class:`Constraint` objects; each
constraint is a disjunction of one or more :class:`Relation` objects; each relation compares two
terms. Terms are trees of

* :class:`Number` -- a non-negative integer literal,
* :class:`Variable` -- a named unknown ranging over the positive integers 1, 2, 3, ...,
* :class:`ValueList` -- ``[a, b, c]``: *some* value of the list (see below),
* :class:`Sum` and :class:`Product` -- n-ary ``+`` and ``*`` (always two or more operands),
* :class:`Power` -- ``base ^ exponent`` (integer power, ``0 ^ 0 == 1``).

A relation is ``left == right``, ``left <= right`` or the divisibility ``left % right == 0``
(op ``"%"``): *right divides left*, i.e. ``left == k * right`` for some integer ``k >= 0``; so
``X % 0 == 0`` holds only for ``X == 0`` and ``0 % X == 0`` always holds.

Value lists: every occurrence of a list stands for one value chosen from it, independently of
every other occurrence, and the relation holds when *some* choice makes it true. So
``X == [2, 4, 8]`` means ``X`` is 2, 4 or 8, and ``X * [1, 2] == 8`` means ``X`` is 8 or 4.
The choices are not part of a solution.

The parser produces trees that follow the language's precedence; the builder may produce any
tree (``(x + y) * 4`` from Python is a real grouping). :meth:`Program.to_text` writes a program
back in the language where that is possible; :meth:`Program.key` is an unambiguous canonical
serialisation of any program, used for caching.

All nodes are frozen dataclasses, so two programs are equal exactly when they have the same
structure; source positions and comments are not part of a program.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

__all__ = [
    "Expr",
    "Number",
    "Variable",
    "ValueList",
    "Sum",
    "Product",
    "Power",
    "Relation",
    "Constraint",
    "Program",
    "NotExpressibleError",
    "RELATION_OPS",
]

RELATION_OPS = ("==", "<=", "%")

# Precedence levels used when writing terms back as text.
_PREC_SUM, _PREC_PRODUCT, _PREC_POWER, _PREC_ATOM = 1, 2, 3, 4


class NotExpressibleError(ValueError):
    """A tree needs grouping that the language cannot write (parentheses are ignored in it)."""


class Expr:
    """Base class of term nodes."""

    __slots__ = ()

    def walk(self) -> Iterator["Expr"]:
        """This node and all nodes below it, depth first, left to right."""
        yield self
        for child in self.children():
            yield from child.walk()

    def children(self) -> tuple["Expr", ...]:
        return ()

    def variables(self) -> Iterator[str]:
        """Variable names in order of appearance (repeats included)."""
        for node in self.walk():
            if isinstance(node, Variable):
                yield node.name

    def to_text(self) -> str:
        return _write(self, _PREC_SUM)

    def key(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Number(Expr):
    value: int

    def __post_init__(self):
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0:
            raise ValueError(f"a number must be a non-negative int, got {self.value!r}")

    def key(self) -> str:
        return str(self.value)


@dataclass(frozen=True, slots=True)
class Variable(Expr):
    name: str

    def __post_init__(self):
        if not _is_name(self.name):
            raise ValueError(
                f"invalid variable name {self.name!r}: use letters, digits and '_', "
                "not starting with a digit"
            )

    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ValueList(Expr):
    """``[a, b, c]``; stored sorted and without repeats (it denotes a set of choices)."""

    values: tuple[int, ...]

    def __post_init__(self):
        vals = tuple(self.values)
        if not vals:
            raise ValueError("a value list needs at least one value")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"list values must be non-negative ints, got {v!r}")
        object.__setattr__(self, "values", tuple(sorted(set(vals))))

    def key(self) -> str:
        return "[" + ",".join(map(str, self.values)) + "]"


@dataclass(frozen=True, slots=True)
class Sum(Expr):
    terms: tuple[Expr, ...]

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        if len(self.terms) < 2:
            raise ValueError("a Sum needs at least two terms")

    def children(self):
        return self.terms

    def key(self) -> str:
        return "(+ " + " ".join(t.key() for t in self.terms) + ")"


@dataclass(frozen=True, slots=True)
class Product(Expr):
    factors: tuple[Expr, ...]

    def __post_init__(self):
        object.__setattr__(self, "factors", tuple(self.factors))
        if len(self.factors) < 2:
            raise ValueError("a Product needs at least two factors")

    def children(self):
        return self.factors

    def key(self) -> str:
        return "(* " + " ".join(t.key() for t in self.factors) + ")"


@dataclass(frozen=True, slots=True)
class Power(Expr):
    base: Expr
    exponent: Expr

    def children(self):
        return (self.base, self.exponent)

    def key(self) -> str:
        return f"(^ {self.base.key()} {self.exponent.key()})"


@dataclass(frozen=True, slots=True)
class Relation:
    """``left == right``, ``left <= right`` or, for op ``"%"``, ``left % right == 0``."""

    op: str
    left: Expr
    right: Expr

    def __post_init__(self):
        if self.op not in RELATION_OPS:
            raise ValueError(f"relation op must be one of {RELATION_OPS}, got {self.op!r}")

    def variables(self) -> Iterator[str]:
        yield from self.left.variables()
        yield from self.right.variables()

    def to_text(self) -> str:
        left, right = _write(self.left, _PREC_SUM), _write(self.right, _PREC_SUM)
        if self.op == "%":
            return f"{left} % {right} == 0"
        return f"{left} {self.op} {right}"

    def key(self) -> str:
        return f"({self.op} {self.left.key()} {self.right.key()})"


@dataclass(frozen=True, slots=True)
class Constraint:
    """A disjunction: true when at least one of its relations is true."""

    alternatives: tuple[Relation, ...]

    def __post_init__(self):
        object.__setattr__(self, "alternatives", tuple(self.alternatives))
        if not self.alternatives:
            raise ValueError("a constraint needs at least one relation")

    def variables(self) -> Iterator[str]:
        for rel in self.alternatives:
            yield from rel.variables()

    def to_text(self) -> str:
        return " | ".join(r.to_text() for r in self.alternatives) + ";"

    def key(self) -> str:
        if len(self.alternatives) == 1:
            return self.alternatives[0].key()
        return "(| " + " ".join(r.key() for r in self.alternatives) + ")"


@dataclass(frozen=True, slots=True)
class Program:
    """A conjunction of constraints; ``variables`` lists names in order of first appearance."""

    constraints: tuple[Constraint, ...]
    variables: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "constraints", tuple(self.constraints))
        seen: dict[str, None] = {}
        for c in self.constraints:
            for name in c.variables():
                seen.setdefault(name, None)
        object.__setattr__(self, "variables", tuple(seen))

    def to_text(self) -> str:
        """The program in the ConstrINT language, one constraint per line.

        Raises :class:`NotExpressibleError` for a tree (built with the builder) that would need
        parentheses, e.g. a sum inside a product: the language ignores parentheses.
        """
        return "".join(c.to_text() + "\n" for c in self.constraints)

    def key(self) -> str:
        """Canonical, unambiguous serialisation (prefix notation) of the whole program."""
        return ";".join(c.key() for c in self.constraints)


def _is_name(s: object) -> bool:
    if not isinstance(s, str) or not s:
        return False
    if not (s[0].isascii() and (s[0].isalpha() or s[0] == "_")):
        return False
    return all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in s)


def _write(node: Expr, context: int) -> str:
    """Write ``node`` where an operand of precedence ``context`` or higher is allowed."""
    if isinstance(node, Sum):  # nested sums/products are written flat: same meaning
        prec, text = _PREC_SUM, " + ".join(_write(t, _PREC_SUM) for t in node.terms)
    elif isinstance(node, Product):
        prec, text = _PREC_PRODUCT, " * ".join(_write(f, _PREC_PRODUCT) for f in node.factors)
    elif isinstance(node, Power):
        prec = _PREC_POWER
        text = f"{_write(node.base, _PREC_ATOM)} ^ {_write(node.exponent, _PREC_POWER)}"
    elif isinstance(node, Number):
        prec, text = _PREC_ATOM, str(node.value)
    elif isinstance(node, Variable):
        prec, text = _PREC_ATOM, node.name
    elif isinstance(node, ValueList):
        prec, text = _PREC_ATOM, "[" + ", ".join(map(str, node.values)) + "]"
    else:  # pragma: no cover - defensive
        raise TypeError(f"not a term node: {node!r}")
    if prec < context:
        raise NotExpressibleError(
            f"the term {node.key()} would need parentheses to be written as text, and ConstrINT "
            "ignores parentheses (they do not change precedence); expand it (for example "
            "a*(b+c) as a*b + a*c) or solve the model object directly"
        )
    return text
