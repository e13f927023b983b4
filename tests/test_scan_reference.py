"""The scan backend against the float64 NumPy reference, for every cell, shape and dtype."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import CELL_SHAPES, random_inputs, random_states, reference_flashrnn

from flashrnn_jax import flashrnn

FUNCTIONS = tuple(CELL_SHAPES)

# Jitted so that every (shape, dtype) compiles once; test_transforms checks jit == eager.
scan = jax.jit(functools.partial(flashrnn, backend="scan"), static_argnames="function")

# (rtol, atol) per output dtype. Arithmetic is fp32 for fp32/bf16/fp16 inputs, so a bf16 or
# fp16 output is off by its final rounding (at most half an ulp; one ulp, eps relative, is
# allowed) plus the much smaller fp32 error, and an fp32 output by the fp32 error of a short
# sequence; atol only matters for values near zero.
TOLERANCE = {
    jnp.float64: (1e-12, 1e-12),
    jnp.float32: (1e-5, 1e-6),
    jnp.bfloat16: (float(jnp.finfo(jnp.bfloat16).eps), 1e-6),
    jnp.float16: (float(jnp.finfo(jnp.float16).eps), 1e-6),
}

# (B, T, N, D) and initial states. The odd shapes cover B=1, T=1, N=1, D=1, N=3 and D=5; each
# case costs a compile, so they share. Given states are [S, B, N, D] here, [S, B, 1, N, D] in
# test_low_precision.
_RANDOM_SHAPE = tuple(int(x) for x in np.random.default_rng(20240611).integers(1, [5, 13, 5, 9]))
_FP64_CASES = [((1, 5, 3, 5), "given"), ((3, 1, 1, 1), "given"), (_RANDOM_SHAPE, "zeros")]


def _dtype_name(dtype):
    return jnp.dtype(dtype).name


def _cast(x, dtype):
    """``x`` rounded to ``dtype``, and that rounded value in float64 (NumPy, not jnp: an eager
    jnp cast compiles a kernel for every new shape)."""
    low = np.asarray(x).astype(dtype)
    return low, low.astype(np.float64)


def _check(function, Wx, R, b, states, dtype, *, unit_axis=False):
    """Run the scan on inputs rounded to ``dtype`` and compare with the reference on the same
    rounded values. ``states`` is None or [S, B, N, D]; ``unit_axis`` passes it to flashrnn in
    the other accepted layout, [S, B, 1, N, D]."""
    (Wx, Wx64), (R, R64), (b, b64) = (_cast(x, dtype) for x in (Wx, R, b))
    states, states64 = (None, None) if states is None else _cast(states, dtype)
    if unit_axis:
        states = states[:, :, None]
    states_all, last_states = (np.asarray(x) for x in scan(Wx, R, b, states, function=function))
    expected_all, expected_last = reference_flashrnn(Wx64, R64, b64, states64, function)

    assert states_all.dtype == dtype and last_states.dtype == dtype
    assert states_all.shape == expected_all.shape
    assert last_states.shape == expected_last.shape
    np.testing.assert_array_equal(states_all[:, :, -1], last_states)
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(states_all.astype(np.float64), expected_all, rtol=rtol, atol=atol)
    np.testing.assert_allclose(last_states.astype(np.float64), expected_last, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape, initial", _FP64_CASES, ids=str)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_fp64(rng, function, shape, initial):
    B, T, N, D = shape
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    states = random_states(rng, function, B, N, D) if initial == "given" else None
    _check(function, Wx, R, b, states, jnp.float64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=_dtype_name)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_low_precision(rng, function, dtype):
    B, T, N, D = 3, 11, 2, 5
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    states = random_states(rng, function, B, N, D)
    _check(function, Wx, R, b, states, dtype, unit_axis=True)


def _slow_state_inputs(rng, function, B, T, N, D):
    """Inputs whose carried state integrates small steps over the whole sequence (a forget or
    update gate near 1), so rounding the carried state to bf16 every step drifts far from the
    exact result, while rounding only the outputs does not."""
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    R *= 0.5
    if function == "gru":
        b[2] += 5.0  # update gate z ~ 0.99: h moves by less than half a bf16 ulp per step
    else:
        b[1] += 5.0  # forget gate f ~ 0.99: c (and sLSTM's n) accumulate over ~100s of steps
    return Wx, R, b


def _reference_with_bf16_carry(Wx, R, b, function):
    """The reference with its states rounded to bf16 after every step: what a backend that
    carried bf16 states would compute."""
    states, steps = None, []
    for t in range(Wx.shape[1]):
        _, last = reference_flashrnn(Wx[:, t : t + 1], R, b, states, function)
        states = _cast(last, jnp.bfloat16)[1]
        steps.append(states)
    return np.stack(steps, axis=2)


# Elman is left out: its only state is the output h and the tanh map is contractive, so a
# bf16 carry stays within a few ulp of the output rounding and the check could not tell.
@pytest.mark.parametrize("function", ["lstm", "gru", "slstm"])
def test_bf16_states_carried_in_fp32(rng, function):
    B, T, N, D = 2, 200, 2, 4
    Wx, R, b = (_cast(x, jnp.bfloat16)[1] for x in _slow_state_inputs(rng, function, B, T, N, D))
    expected, _ = reference_flashrnn(Wx, R, b, None, function)
    rtol, atol = TOLERANCE[jnp.bfloat16]

    bf16_carry = _reference_with_bf16_carry(Wx, R, b, function)
    assert not np.allclose(bf16_carry, expected, rtol=rtol, atol=atol), (
        "the inputs do not tell a bf16 state carry from an fp32 one"
    )

    args = (_cast(x, jnp.bfloat16)[0] for x in (Wx, R, b))
    states_all, _ = scan(*args, None, function=function)
    np.testing.assert_allclose(np.asarray(states_all, np.float64), expected, rtol=rtol, atol=atol)


def test_slstm_first_step_with_closed_input_gate(rng):
    """From zero states m = ĩ, so f' = exp(log σ(f̃) − ĩ) overflows when the input gate is
    strongly closed; it multiplies c_prev = n_prev = 0, and the exact result is finite."""
    Wx, R, b = random_inputs(rng, "slstm", 2, 4, 2, 3)
    Wx[:, 0, 0] = -100.0  # input gate pre-activation of the first step
    _check("slstm", Wx, R, b, None, jnp.float32)
