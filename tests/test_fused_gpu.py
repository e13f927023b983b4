"""The fused CUDA kernels against the float64 reference (DESIGN §4's rule), on a CUDA device.

Forward outputs are compared with the independent NumPy reference; gradients with the scan
backend run in float64 (itself checked against finite differences of the NumPy reference in
test_gradients.py). A fused result passes when its relative error is at most twice that of the
scan backend at the same input dtype, plus a small floor. Outputs are poisoned with NaN before
every kernel launch, so an element a kernel does not write fails the comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from accuracy import floor, rel_err
from reference import CELL_SHAPES, random_inputs, random_states, reference_flashrnn
from test_weight_gradient import SPEC
from test_weight_gradient import operands as weight_gradient_operands
from test_weight_gradient import rel_err as weight_gradient_error

from flashrnn_jax import flashrnn
from flashrnn_jax import fused
from flashrnn_jax.constrint import hardware

pytestmark = pytest.mark.gpu

FUNCTIONS = tuple(CELL_SHAPES)
DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
HEAD_SIZES = (6, 16, 24, 32, 64, 128, 256)
# (B, T, N): every odd batch, length and head count of the issue appears for every cell and
# dtype as the head sizes rotate through these.
SHAPES = ((1, 7, 3), (3, 1000, 1), (17, 7, 12), (3, 1, 3), (17, 1000, 1))
# Large heads: 16-bit heads of 512 and 768 (Elman: 1024) on the tensor-core cluster kernels (16
# CTAs; the float16 backward on the FMA kernels), bf16 heads of 1024 to 2048 and f16 LSTM,
# sLSTM and GRU heads of 2048 on the tensor-core group kernels (64 to 128 CTAs; no float16
# backward), the others on a 16-CTA cluster or on groups of up to 128 CTAs that meet through
# global memory (fma_exchange.cuh), where the hardware model fits them (not float32 heads of
# 1536 and 2048 with several R gates; at 2560 the Elman only).
# Shorter sequences keep the float64 reference affordable; 3 heads of 1536 (96 or 128 CTAs each)
# take one launch per head and batch tile, 17 rows two or three batch tiles.
LARGE_HEAD_SIZES = (512, 768, 1024, 1536, 2048, 2560)
LARGE_SHAPES = ((3, 20, 2), (17, 5, 1), (2, 9, 3))



def _fits(function, dtype, head_size):
    try:
        hardware.choose_tiling(function, fused._XLA_DTYPE_NAMES[np.dtype(dtype)], head_size)
    except hardware.InfeasibleTilingError:
        return False
    return True


def _cases():
    for function, dtype in itertools.product(FUNCTIONS, DTYPES):
        sizes = [(d, SHAPES) for d in HEAD_SIZES] + [
            (d, LARGE_SHAPES) for d in LARGE_HEAD_SIZES if _fits(function, dtype, d)]
        for i, (head_size, shapes) in enumerate(sizes):
            B, T, N = shapes[(i + FUNCTIONS.index(function)) % len(shapes)]
            yield pytest.param(
                function, dtype, head_size, B, T, N,
                id=f"{function}-{jnp.dtype(dtype).name}-D{head_size}-B{B}-T{T}-N{N}",
            )


def _loss(function, backend):
    """A random projection of every output, as a function of (Wx, R, b, states, weights)."""

    def loss(Wx, R, b, states, w_all, w_last):
        states_all, last = flashrnn(Wx, R, b, states, function=function, backend=backend)
        return jnp.sum(states_all.astype(jnp.float64) * w_all) + jnp.sum(
            last.astype(jnp.float64) * w_last
        )

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


@functools.cache
def _grad_fn(function, backend):
    return _loss(function, backend)


@functools.cache
def _forward_fn(function, backend):
    return jax.jit(functools.partial(flashrnn, function=function, backend=backend))


@pytest.mark.parametrize("function,dtype,head_size,B,T,N", list(_cases()))
def test_fused_matches_reference(function, dtype, head_size, B, T, N, rng, gpu_case):
    _check_against_reference(function, dtype, head_size, B, T, N, rng, gpu_case)


@pytest.mark.parametrize("function,dtype,head_size,smallest", [
    ("lstm", jnp.float16, 768, 32), ("lstm", jnp.float32, 768, 64),
    ("elman", jnp.bfloat16, 2048, 64)])
def test_fewer_sms_take_the_smallest_group_compiled_beside(function, dtype, head_size, smallest,
                                                           rng, gpu_case):
    """On a GPU with fewer SMs than the preferred group of 128 CTAs holds (H100 PCIe: 114), the
    smallest group compiled beside it runs: for an LSTM head of 768, 32 CTAs in float16 (its
    backward; the forward runs on the tensor-core cluster), 64 in float32 (both directions); for
    an Elman head of 2048 in bfloat16, the FMA group of 64 beside the tensor-core group of 128.
    Three heads of two or three batch tiles are six or nine groups, which the real SMs (132 on
    the H200) hold four or two at a time: several launches, each reusing the first's exchange
    buffers and counters."""
    name = fused._XLA_DTYPE_NAMES[np.dtype(dtype)]
    preferred, fallback = hardware.compiled_tilings(function, name.lower(), head_size)
    assert (preferred.cluster, fallback.cluster) == (128, smallest)
    assert fused._select_tiling(function, name, head_size) == preferred
    # The jitted functions are traced anew inside, where the tiling is chosen.
    _forward_fn.cache_clear()
    _grad_fn.cache_clear()
    try:
        with fused.tilings_as_for(dataclasses.replace(fused.device_limits(), sm_count=114)):
            assert fused._select_tiling(function, name, head_size) == fallback
            _check_against_reference(function, dtype, head_size, 17, 9, 3, rng, gpu_case)
        assert fused._select_tiling(function, name, head_size) == preferred
    finally:
        _forward_fn.cache_clear()
        _grad_fn.cache_clear()


def _check_against_reference(function, dtype, head_size, B, T, N, rng, gpu_case):
    """Forward outputs against the float64 reference and gradients against the scan backend in
    float64, each fused error at most twice the scan backend's at the same dtype plus a floor
    (DESIGN §4); outputs poisoned with NaN before every launch."""
    Wx, R, b = random_inputs(rng, function, B, T, N, head_size)
    states = random_states(rng, function, B, N, head_size)
    low = [jnp.asarray(x, dtype) for x in (Wx, R, b, states)]
    Wx64, R64, b64, states64 = (np.asarray(x, np.float64) for x in low)

    expected_all, expected_last = reference_flashrnn(Wx64, R64, b64, states64, function)
    with fused.poison_outputs():
        fused_all, fused_last = _forward_fn(function, "fused")(*low)
    scan_all, scan_last = _forward_fn(function, "scan")(*low)
    assert fused_all.dtype == dtype and fused_last.dtype == dtype
    fwd_err = max(rel_err(fused_all, expected_all), rel_err(fused_last, expected_last))
    fwd_scan_err = max(rel_err(scan_all, expected_all), rel_err(scan_last, expected_last))

    S = CELL_SHAPES[function].num_states
    w_all = rng.normal(size=(S, B, T, N, head_size))
    w_last = rng.normal(size=(S, B, N, head_size))
    kernels = fused.kernels_for(dtype, head_size, function)
    # A forward without a backward kernel (float16 heads of 2048) has no gradients to compare:
    # the gradient is refused by name before any launch, checked after the forward's record.
    differentiable = kernels[1] != fused.NO_KERNEL
    grad_errs, grad_scan_errs = [], []
    if differentiable:
        expected_grads = _grad_fn(function, "scan")(Wx64, R64, b64, states64, w_all, w_last)
        with fused.poison_outputs():
            fused_grads = _grad_fn(function, "fused")(*low, w_all, w_last)
        scan_grads = _grad_fn(function, "scan")(*low, w_all, w_last)
        grad_errs = [rel_err(g, np.asarray(e)) for g, e in zip(fused_grads, expected_grads)]
        grad_scan_errs = [rel_err(g, np.asarray(e)) for g, e in zip(scan_grads, expected_grads)]

    gpu_case(function=function, dtype=jnp.dtype(dtype).name, D=head_size, N=N, B=B, T=T,
             kernels=kernels, fwd_rel_err=fwd_err, grad_rel_err=max(grad_errs, default=None))
    allowance = floor(dtype)
    assert fwd_err <= 2 * fwd_scan_err + allowance, (fwd_err, fwd_scan_err)
    for name, err, scan_err in zip(("Wx", "R", "b", "states"), grad_errs, grad_scan_errs):
        assert err <= 2 * scan_err + allowance, (name, err, scan_err)
    if not differentiable:
        with pytest.raises(fused.FusedBackendUnavailableError, match="cannot differentiate"):
            _grad_fn(function, "fused")(*low, w_all, w_last)


def test_long_sequence_drift(rng, gpu_case):
    """T=4096: the fused forward stays as close to float64 as the scan does."""
    function, dtype, B, T, N, D = "slstm", jnp.bfloat16, 3, 4096, 2, 64
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    low = [jnp.asarray(x, dtype) for x in (Wx, R, b)]
    expected_all, _ = reference_flashrnn(*(np.asarray(x, np.float64) for x in low), None, function)
    with fused.poison_outputs():
        fused_all, _ = _forward_fn(function, "fused")(*low)
    scan_all, _ = _forward_fn(function, "scan")(*low)
    # Error over the last 256 steps, where drift would have accumulated.
    err = rel_err(fused_all[:, :, -256:], expected_all[:, :, -256:])
    scan_err = rel_err(scan_all[:, :, -256:], expected_all[:, :, -256:])
    gpu_case(function=function, dtype="bfloat16", D=D, N=N, B=B, T=T,
             fwd_rel_err=err, grad_rel_err=None)
    assert err <= 2 * scan_err + floor(dtype), (err, scan_err)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_vmap_and_jit(function, rng):
    """vmap over an extra leading axis equals a loop of single calls; jit equals eager."""
    V, B, T, N, D = 3, 2, 9, 2, 32
    Wx, R, b = random_inputs(rng, function, V * B, T, N, D)
    Wx = jnp.asarray(Wx.reshape(V, B, *Wx.shape[1:]), jnp.float32)
    R, b = jnp.asarray(R, jnp.float32), jnp.asarray(b, jnp.float32)
    run = functools.partial(flashrnn, function=function, backend="fused")
    batched = jax.jit(jax.vmap(run, in_axes=(0, None, None)))(Wx, R, b)
    for v in range(V):
        single = run(Wx[v], R, b)
        for got, want in zip(batched, single):
            np.testing.assert_array_equal(np.asarray(got[v]), np.asarray(want))
    grads = jax.jit(jax.vmap(jax.grad(lambda w: run(w, R, b)[0].sum())))(Wx)
    assert np.all(np.isfinite(np.asarray(grads)))


def test_auto_takes_fused(rng):
    """backend='auto' runs the kernels on a CUDA device (bit-identical to backend='fused')."""
    Wx, R, b = (jnp.asarray(x, jnp.bfloat16) for x in random_inputs(rng, "lstm", 4, 33, 3, 64))
    auto = flashrnn(Wx, R, b, function="lstm", backend="auto")
    fused_out = flashrnn(Wx, R, b, function="lstm", backend="fused")
    for a, f in zip(auto, fused_out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(f))


def _assert_auto_runs_the_scan(Wx, R, b, function):
    """backend='auto' gives the call to the scan: every output bit-identical to backend='scan'."""
    auto = flashrnn(Wx, R, b, function=function, backend="auto")
    scan = flashrnn(Wx, R, b, function=function, backend="scan")
    for a, s in zip(auto, scan):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(s))


def test_auto_takes_the_kernels_beyond_256(rng):
    """The kernels of heads above 256 have run on a GPU: backend='auto' takes them (its outputs
    bit-identical to backend='fused', not to the scan's) for a bf16 head of 768 on the
    tensor-core clusters."""
    paths = {p for (key, _), p in fused.kernel_paths().items() if key == ("lstm", "BF16", 768)}
    assert paths == {("mma_cluster", "mma_cluster")}, paths
    assert fused.unsupported_reason(jnp.bfloat16, 768, "lstm", for_auto=True) is None
    Wx, R, b = (jnp.asarray(x, jnp.bfloat16) for x in random_inputs(rng, "lstm", 3, 5, 1, 768))
    auto = flashrnn(Wx, R, b, function="lstm", backend="auto")
    kernels = flashrnn(Wx, R, b, function="lstm", backend="fused")
    scan = flashrnn(Wx, R, b, function="lstm", backend="scan")
    for a, k in zip(auto, kernels):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(k))
    assert any(not np.array_equal(np.asarray(a), np.asarray(s)) for a, s in zip(auto, scan))


def test_unsupported_head_size_says_why(rng):
    Wx, R, b = (jnp.asarray(x, jnp.float32) for x in random_inputs(rng, "lstm", 2, 3, 1, 48))
    with pytest.raises(fused.FusedBackendUnavailableError, match="head size 48 is not compiled"):
        flashrnn(Wx, R, b, function="lstm", backend="fused")
    _assert_auto_runs_the_scan(Wx, R, b, "lstm")


def test_head_beyond_the_chip_says_why(rng):
    """An LSTM head of 2560 in bfloat16 (52 MB of R) fits no tiling: "fused" names the binding
    limit, "auto" runs the scan."""
    Wx, R, b = (jnp.asarray(x, jnp.bfloat16) for x in random_inputs(rng, "lstm", 1, 2, 1, 2560))
    with pytest.raises(fused.FusedBackendUnavailableError,
                       match="head size 2560 does not fit on chip.*shared memory per block"):
        flashrnn(Wx, R, b, function="lstm", backend="fused")
    _assert_auto_runs_the_scan(Wx, R, b, "lstm")


def test_flax_layer_grad_fused(rng):
    """A loss through the linen layer with backend='fused' has the scan backend's gradient."""
    from flashrnn_jax.linen import FlashRNN

    x = jnp.asarray(rng.normal(size=(5, 40, 24)), jnp.float32)
    grads = {}
    for backend in ("fused", "scan"):
        layer = FlashRNN(function="slstm", hidden_size=128, num_heads=4, backend=backend)
        params = layer.init(jax.random.key(0), x)
        loss = lambda p: jnp.sum(layer.apply(p, x) ** 2)  # noqa: E731
        grads[backend] = jax.jit(jax.grad(loss))(params)
    for f, s in zip(jax.tree.leaves(grads["fused"]), jax.tree.leaves(grads["scan"])):
        # Both run float32 arithmetic; only the summation order differs.
        assert rel_err(f, np.asarray(s, np.float64)) < 1e-4


def test_slstm_closed_input_gate_from_zero_states(rng):
    """From zero states m = ĩ; a strongly closed input gate must not overflow f' into NaN."""
    Wx, R, b = random_inputs(rng, "slstm", 3, 6, 2, 32)
    Wx[:, 0, 0] = -100.0
    low = [jnp.asarray(x, jnp.float32) for x in (Wx, R, b)]
    expected_all, _ = reference_flashrnn(*(np.asarray(x, np.float64) for x in low), None, "slstm")
    with fused.poison_outputs():
        states_all, _ = _forward_fn("slstm", "fused")(*low)
        grads = jax.grad(lambda w: flashrnn(w, *low[1:], function="slstm",
                                             backend="fused")[0][0].sum())(low[0])
    assert rel_err(states_all, expected_all) < 1e-5
    assert np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("dtype,head_size", [(jnp.bfloat16, 16), (jnp.bfloat16, 64),
                                             (jnp.bfloat16, 256), (jnp.float32, 32)])
def test_slstm_initial_normaliser_near_the_float32_maximum(dtype, head_size, rng, gpu_case):
    """Initial states with n above 2^126, where 1 / n is subnormal: the kernels' reciprocal of
    n (pointwise_math.cuh) keeps it, so h = o c / n is what the reference gives, not 0; the
    gradients stay finite. Split, cluster and FMA kernels."""
    B, T, N = 3, 6, 2
    Wx, R, b = random_inputs(rng, "slstm", B, T, N, head_size)
    states = random_states(rng, "slstm", B, N, head_size)
    states[1] = 1e38 * np.sign(states[1])  # c
    states[2] = 1e38  # n
    states[3] = 0.0  # m
    low = [jnp.asarray(x, dtype) for x in (Wx, R, b, states)]
    expected_all, _ = reference_flashrnn(*(np.asarray(x, np.float64) for x in low), "slstm")
    with fused.poison_outputs():
        fused_all, _ = _forward_fn("slstm", "fused")(*low)
        grads = jax.grad(lambda w: flashrnn(w, *low[1:], function="slstm",
                                             backend="fused")[0][0].astype(jnp.float32).sum()
                         )(low[0])
    scan_all, _ = _forward_fn("slstm", "scan")(*low)
    err, scan_err = rel_err(fused_all, expected_all), rel_err(scan_all, expected_all)
    gpu_case(function="slstm", dtype=jnp.dtype(dtype).name, D=head_size, N=N, B=B, T=T,
             fwd_rel_err=err, grad_rel_err=None)
    assert err <= 2 * scan_err + floor(dtype), (err, scan_err)
    assert np.all(np.isfinite(np.asarray(grads, np.float32)))


def test_dR_contraction_keeps_its_low_parts_on_the_gpu(rng):
    """The backward's dR of large 16-bit R (three bfloat16 products, fused.bf16x3_einsum)
    compiled for the GPU, whose compiler would fold a convert round trip to nothing: within 2e-5 of float64,
    where one bfloat16 product is off by ~2e-3."""
    d_gates, h_prev, want = weight_gradient_operands(rng)
    got = jax.jit(lambda a, b: fused.bf16x3_einsum(SPEC, a, b))(jnp.asarray(d_gates),
                                                                jnp.asarray(h_prev))
    assert weight_gradient_error(got, want) < 2e-5


def _bf16_arguments(rng, function, B, T, N, D):
    """Random (Wx, R, b, states) of a call with bfloat16 Wx and R."""
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    states = random_states(rng, function, B, N, D)
    return [jnp.asarray(x, jnp.bfloat16) for x in (Wx, R)] + [jnp.asarray(b), jnp.asarray(states)]


def _split_backward_case(rng, function):
    """A bfloat16 call at 64 (the split backward) of 17 rows (the CTAs' 8-row tiles, the last of
    one) with lengths and resets: its arguments, seq_lengths, resets and random weights of the
    loss over every state."""
    B, T, N, D = 17, 7, 2, 64
    args = _bf16_arguments(rng, function, B, T, N, D)
    lengths = jnp.asarray(rng.integers(0, T + 1, size=B), jnp.int32)
    resets = jnp.asarray(rng.uniform(size=(B, T)) < 0.2)
    S = CELL_SHAPES[function].num_states
    return args, lengths, resets, jnp.asarray(rng.normal(size=(S, B, T, N, D)))


@pytest.mark.parametrize("function", ("lstm", "slstm"))
def test_dR_comes_from_the_backward_kernel_exactly_where_built(function, rng):
    """A build with FLASHRNN_MMA_SPLIT_BACKWARD_DR differentiates a bfloat16 head of 64 (the split
    backward) through the target flashrnn_jax_backward_dr, whose kernel accumulates dR; a build
    without it through flashrnn_jax_backward and an XLA contraction. (The values: every bf16
    gradient of test_fused_matches_reference at 16, 32 and 64, against the rule.)"""
    built = fused.tensor_core_kernels()["split_backward_dr"]
    B, T, N, D = 3, 9, 2, 64
    args = _bf16_arguments(rng, function, B, T, N, D)
    S = CELL_SHAPES[function].num_states
    w_all = jnp.ones((S, B, T, N, D))
    w_last = jnp.ones((S, B, N, D))
    text = _grad_fn(function, "fused").lower(*args, w_all, w_last).as_text()
    assert fused.kernel_computes_weight_gradient(jnp.bfloat16, D, function) is built
    # The custom calls' targets, as the lowered module names them (@target).
    targets = set(re.findall(r"custom_call @(flashrnn_jax_\w+)", text))
    assert targets == {"flashrnn_jax_forward_train",
                       "flashrnn_jax_backward_dr" if built else "flashrnn_jax_backward"}, targets


@pytest.mark.parametrize("function", FUNCTIONS)
def test_auto_dR_is_the_contraction_it_stands_for(function, rng, monkeypatch):
    """dR of a bfloat16 head of 64 (the split backward) with R_GRADIENT_CONTRACTION "auto"
    against the setting it stands for on this build: "bf16" (both operands rounded to
    bfloat16, float32 sums) where the backward kernel accumulates dR itself, else "float32"
    (the contraction "auto" takes for R this small). 17 rows (three parts of 8 rows, the last
    of one), lengths and resets: each product with its own step's h_prev, each row once. The
    two sum in different orders, so they agree within one rounding of the bfloat16 dR."""
    args, lengths, resets, w_all = _split_backward_case(rng, function)

    def d_r(setting):
        monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", setting)  # read when traced

        def loss(R):
            states_all, _ = flashrnn(args[0], R, *args[2:], seq_lengths=lengths, resets=resets,
                                     function=function, backend="fused")
            return jnp.sum(states_all.astype(jnp.float64) * w_all)

        return np.asarray(jax.jit(jax.grad(loss))(args[1]), np.float64)

    named = "bf16" if fused.kernel_computes_weight_gradient(jnp.bfloat16, 64, function) else (
        "float32")
    got, want = d_r("auto"), d_r(named)
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    assert np.all(np.abs(got - want) <= eps * np.abs(want) + 1e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_in_kernel_db_and_dWx_are_the_float32_gate_cotangents_summed_and_rounded(
        function, rng, monkeypatch):
    """Where the split backward forms the weight gradients (R_GRADIENT_CONTRACTION "auto" on a
    build with FLASHRNN_MMA_SPLIT_BACKWARD_DR), it writes the gate cotangents in bfloat16 and
    each row's db: dWx must be bit for bit the float32 cotangents of the plain target
    ("float32") rounded by XLA (the same kernel computes both), db their float32 sum up to the
    order of summation. 17 rows (the CTAs' 8-row tiles, the last of one), lengths and resets."""
    args, lengths, resets, w_all = _split_backward_case(rng, function)

    def d_wx_and_d_b(setting):
        monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", setting)  # read when traced

        def loss(Wx, b):
            states_all, _ = flashrnn(Wx, args[1], b, args[3], seq_lengths=lengths,
                                     resets=resets, function=function, backend="fused")
            return jnp.sum(states_all.astype(jnp.float64) * w_all)

        d_wx, d_b = jax.jit(jax.grad(loss, argnums=(0, 1)))(args[0], args[2])
        return np.asarray(d_wx, np.float64), np.asarray(d_b, np.float64)

    (got_wx, got_b), (want_wx, want_b) = d_wx_and_d_b("auto"), d_wx_and_d_b("float32")
    np.testing.assert_array_equal(got_wx, want_wx)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-5, atol=1e-6 * np.max(np.abs(want_b)))
