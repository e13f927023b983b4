"""Tests of the Flax NNX layers in flashrnn_jax.nnx.

The NNX layer shares its computation with the Linen layer (flashrnn_jax.layer_common), which
tests/test_linen.py checks against flashrnn() and a NumPy loop; here the NNX layer must give the
Linen layer's output for the same parameter values, and its own construction, call protocol,
errors and training must work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flashrnn_jax import linen
from flashrnn_jax.nnx import GRU, LSTM, SLSTM, Elman, FlashRNN

FUNCTIONS = ("lstm", "gru", "slstm", "elman")
# (Gw, Gr, Gt, S) per function, from DESIGN.md §2.
GATES = {"lstm": (4, 4, 4, 2), "gru": (3, 3, 4, 1), "slstm": (4, 4, 4, 4), "elman": (1, 1, 1, 1)}
B, T, F, H, N = 3, 6, 4, 8, 2


def normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def abstract_layer(function: str, cls=FlashRNN, **kwargs) -> FlashRNN:
    """The layer with shapes only: constructing it draws nothing (no compilation)."""
    if cls is FlashRNN:
        kwargs["function"] = function
    return nnx.eval_shape(lambda: cls(F, H, num_heads=N, rngs=nnx.Rngs(0), **kwargs))


def random_layer(function: str, seed: int = 1, **kwargs) -> FlashRNN:
    """The layer with random parameters (bias not zero, so its layout matters)."""
    layer = abstract_layer(function, **kwargs)
    for i, (var, scale) in enumerate(((layer.kernel, F ** -0.5),
                                      (layer.recurrent_kernel, (H // N) ** -0.5),
                                      (layer.bias, 0.5))):
        var.set_value(jnp.asarray(normal(seed + i, var.shape, scale)))
    return layer


def params_of(layer: FlashRNN) -> dict:
    return {"params": {"kernel": layer.kernel[...], "recurrent_kernel": layer.recurrent_kernel[...],
                       "bias": layer.bias[...]}}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_init_shapes_and_dtypes(function):
    Gw, Gr, Gt, S = GATES[function]
    layer = abstract_layer(function)
    assert (layer.kernel.shape, layer.recurrent_kernel.shape, layer.bias.shape) == (
        (F, Gw, N, H // N), (Gr, N, H // N, H // N), (Gt, N, H // N))
    params = (layer.kernel, layer.recurrent_kernel, layer.bias)
    assert {v.dtype for v in params} == {np.dtype(np.float32)}
    carry = layer.initialize_carry((2, B, F))
    assert carry.shape == (S, 2, B, H) and carry.dtype == jnp.float32 and not carry.any()


def test_default_initializers():
    F_, H_, N_ = 64, 32, 4
    D = H_ // N_
    # Constructed under jit (one compilation instead of eager op-by-op drawing).
    layer = nnx.jit(lambda: FlashRNN(F_, H_, function="lstm", num_heads=N_, rngs=nnx.Rngs(0)))()
    assert abs(float(jnp.std(layer.kernel[...])) * np.sqrt(F_) - 1) < 0.1
    assert not layer.bias[...].any()
    R = np.asarray(layer.recurrent_kernel[...], np.float64)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(D), R.shape),
                               atol=1e-5)
    assert len(np.unique(np.round(R[..., 0, 0], 6))) == 4 * N_


@pytest.mark.parametrize("function", FUNCTIONS)
def test_same_output_as_linen_for_the_same_parameters(function):
    layer = random_layer(function)
    x = normal(0, (B, T, F))
    carry0 = normal(5, (GATES[function][3], B, H), 0.5)
    if function == "slstm":
        carry0[2] = 1 + np.abs(carry0[2])  # the normaliser n is >= 1 after any step
    carry, y = layer(x, initial_carry=carry0, return_carry=True)
    carry_ref, y_ref = linen.FlashRNN(H, function=function, num_heads=N).apply(
        params_of(layer), x, initial_carry=carry0, return_carry=True)
    assert y.shape == (B, T, H) and carry.shape == carry0.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry, carry_ref, rtol=1e-6, atol=1e-6)


def test_carry_round_trip_and_time_major():
    layer = random_layer("slstm")
    x = normal(0, (B, 2 * T, F))
    carry_full, y_full = layer(x, return_carry=True)
    carry, y1 = layer(x[:, :T], return_carry=True)
    carry, y2 = layer(x[:, T:], initial_carry=carry, return_carry=True)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), y_full, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry, carry_full, rtol=1e-6, atol=1e-6)

    carry_tm, y_tm = layer(np.swapaxes(x, 0, 1), time_major=True, return_carry=True)
    np.testing.assert_allclose(y_tm, jnp.swapaxes(y_full, 0, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry_tm, carry_full, rtol=1e-6, atol=1e-6)


def test_dtype_and_param_dtype_are_passed_on():
    x = jnp.ones((B, T, F), jnp.float32)
    for dtype, param_dtype in ((jnp.bfloat16, jnp.float32), (None, jnp.bfloat16)):
        layer = abstract_layer("lstm", dtype=dtype, param_dtype=param_dtype)
        assert layer.kernel.dtype == layer.recurrent_kernel.dtype == param_dtype
        carry, y = nnx.eval_shape(lambda layer, x: layer(x, return_carry=True), layer, x)
        # As flax: the computation dtype is `dtype`, else the promotion of input and params.
        assert y.dtype == carry.dtype == (dtype or jnp.float32)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"hidden_size=10 and num_heads=3"):
        FlashRNN(F, 10, num_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"in_features must be a positive int, got 0"):
        FlashRNN(0, H, rngs=nnx.Rngs(0))
    layer = random_layer("gru")
    with pytest.raises(ValueError, match=rf"in_features = {F} on the last axis.*\(2, 5, 7\)"):
        layer(np.zeros((2, 5, 7), np.float32))


def test_aliases_pin_the_function():
    for alias, function in ((LSTM, "lstm"), (GRU, "gru"), (SLSTM, "slstm"), (Elman, "elman")):
        layer = abstract_layer(function, cls=alias)
        assert type(layer) is alias and layer.function == function
        assert layer.recurrent_kernel.shape[0] == GATES[function][1]
    with pytest.raises(TypeError):
        LSTM(F, H, function="gru", rngs=nnx.Rngs(0))


def test_gradients_and_adam_training():
    """nnx.grad reaches every parameter; adam lowers the loss of a task needing recurrence."""
    x = normal(0, (16, T, F))
    target = np.tanh(0.5 * np.cumsum(x[..., :1] - x[..., 1:2], axis=1))

    class Model(nnx.Module):
        def __init__(self):
            self.rnn = random_layer("lstm")
            self.readout = nnx.Param(jnp.asarray(normal(7, (H, 1), 0.3)))

        def __call__(self, x):
            return self.rnn(x) @ self.readout[...]

    def loss_fn(model):
        return jnp.mean((model(x) - target) ** 2)

    model = Model()
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    loss, grads = step(model, optimizer)
    assert len(jax.tree_util.tree_leaves(grads)) == 4
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4
    losses = [float(loss)] + [float(step(model, optimizer)[0]) for _ in range(40)]
    assert losses[-1] < 0.3 * losses[0], losses
