"""Domains and constraint propagation for ConstrINT.

A :class:`CompiledModel` turns a :class:`~flashrnn_jax.constrint.expressions.Program` into
integer-indexed variables and compiled constraints, and narrows variable domains to a fixpoint:

* A domain is an interval ``[lo, hi]`` (``hi`` may be :data:`INF`, "no upper bound yet") or, when
  it is known to be a small explicit set, a sorted tuple of values whose ends are ``lo`` and
  ``hi``. Named variables start as ``[1, INF]``; every value-list occurrence becomes an auxiliary
  variable whose domain is the list.
* Each relation is revised with interval arithmetic over its term trees, forwards (the range of
  every sub-term) and backwards (what each operand must be for the relation to hold): for
  ``A * B <= C``, ``A <= C.max // B.min``; for ``A + B == C``, ``A >= C.min - B.max``; for
  ``2 ^ K <= N``, ``K <= log2(N.max)``. Nothing is enumerated, so domains of 2^30 values cost the
  same as domains of ten.
* Divisibility ``A % B == 0`` with ``B`` fixed rounds ``A``'s bounds to multiples of ``B`` (and
  filters an explicit set); with ``A`` fixed it bounds ``B`` by ``A`` and, for a variable ``B``,
  makes ``B``'s domain the set of divisors of ``A``.
* ``X == Y`` between two variables intersects their domains (so ``X == [2, 4, 8]`` gives ``X``
  the set {2, 4, 8}).
* Disjunctions are revised constructively: alternatives that cannot hold are dropped, a single
  survivor is enforced, and otherwise each variable keeps the hull of what the survivors allow.
* Constraints where bounds reasoning is weak (disjunctions, divisibility by a variable, nonlinear
  equalities, repeated variables) are additionally made arc consistent by enumerating the
  supports when the product of their variables' domain sizes is at most :data:`ENUMERATION_LIMIT`.

Propagation is only pruning: the search checks every complete assignment exactly, so stopping
early (see :data:`REVISION_BUDGET_PER_CONSTRAINT`) never produces a wrong answer.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from functools import lru_cache
from itertools import product as _cartesian

from .expressions import (
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

__all__ = ["INF", "Inconsistent", "CompiledModel", "ENUMERATION_LIMIT", "narrow"]

#: Stands for "no upper bound". Every value -- of a variable and of every sub-term -- must stay
#: below it: numbers in the model of 2**256 or more are rejected, and assignments that would make
#: some term reach it are treated as violating the constraint.
INF = 1 << 256
_INF_BITS = 256

#: Arc consistency by enumeration is used where the product of domain sizes is at most this.
ENUMERATION_LIMIT = 16

#: One propagation call stops after this many revisions per constraint (guards against bounds
#: that creep by one step at a time on huge domains); the search stays exact regardless.
REVISION_BUDGET_PER_CONSTRAINT = 50

#: Divisor sets are computed for fixed dividends below this.
_DIVISOR_LIMIT = 1 << 32

K_CONST, K_VAR, K_ADD, K_MUL, K_POW = range(5)
OP_EQ, OP_LE, OP_DIV = range(3)
_OPS = {"==": OP_EQ, "<=": OP_LE, "%": OP_DIV}


class Inconsistent(Exception):
    """A domain became empty: the current sub-problem has no solution."""


# ----------------------------------------------------------------------------- integer helpers
def safe_pow(b: int, e: int) -> int:
    """``b ** e`` for non-negative ints, saturating at :data:`INF`; ``0 ** 0 == 1``."""
    if e == 0:
        return 1
    if b <= 1:
        return b
    if b >= INF or e >= INF or (b.bit_length() - 1) * e >= _INF_BITS:
        return INF
    r = b ** e
    return r if r < INF else INF


def iroot_floor(n: int, k: int) -> int:
    """Largest r >= 0 with r ** k <= n (k >= 1)."""
    if n < 2 or k == 1:
        return n
    if n >= INF:
        return INF
    if k >= n.bit_length():
        return 1
    x = 1 << -(-n.bit_length() // k)  # >= the root; Newton's iteration decreases to it
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def iroot_ceil(n: int, k: int) -> int:
    """Smallest r >= 0 with r ** k >= n (k >= 1)."""
    r = iroot_floor(n, k)
    return r if r >= INF or r ** k >= n else r + 1


def ilog_floor(n: int, b: int) -> int:
    """Largest e >= 0 with b ** e <= n (b >= 2); -1 when n == 0."""
    if n <= 0:
        return -1
    if n >= INF:
        return INF
    e = int(math.log(n, b))
    while e > 0 and b ** e > n:
        e -= 1
    while b ** (e + 1) <= n:
        e += 1
    return e


def ilog_ceil(n: int, b: int) -> int:
    """Smallest e >= 0 with b ** e >= n (b >= 2)."""
    if n <= 1:
        return 0
    return ilog_floor(n - 1, b) + 1


@lru_cache(maxsize=4096)
def divisors(n: int) -> tuple[int, ...]:
    """Sorted divisors of ``n`` (n >= 1)."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return tuple(small + large[::-1])


def _divides(d: int, x: int) -> bool:
    return x == 0 if d == 0 else x % d == 0


# ----------------------------------------------------------------------------- term nodes
class Node:
    """A compiled term node; ``lo``/``hi`` hold its range after a forward pass."""

    __slots__ = ("kind", "kids", "idx", "lo", "hi", "value")

    def __init__(self, kind, kids=(), idx=-1, value=0):
        if value >= INF:
            raise ValueError(
                f"the number {value} is too large: ConstrINT supports values below 2**256")
        self.kind = kind
        self.kids = kids
        self.idx = idx
        self.lo = value
        self.hi = value
        self.value = value


def _forward(n: Node, lo: list, hi: list) -> None:
    k = n.kind
    if k == K_VAR:
        i = n.idx
        n.lo = lo[i]
        n.hi = hi[i]
    elif k == K_ADD:
        l = h = 0
        for c in n.kids:
            _forward(c, lo, hi)
            l += c.lo
            h += c.hi
        if l >= INF:
            raise Inconsistent
        n.lo = l
        n.hi = h if h < INF else INF
    elif k == K_MUL:
        l = h = 1
        for c in n.kids:
            _forward(c, lo, hi)
            l *= c.lo
            h *= c.hi
        if l >= INF:
            raise Inconsistent
        n.lo = l
        n.hi = h if h < INF else INF
    elif k == K_POW:
        b, e = n.kids
        _forward(b, lo, hi)
        _forward(e, lo, hi)
        x = safe_pow(b.lo, e.lo)
        y = safe_pow(b.lo, e.hi)
        n.lo = x if x < y else y
        if n.lo >= INF:
            raise Inconsistent
        x = safe_pow(b.hi, e.lo)
        y = safe_pow(b.hi, e.hi)
        n.hi = x if x > y else y


def _set_domain(i: int, s: tuple, lo: list, hi: list, vals: list, changed: list) -> None:
    """Make variable ``i``'s domain the non-empty sorted tuple ``s`` (a subset of it)."""
    if not s:
        raise Inconsistent
    old = vals[i]
    if old is not None and len(old) == len(s):
        return
    vals[i] = s
    lo[i] = s[0]
    hi[i] = s[-1]
    changed.append(i)


def _narrow_var(i: int, a: int, b: int, lo: list, hi: list, vals: list, changed: list) -> None:
    l = lo[i]
    h = hi[i]
    if a <= l and b >= h:
        return
    if a < l:
        a = l
    if b > h:
        b = h
    if a > b or a >= INF:  # values of 2**256 and more are outside the supported range
        raise Inconsistent
    s = vals[i]
    if s is not None:
        j = bisect_left(s, a)
        k = bisect_right(s, b)
        if j >= k:
            raise Inconsistent
        s = s[j:k]
        vals[i] = s
        a = s[0]
        b = s[-1]
    lo[i] = a
    hi[i] = b
    changed.append(i)


def narrow(i: int, a: int, b: int, lo: list, hi: list, vals: list) -> bool:
    """Restrict variable ``i`` to ``[a, b]`` in place; False if its domain became empty."""
    try:
        _narrow_var(i, a, b, lo, hi, vals, [])
    except Inconsistent:
        return False
    return True


def _backward(n: Node, a: int, b: int, lo: list, hi: list, vals: list, changed: list) -> None:
    """Narrow the sub-terms of ``n`` so that its value can lie in ``[a, b]``."""
    nl = n.lo
    nh = n.hi
    if a <= nl and b >= nh:
        return
    if a < nl:
        a = nl
    if b > nh:
        b = nh
    if a > b:
        raise Inconsistent
    k = n.kind
    if k == K_VAR:
        _narrow_var(n.idx, a, b, lo, hi, vals, changed)
    elif k == K_ADD:
        kids = n.kids
        slo = 0
        shi = 0  # sum of the finite upper bounds
        ninf = 0
        for c in kids:
            slo += c.lo
            if c.hi >= INF:
                ninf += 1
            else:
                shi += c.hi
        for c in kids:
            if c.hi >= INF:
                oinf = ninf - 1
                ohi = shi
            else:
                oinf = ninf
                ohi = shi - c.hi
            ca = a - ohi if oinf == 0 else 0
            cb = b - (slo - c.lo) if b < INF else INF
            _backward(c, ca, cb, lo, hi, vals, changed)
    elif k == K_MUL:
        kids = n.kids
        for c in kids:
            olo = 1
            ohi = 1
            for d in kids:
                if d is not c:
                    olo *= d.lo
                    ohi *= d.hi
            if b >= INF or olo == 0:
                cb = INF
            else:
                cb = b // olo
            if a <= 0:
                ca = 0
            elif ohi == 0:
                raise Inconsistent
            elif ohi >= INF:
                ca = 1
            else:
                ca = -(-a // ohi)
            _backward(c, ca, cb, lo, hi, vals, changed)
    elif k == K_POW:
        base, ex = n.kids
        bl, bh, el, eh = base.lo, base.hi, ex.lo, ex.hi
        # exponent
        e_hi = ilog_floor(b, bl) if (bl >= 2 and b < INF) else INF
        if a >= 2 and 2 <= bh < INF:
            e_lo = ilog_ceil(a, bh)
        else:
            e_lo = 0
        # base
        b_hi = iroot_floor(b, el) if (el >= 1 and b < INF) else INF
        if a >= 2 and 1 <= eh < INF:
            b_lo = iroot_ceil(a, eh)
        elif a >= 2:
            b_lo = 2
        elif a >= 1 and el >= 1:
            b_lo = 1
        else:
            b_lo = 0
        _backward(base, b_lo, b_hi, lo, hi, vals, changed)
        _backward(ex, e_lo, e_hi, lo, hi, vals, changed)
    # K_CONST: a <= b inside [value, value] already checked


def _value(n: Node, point: list) -> int:
    """Exact value of a term under a complete assignment ``point``."""
    k = n.kind
    if k == K_CONST:
        return n.value
    if k == K_VAR:
        return point[n.idx]
    if k == K_ADD:
        s = 0
        for c in n.kids:
            s += _value(c, point)
        return s
    if k == K_MUL:
        p = 1
        for c in n.kids:
            p *= _value(c, point)
        return p
    return safe_pow(_value(n.kids[0], point), _value(n.kids[1], point))


# ----------------------------------------------------------------------------- relations
class CompiledRelation:
    __slots__ = ("op", "left", "right", "var_var", "vars", "weak")

    def __init__(self, op: int, left: Node, right: Node):
        self.op = op
        self.left = left
        self.right = right
        self.var_var = left.kind == K_VAR and right.kind == K_VAR
        occurrences = _var_occurrences(left) + _var_occurrences(right)
        self.vars = tuple(dict.fromkeys(occurrences))
        nonlinear = _has_nonlinear(left) or _has_nonlinear(right)
        # Where interval reasoning is exact enough (linear relations, divisibility of a
        # variable by a constant) enumeration would only cost time.
        self.weak = (len(occurrences) != len(self.vars)
                     or (op == OP_DIV and not (right.kind == K_CONST and left.kind == K_VAR))
                     or (op == OP_EQ and nonlinear))

    def holds(self, point: list) -> bool:
        l = _value(self.left, point)
        r = _value(self.right, point)
        if l >= INF or r >= INF:
            return False  # outside the supported range
        op = self.op
        if op == OP_LE:
            return l <= r
        if op == OP_EQ:
            return l == r
        return _divides(r, l)

    def revise(self, lo: list, hi: list, vals: list, changed: list) -> None:
        L = self.left
        R = self.right
        _forward(L, lo, hi)
        _forward(R, lo, hi)
        op = self.op
        if op == OP_LE:
            if L.lo > R.hi:
                raise Inconsistent
            _backward(L, 0, R.hi, lo, hi, vals, changed)
            _backward(R, L.lo, INF, lo, hi, vals, changed)
        elif op == OP_EQ:
            if self.var_var:
                _equate_vars(L.idx, R.idx, lo, hi, vals, changed)
                return
            a = L.lo if L.lo > R.lo else R.lo
            b = L.hi if L.hi < R.hi else R.hi
            if a > b:
                raise Inconsistent
            _backward(L, a, b, lo, hi, vals, changed)
            _backward(R, a, b, lo, hi, vals, changed)
        else:
            self._revise_divides(L, R, lo, hi, vals, changed)

    @staticmethod
    def _revise_divides(L, R, lo, hi, vals, changed):
        # R divides L
        rl, rh, ll, lh = R.lo, R.hi, L.lo, L.hi
        if rl == rh:
            d = rl
            if d == 0:
                _backward(L, 0, 0, lo, hi, vals, changed)
            elif d > 1:
                a = -(-ll // d) * d
                b = (lh // d) * d if lh < INF else INF
                if a > b:
                    raise Inconsistent
                if L.kind == K_VAR and vals[L.idx] is not None:
                    _set_domain(L.idx, tuple(v for v in vals[L.idx] if v % d == 0),
                                lo, hi, vals, changed)
                else:
                    _backward(L, a, b, lo, hi, vals, changed)
            return
        if ll >= 1:
            # L is a positive multiple of R: 1 <= R <= L, and L >= R.
            _backward(R, 1, lh, lo, hi, vals, changed)
            _backward(L, rl, INF, lo, hi, vals, changed)
            if ll == lh and R.kind == K_VAR:
                i = R.idx
                s = vals[i]
                if s is not None:
                    _set_domain(i, tuple(v for v in s if ll % v == 0), lo, hi, vals, changed)
                elif ll < _DIVISOR_LIMIT:
                    ds = divisors(ll)
                    _set_domain(i, tuple(ds[bisect_left(ds, lo[i]):bisect_right(ds, hi[i])]),
                                lo, hi, vals, changed)


def _equate_vars(i, j, lo, hi, vals, changed):
    if i == j:
        return
    a = lo[i] if lo[i] > lo[j] else lo[j]
    b = hi[i] if hi[i] < hi[j] else hi[j]
    if a > b:
        raise Inconsistent
    si, sj = vals[i], vals[j]
    if si is None and sj is None:
        _narrow_var(i, a, b, lo, hi, vals, changed)
        _narrow_var(j, a, b, lo, hi, vals, changed)
        return
    if si is None:
        s = sj[bisect_left(sj, a):bisect_right(sj, b)]
    elif sj is None:
        s = si[bisect_left(si, a):bisect_right(si, b)]
    elif si == sj:
        return
    else:
        other = set(sj)
        s = tuple(v for v in si if v in other)
    if not s:
        raise Inconsistent
    for k in (i, j):
        old = vals[k]
        if old is None or len(old) != len(s):
            vals[k] = s
            lo[k] = s[0]
            hi[k] = s[-1]
            changed.append(k)


def _var_occurrences(n: Node) -> list:
    if n.kind == K_VAR:
        return [n.idx]
    out = []
    for c in n.kids:
        out.extend(_var_occurrences(c))
    return out


def _has_nonlinear(n: Node) -> bool:
    if n.kind == K_POW:
        return True
    if n.kind == K_MUL:
        return sum(1 for c in n.kids if c.kind != K_CONST) >= 2 or any(
            _has_nonlinear(c) for c in n.kids)
    return any(_has_nonlinear(c) for c in n.kids)


class CompiledConstraint:
    """A disjunction of compiled relations."""

    __slots__ = ("relations", "vars", "weak")

    def __init__(self, relations: list[CompiledRelation]):
        self.relations = tuple(relations)
        self.vars = tuple(dict.fromkeys(v for r in relations for v in r.vars))
        self.weak = len(relations) > 1 or relations[0].weak

    def holds(self, point: list) -> bool:
        for r in self.relations:
            if r.holds(point):
                return True
        return False

    def revise(self, lo: list, hi: list, vals: list, changed: list) -> None:
        rels = self.relations
        if len(rels) == 1:
            rels[0].revise(lo, hi, vals, changed)
        else:
            self._revise_disjunction(lo, hi, vals, changed)
        if self.weak:
            self._enumerate(lo, hi, vals, changed)

    def _revise_disjunction(self, lo, hi, vals, changed):
        survivors = []
        for r in self.relations:
            lo2, hi2, vals2, ch = lo[:], hi[:], vals[:], []
            try:
                r.revise(lo2, hi2, vals2, ch)
            except Inconsistent:
                continue
            survivors.append((lo2, hi2, vals2, set(ch)))
        if not survivors:
            raise Inconsistent
        if len(survivors) == 1:
            lo2, hi2, vals2, ch = survivors[0]
            for v in ch:
                if lo2[v] != lo[v] or hi2[v] != hi[v] or vals2[v] is not vals[v]:
                    lo[v], hi[v], vals[v] = lo2[v], hi2[v], vals2[v]
                    changed.append(v)
            return
        common = set.intersection(*(s[3] for s in survivors))
        for v in common:
            nl = min(s[0][v] for s in survivors)
            nh = max(s[1][v] for s in survivors)
            if vals[v] is not None and all(s[2][v] is not None for s in survivors):
                union = set()
                for s in survivors:
                    union.update(s[2][v])
                if len(union) < len(vals[v]):
                    _set_domain(v, tuple(sorted(union)), lo, hi, vals, changed)
            elif nl > lo[v] or nh < hi[v]:
                _narrow_var(v, nl, nh, lo, hi, vals, changed)

    def _enumerate(self, lo, hi, vals, changed):
        size = 1
        for v in self.vars:
            s = vals[v]
            size *= len(s) if s is not None else hi[v] - lo[v] + 1
            if size > ENUMERATION_LIMIT:
                return
        if size == 1:
            if not self.holds(lo):
                raise Inconsistent
            return
        vs = self.vars
        domains = [vals[v] if vals[v] is not None else range(lo[v], hi[v] + 1) for v in vs]
        supported = [set() for _ in vs]
        point = lo[:]  # only the constraint's variables are read
        for combo in _cartesian(*domains):
            for v, x in zip(vs, combo):
                point[v] = x
            if self.holds(point):
                for k, x in enumerate(combo):
                    supported[k].add(x)
        if not supported[0]:
            raise Inconsistent
        for k, v in enumerate(vs):
            if len(supported[k]) < len(domains[k]):
                _set_domain(v, tuple(sorted(supported[k])), lo, hi, vals, changed)


# ----------------------------------------------------------------------------- the model
class CompiledModel:
    """Variables (named ones first, then one per value-list occurrence) and constraints."""

    def __init__(self, program: Program):
        self.names: tuple[str, ...] = program.variables
        self.n_named = len(self.names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.init_lo: list = [1] * self.n_named
        self.init_hi: list = [INF] * self.n_named
        self.init_vals: list = [None] * self.n_named
        self.unsatisfiable = False
        constraints: list[CompiledConstraint] = []
        for c in program.constraints:
            if len(c.alternatives) == 1 and self._unary(c.alternatives[0]):
                continue
            rels = [CompiledRelation(_OPS[r.op], self._node(r.left), self._node(r.right))
                    for r in c.alternatives]
            cc = CompiledConstraint(rels)
            if not cc.vars:
                if not cc.holds([]):
                    self.unsatisfiable = True
                continue
            constraints.append(cc)
        self.constraints = constraints
        self.n_vars = len(self.init_lo)
        self.watchers: list[list[int]] = [[] for _ in range(self.n_vars)]
        for ci, cc in enumerate(constraints):
            for v in cc.vars:
                self.watchers[v].append(ci)
        self.budget = REVISION_BUDGET_PER_CONSTRAINT * max(1, len(constraints)) + 100

    # -- compilation
    def index(self, name: str) -> int:
        return self._index[name]

    def _new_aux(self, values: tuple) -> int:
        if values[-1] >= INF:
            raise ValueError(
                f"the number {values[-1]} is too large: ConstrINT supports values below 2**256")
        self.init_lo.append(values[0])
        self.init_hi.append(values[-1])
        self.init_vals.append(tuple(values))
        return len(self.init_lo) - 1

    def _node(self, e: Expr) -> Node:
        if isinstance(e, Number):
            return Node(K_CONST, value=e.value)
        if isinstance(e, Variable):
            return Node(K_VAR, idx=self._index[e.name])
        if isinstance(e, ValueList):
            if len(e.values) == 1:
                return Node(K_CONST, value=e.values[0])
            return Node(K_VAR, idx=self._new_aux(e.values))
        if isinstance(e, (Sum, Product)):
            kind = K_ADD if isinstance(e, Sum) else K_MUL
            kids: list[Node] = []
            for child in e.children():
                node = self._node(child)
                if node.kind == kind:
                    kids.extend(node.kids)  # flatten (a + b) + c
                else:
                    kids.append(node)
            consts = [k.lo for k in kids if k.kind == K_CONST]
            others = [k for k in kids if k.kind != K_CONST]
            if kind == K_ADD:
                c = sum(consts)
                if c or not others:
                    others.append(Node(K_CONST, value=c))
            else:
                c = math.prod(consts)
                if c == 0 or not others:
                    return Node(K_CONST, value=c)
                if c != 1:
                    others.append(Node(K_CONST, value=c))
            if len(others) == 1:
                return others[0]
            return Node(kind, kids=tuple(others))
        if isinstance(e, Power):
            b = self._node(e.base)
            x = self._node(e.exponent)
            if b.kind == K_CONST and x.kind == K_CONST:
                return Node(K_CONST, value=safe_pow(b.value, x.value))
            if x.kind == K_CONST and x.lo == 1:
                return b
            return Node(K_POW, kids=(b, x))
        raise TypeError(f"not a term node: {e!r}")

    def _unary(self, rel: Relation) -> bool:
        """Fold ``X == [..]``, ``X == c``, ``X <= c``, ``c <= X`` into the initial domain."""
        left, right, op = rel.left, rel.right, rel.op
        if op == "%":
            return False
        if isinstance(right, Variable) and not isinstance(left, Variable):
            left, right = right, left
            flipped = True
        else:
            flipped = False
        if not isinstance(left, Variable) or not isinstance(right, (Number, ValueList)):
            return False
        i = self._index[left.name]
        values = (right.value,) if isinstance(right, Number) else right.values
        if values[-1] >= INF:
            return False  # compiled normally, which reports the unsupported number
        lo, hi, cur = self.init_lo[i], self.init_hi[i], self.init_vals[i]
        if op == "==":
            allowed = [v for v in values if lo <= v <= hi and (cur is None or v in cur)]
            if not allowed:
                self.unsatisfiable = True
                return True
            self.init_vals[i] = tuple(allowed)
            self.init_lo[i], self.init_hi[i] = allowed[0], allowed[-1]
            return True
        if isinstance(right, ValueList):  # X <= [..] is X <= max, [..] <= X is min <= X
            bound = values[0] if flipped else values[-1]
        else:
            bound = values[0]
        if flipped:
            lo = max(lo, bound)
        else:
            hi = min(hi, bound)
        if cur is not None:
            cur = tuple(v for v in cur if lo <= v <= hi)
            if not cur:
                self.unsatisfiable = True
                return True
            self.init_vals[i] = cur
            lo, hi = cur[0], cur[-1]
        if lo > hi:
            self.unsatisfiable = True
            return True
        self.init_lo[i], self.init_hi[i] = lo, hi
        return True

    # -- propagation
    def initial_domains(self) -> tuple[list, list, list]:
        return self.init_lo[:], self.init_hi[:], self.init_vals[:]

    def propagate(self, lo: list, hi: list, vals: list, variables=None) -> bool:
        """Narrow the domains in place to a fixpoint; False if some domain became empty.

        ``variables``: the variables whose domains changed (None: revise every constraint).
        """
        cons = self.constraints
        watchers = self.watchers
        if variables is None:
            queue = list(range(len(cons)))
        else:
            queue = []
            for v in variables:
                queue.extend(watchers[v])
            queue = list(dict.fromkeys(queue))
        queued = bytearray(len(cons))
        for ci in queue:
            queued[ci] = 1
        budget = self.budget
        changed: list = []
        head = 0
        try:
            while head < len(queue):
                ci = queue[head]
                head += 1
                queued[ci] = 0
                budget -= 1
                if budget < 0:
                    return True
                cons[ci].revise(lo, hi, vals, changed)
                if changed:
                    for v in changed:
                        for cj in watchers[v]:
                            if not queued[cj]:
                                queued[cj] = 1
                                queue.append(cj)
                    changed.clear()
                if head > 4096:  # keep the queue list short
                    del queue[:head]
                    head = 0
        except Inconsistent:
            return False
        return True

    def satisfied(self, point: list) -> bool:
        """Exact check of every constraint under a complete assignment of all variables."""
        for c in self.constraints:
            if not c.holds(point):
                return False
        return True
