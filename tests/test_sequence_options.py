"""seq_lengths, resets, reverse and the recurrent gradient controls of ``flashrnn`` (scan
backend) against the float64 NumPy reference in tests/reference.py.

Shapes are shared between tests so that every option combination compiles once.
"""

from __future__ import annotations

import functools

import fused_emulator
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from reference import (
    CELL_SHAPES, loss_weights, numerical_gradient, project, random_inputs, random_states,
    reference_flashrnn, reference_flashrnn_options,
)

from flashrnn_jax import FusedBackendUnavailableError, flashrnn, fused

FUNCTIONS = tuple(CELL_SHAPES)
B, T, N, D = 4, 5, 2, 2
LENGTHS = np.array([0, T, 3, 1])  # includes an empty row and a full row


def draw(rng, function, B=B, T=T):
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    states = random_states(rng, function, B, N, D)
    resets = rng.uniform(size=(B, T)) < 0.35
    resets[:, 2] = True  # at least one reset inside every long enough row
    return Wx, R, b, states, resets


COMBOS = {
    "lengths": dict(seq_lengths=LENGTHS),
    "resets": dict(resets=True),
    "reverse": dict(reverse=True),
    "all": dict(seq_lengths=LENGTHS, resets=True, reverse=True),
}


def options(combo, resets):
    opts = dict(COMBOS[combo])
    if "resets" in opts:
        opts["resets"] = resets
    return opts


@pytest.mark.parametrize("function", FUNCTIONS)
def test_forward_matches_reference(rng, function):
    Wx, R, b, states, resets = draw(rng, function)
    for combo in COMBOS:
        opts = options(combo, resets)
        for init in (None, states):
            got_all, got_last = flashrnn(Wx, R, b, init, function=function, backend="scan",
                                         **opts)
            want_all, want_last, _ = reference_flashrnn_options(Wx, R, b, init, function, **opts)
            np.testing.assert_allclose(got_all, want_all, atol=1e-12, err_msg=combo)
            np.testing.assert_allclose(got_last, want_last, atol=1e-12, err_msg=combo)
    # Length 0 keeps the initial state; padding holds zeros.
    got_all, got_last = flashrnn(Wx, R, b, states, function=function, seq_lengths=LENGTHS)
    np.testing.assert_array_equal(got_last[:, 0], states[:, 0])
    assert not np.any(np.asarray(got_all)[:, 2, 3:])


def test_reference_options_default_to_plain_reference(rng):
    Wx, R, b, states, _ = draw(rng, "lstm")
    want_all, want_last = reference_flashrnn(Wx, R, b, states, "lstm")
    got_all, got_last, _ = reference_flashrnn_options(Wx, R, b, states, "lstm")
    np.testing.assert_allclose(got_all, want_all, atol=1e-14)
    np.testing.assert_allclose(got_last, want_last, atol=1e-14)


def test_full_lengths_and_no_resets_equal_plain_call(rng):
    Wx, R, b, states, _ = draw(rng, "gru")
    plain = flashrnn(Wx, R, b, states, function="gru")
    masked = flashrnn(Wx, R, b, states, function="gru", seq_lengths=np.full(B, T),
                      resets=np.zeros((B, T), bool))
    for p, m in zip(plain, masked):
        np.testing.assert_allclose(m, p, atol=1e-14)
    # reverse with full lengths reads the flipped sequence.
    rev_all, rev_last = flashrnn(Wx, R, b, states, function="gru", reverse=True)
    flip_all, flip_last = flashrnn(Wx[:, ::-1], R, b, states, function="gru")
    np.testing.assert_allclose(rev_all, np.asarray(flip_all)[:, :, ::-1], atol=1e-14)
    np.testing.assert_allclose(rev_last, flip_last, atol=1e-14)


def _grads(function, args, weights, **opts):
    def loss(Wx, R, b, states):
        return project(*flashrnn(Wx, R, b, states, function=function, backend="scan", **opts),
                       weights)

    return jax.grad(loss, argnums=(0, 1, 2, 3))(*(jnp.asarray(a) for a in args))


def _check_grads(grads, expected_fn, args):
    for argnum, grad in enumerate(grads):
        expected = numerical_gradient(expected_fn, args, argnum)
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=f"gradient for argument {argnum}")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_gradients_match_reference(rng, function):
    """seq_lengths (with 0 and T), resets and reverse together; the gradient-cut test below
    covers the forward direction with lengths and resets."""
    Wx, R, b, states, resets = draw(rng, function)
    opts = options("all", resets)
    weights = loss_weights(rng, function, B, T, N, D)  # h only for sLSTM (m is stop-gradient)
    args = (Wx, R, b, states)
    grads = _grads(function, args, weights, **opts)

    def reference_loss(Wx, R, b, states):
        return project(*reference_flashrnn_options(Wx, R, b, states, function, **opts)[:2],
                       weights)

    _check_grads(grads, reference_loss, args)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_gradient_recurrent_cut(rng, function):
    """With the cut, the gradient is that of the reference whose recurrent input h_prev (in
    R @ h_prev) is held at its forward values."""
    Wx, R, b, states, resets = draw(rng, function)
    opts = dict(seq_lengths=LENGTHS, resets=resets)
    weights = loss_weights(rng, function, B, T, N, D)
    args = (Wx, R, b, states)
    grads = _grads(function, args, weights, gradient_recurrent_cut=True, **opts)
    # Forward values are unchanged by the cut.
    cut = flashrnn(Wx, R, b, states, function=function, gradient_recurrent_cut=True, **opts)
    plain = flashrnn(Wx, R, b, states, function=function, **opts)
    np.testing.assert_array_equal(cut[0], plain[0])
    frozen = reference_flashrnn_options(Wx, R, b, states, function, **opts)[2]

    def frozen_loss(Wx, R, b, states):
        return project(*reference_flashrnn_options(Wx, R, b, states, function,
                                                   recurrent_h=frozen, **opts)[:2], weights)

    _check_grads(grads, frozen_loss, args)
    if function == "elman":
        # The initial h reaches the loss only through R @ h_prev, except in row 0 (length 0),
        # whose last state is the initial state itself.
        np.testing.assert_array_equal(grads[3][:, 1:], 0.0)
        np.testing.assert_array_equal(grads[3][0, 0], weights[1][0, 0])
        assert np.abs(grads[1]).max() > 1e-3  # dR still exists


def _elman_clipped_grads(Wx, R, b, h0, w_all, w_last, clipval):
    """Hand-written backward pass of elman with the cotangent of h_prev through R @ h_prev
    clipped to [-clipval, clipval] at every step (float64 NumPy)."""
    Bn, Tn = Wx.shape[:2]
    hs = [h0]
    for t in range(Tn):
        rh = np.einsum("noi,bni->bno", R[0], hs[-1])
        hs.append(np.tanh(Wx[:, t, 0] + rh + b[0]))
    dWx, dR, db = np.zeros_like(Wx), np.zeros_like(R), np.zeros_like(b)
    g_rec = np.zeros_like(h0)  # cotangent of h_t coming back from step t + 1
    for t in reversed(range(Tn)):
        g_h = w_all[0][:, t] + g_rec + (w_last[0] if t == Tn - 1 else 0.0)
        delta = g_h * (1.0 - hs[t + 1] ** 2)
        dWx[:, t, 0] = delta
        db[0] += delta.sum(0)
        dR[0] += np.einsum("bno,bni->noi", delta, hs[t])
        g_rec = np.clip(np.einsum("noi,bno->bni", R[0], delta), -clipval, clipval)
    return dWx, dR, db, g_rec[None]


def test_gradient_recurrent_clipval(rng):
    Wx, R, b, states, _ = draw(rng, "elman")
    R = 3.0 * R  # large recurrent cotangents, so that clipping is active
    weights = loss_weights(rng, "elman", B, T, N, D)
    args = (Wx, R, b, states)
    plain = _grads("elman", args, weights)
    huge = _grads("elman", args, weights, gradient_recurrent_clipval=1e30)
    for p, h in zip(plain, huge):
        np.testing.assert_allclose(h, p, rtol=1e-13, atol=1e-13)
    clipval = 0.05
    unclipped = _elman_clipped_grads(Wx, R, b, states[0], *weights, clipval=np.inf)
    for got, want in zip(plain, unclipped):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    clipped = _grads("elman", args, weights, gradient_recurrent_clipval=clipval)
    want = _elman_clipped_grads(Wx, R, b, states[0], *weights, clipval=clipval)
    for got, w in zip(clipped, want):
        np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)
    assert np.abs(clipped[3]).max() <= clipval  # dh0 comes only through R @ h_prev
    assert np.abs(plain[3]).max() > clipval  # so clipping did act


def test_jit_and_vmap(rng):
    Wx, R, b, states, resets = draw(rng, "lstm")
    kw = dict(function="lstm", reverse=True)
    eager = flashrnn(Wx, R, b, states, seq_lengths=LENGTHS, resets=resets, **kw)
    jitted = jax.jit(lambda *a: flashrnn(*a[:4], seq_lengths=a[4], resets=a[5], **kw))(
        Wx, R, b, states, LENGTHS, resets)
    for e, j in zip(eager, jitted):
        np.testing.assert_allclose(j, e, atol=1e-14)
    # vmap over an extra leading axis of the inputs and options.
    Wx2 = np.stack([Wx, Wx[::-1]])
    L2 = np.stack([LENGTHS, LENGTHS[::-1]])
    r2 = np.stack([resets, resets[::-1]])
    out = jax.vmap(lambda w, l, r: flashrnn(w, R, b, None, seq_lengths=l, resets=r, **kw))(
        Wx2, L2, r2)
    for k in range(2):
        want = flashrnn(Wx2[k], R, b, None, seq_lengths=L2[k], resets=r2[k], **kw)
        for o, w in zip(out, want):
            np.testing.assert_allclose(o[k], w, atol=1e-14)


def test_low_precision_dtype(rng):
    Wx, R, b, states, resets = draw(rng, "slstm")
    opts = dict(seq_lengths=LENGTHS, resets=resets, reverse=True, function="slstm")
    lo = flashrnn(*(jnp.asarray(x, jnp.bfloat16) for x in (Wx, R, b, states)), **opts)
    hi = flashrnn(*(jnp.asarray(x, jnp.float32) for x in (Wx, R, b, states)), **opts)
    assert lo[0].dtype == jnp.bfloat16
    assert np.abs(np.asarray(lo[0][0], np.float32) - hi[0][0]).max() < 0.2


def test_batch_sharded_options(rng):
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    Wx, R, b, states, resets = draw(rng, "gru")
    opts = dict(function="gru", seq_lengths=LENGTHS, resets=resets, reverse=True,
                gradient_recurrent_clipval=0.5)
    weights = loss_weights(rng, "gru", B, T, N, D)

    def loss(Wx, R, b, states, **split):
        return project(*flashrnn(Wx, R, b, states, **opts, **split), weights)

    args = tuple(jnp.asarray(a) for a in (Wx, R, b, states))
    want = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*args)
    got = jax.jit(jax.value_and_grad(
        lambda *a: loss(*a, mesh=mesh, batch_axis="data"), argnums=(0, 1, 2, 3)))(*args)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-12)


def test_fused_backend_takes_the_options(rng):
    """Without a GPU, backend="fused" names why it cannot run, options or not; "auto" then
    equals the scan. With one, the fused call equals the scan to float32 rounding."""
    Wx, R, b, states, resets = draw(rng, "elman")
    for opts in (dict(seq_lengths=LENGTHS), dict(resets=resets), dict(reverse=True),
                 dict(gradient_recurrent_cut=True), dict(gradient_recurrent_clipval=1.0)):
        scan = flashrnn(Wx, R, b, function="elman", backend="scan", **opts)
        auto = flashrnn(Wx, R, b, function="elman", backend="auto", **opts)
        reason = fused.unsupported_reason(np.float64, D, "elman")
        if reason is None:
            got = flashrnn(Wx, R, b, function="elman", backend="fused", **opts)
            np.testing.assert_allclose(got[0], scan[0], rtol=1e-5, atol=1e-6)
        else:
            with pytest.raises(FusedBackendUnavailableError, match=reason.split(" (")[0]):
                flashrnn(Wx, R, b, function="elman", backend="fused", **opts)
            np.testing.assert_array_equal(auto[0], scan[0])


FUSED_COMBOS = {
    **COMBOS,
    "cut": dict(seq_lengths=LENGTHS, resets=True, gradient_recurrent_cut=True),
    "clip": dict(seq_lengths=LENGTHS, resets=True, reverse=True, gradient_recurrent_clipval=0.3),
}


@pytest.mark.parametrize("dr_in_kernel", (False, True), ids=("dr_xla", "dr_in_kernel"))
@pytest.mark.parametrize("combo", FUSED_COMBOS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_fused_custom_vjp_with_emulated_kernels(rng, monkeypatch, function, combo, dr_in_kernel):
    """The fused backend's custom_vjp (h_prev, dR, db, d_states0 assembly, options passed to
    the kernels) with the kernels replaced by tests/fused_emulator.py: forward against the
    float64 reference, gradients against the scan backend (itself checked against finite
    differences above). dr_in_kernel: dR from the backward's per-batch-tile parts and db from
    its per-row parts (the target flashrnn_jax_backward_dr, emulated with exact operands in
    float64), summed by the custom_vjp, instead of its own contraction and sum."""
    Wx, R, b, states, resets = draw(rng, function)
    R = 2.0 * R  # recurrent cotangents large enough for the clip to act
    opts = dict(FUSED_COMBOS[combo])
    if "resets" in opts:
        opts["resets"] = resets
    # The fused backend carries b and the states in float32: so does the oracle's input.
    b, states = (np.asarray(x, np.float32).astype(np.float64) for x in (b, states))
    weights = loss_weights(rng, function, B, T, N, D)
    args = tuple(jnp.asarray(a) for a in (Wx, R, b, states))

    def loss(backend, Wx, R, b, states):
        return project(*flashrnn(Wx, R, b, states, function=function, backend=backend, **opts),
                       weights)

    want = jax.value_and_grad(functools.partial(loss, "scan"), argnums=(0, 1, 2, 3))(*args)
    fused_emulator.install(monkeypatch)
    if dr_in_kernel:
        monkeypatch.setattr(fused, "kernel_computes_weight_gradient", lambda *a: True)
        # Tiles of 3 rows: B = 4 makes two, the second with one row.
        monkeypatch.setattr(fused, "DR_PARTIAL_BATCH_TILE", 3)
    got_all, got_last = flashrnn(*args, function=function, backend="fused", **opts)
    ref_opts = {k: v for k, v in opts.items() if not k.startswith("gradient")}
    want_all, want_last, _ = reference_flashrnn_options(*args, function, **ref_opts)
    np.testing.assert_allclose(got_all, want_all, atol=1e-12)
    np.testing.assert_allclose(got_last, want_last, atol=1e-12)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, "fused"), argnums=(0, 1, 2, 3)))(
        *args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for name, g, w in zip(("Wx", "R", "b", "states"), got[1], want[1]):
        scale = np.abs(np.asarray(w)).max()
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("backend", ("scan", "fused"))
def test_traced_lengths_outside_the_range_are_clamped(rng, monkeypatch, backend):
    """Under jit the lengths cannot be checked: every backend clamps them to 0..T (the fused
    backend through the emulated kernels here, on the GPU in test_fused_options_gpu.py)."""
    Wx, R, b, states, resets = draw(rng, "lstm")
    if backend == "fused":
        fused_emulator.install(monkeypatch)
    lengths = np.array([T + 3, -2, 3, T])
    opts = dict(function="lstm", backend=backend, resets=resets, reverse=True)
    got = jax.jit(lambda L: flashrnn(Wx, R, b, states, seq_lengths=L, **opts))(lengths)
    want = flashrnn(Wx, R, b, states, seq_lengths=np.clip(lengths, 0, T), **opts)
    for g, w in zip(got, want):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(g, w, atol=1e-12)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(seq_lengths=np.full(B, 2.0)), TypeError, "seq_lengths must have an integer dtype"),
    (dict(seq_lengths=np.full(B + 1, 2)), ValueError, r"seq_lengths must have shape \[B\]"),
    (dict(seq_lengths=np.array([0, 1, 2, T + 1])), ValueError, "seq_lengths must lie in 0..T"),
    (dict(seq_lengths=np.array([0, -1, 2, 3])), ValueError, "seq_lengths must lie in 0..T"),
    (dict(resets=np.zeros((B, T), np.int32)), TypeError, "resets must have dtype bool"),
    (dict(resets=np.zeros((B, T + 1), bool)), ValueError, r"resets must have shape \[B, T\]"),
    (dict(reverse=1), TypeError, "reverse must be a bool"),
    (dict(gradient_recurrent_cut="yes"), TypeError, "gradient_recurrent_cut must be a bool"),
    (dict(gradient_recurrent_clipval=0.0), ValueError, "gradient_recurrent_clipval must be > 0"),
    (dict(gradient_recurrent_clipval=-1), ValueError, "gradient_recurrent_clipval must be > 0"),
    (dict(gradient_recurrent_clipval=True), TypeError, "gradient_recurrent_clipval must be"),
])
def test_validation(rng, kwargs, error, match):
    Wx, R, b, _, _ = draw(rng, "elman")
    with pytest.raises(error, match=match):
        flashrnn(Wx, R, b, function="elman", **kwargs)
