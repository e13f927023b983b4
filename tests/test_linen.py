"""Tests of the Flax Linen layers in flashrnn_jax.linen.

Oracles: flashrnn() called directly on the layer's parameters (the wiring: projection, gate and
head layout, carry packing) and, independently of the library, a float64 NumPy loop over time
with the block-diagonal recurrent matrix written out in full.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flashrnn_jax import flashrnn
from flashrnn_jax.linen import GRU, LSTM, SLSTM, Elman, FlashRNN

FUNCTIONS = ("lstm", "gru", "slstm", "elman")
# (Gw, Gr, Gt, S) per function, from DESIGN.md §2, written out so a wrong registry shows up.
GATES = {"lstm": (4, 4, 4, 2), "gru": (3, 3, 4, 1), "slstm": (4, 4, 4, 4), "elman": (1, 1, 1, 1)}


B, T, F, H, N = 4, 6, 4, 8, 2  # one shape for most tests: compiled once, reused


def normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    """float32 test data from NumPy (no per-shape JAX compilation for drawing it)."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def random_params(function: str, in_features: int = F, hidden: int = H, heads: int = N,
                  seed: int = 1) -> dict:
    """Random (not initializer-shaped, bias not zero) parameters in the documented layout."""
    Gw, Gr, Gt, _ = GATES[function]
    D = hidden // heads
    return {"params": {
        "kernel": normal(seed, (in_features, Gw, heads, D), in_features ** -0.5),
        "recurrent_kernel": normal(seed + 1, (Gr, heads, D, D), D ** -0.5),
        "bias": normal(seed + 2, (Gt, heads, D), 0.5),
    }}


def random_carry(function: str, batch: int = B, hidden: int = H, seed: int = 3) -> np.ndarray:
    """Nonzero states [S, B, H]; the sLSTM normaliser n (state 2) is >= 1 as it is after a step."""
    carry = normal(seed, (GATES[function][3], batch, hidden), 0.5)
    if function == "slstm":
        carry[2] = 1 + np.abs(carry[2])
    return carry


@functools.partial(jax.jit, static_argnames=("function", "num_heads", "time_major", "dtype"))
def run(variables, x, carry=None, *, function, num_heads=N, time_major=False, dtype=None):
    """``FlashRNN(...).apply(..., return_carry=True)`` under jit, so that tests sharing shapes
    share one compilation (an eager call compiles its lax.scan again on every call)."""
    hidden = num_heads * variables["params"]["bias"].shape[-1]
    layer = FlashRNN(hidden, function=function, num_heads=num_heads, dtype=dtype)
    return layer.apply(variables, x, initial_carry=carry, return_carry=True, time_major=time_major)


flashrnn_jit = jax.jit(flashrnn, static_argnames=("function", "backend"))


def numpy_loop(function, x, kernel, R, b, h0, c0):
    """float64 reference of an LSTM or Elman layer: [B, T, F] -> h [B, T, H], h_T, c_T."""
    x, kernel, R, b, h, c = (np.asarray(a, np.float64) for a in (x, kernel, R, b, h0, c0))
    kernel = kernel.reshape(kernel.shape[0], -1)  # [F, Gw, N, D] -> column g*H + n*D + d
    G, N, D, _ = R.shape
    H = N * D
    R_full = np.zeros((G, H, H))  # block-diagonal: head n only sees its own units
    for g in range(G):
        for n in range(N):
            R_full[g, n * D:(n + 1) * D, n * D:(n + 1) * D] = R[g, n]
    b = b.reshape(G, H)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hs = []
    for t in range(x.shape[1]):
        pre = [x[:, t] @ kernel[:, g * H:(g + 1) * H] + h @ R_full[g].T + b[g] for g in range(G)]
        if function == "elman":
            h = np.tanh(pre[0])
        else:
            i, f, z, o = pre
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(z)
            h = sigmoid(o) * np.tanh(c)
        hs.append(h)
    return np.stack(hs, axis=1), h, c


@pytest.mark.parametrize("function", FUNCTIONS)
def test_init_shapes_and_dtypes(function):
    Gw, Gr, Gt, S = GATES[function]
    layer = FlashRNN(12, function=function, num_heads=3)
    variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((2, 5, 7), jnp.float32))
    assert {k: (v.shape, v.dtype) for k, v in variables["params"].items()} == {
        "kernel": ((7, Gw, 3, 4), jnp.float32),
        "recurrent_kernel": ((Gr, 3, 4, 4), jnp.float32),
        "bias": ((Gt, 3, 4), jnp.float32),
    }
    carry = layer.initialize_carry(jax.random.key(0), (2, 6, 7))
    assert carry.shape == (S, 2, 6, 12) and carry.dtype == jnp.float32
    assert not carry.any()


@pytest.mark.parametrize("param_dtype,atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_default_initializers(param_dtype, atol):
    F_, H_, N_ = 64, 32, 4
    D = H_ // N_
    layer = FlashRNN(H_, function="lstm", num_heads=N_, param_dtype=param_dtype)
    params = jax.jit(layer.init)(jax.random.key(0), jnp.ones((1, 2, F_), param_dtype))["params"]
    assert all(p.dtype == param_dtype for p in params.values())
    # lecun_normal: std 1/sqrt(fan_in) with fan_in = in_features.
    assert abs(float(jnp.std(params["kernel"].astype(jnp.float32))) * np.sqrt(F_) - 1) < 0.1
    assert not params["bias"].any()
    # Every gate and head block is orthogonal on its own (in bfloat16 too: it is drawn in
    # float32, as QR has no bfloat16 kernel, and rounded) ...
    R = np.asarray(params["recurrent_kernel"], np.float64)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(D), R.shape),
                               atol=atol)
    # ... and drew its own key.
    assert len(np.unique(np.round(R[..., 0, 0], 6))) == 4 * N_


def test_custom_recurrent_init_is_called_per_block():
    seen = []

    def init(key, shape, dtype):
        seen.append((shape, np.dtype(dtype)))
        return jnp.full(shape, 0.25, dtype)

    layer = FlashRNN(6, function="gru", num_heads=3, recurrent_kernel_init=init,
                     param_dtype=jnp.bfloat16)
    variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 2, 3), jnp.float32))
    R = variables["params"]["recurrent_kernel"]
    assert (R.shape, R.dtype) == ((3, 3, 2, 2), jnp.bfloat16)
    # Traced once under vmap for one [D, D] block, drawn in float32 and then rounded.
    assert seen == [((2, 2), np.dtype(np.float32))]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_output_equals_flashrnn_on_the_layer_parameters(function):
    Gw, _, _, S = GATES[function]
    x = normal(0, (B, T, F))
    variables = random_params(function)
    carry0 = random_carry(function)
    carry, y = run(variables, x, carry0, function=function)
    assert y.shape == (B, T, H) and carry.shape == (S, B, H)
    assert y.dtype == carry.dtype == jnp.float32

    p = variables["params"]
    Wx = (x @ p["kernel"].reshape(F, Gw * H)).reshape(B, T, Gw, N, H // N)
    states_all, last = flashrnn_jit(Wx, p["recurrent_kernel"], p["bias"],
                                    carry0.reshape(S, B, N, H // N), function=function)
    np.testing.assert_allclose(y, states_all[0].reshape(B, T, H), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry, last.reshape(S, B, H), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("function,num_heads", [("elman", 1), ("lstm", 1), ("lstm", 4)])
def test_output_equals_numpy_loop(function, num_heads):
    x = normal(0, (B, T, F))
    variables = random_params(function, heads=num_heads)
    carry0 = random_carry(function)
    carry, y = run(variables, x, carry0, function=function, num_heads=num_heads)

    p = variables["params"]
    h0, c0 = carry0[0], carry0[-1]  # elman has only h; its c0 is unused
    y_ref, h_ref, c_ref = numpy_loop(function, x, p["kernel"], p["recurrent_kernel"], p["bias"],
                                     h0, c0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(carry[0], h_ref, rtol=1e-5, atol=1e-5)
    if function == "lstm":
        np.testing.assert_allclose(carry[1], c_ref, rtol=1e-5, atol=1e-5)
    # The initial carry is honoured: from zeros the first step differs.
    y_zero = numpy_loop(function, x, p["kernel"], p["recurrent_kernel"], p["bias"],
                        0 * h0, 0 * c0)[0]
    assert np.abs(y_zero - y_ref)[:, 0].max() > 1e-2


def test_initialize_carry_equals_starting_from_none():
    x = normal(0, (B, T, F))
    variables = random_params("slstm")
    carry0 = FlashRNN(H, function="slstm", num_heads=N).initialize_carry(None, x[:, 0].shape)
    np.testing.assert_array_equal(run(variables, x, carry0, function="slstm")[1],
                                  run(variables, x, function="slstm")[1])


# The carry is packed the same way for every cell; these two have 1 and 4 states.
@pytest.mark.parametrize("function", ["gru", "slstm"])
def test_carry_round_trip_equals_the_concatenated_run(function):
    x = normal(0, (B, 2 * T, F))
    variables = random_params(function)
    carry_full, y_full = run(variables, x, function=function)
    carry, y1 = run(variables, x[:, :T], function=function)
    carry, y2 = run(variables, x[:, T:], carry, function=function)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), y_full, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry, carry_full, rtol=1e-6, atol=1e-6)


def test_time_major_and_extra_batch_axes():
    x = normal(0, (B, T, F))
    variables = random_params("gru")
    carry, y = run(variables, x, function="gru")

    carry_tm, y_tm = run(variables, np.swapaxes(x, 0, 1), function="gru", time_major=True)
    assert y_tm.shape == (T, B, H)
    np.testing.assert_allclose(y_tm, jnp.swapaxes(y, 0, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry_tm, carry, rtol=1e-6, atol=1e-6)

    carry_2d, y_2d = run(variables, x.reshape(2, B // 2, T, F), function="gru")
    assert y_2d.shape == (2, B // 2, T, H) and carry_2d.shape == (1, 2, B // 2, H)
    np.testing.assert_allclose(y_2d.reshape(B, T, H), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry_2d.reshape(1, B, H), carry, rtol=1e-6, atol=1e-6)


def test_hidden_size_not_divisible_by_num_heads():
    with pytest.raises(ValueError, match=r"hidden_size=10 and num_heads=3"):
        FlashRNN(10, num_heads=3)
    with pytest.raises(ValueError, match=r"function must be one of"):
        FlashRNN(8, function="rnn")


def test_wrong_carry_and_input_shapes_are_named():
    layer = FlashRNN(H, function="lstm", num_heads=N)
    x = normal(0, (B, T, F))
    variables = random_params("lstm")
    with pytest.raises(ValueError, match=rf"initial_carry .*\(2, {B}, {H}\).*got \(1, {B}, {H}\)"):
        layer.apply(variables, x, initial_carry=np.zeros((1, B, H), np.float32))
    with pytest.raises(ValueError, match=r"inputs must have shape .*rank >= 2.*got shape \(4,\)"):
        layer.apply(variables, x[0, 0])


def test_bfloat16_computation():
    x = normal(0, (B, T, F))
    variables = random_params("lstm")
    carry0 = random_carry("lstm")
    carry32, y32 = run(variables, x, carry0, function="lstm")
    carry16, y16 = run(variables, x, carry0, function="lstm", dtype=jnp.bfloat16)
    assert y16.dtype == carry16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(np.float32), y32, atol=3e-2)
    np.testing.assert_allclose(carry16.astype(np.float32), carry32, atol=3e-2)
    # Not silently float32: bf16 rounding shows up somewhere.
    assert np.abs(y16.astype(np.float32) - y32).max() > 1e-4


# lstm's gradients are exercised by the training test below.
@pytest.mark.parametrize("function", ["gru", "slstm", "elman"])
def test_gradients_are_finite_and_nonzero(function):
    layer = FlashRNN(H, function=function, num_heads=N)
    x = normal(0, (B, T, F))

    @jax.jit
    @functools.partial(jax.grad, argnums=(0, 1))
    def grad_fn(params, carry):
        y = layer.apply({"params": params}, x, initial_carry=carry)
        return jnp.sum(jnp.sin(3 * y))

    grads = grad_fn(random_params(function)["params"], random_carry(function))
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4


def test_aliases_pin_the_function():
    x = jnp.ones((B, T, F), jnp.float32)
    for alias, function in ((LSTM, "lstm"), (GRU, "gru"), (SLSTM, "slstm"), (Elman, "elman")):
        layer = alias(H, num_heads=N)
        assert layer.function == function
        assert (jax.tree_util.tree_map(jnp.shape, jax.eval_shape(layer.init, jax.random.key(0), x))
                == jax.tree_util.tree_map(jnp.shape, random_params(function)))
    with pytest.raises(TypeError):
        LSTM(H, function="gru")


def test_adam_lowers_the_loss_of_a_sequence_regression():
    """Learn a squashed running difference of two inputs: it needs the recurrence."""
    x = normal(0, (16, T, 2))
    target = np.tanh(0.5 * np.cumsum(x[..., :1] - x[..., 1:], axis=1))
    layer = FlashRNN(H, function="lstm", num_heads=N)
    params = {"rnn": random_params("lstm", in_features=2)["params"], "w": normal(7, (H, 1), 0.3)}
    optimizer = optax.adam(3e-2)

    def loss_fn(params):
        y = layer.apply({"params": params["rnn"]}, x) @ params["w"]
        return jnp.mean((y - target) ** 2)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses
