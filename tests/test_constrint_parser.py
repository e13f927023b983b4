"""ConstrINT language: grammar, precedence, comments, value lists, parentheses and errors."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashrnn_jax.constrint import (
    ConstrintParenthesesWarning,
    ConstrintSyntaxError,
    parse,
    solve,
)
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

A, B, C, D, E = (Variable(n) for n in "ABCDE")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_JAX_CACHE_DIR", str(tmp_path / "cache"))


def rel(text):
    """The single relation of a one-constraint program."""
    (constraint,) = parse(text).constraints
    (relation,) = constraint.alternatives
    return relation


# ----------------------------------------------------------------------------- grammar
def test_relations():
    assert rel("A == B;") == Relation("==", A, B)
    assert rel("A <= 3;") == Relation("<=", A, Number(3))
    assert rel("A % B == 0;") == Relation("%", A, B)


def test_precedence_power_over_product_over_sum():
    assert rel("A + B * C ^ 2 == E;").left == Sum((A, Product((B, Power(C, Number(2))))))
    assert rel("A ^ 2 * B + C == E;").left == Sum((Product((Power(A, Number(2)), B)), C))
    assert rel("A * B + C * D == E;").left == Sum((Product((A, B)), Product((C, D))))


def test_power_is_right_associative():
    assert rel("A ^ B ^ C == E;").left == Power(A, Power(B, C))
    assert solve("2 ^ 3 ^ 2 == X;", cache=False) == [{"X": 512}]


def test_sums_and_products_are_n_ary():
    assert rel("A + B + C == E;").left == Sum((A, B, C))
    assert rel("A * B * C == E;").left == Product((A, B, C))


def test_modulo_takes_whole_terms():
    assert rel("A + B % C * D == 0;") == Relation("%", Sum((A, B)), Product((C, D)))


def test_alternatives_bind_looser_than_relations():
    (c,) = parse("A == 1 | B <= 3 | C % D == 0;").constraints
    assert c == Constraint((Relation("==", A, Number(1)), Relation("<=", B, Number(3)),
                            Relation("%", C, D)))
    assert solve("A == 1 | B <= 3; A <= 2; B <= 4;", num_solutions=None, cache=False) == [
        {"A": 1, "B": b} for b in (1, 2, 3, 4)] + [{"A": 2, "B": b} for b in (1, 2, 3)]


def test_names_and_numbers():
    assert rel("_x1 == X_2;") == Relation("==", Variable("_x1"), Variable("X_2"))
    assert rel("a <= 007;") == Relation("<=", Variable("a"), Number(7))
    assert parse("a <= 1; A <= 2;").variables == ("a", "A")  # case-sensitive
    assert rel("X <= 123456789012345678901234567890;").right == Number(
        123456789012345678901234567890)


def test_variables_in_order_of_first_appearance():
    assert parse("C + A <= B; B == D; A <= 3;").variables == ("C", "A", "B", "D")


def test_whitespace_and_comments():
    text = """
    # a comment line
    A <= 3;   # trailing comment with ; and | and ( inside
    B
      ==      # a constraint may span lines
      A;#no space
    C <= 1;   # comment at the very end without newline"""
    assert parse(text) == parse("A <= 3; B == A; C <= 1;")
    assert parse("") == Program(())
    assert parse("# only a comment") == Program(())
    assert parse("\t A<=3 ;\r\n") == parse("A <= 3;")


def test_value_lists():
    assert rel("X == [2, 4, 8];").right == ValueList((2, 4, 8))
    assert rel("X == [8, 2, 4, 2];").right == ValueList((2, 4, 8))  # a set
    assert rel("X == [0];").right == ValueList((0,))
    assert rel("X * [1, 2] <= [3, 4] + 1;") == Relation(
        "<=", Product((Variable("X"), ValueList((1, 2)))), Sum((ValueList((3, 4)), Number(1))))
    assert solve("X == [2, 4, 8];", num_solutions=None, cache=False) == [
        {"X": 2}, {"X": 4}, {"X": 8}]
    assert solve("X == [0, 3];", num_solutions=None, cache=False) == [{"X": 3}]  # X >= 1


def test_to_text_round_trip():
    text = "A + B * C ^ 2 ^ D <= [1, 5];\nA % B * 2 == 0 | 3 <= C;\nE == 0 + 1;\n"
    program = parse(text)
    assert program.to_text() == text
    assert parse(program.to_text()) == program


def test_to_text_refuses_trees_that_need_parentheses():
    program = Program((Constraint((Relation("==", Product((Sum((A, B)), C)), D),)),))
    with pytest.raises(NotExpressibleError, match="parentheses"):
        program.to_text()
    program = Program((Constraint((Relation("==", Power(Power(A, B), C), D),)),))
    with pytest.raises(NotExpressibleError):
        program.to_text()


# ----------------------------------------------------------------------------- parentheses
def test_parentheses_are_ignored():
    with pytest.warns(ConstrintParenthesesWarning, match="line 1, column 1"):
        program = parse("(A + B) * C <= 9;")
    assert program == parse("A + B * C <= 9;")  # not (A + B) * C
    with pytest.warns(ConstrintParenthesesWarning):
        assert parse("(A ^ B) ^ C == 1;") == parse("A ^ B ^ C == 1;")
    with pytest.warns(ConstrintParenthesesWarning, match="line 2, column 6"):
        parse("A <= 1;\nB == (C + 1) * 2;")


def test_redundant_parentheses_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        program = parse("(A * B) + (C) <= ((3)); (A == 1) | (B <= 2); (A == 1 | B <= 2);"
                        "A * (B * C) == 2; (A + B) + C <= 3; A + (B + C) <= 3;"
                        "A ^ (B ^ C) == 1; (A ^ B) * C == 1; X == [(1), 2];"
                        "(A % B == 0); (A + B) % (C * D) == 0;")
    assert program.constraints[0] == parse("A * B + C <= 3;").constraints[0]


@pytest.mark.parametrize("text, line, column, expected", [
    ("A <= (B;", 1, 8, "')'"),
    ("A <= (B\n + 1;", 2, 5, "')'"),
    ("A <= B);", 1, 7, "a term, an operator or ';'"),
    ("A <= ();", 1, 7, "a term"),
    ("(A <= B; C <= 1);", 1, 8, "')'"),
])
def test_unbalanced_parentheses(text, line, column, expected):
    with pytest.raises(ConstrintSyntaxError) as info:
        parse(text)
    assert (info.value.line, info.value.column, info.value.expected) == (line, column, expected)


# ----------------------------------------------------------------------------- errors
ERRORS = [
    # text, line, column, a fragment of the message
    ("A <= 3", 1, 7, "expected ';'"),
    ("A <= 3;\nB == ;", 2, 6, "expected a term"),
    ("A <= 3;\n\n   B == C D;", 3, 11, "expected ';' to end the constraint"),
    ("A - 1 <= 3;", 1, 3, "no subtraction"),
    ("A <= 3 / B;", 1, 8, "no division"),
    ("A >= 3;", 1, 3, "swap the two sides"),
    ("A > 3;", 1, 3, "expected '<=' or '=='"),
    ("A < 3;", 1, 3, "A + 1 <= B"),
    ("A = 3;", 1, 3, "expected '=='"),
    ("A != 3;", 1, 3, "no '!='"),
    ("2x <= 3;", 1, 2, "cannot start with a digit"),
    ("A % 2 == 1;", 1, 10, "expected 0"),
    ("A % 2 <= 0;", 1, 7, "expected '=='"),
    ("A % 2;", 1, 6, "expected '=='"),
    ("A <= B <= C;", 1, 8, "cannot be chained"),
    ("A;", 1, 2, "expected a relation"),
    ("== A;", 1, 1, "expected a term"),
    ("A <= ;", 1, 6, "expected a term"),
    ("A + <= 3;", 1, 5, "expected a term"),
    ("A ^ ^ 2 <= 3;", 1, 5, "expected a term"),
    ("A <= 3 |;", 1, 9, "expected a term"),
    ("X == [];", 1, 7, "expected a number in the value list"),
    ("X == [1, Y];", 1, 10, "integer literals only"),
    ("X == [1 2];", 1, 9, "expected ',' or ']'"),
    ("X == [1, 2;", 1, 11, "expected ',' or ']'"),
    ("X == {1, 2};", 1, 6, "square brackets"),
    ("A $ 3;", 1, 3, "unexpected character '$'"),
    ("A <= 3; B é 2;", 1, 11, "unexpected character"),
    ("A <= 3;\n\tB <= -1;", 2, 7, "no negative number"),
]


@pytest.mark.parametrize("text, line, column, fragment", ERRORS)
def test_syntax_errors_report_line_column_and_expectation(text, line, column, fragment):
    with pytest.raises(ConstrintSyntaxError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.line, err.column) == (line, column), str(err)
    assert fragment in str(err)
    assert str(err).startswith(f"line {line}, column {column}: ")
    assert err.expected and err.found
    # the message shows the offending line with a caret under the column
    src, caret = str(err).split("\n")[1:3]
    assert src.strip() == text.split("\n")[line - 1].strip()
    assert caret.index("^") - 4 == column - 1


def test_error_message_names_what_was_found():
    with pytest.raises(ConstrintSyntaxError, match="found variable D"):
        parse("A <= C D;")
    with pytest.raises(ConstrintSyntaxError, match="found end of input"):
        parse("A <= C")
    with pytest.raises(ConstrintSyntaxError, match="found number 4"):
        parse("A <= [3] 4;")


def test_solve_reports_syntax_errors():
    with pytest.raises(ConstrintSyntaxError, match="line 2, column 3"):
        solve("X <= 3;\nY - 1 <= 2;", cache=False)


def test_parse_rejects_non_text():
    with pytest.raises(TypeError):
        parse(b"A <= 3;")


# ----------------------------------------------------------------------------- round trip
@st.composite
def text_terms(draw, depth=3):
    """Trees the parser produces: sums of products of powers of atoms."""
    atom = st.one_of(
        st.sampled_from("ABCDE").map(Variable),
        st.integers(0, 1000).map(Number),
        st.lists(st.integers(0, 50), min_size=1, max_size=4).map(lambda v: ValueList(tuple(v))),
    )

    def power(d):
        base = draw(atom)
        if d and draw(st.booleans()):
            return Power(base, power(d - 1))
        return base

    def product(d):
        factors = [power(d) for _ in range(draw(st.integers(1, 3)))]
        return factors[0] if len(factors) == 1 else Product(tuple(factors))

    items = [product(depth) for _ in range(draw(st.integers(1, 3)))]
    return items[0] if len(items) == 1 else Sum(tuple(items))


@st.composite
def text_programs(draw):
    constraints = []
    for _ in range(draw(st.integers(0, 4))):
        alternatives = tuple(
            Relation(draw(st.sampled_from(["==", "<=", "%"])), draw(text_terms()),
                     draw(text_terms()))
            for _ in range(draw(st.integers(1, 3))))
        constraints.append(Constraint(alternatives))
    return Program(tuple(constraints))


@settings(max_examples=200, deadline=None)
@given(text_programs())
def test_printing_then_parsing_gives_the_same_program(program):
    text = program.to_text()
    assert parse(text) == program
    # layout does not matter
    assert parse(text.replace(" ", "").replace("\n", " # c\n")) == program
