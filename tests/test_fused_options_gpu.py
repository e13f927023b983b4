"""The sequence and gradient options in the fused kernels, on a CUDA device.

Forward outputs against the float64 reference of the options (tests/reference.py); gradients
against the scan backend run in float64 with the same options (checked against finite
differences in test_sequence_options.py); DESIGN §4's rule: a fused error is at most twice the
scan backend's at the same input dtype, plus a small floor. Outputs are poisoned with NaN before
every launch. Batch 17 spans two batch tiles with padding; head size 256 runs as a cluster, 768 as
groups of 128 CTAs meeting through global memory (one (head, batch tile) group per launch) in
float32 and as 16-CTA clusters in bfloat16, and bfloat16 1024 as groups of 64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from accuracy import floor, rel_err
from reference import CELL_SHAPES, random_inputs, random_states, reference_flashrnn_options

from flashrnn_jax import flashrnn
from flashrnn_jax import fused

pytestmark = pytest.mark.gpu

FUNCTIONS = tuple(CELL_SHAPES)
B, T, N = 17, 37, 2
COMBOS = {
    "lengths+resets+reverse": dict(seq_lengths=True, resets=True, reverse=True),
    "lengths+resets+cut": dict(seq_lengths=True, resets=True, gradient_recurrent_cut=True),
    "reverse+clip": dict(reverse=True, gradient_recurrent_clipval=0.05),
}



def _options(rng, combo):
    opts = dict(COMBOS[combo])
    if opts.pop("seq_lengths", False):
        lengths = rng.integers(0, T + 1, size=B)
        lengths[:3] = (0, T, 1)
        opts["seq_lengths"] = jnp.asarray(lengths, jnp.int32)
    if opts.pop("resets", False):
        resets = rng.uniform(size=(B, T)) < 0.1
        resets[:, T // 2] = True
        opts["resets"] = jnp.asarray(resets)
    return opts


@functools.cache
def _fns(function, backend, static):
    static = dict(static)

    def run(Wx, R, b, states, seq_lengths, resets):
        return flashrnn(Wx, R, b, states, function=function, backend=backend,
                        seq_lengths=seq_lengths, resets=resets, **static)

    def loss(Wx, R, b, states, seq_lengths, resets, w_all, w_last):
        states_all, last = run(Wx, R, b, states, seq_lengths, resets)
        return jnp.sum(states_all.astype(jnp.float64) * w_all) + jnp.sum(
            last.astype(jnp.float64) * w_last)

    return jax.jit(run), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


# (dtype, head size): every kind of kernel (single CTA, cluster, group beyond a cluster) in a
# 16-bit dtype and float32, bfloat16 at 32 and 64, head sizes of the split tensor-core forward
# and backward, and bfloat16 at 1024, the tensor-core group kernels (64 CTAs).
SIZES = [(dtype, d) for dtype in (jnp.bfloat16, jnp.float32) for d in (16, 256, 768)] + [
    (jnp.bfloat16, 32), (jnp.bfloat16, 64), (jnp.bfloat16, 1024)]


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("dtype,head_size", SIZES,
                         ids=[f"{jnp.dtype(t).name}-{d}" for t, d in SIZES])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_fused_options_match_reference(function, dtype, head_size, combo, rng, gpu_case):
    opts = _options(rng, combo)
    seq_lengths, resets = opts.pop("seq_lengths", None), opts.pop("resets", None)
    static = tuple(sorted(opts.items()))
    Wx, R, b = random_inputs(rng, function, B, T, N, head_size)
    states = random_states(rng, function, B, N, head_size)
    low = [jnp.asarray(x, dtype) for x in (Wx, R, b, states)]
    x64 = [np.asarray(x, np.float64) for x in low]

    want_all, want_last, _ = reference_flashrnn_options(
        *x64, function, seq_lengths=seq_lengths, resets=resets,
        reverse=opts.get("reverse", False))
    run_fused, grad_fused = _fns(function, "fused", static)
    run_scan, grad_scan = _fns(function, "scan", static)
    with fused.poison_outputs():
        got_all, got_last = run_fused(*low, seq_lengths, resets)
    scan_all, scan_last = run_scan(*low, seq_lengths, resets)
    fwd_err = max(rel_err(got_all, want_all), rel_err(got_last, want_last))
    fwd_scan_err = max(rel_err(scan_all, want_all), rel_err(scan_last, want_last))

    S = CELL_SHAPES[function].num_states
    w_all = rng.normal(size=(S, B, T, N, head_size))
    w_last = rng.normal(size=(S, B, N, head_size))
    expected = grad_scan(*x64, seq_lengths, resets, w_all, w_last)
    with fused.poison_outputs():
        got_grads = grad_fused(*low, seq_lengths, resets, w_all, w_last)
    scan_grads = grad_scan(*low, seq_lengths, resets, w_all, w_last)
    grad_errs = [rel_err(g, np.asarray(e)) for g, e in zip(got_grads, expected)]
    grad_scan_errs = [rel_err(g, np.asarray(e)) for g, e in zip(scan_grads, expected)]

    gpu_case(function=function, dtype=jnp.dtype(dtype).name, D=head_size, N=N, B=B, T=T,
             options=combo, kernels=fused.kernels_for(dtype, head_size, function),
             fwd_rel_err=fwd_err, grad_rel_err=max(grad_errs))
    allowance = floor(dtype)
    assert fwd_err <= 2 * fwd_scan_err + allowance, (fwd_err, fwd_scan_err)
    for name, err, scan_err in zip(("Wx", "R", "b", "states"), grad_errs, grad_scan_errs):
        assert err <= 2 * scan_err + allowance, (name, err, scan_err)
    if seq_lengths is not None:
        # Padding is written, as zeros: poisoned NaN would have failed the comparison above.
        assert not np.any(np.asarray(got_all)[:, 0])


def test_bidirectional_linen_with_lengths_fused(rng):
    """flax.linen.Bidirectional over two fused layers with seq_lengths equals the scan."""
    import flax.linen as nn

    from flashrnn_jax.linen import FlashRNN

    x = jnp.asarray(rng.normal(size=(5, 23, 16)), jnp.float32)
    lengths = jnp.asarray([23, 0, 7, 1, 15], jnp.int32)
    outs = {}
    for backend in ("fused", "scan"):
        def layer():
            return FlashRNN(function="lstm", hidden_size=64, num_heads=2, backend=backend)

        model = nn.Bidirectional(layer(), layer())
        params = model.init(jax.random.key(0), x, seq_lengths=lengths)
        loss = lambda p: jnp.sum(model.apply(p, x, seq_lengths=lengths) ** 2)  # noqa: E731
        outs[backend] = jax.jit(jax.value_and_grad(loss))(params)
    for f, s in zip(jax.tree.leaves(outs["fused"]), jax.tree.leaves(outs["scan"])):
        assert rel_err(f, np.asarray(s, np.float64)) < 1e-4


def test_traced_lengths_outside_the_range_are_clamped(rng):
    """Under jit, lengths above T or below 0 are clamped to 0..T: the kernels read and write
    only inside the rows (a reversed row of length T + 3 would otherwise start past its end)."""
    Wx, R, b = (jnp.asarray(x, jnp.float32) for x in random_inputs(rng, "gru", B, T, N, 16))
    resets = jnp.asarray(rng.uniform(size=(B, T)) < 0.2)
    lengths = np.full(B, T + 3)
    lengths[1::3] = -2
    opts = dict(function="gru", resets=resets, reverse=True)
    with fused.poison_outputs():
        got = jax.jit(lambda L: flashrnn(Wx, R, b, seq_lengths=L, backend="fused", **opts))(
            jnp.asarray(lengths, jnp.int32))
    want = flashrnn(Wx, R, b, seq_lengths=np.clip(lengths, 0, T), backend="scan", **opts)
    for g, w in zip(got, want):
        assert rel_err(g, np.asarray(w, np.float64)) < 1e-5
