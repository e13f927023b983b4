"""benchmarks/precision_study.py: in float64 on the CPU, the recurrent operand rounded to the
16-bit dtype (CMake FLASHRNN_MMA_ROUNDED_OPERAND) keeps every output and gradient inside DESIGN
§4's rule, with room; and the study can tell: a coarser rounding breaks the rule."""

import bench_runs  # noqa: F401  (puts benchmarks/ on sys.path)
import jax.numpy as jnp
import numpy as np
import precision_study
import pytest


@pytest.mark.parametrize("function", ["lstm", "slstm", "gru", "elman"])
def test_rounded_operand_keeps_the_accuracy_rule(function):
    ratios = precision_study.study(function, 5, 37, 2, 16, jnp.dtype(jnp.bfloat16),
                                   np.random.default_rng(0))
    assert set(ratios) == {"states_all", "dWx", "dR", "db", "dstates"}
    assert max(ratios.values()) < 0.8, ratios


def test_the_study_sees_a_rounding_that_breaks_the_rule():
    """The same study with the operand rounded to 4 mantissa bits (float8 e4m3) judged against
    bfloat16's bound: far outside it, so the ratios above measure something."""
    ratios = precision_study.study("lstm", 5, 37, 2, 16, jnp.dtype(jnp.bfloat16),
                                   np.random.default_rng(0),
                                   operand_dtype=jnp.dtype(jnp.float8_e4m3fn))
    assert max(ratios.values()) > 1.5, ratios


@pytest.mark.parametrize("function", ["lstm", "elman"])
def test_rounded_dr_operands_keep_the_rule_and_cost_dr_accuracy(function):
    """dR from rounded gate cotangents and h (a backward kernel accumulating dR on the tensor
    cores): inside the rule still, and dR's error grows over the exact operands' (the study
    sees the change; the other outputs do not depend on it)."""
    exact_dr = precision_study.study(function, 5, 37, 2, 16, jnp.dtype(jnp.bfloat16),
                                     np.random.default_rng(0))
    rounded_dr = precision_study.study(function, 5, 37, 2, 16, jnp.dtype(jnp.bfloat16),
                                       np.random.default_rng(0), rounded_dr=True)
    assert max(rounded_dr.values()) < 0.95, rounded_dr
    assert rounded_dr["dR"] > 1.1 * exact_dr["dR"], (exact_dr, rounded_dr)
    for name in ("states_all", "dWx", "db", "dstates"):
        assert rounded_dr[name] == pytest.approx(exact_dr[name]), name
