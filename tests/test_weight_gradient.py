"""The custom_vjp's contraction dR = sum over batch and time of dg h_prevᵀ
(fused.recurrent_weight_gradient): for 16-bit R as three bfloat16 products, against float64."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flashrnn_jax import fused

SPEC = "btgno,btni->gnoi"
B, T, G, N, D = 3, 40, 4, 2, 32


def operands(rng):
    """Gate cotangents over four decades and h_prev in (-1, 1) in float32, as the backward sees
    them, and their float64 contraction (also tests/test_fused_gpu.py's)."""
    d_gates = rng.normal(size=(B, T, G, N, D)) * 10.0 ** rng.uniform(-2, 2, size=(1, T, G, 1, 1))
    h_prev = np.tanh(rng.normal(size=(B, T, N, D)))
    d_gates, h_prev = d_gates.astype(np.float32), h_prev.astype(np.float32)
    return d_gates, h_prev, np.einsum(SPEC, d_gates.astype(np.float64), h_prev.astype(np.float64))


def rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def test_bf16x3_contraction_is_close_to_float32(rng):
    d_gates, h_prev, want = operands(rng)
    got = fused.bf16x3_einsum(SPEC, jnp.asarray(d_gates), jnp.asarray(h_prev))
    assert got.dtype == jnp.float32
    assert rel_err(got, want) < 2e-5
    # One bfloat16 product is two orders of magnitude worse: the lo parts are what counts.
    single = jnp.einsum(SPEC, jnp.asarray(d_gates, jnp.bfloat16),
                        jnp.asarray(h_prev, jnp.bfloat16), preferred_element_type=jnp.float32)
    assert rel_err(single, want) > 1e-3


def test_bf16x3_contraction_under_jit_keeps_its_low_parts(rng):
    """Compiled, as in the backward: as accurate as eagerly, and the split rounds with
    reduce-precision, which XLA keeps, not with a convert round trip, which XLA's GPU compiler
    folds away (leaving lo = 0; tests/test_fused_gpu.py checks the GPU's result)."""
    d_gates, h_prev, want = operands(rng)
    contract = jax.jit(lambda a, b: fused.bf16x3_einsum(SPEC, a, b))
    args = jnp.asarray(d_gates), jnp.asarray(h_prev)
    assert rel_err(contract(*args), want) < 2e-5
    assert "reduce_precision" in contract.lower(*args).as_text()


@pytest.mark.parametrize("setting", ["bf16x3", "float32"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_dR_is_the_rounded_float64_contraction(rng, dtype, setting, monkeypatch):
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", setting)
    d_gates, h_prev, want = operands(rng)
    got = fused.recurrent_weight_gradient(jnp.asarray(d_gates), jnp.asarray(h_prev), dtype)
    assert got.dtype == dtype
    # Within one rounding of the 16-bit result: |got - want| <= half an ulp of got plus the
    # contraction's own ~1e-5, relative to the largest entry.
    eps = float(jnp.finfo(dtype).eps)
    bound = 0.5 * eps * np.abs(np.asarray(got, np.float64)) + 2e-5 * np.max(np.abs(want))
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound)


def test_float32_R_keeps_the_float32_contraction(rng, monkeypatch):
    d_gates, h_prev, want = operands(rng)
    got = fused.recurrent_weight_gradient(jnp.asarray(d_gates), jnp.asarray(h_prev), jnp.float32)
    assert rel_err(got, want) < 1e-6
    # And the setting that times the float32 contraction for 16-bit R too.
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", "float32")
    got16 = fused.recurrent_weight_gradient(jnp.asarray(d_gates), jnp.asarray(h_prev),
                                            jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got16), np.asarray(got.astype(jnp.bfloat16)))


@pytest.mark.parametrize("dtype,limit_name,large", [
    (jnp.bfloat16, "BF16_MIN_R_ELEMENTS", "bf16"),
    (jnp.float16, "BF16X3_MIN_R_ELEMENTS", "bf16x3")])
def test_auto_takes_bfloat16_products_from_the_size_of_R(dtype, limit_name, large):
    """"auto" (the default) contracts bfloat16 R as one product of rounded operands where R
    has BF16_MIN_R_ELEMENTS per gate or more, float16 R as three bfloat16 products from
    BF16X3_MIN_R_ELEMENTS, over all heads, and in float32 below; float32 R always in float32."""
    assert fused.R_GRADIENT_CONTRACTION == "auto"
    limit = getattr(fused, limit_name)
    side = int(np.sqrt(limit))
    assert side * side == limit
    assert fused.weight_gradient_contraction(dtype, 1, side) == large
    assert fused.weight_gradient_contraction(dtype, 4, side // 2) == large
    assert fused.weight_gradient_contraction(dtype, 1, side - 16) == "float32"
    assert fused.weight_gradient_contraction(dtype, 3, side // 2) == "float32"
    assert fused.weight_gradient_contraction(jnp.float32, 1, 2 * side) == "float32"

    def lowered(N, D):
        g = jax.ShapeDtypeStruct((2, 3, G, N, D), jnp.float32)
        h = jax.ShapeDtypeStruct((2, 3, N, D), jnp.float32)
        return jax.jit(lambda a, b: fused.recurrent_weight_gradient(a, b, dtype)).lower(
            g, h).as_text()

    # What the choice says is what is traced.
    assert "reduce_precision" in lowered(1, side)
    assert "reduce_precision" not in lowered(1, side - 16)


def test_unknown_contraction_setting_is_refused(monkeypatch):
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", "tf32")
    with pytest.raises(ValueError, match="R_GRADIENT_CONTRACTION.*'tf32'"):
        fused.weight_gradient_contraction(jnp.bfloat16, 1, 64)


def test_bf16_contraction_is_one_product_of_the_rounded_operands(rng, monkeypatch):
    """"bf16": dR of bfloat16 R as one product of both operands rounded to bfloat16 (its
    oracle: the float64 contraction of those rounded values), within one rounding of the
    bfloat16 result; one dot where bf16x3 has three."""
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", "bf16")
    d_gates, h_prev, _ = operands(rng)
    as_bf16 = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in (d_gates, h_prev)]
    want = np.einsum(SPEC, *as_bf16)
    contract = jax.jit(lambda a, b: fused.recurrent_weight_gradient(a, b, jnp.bfloat16))
    args = jnp.asarray(d_gates), jnp.asarray(h_prev)
    got = np.asarray(contract(*args), np.float64)
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    assert np.all(np.abs(got - want) <= 0.5 * eps * np.abs(got) + 2e-5 * np.max(np.abs(want)))
    # The rounding is real: against the exact float32 operands it is off by far more than
    # bf16x3, which the test above holds to 2e-5.
    exact = np.einsum(SPEC, d_gates.astype(np.float64), h_prev.astype(np.float64))
    assert rel_err(fused.bf16_einsum(SPEC, *args), exact) > 1e-4
    text = contract.lower(*args).as_text()
    assert text.count("dot_general") == 1 and "reduce_precision" in text
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", "bf16x3")  # read when traced anew
    split = jax.jit(lambda a, b: fused.recurrent_weight_gradient(a, b, jnp.bfloat16))
    assert split.lower(*args).as_text().count("dot_general") == 3


def test_bf16_setting_leaves_float16_R_to_bf16x3(monkeypatch):
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", "bf16")
    assert fused.weight_gradient_contraction(jnp.bfloat16, 1, 64) == "bf16"
    assert fused.weight_gradient_contraction(jnp.float16, 1, 64) == "bf16x3"
    assert fused.weight_gradient_contraction(jnp.float32, 1, 64) == "float32"


@pytest.mark.parametrize("built", (False, True))
@pytest.mark.parametrize("backward", ("mma_split", "mma_cluster", "fma"))
@pytest.mark.parametrize("setting", ("auto", "bf16", "bf16x3", "float32"))
def test_dR_is_left_to_the_backward_kernel_only_where_it_computes_it(monkeypatch, built,
                                                                     backward, setting):
    """kernel_computes_weight_gradient: dR from the backward kernel (the target
    flashrnn_jax_backward_dr) only where the build has FLASHRNN_MMA_SPLIT_BACKWARD_DR, the call's
    backward runs the split kernel (the one that computes it) and the setting is "auto" (the
    others name an XLA contraction, for the benchmark to time)."""
    options = dict.fromkeys(fused.BUILD_OPTIONS, False) | {"split_backward_dr": built}
    monkeypatch.setattr(fused, "tensor_core_kernels", lambda: options)
    monkeypatch.setattr(fused, "kernels_for", lambda *args: ("mma_split", backward))
    monkeypatch.setattr(fused, "R_GRADIENT_CONTRACTION", setting)
    want = built and backward == "mma_split" and setting == "auto"
    assert fused.kernel_computes_weight_gradient(jnp.bfloat16, 64, "lstm") is want


def test_dR_stays_with_xla_where_the_fused_kernels_cannot_run(monkeypatch):
    """Without a kernel for the call (kernels_for None: no device, no extension), no in-kernel
    dR even on a build that has it."""
    options = dict.fromkeys(fused.BUILD_OPTIONS, False) | {"split_backward_dr": True}
    monkeypatch.setattr(fused, "tensor_core_kernels", lambda: options)
    monkeypatch.setattr(fused, "kernels_for", lambda *args: None)
    assert fused.kernel_computes_weight_gradient(jnp.bfloat16, 64, "lstm") is False


def test_dR_parts_come_in_the_split_backwards_batch_tiles(monkeypatch):
    """flashrnn_jax_backward_dr's output as the custom_vjp declares it: one part per 8 batch
    rows (params.h kDrPartialBatchTile, the split backward's CTA), the last one partial."""
    header = (pathlib.Path(__file__).resolve().parent.parent / "cuda_ffi" / "kernels"
              / "params.h").read_text()
    tile = int(re.search(r"kDrPartialBatchTile = (\d+);", header).group(1))
    assert fused.DR_PARTIAL_BATCH_TILE == tile
    # The tiling attributes need a device; the output shape does not depend on them.
    monkeypatch.setattr(fused, "_tiling_attributes", lambda *args: {})
    B, T, G, N, D = 17, 5, 4, 3, 16
    f32 = jnp.float32
    args = (jax.ShapeDtypeStruct((G, N, D, D), jnp.bfloat16),
            jax.ShapeDtypeStruct((2, B, N, D), f32),
            jax.ShapeDtypeStruct((B, T, G, N, D), f32),
            jax.ShapeDtypeStruct((2, B, T, N, D), f32),
            jax.ShapeDtypeStruct((2, B, T, N, D), jnp.bfloat16),
            jax.ShapeDtypeStruct((2, B, N, D), jnp.bfloat16),
            jax.ShapeDtypeStruct((B,), jnp.int32),
            jax.ShapeDtypeStruct((1, 1), jnp.bool_))
    options = fused._Options("lstm")
    shapes = jax.eval_shape(
        lambda *a: fused._backward_call(*a, options, weight_gradient=True), *args)
    assert shapes[2].shape == (3, G, N, D, D) and shapes[2].dtype == f32
    # With them, db's parts per batch row, and the gate cotangents in R's dtype (for dWx only).
    assert shapes[3].shape == (B, G, N, D) and shapes[3].dtype == f32
    assert shapes[0].shape == (B, T, G, N, D) and shapes[0].dtype == jnp.bfloat16
    plain = jax.eval_shape(
        lambda *a: fused._backward_call(*a, options, weight_gradient=False)[:2], *args)
    assert [(s.shape, s.dtype) for s in plain] == [((B, T, G, N, D), f32), ((2, B, N, D), f32)]
