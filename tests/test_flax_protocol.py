"""The Linen and NNX layers under the flax RNN call protocol: seq_lengths, reverse,
keep_order, time_major, return_carry, resets, Bidirectional, and StackedRNN."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.linen.recurrent import flip_sequences

import flashrnn_jax.linen as fl
import flashrnn_jax.nnx as fx

B, T, F, H, HEADS = 3, 6, 4, 8, 2
LENGTHS = np.array([T, 0, 4])


@pytest.fixture
def x(rng):
    return jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)


def pad_zero(y, lengths):
    """Zero the positions t >= lengths[b] of y [B, T, H]."""
    return jnp.where(jnp.arange(y.shape[1])[None, :, None] < lengths[:, None, None], y, 0.0)


def check_reverse_against_flip(layer_call, x):
    """reverse=True equals running the per-row flipped inputs forward (flax's flip)."""
    flipped = flip_sequences(x, LENGTHS, 1, False)
    carry_f, y_f = layer_call(flipped, seq_lengths=LENGTHS, return_carry=True)
    carry_r, y_r = layer_call(x, seq_lengths=LENGTHS, return_carry=True, reverse=True)
    np.testing.assert_allclose(y_r, pad_zero(y_f, LENGTHS), atol=1e-6)  # reading order
    np.testing.assert_allclose(carry_r, carry_f, atol=1e-6)
    y_k = layer_call(x, seq_lengths=LENGTHS, reverse=True, keep_order=True)
    np.testing.assert_allclose(y_k, pad_zero(flip_sequences(y_f, LENGTHS, 1, False), LENGTHS),
                               atol=1e-6)


@pytest.mark.parametrize("function", ["lstm", "slstm"])
def test_linen_bidirectional_with_seq_lengths(x, function):
    fwd = fl.FlashRNN(H, function, num_heads=HEADS, backend="scan")
    bwd = fl.FlashRNN(H, function, num_heads=HEADS, backend="scan")
    bi = nn.Bidirectional(fwd, bwd)
    variables = bi.init(jax.random.key(0), x, seq_lengths=LENGTHS)
    (carry_f, carry_b), y = bi.apply(variables, x, seq_lengths=LENGTHS, return_carry=True)
    p_f = {"params": variables["params"]["forward_rnn"]}
    p_b = {"params": variables["params"]["backward_rnn"]}
    want_cf, want_yf = fwd.apply(p_f, x, seq_lengths=LENGTHS, return_carry=True)
    want_cb, want_yb = bwd.apply(p_b, x, seq_lengths=LENGTHS, return_carry=True, reverse=True,
                                 keep_order=True)
    np.testing.assert_allclose(y, jnp.concatenate([want_yf, want_yb], -1), atol=1e-6)
    np.testing.assert_allclose(carry_f, want_cf, atol=1e-6)
    np.testing.assert_allclose(carry_b, want_cb, atol=1e-6)
    # The carry honours seq_lengths: the state after the last valid step (row by row).
    for row, length in enumerate(LENGTHS):
        c, _ = fwd.apply(p_f, x[row : row + 1, :max(length, 1)], return_carry=True)
        want = c if length else jnp.zeros_like(c)
        np.testing.assert_allclose(carry_f[:, row : row + 1], want, atol=1e-6)
    check_reverse_against_flip(lambda *a, **k: bwd.apply(p_b, *a, **k), x)


def test_nnx_bidirectional_with_seq_lengths(x):
    rngs = nnx.Rngs(0)
    fwd = fx.FlashRNN(F, H, function="gru", num_heads=HEADS, backend="scan", rngs=rngs)
    bwd = fx.FlashRNN(F, H, function="gru", num_heads=HEADS, backend="scan", rngs=rngs)
    bi = nnx.Bidirectional(fwd, bwd)
    (carry_f, carry_b), y = bi(x, seq_lengths=LENGTHS, return_carry=True)
    want_cf, want_yf = fwd(x, seq_lengths=LENGTHS, return_carry=True)
    want_cb, want_yb = bwd(x, seq_lengths=LENGTHS, return_carry=True, reverse=True,
                           keep_order=True)
    np.testing.assert_allclose(y, jnp.concatenate([want_yf, want_yb], -1), atol=1e-6)
    np.testing.assert_allclose(carry_f, want_cf, atol=1e-6)
    np.testing.assert_allclose(carry_b, want_cb, atol=1e-6)
    check_reverse_against_flip(bwd, x)


def test_nnx_layer_inside_nnx_rnn_protocol_call_under_jit(x):
    layer = fx.FlashRNN(F, H, function="elman", num_heads=HEADS, backend="scan",
                        rngs=nnx.Rngs(1))

    @nnx.jit
    def run(layer, x, lengths):
        return layer(x, seq_lengths=lengths, return_carry=True, rngs=None)

    carry, y = run(layer, x, LENGTHS)
    want_c, want_y = layer(x, seq_lengths=LENGTHS, return_carry=True)
    np.testing.assert_allclose(y, want_y, atol=1e-6)
    np.testing.assert_allclose(carry, want_c, atol=1e-6)


def test_time_major_and_resets(rng, x):
    layer = fl.FlashRNN(H, "lstm", num_heads=HEADS, backend="scan")
    variables = layer.init(jax.random.key(0), x)
    carry0 = jnp.asarray(rng.normal(size=(2, B, H)), jnp.float32)
    resets = np.zeros((B, T), bool)
    resets[:, 3] = True
    carry, y = layer.apply(variables, x, initial_carry=carry0, resets=resets, return_carry=True)
    # After the reset the sequence restarts from the initial carry.
    c2, y2 = layer.apply(variables, x[:, 3:], initial_carry=carry0, return_carry=True)
    np.testing.assert_allclose(y[:, 3:], y2, atol=1e-6)
    np.testing.assert_allclose(carry, c2, atol=1e-6)
    y1 = layer.apply(variables, x[:, :3], initial_carry=carry0)
    np.testing.assert_allclose(y[:, :3], y1, atol=1e-6)
    # time_major: inputs [T, B, F], resets [T, B].
    carry_tm, y_tm = layer.apply(variables, jnp.swapaxes(x, 0, 1), initial_carry=carry0,
                                 resets=resets.T, return_carry=True, time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(y_tm, 0, 1), y, atol=1e-6)
    np.testing.assert_allclose(carry_tm, carry, atol=1e-6)
    with pytest.raises(ValueError, match="resets must have shape"):
        layer.apply(variables, x, resets=resets.T)
    with pytest.raises(ValueError, match="seq_lengths must have the batch shape"):
        layer.apply(variables, x, seq_lengths=LENGTHS[:2])


def test_gradient_controls_on_layers(x):
    layer = fl.FlashRNN(H, "elman", num_heads=HEADS, backend="scan")
    cut = fl.FlashRNN(H, "elman", num_heads=HEADS, backend="scan", gradient_recurrent_cut=True)
    variables = layer.init(jax.random.key(0), x)

    def grad(module):
        return jax.grad(lambda v: module.apply(v, x).sum())(variables)["params"]

    np.testing.assert_allclose(cut.apply(variables, x), layer.apply(variables, x))
    g_plain, g_cut = grad(layer), grad(cut)
    assert not np.allclose(g_plain["recurrent_kernel"], g_cut["recurrent_kernel"])
    nn_layer = fx.FlashRNN(F, H, function="elman", num_heads=HEADS, backend="scan",
                           gradient_recurrent_clipval=1e30, rngs=nnx.Rngs(0))
    assert nn_layer.gradient_recurrent_clipval == 1e30


def test_linen_stacked_rnn(x):
    layers = [fl.FlashRNN(H, "lstm", num_heads=HEADS, backend="scan") for _ in range(3)]
    stack = fl.StackedRNN(layers, residual=(False, True, True))
    variables = stack.init(jax.random.key(0), x)
    carries, y = stack.apply(variables, x, seq_lengths=LENGTHS, return_carry=True)
    params = variables["params"]
    h = x
    for i, layer in enumerate(layers):
        c, out = layer.apply({"params": params[f"layers_{i}"]}, h, seq_lengths=LENGTHS,
                             return_carry=True)
        h = out if i == 0 else out + h
        np.testing.assert_allclose(carries[i], c, atol=1e-6)
    np.testing.assert_allclose(y, h, atol=1e-6)
    with pytest.raises(ValueError, match="residual connection around layer 0"):
        fl.StackedRNN(layers[:1], residual=True).init(jax.random.key(0), x)
    # Bidirectional layers stack too.
    bi = fl.StackedRNN([nn.Bidirectional(fl.FlashRNN(H, "gru", backend="scan"),
                                         fl.FlashRNN(H, "gru", backend="scan"))])
    assert bi.init_with_output(jax.random.key(0), x, seq_lengths=LENGTHS)[0].shape == (B, T, 2 * H)


def test_nnx_stacked_rnn(x):
    rngs = nnx.Rngs(0)
    layers = [fx.FlashRNN(F, H, function="elman", num_heads=HEADS, backend="scan", rngs=rngs),
              fx.FlashRNN(H, H, function="elman", num_heads=HEADS, backend="scan", rngs=rngs)]
    stack = fx.StackedRNN(layers, residual=(False, True))
    resets = np.zeros((B, T), bool)
    resets[:, 2] = True
    carries, y = stack(x, seq_lengths=LENGTHS, resets=resets, return_carry=True)
    c0, h0 = layers[0](x, seq_lengths=LENGTHS, resets=resets, return_carry=True)
    c1, h1 = layers[1](h0, seq_lengths=LENGTHS, resets=resets, return_carry=True)
    np.testing.assert_allclose(y, h1 + h0, atol=1e-6)
    np.testing.assert_allclose(carries[1], c1, atol=1e-6)
    with pytest.raises(ValueError, match="residual must be a bool"):
        fx.StackedRNN(layers, residual=(True,))
