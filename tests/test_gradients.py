"""Gradients of the scan backend against central finite differences of the float64 reference."""

import jax
import numpy as np
import pytest
from reference import (
    CELL_SHAPES,
    assert_gradients_match_reference,
    loss_weights,
    numerical_gradient,
    project,
    random_inputs,
    random_states,
    reference_flashrnn,
)

from flashrnn_jax import flashrnn

B, T, N, D = 2, 4, 2, 3


# From zero states only sLSTM takes a different path (m = ĩ where n_prev == 0).
@pytest.mark.parametrize(
    "function, initial", [(f, "given") for f in CELL_SHAPES] + [("slstm", "zeros")]
)
def test_gradients_match_finite_differences(rng, function, initial):
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    # sLSTM's random states have n_0 >= 1, away from the kink of max(n, 1).
    args = (Wx, R, b) + ((random_states(rng, function, B, N, D),) if initial == "given" else ())
    weights = loss_weights(rng, function, B, T, N, D)

    def loss(*args):
        return project(*flashrnn(*args, function=function, backend="scan"), weights)

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
    assert_gradients_match_reference(grads, args, function, weights)


def test_slstm_gradients_from_explicit_zero_states(rng):
    """Initial states passed as zeros (learnable initial states start there): on the first step
    m = ĩ and f' = exp(log σ(f̃) − ĩ) may exceed 1; ∂h/∂c_0 carries that f' exactly."""
    Wx, R, b = random_inputs(rng, "slstm", B, T, N, D)
    args = (Wx, R, b, np.zeros((4, B, N, D)))
    weights = loss_weights(rng, "slstm", B, T, N, D)

    def loss(*args):
        return project(*flashrnn(*args, function="slstm", backend="scan"), weights)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
    assert_gradients_match_reference(grads[:3], args, "slstm", weights)

    def reference_loss(*args):
        return project(*reference_flashrnn(*args, "slstm"), weights)

    # Not n_0: any change of it leaves the n_prev == 0 branch, so it has no derivative there.
    h_c_m = np.array([0, 1, 3])
    expected = numerical_gradient(reference_loss, args, 3)[h_c_m]
    np.testing.assert_allclose(grads[3][h_c_m], expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())
