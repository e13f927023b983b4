"""The ConstrINT language: text to :class:`~flashrnn_jax.constrint.expressions.Program`.

The language
============

A model is a list of constraints, each ended by ``;``. Whitespace and newlines are free;
``#`` starts a comment that runs to the end of the line::

    # shared memory of one block, in bytes
    TILE * 1024 <= 232448;          # a bound
    TILE % 64 == 0;                 # divisibility: 64 divides TILE
    TILE == [64, 128, 256];         # TILE is one of the listed values
    WARPS == 1 | TILE <= 128;       # alternatives: at least one must hold
    2 ^ LOG == TILE;                # integer power

Relations: ``A == B``, ``A <= B`` and divisibility ``A % B == 0`` (B divides A; written exactly
so, with ``== 0``). There is no ``<``, ``>=``, ``!=``, ``-`` or ``/``: write ``A + 1 <= B`` for
``A < B`` and swap the sides for ``>=``.

Alternatives ``R1 | R2 | ...`` bind looser than the relations: ``A == 1 | B <= 3;`` means
``(A == 1) or (B <= 3)``.

Terms are built from ``+``, ``*`` and ``^`` with the usual precedence, ``^`` over ``*`` over
``+``, and ``^`` right-associative: ``A + B * C ^ 2`` is ``A + (B * (C ^ 2))`` and ``2 ^ 3 ^ 2``
is ``2 ^ 9``. The ``%`` of a divisibility takes whole terms on both sides:
``A + B % C * D == 0`` means ``C * D`` divides ``A + B``.

Operands are non-negative integer literals (``0``, ``1024``), variables (letters, digits and
``_``, not starting with a digit; case-sensitive) and value lists ``[a, b, c]`` of literals.
Every variable ranges over the positive integers 1, 2, 3, ...

Value lists stand for *one* of their values, chosen independently at each occurrence, and a
relation holds when some choice makes it true: ``X == [2, 4, 8]`` means X is 2, 4 or 8;
``X * [1, 2] == 8`` means X is 4 or 8; ``X <= [4, 16]`` means ``X <= 16``.

Parentheses are decoration: **they do not change precedence**. They must balance inside a
constraint and are then ignored, so ``(A * B) + C`` is fine, but ``(A + B) * C`` is read as
``A + B * C``. Where ignoring them changes the grouping that they suggest, the parser emits a
:class:`ConstrintParenthesesWarning` (turn it into an error with the :mod:`warnings` filters).
To multiply a sum, expand it: ``A * C + B * C``.

Errors raise :class:`ConstrintSyntaxError` (a ``ValueError``) with the line, the column and what
was expected.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

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

__all__ = ["parse", "ConstrintSyntaxError", "ConstrintParenthesesWarning"]


class ConstrintSyntaxError(ValueError):
    """A syntax error in ConstrINT text.

    Attributes: ``line`` and ``column`` (1-based), ``expected`` (what the parser wanted there),
    ``found`` (what it found), ``source_line`` (the text of that line).
    """

    def __init__(self, message: str, *, line: int, column: int, expected: str, found: str,
                 source_line: str = ""):
        self.line = line
        self.column = column
        self.expected = expected
        self.found = found
        self.source_line = source_line
        self.message = message
        text = f"line {line}, column {column}: {message}"
        if source_line:
            text += "\n    " + source_line.expandtabs(1) + "\n    " + " " * (column - 1) + "^"
        super().__init__(text)


class ConstrintParenthesesWarning(UserWarning):
    """Parentheses suggest a grouping that differs from how the (paren-free) text is read."""


@dataclass(slots=True)
class _Token:
    kind: str  # 'num', 'name', an operator/punctuation string, or 'eof'
    text: str
    line: int
    column: int
    offset: int


_OPERATORS_2 = ("==", "<=")
_OPERATORS_1 = set("%+*^|;()[],")


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "end of input"
    if tok.kind == "num":
        return f"number {tok.text}"
    if tok.kind == "name":
        return f"variable {tok.text}"
    return f"'{tok.text}'"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")

    # ------------------------------------------------------------------ errors
    def error(self, line: int, column: int, message: str, expected: str, found: str):
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        raise ConstrintSyntaxError(message, line=line, column=column, expected=expected,
                                   found=found, source_line=src)

    def error_at(self, tok: _Token, expected: str, hint: str = ""):
        found = _describe(tok)
        message = f"expected {expected}, found {found}"
        if hint:
            message += f" ({hint})"
        self.error(tok.line, tok.column, message, expected, found)

    # ------------------------------------------------------------------ lexer
    def tokenize(self) -> list[_Token]:
        text = self.text
        toks: list[_Token] = []
        i, n, line, line_start = 0, len(text), 1, 0
        while i < n:
            ch = text[i]
            col = i - line_start + 1
            if ch == "\n":
                i += 1
                line += 1
                line_start = i
                continue
            if ch in " \t\r\f\v":
                i += 1
                continue
            if ch == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j
                continue
            if ch.isascii() and ch.isdigit():
                j = i
                while j < n and text[j].isascii() and text[j].isdigit():
                    j += 1
                if j < n and text[j].isascii() and (text[j].isalpha() or text[j] == "_"):
                    self.error(line, j - line_start + 1,
                               f"expected an operator after the number {text[i:j]}, found "
                               f"'{text[j]}' (a variable name cannot start with a digit; "
                               f"write '{text[i:j]} * {text[j]}...' for a product)",
                               "an operator", repr(text[j]))
                toks.append(_Token("num", text[i:j], line, col, i))
                i = j
                continue
            if ch.isascii() and (ch.isalpha() or ch == "_"):
                j = i
                while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                    j += 1
                toks.append(_Token("name", text[i:j], line, col, i))
                i = j
                continue
            two = text[i:i + 2]
            if two in _OPERATORS_2:
                toks.append(_Token(two, two, line, col, i))
                i += 2
                continue
            if ch in _OPERATORS_1:
                toks.append(_Token(ch, ch, line, col, i))
                i += 1
                continue
            self._bad_character(text, i, line, col)
        toks.append(_Token("eof", "", line, n - line_start + 1, n))
        return toks

    def _bad_character(self, text: str, i: int, line: int, col: int):
        ch = text[i]
        two = text[i:i + 2]
        if ch == "-":
            msg = ("'-' is not part of ConstrINT: there is no subtraction and no negative number "
                   "(move the term to the other side of the relation)")
            expected = "a term or an operator other than '-'"
        elif ch == "/":
            msg = ("'/' is not part of ConstrINT: there is no division "
                   "(multiply the other side instead, or use 'A % B == 0' for divisibility)")
            expected = "a term or an operator other than '/'"
        elif two in (">=", "=>"):
            msg = "expected '<=' or '==': there is no '>=' (swap the two sides and use '<=')"
            expected = "'<=' or '=='"
        elif ch == ">":
            msg = "expected '<=' or '==': there is no '>' (write 'B + 1 <= A' for 'A > B')"
            expected = "'<=' or '=='"
        elif ch == "<":
            msg = "expected '<=': there is no '<' (write 'A + 1 <= B' for 'A < B')"
            expected = "'<='"
        elif two == "!=":
            msg = "expected '==' or '<=': there is no '!=' (use alternatives: 'A + 1 <= B | B + 1 <= A')"
            expected = "'==' or '<='"
        elif ch == "=":
            msg = "expected '==': a single '=' is not a relation"
            expected = "'=='"
        elif ch == "{" or ch == "}":
            msg = f"unexpected '{ch}': value lists are written with square brackets, [a, b, c]"
            expected = "a term or an operator"
        else:
            expected = "a term, an operator, ';' or a '#' comment"
            msg = f"expected {expected}, found the unexpected character {ch!r}"
        self.error(line, col, msg, expected, repr(ch))

    # ------------------------------------------------------------------ parser
    def parse(self) -> Program:
        all_toks = self.tokenize()
        # Parentheses: check that they balance within each constraint, remember each pair,
        # then drop them: they do not change how the text is read.
        toks: list[_Token] = []
        pairs: list[tuple[int, int, _Token]] = []  # (first, last) filtered index + '(' token
        stack: list[tuple[_Token, int]] = []
        for tok in all_toks:
            if tok.kind == "(":
                stack.append((tok, len(toks)))
                continue
            if tok.kind == ")":
                if not stack:
                    self.error(tok.line, tok.column,
                               "expected a term, an operator or ';', found ')' without a "
                               "matching '(' in this constraint",
                               "a term, an operator or ';'", "')'")
                open_tok, first = stack.pop()
                if first == len(toks):
                    self.error(tok.line, tok.column, "expected a term inside '( )', found ')'",
                               "a term", "')'")
                pairs.append((first, len(toks) - 1, open_tok))
                continue
            if tok.kind in (";", "eof") and stack:
                open_tok = stack[-1][0]
                self.error(tok.line, tok.column,
                           f"expected ')' to close the '(' at line {open_tok.line}, column "
                           f"{open_tok.column}, found {_describe(tok)}",
                           "')'", _describe(tok))
            toks.append(tok)
        self.toks = toks
        self.i = 0
        self.spans: set[tuple[int, int]] = set()
        constraints = []
        pair_index = 0
        pairs.sort(key=lambda p: p[0])
        while self.toks[self.i].kind != "eof":
            constraints.append(self.parse_constraint())
            end = self.i  # index after ';'
            while pair_index < len(pairs) and pairs[pair_index][0] < end:
                first, last, open_tok = pairs[pair_index]
                pair_index += 1
                if (first, last) not in self.spans:
                    shown = " ".join(t.text for t in toks[first:last + 1])
                    warnings.warn(
                        f"line {open_tok.line}, column {open_tok.column}: parentheses around "
                        f"'{shown}' do not group it: ConstrINT ignores parentheses (they do not "
                        "change precedence; '^' binds tighter than '*', '*' tighter than '+'). "
                        "Expand the expression, e.g. write (A + B) * C as A * C + B * C",
                        ConstrintParenthesesWarning, stacklevel=3)
            self.spans.clear()
        return Program(tuple(constraints))

    def peek(self) -> _Token:
        return self.toks[self.i]

    def advance(self) -> _Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse_constraint(self) -> Constraint:
        start = self.i
        alternatives = [self.parse_relation()]
        while self.peek().kind == "|":
            self.advance()
            alternatives.append(self.parse_relation())
        tok = self.peek()
        if tok.kind != ";":
            if tok.kind in ("==", "<=", "%"):
                self.error_at(tok, "';' or '|'",
                              "relations cannot be chained: write 'A <= B; B <= C;'")
            self.error_at(tok, "';' to end the constraint, '|' for another alternative, "
                               "or an operator '+', '*', '^'")
        self.spans.add((start, self.i - 1))
        self.advance()
        return Constraint(tuple(alternatives))

    def parse_relation(self) -> Relation:
        start = self.i
        left = self.parse_term()
        tok = self.peek()
        if tok.kind in ("==", "<="):
            self.advance()
            right = self.parse_term()
            rel = Relation(tok.kind, left, right)
        elif tok.kind == "%":
            self.advance()
            right = self.parse_term()
            eq = self.peek()
            if eq.kind != "==":
                self.error_at(eq, "'==' after 'A % B'",
                              "divisibility is written 'A % B == 0'; '%' takes whole terms")
            self.advance()
            zero = self.peek()
            if zero.kind != "num" or int(zero.text) != 0:
                self.error_at(zero, "0 after 'A % B =='",
                              "only divisibility 'A % B == 0' is supported")
            self.advance()
            rel = Relation("%", left, right)
        else:
            self.error_at(tok, "a relation '==', '<=' or '% ... == 0', or an operator "
                               "'+', '*', '^'")
        self.spans.add((start, self.i - 1))
        return rel

    def parse_term(self) -> Expr:
        start = self.i
        items = [self.parse_product()]
        ends = [self.i - 1]
        starts = [start]
        while self.peek().kind == "+":
            self.advance()
            starts.append(self.i)
            items.append(self.parse_product())
            ends.append(self.i - 1)
        self._add_runs(starts, ends)
        if len(items) == 1:
            return items[0]
        return Sum(tuple(items))

    def parse_product(self) -> Expr:
        starts = [self.i]
        items = [self.parse_power()]
        ends = [self.i - 1]
        while self.peek().kind == "*":
            self.advance()
            starts.append(self.i)
            items.append(self.parse_power())
            ends.append(self.i - 1)
        self._add_runs(starts, ends)
        if len(items) == 1:
            return items[0]
        return Product(tuple(items))

    def _add_runs(self, starts: list[int], ends: list[int]):
        # Any contiguous run of operands of an n-ary + or * is a valid group (associativity).
        for a in range(len(starts)):
            for b in range(a, len(ends)):
                self.spans.add((starts[a], ends[b]))

    def parse_power(self) -> Expr:
        start = self.i
        base = self.parse_atom()
        if self.peek().kind == "^":
            self.advance()
            exponent = self.parse_power()  # right-associative
            self.spans.add((start, self.i - 1))
            return Power(base, exponent)
        return base

    def parse_atom(self) -> Expr:
        tok = self.peek()
        start = self.i
        if tok.kind == "num":
            self.advance()
            node: Expr = Number(int(tok.text))
        elif tok.kind == "name":
            self.advance()
            node = Variable(tok.text)
        elif tok.kind == "[":
            self.advance()
            values = [self.parse_list_value()]
            while self.peek().kind == ",":
                self.advance()
                values.append(self.parse_list_value())
            close = self.peek()
            if close.kind != "]":
                self.error_at(close, "',' or ']' in the value list")
            self.advance()
            node = ValueList(tuple(values))
        else:
            self.error_at(tok, "a term: a number, a variable or a value list [a, b, ...]")
        self.spans.add((start, self.i - 1))
        return node

    def parse_list_value(self) -> int:
        tok = self.peek()
        if tok.kind != "num":
            hint = "value lists hold integer literals only" if tok.kind == "name" else ""
            self.error_at(tok, "a number in the value list", hint)
        self.spans.add((self.i, self.i))
        self.advance()
        return int(tok.text)


def parse(text: str) -> Program:
    """Parse ConstrINT text into a :class:`Program`.

    >>> parse("X * 4 <= 64; X % 2 == 0 | X == 1;").to_text()
    'X * 4 <= 64;\\nX % 2 == 0 | X == 1;\\n'

    Raises :class:`ConstrintSyntaxError` with the line and column of the first error.
    """
    if not isinstance(text, str):
        raise TypeError(f"ConstrINT text must be a str, got {type(text).__name__}")
    return _Parser(text).parse()
