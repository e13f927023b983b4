"""The fused CUDA backend: the compiled extension, FFI calls, support checks and the custom_vjp.

The extension ``flashrnn_jax._cuda`` is built by CMake only where nvcc and a CUDA-enabled
jaxlib are found; without it the package is pure JAX and ``backend="auto"`` runs the scan.

Numerics: ``Wx`` and ``R`` are read in the call's dtype (bfloat16, float16 or float32; ``R`` is
cast to the dtype of ``Wx``), biases and initial states in float32; the recurrent matmul
accumulates in float32, and the cell states are carried in float32 registers from step to
step. Outputs are written in the dtype of ``Wx``.

Differentiation: the forward run under ``jax.grad`` also writes the residuals the backward
needs (every gate pre-activation and every state, in float32); the backward kernel runs the
time steps in reverse with ``R`` on chip and returns the cotangent of every gate
pre-activation and of the initial states; ``dR`` and ``db`` are contractions of those over batch
and time, left to XLA.

Sequence options run inside the kernels as masks of the pointwise stage (``seq_lengths``,
``resets``) and as the input index a step reads (``reverse``); the gradient controls
(``gradient_recurrent_cut``, ``gradient_recurrent_clipval``) act on the recurrent cotangent
inside the backward kernel. Every per-time array, residuals included, stays in input time order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_jax.cells import get_cell
from flashrnn_jax.constrint import hardware

_XLA_DTYPE_NAMES = {
    np.dtype(jnp.bfloat16): "BF16",
    np.dtype(jnp.float16): "F16",
    np.dtype(jnp.float32): "F32",
}

# Testing aid: when set, the FFI handlers fill every output with NaN before the kernel runs,
# so that an element the kernel fails to write shows up.
_poison_outputs = False

class FusedBackendUnavailableError(RuntimeError):
    """``backend="fused"`` was asked for a call the fused kernels cannot run."""


# The kernel name (kernel_paths) of a direction that no kernel of the build runs.
NO_KERNEL = "none"


def _no_kernel_why(dtype_name: str) -> str:
    """Why a direction has NO_KERNEL, and what to do about it: only the tensor-core group
    kernels hold the head (the LSTM, sLSTM and GRU at 2048)."""
    if dtype_name == "F16":
        return ("only the tensor-core group kernels hold this head, and their backward takes "
                "bfloat16 only; use bfloat16 or backend='scan'")
    return ("only the tensor-core group kernels hold this head, and this build has them off "
            "(CMake FLASHRNN_MMA_CLUSTER_FORWARD / FLASHRNN_MMA_CLUSTER_BACKWARD); rebuild "
            "with them on or use backend='scan'")


@functools.cache
def extension():
    """The compiled module ``flashrnn_jax._cuda`` with its FFI targets registered, or None."""
    try:
        module = importlib.import_module("flashrnn_jax._cuda")
    except ImportError:
        return None
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    return module


# The build options of the compiled module (_cuda.build_options, named after the CMake options
# of cuda_ffi/ffi/module.cc).
BUILD_OPTIONS = ("forward", "backward", "cluster_forward", "cluster_backward", "split_forward",
                 "split_backward", "cluster_async_push", "backward_inputs_two_ahead",
                 "rounded_operand", "split_forward_gates", "split_backward_16",
                 "split_backward_dr")


def tensor_core_kernels() -> dict[str, bool]:
    """Which tensor-core kernels and experimental kernel options the build holds (its CMake
    ``FLASHRNN_MMA_*`` and ``FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD`` options, by the names of
    :data:`BUILD_OPTIONS`), for the records of tests and benchmarks; all False without the
    compiled module."""
    module = extension()
    if module is None:
        return dict.fromkeys(BUILD_OPTIONS, False)
    options = module.build_options()
    # A module built before an option existed has none of it: off.
    return {name: bool(options.get(name, False)) for name in BUILD_OPTIONS}


@functools.cache
def compiled_grid() -> dict[tuple[str, str, int], tuple[hardware.Tiling, ...]]:
    """The compiled kernels: (function, XLA dtype name, head size) -> their tilings."""
    grid: dict[tuple[str, str, int], tuple[hardware.Tiling, ...]] = {}
    for key, tiling in kernel_paths():
        grid[key] = grid.get(key, ()) + (tiling,)
    return grid


@functools.cache
def kernel_paths() -> dict[tuple[tuple[str, str, int], hardware.Tiling], tuple[str, str]]:
    """((function, XLA dtype name, head size), tiling) -> the names of the kernels its forward
    and backward run (``fma``, ``fma_grid_group``, ``mma``, ``mma_split``, ``mma_cluster``,
    ``mma_grid_group``), ``none`` for a direction no kernel of the build runs (a tiling of the
    tensor-core group kernels: their backward takes bfloat16 only, and both are off with the
    CMake options ``FLASHRNN_MMA_CLUSTER_FORWARD`` / ``_BACKWARD``)."""
    module = extension()
    paths = {}
    for (function, dtype, head_size, cluster, batch_tile, threads, forward,
         backward) in module.compiled_grid() if module else ():
        tiling = hardware.Tiling(cluster, batch_tile, threads)
        paths[(function, dtype, head_size), tiling] = (forward, backward)
    return paths


@functools.cache
def device_limits() -> hardware.DeviceLimits:
    """The limits of the first CUDA device, which the tilings are chosen for."""
    ordinal = jax.devices("cuda")[0].local_hardware_id or 0
    return hardware.DeviceLimits.from_properties(extension().device_properties(ordinal))


_limits_override: hardware.DeviceLimits | None = None


def _device_limits() -> hardware.DeviceLimits:
    return device_limits() if _limits_override is None else _limits_override


@contextlib.contextmanager
def tilings_as_for(limits: hardware.DeviceLimits):
    """Choose the compiled tilings as for a device with these limits, for the calls traced
    inside (tests and benchmarks: e.g. ``sm_count=114``, an H100 PCIe, takes the smallest
    group compiled beside the largest for heads beyond a cluster)."""
    global _limits_override
    _limits_override, previous = limits, _limits_override
    _select_tiling.cache_clear()
    try:
        yield
    finally:
        _limits_override = previous
        _select_tiling.cache_clear()


@functools.cache
def _select_tiling(function: str, dtype_name: str, head_size: int) -> hardware.Tiling | str:
    """The compiled tiling to run on this device, or why there is none."""
    compiled = compiled_grid().get((function, dtype_name, head_size))
    device = _device_limits()
    if compiled is None:
        try:
            fits = hardware.choose_tiling(function, dtype_name, head_size, device)
        except hardware.InfeasibleTilingError as err:
            return f"head size {head_size} does not fit on chip: {err}"
        sizes = sorted(d for f, n, d in compiled_grid() if (f, n) == (function, dtype_name))
        return (
            f"head size {head_size} is not compiled for function={function!r} and dtype "
            f"{dtype_name} (compiled head sizes: {sizes}); it would fit with {fits}: add it "
            "to FLASHRNN_HEAD_SIZES (CMake) and rebuild"
        )
    # The tilings a kernel of the build runs, those with a backward first. A guard: the build's
    # model compiles a tiling without a kernel only where nothing else fits (CMake tells it
    # whether the tensor-core group kernels are built), but a grid configured otherwise, e.g.
    # by hand, must not have its runnable tilings passed over.
    paths = kernel_paths()
    runnable = [t for t in compiled if paths[(function, dtype_name, head_size), t][0] != NO_KERNEL]
    differentiable = [t for t in runnable
                      if paths[(function, dtype_name, head_size), t][1] != NO_KERNEL]
    error = None
    # Each candidate list once (they coincide where every runnable tiling has a backward).
    for tilings in dict.fromkeys((tuple(differentiable), tuple(runnable or compiled))):
        if tilings:
            try:
                return hardware.pick_compiled(function, dtype_name, head_size, tilings, device)
            except hardware.InfeasibleTilingError as err:
                error = error or err
    return str(error)


@functools.cache
def _has_cuda_device() -> bool:
    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:
        return False


@functools.cache
def _warn_kernels_missing() -> None:
    warnings.warn(
        "flashrnn_jax: a CUDA device is present but the CUDA kernels were not built; "
        "backend='auto' runs the lax.scan backend. Reinstall with nvcc on the PATH and a "
        "CUDA-enabled jaxlib: pip install --no-build-isolation .",
        RuntimeWarning,
        stacklevel=4,
    )


def _selected_paths(dtype, head_size: int, function: str
                    ) -> tuple[str, tuple[str, str] | None] | str:
    """The XLA dtype name of a fused call and the names of the kernels (:func:`kernel_paths`)
    that its forward and backward run on this device, or why the fused kernels cannot run it
    (the backward is left to the callers: only a differentiated call needs it)."""
    if not _has_cuda_device():
        return "no CUDA device is visible to JAX"
    if extension() is None:
        _warn_kernels_missing()
        return "flashrnn_jax was installed without its CUDA kernels (flashrnn_jax._cuda)"
    name = _XLA_DTYPE_NAMES.get(np.dtype(dtype))
    if name is None:
        return f"the fused kernels take bfloat16, float16 or float32 Wx, got {np.dtype(dtype)}"
    tiling = _select_tiling(function, name, head_size)
    if isinstance(tiling, str):
        return tiling
    paths = kernel_paths().get(((function, name, head_size), tiling))
    if paths and paths[0] == NO_KERNEL:
        return (f"no fused forward kernel of this build runs function={function!r}, dtype "
                f"{name}, head size {head_size}: {_no_kernel_why(name)}")
    return name, paths


# The kernels count steps in 32-bit integers (cuda_ffi/kernels/sequence.cuh), up to the step
# whose inputs they copy two steps ahead (step + 2 < 2^31).
MAX_STEPS = 2**31 - 2


def unsupported_reason(dtype, head_size: int, function: str, for_auto: bool = False,
                       steps: int | None = None) -> str | None:
    """Why the fused kernels cannot run a call, or None when they can; ``for_auto``: why
    ``backend="auto"`` does not take them for it (a call it may differentiate needs a backward
    kernel too); ``steps``: the call's sequence length T, where known."""
    if steps is not None and steps > MAX_STEPS:
        return (f"sequence length T = {steps} is more than the {MAX_STEPS} steps the kernels "
                "count (32-bit)")
    selected = _selected_paths(dtype, head_size, function)
    if isinstance(selected, str):
        return selected
    name, paths = selected
    if for_auto and paths and paths[1] == NO_KERNEL:
        return (f"no fused backward kernel of this build runs function={function!r}, dtype "
                f"{name}, head size {head_size}, and the call may be differentiated "
                f"(backend='fused' runs its forward): {_no_kernel_why(name)}")
    return None


def kernels_for(dtype, head_size: int, function: str) -> tuple[str, str] | None:
    """The names of the kernels (:func:`kernel_paths`) that the forward and the backward of a
    fused call run on this device, or None where the fused kernels cannot run it."""
    selected = _selected_paths(dtype, head_size, function)
    return None if isinstance(selected, str) else selected[1]


@contextlib.contextmanager
def poison_outputs():
    """Fill the kernels' outputs with NaN before each launch (for tests; traces inside only)."""
    global _poison_outputs
    _poison_outputs, previous = True, _poison_outputs
    try:
        yield
    finally:
        _poison_outputs = previous


def _tiling_attributes(function: str, dtype, head_size: int) -> dict[str, np.int32]:
    """The FFI attributes that select the compiled variant (see :func:`_select_tiling`)."""
    tiling = _select_tiling(function, _XLA_DTYPE_NAMES[np.dtype(dtype)], head_size)
    return {k: np.int32(v) for k, v in dataclasses.asdict(tiling).items()}


# What reaches h_prev through R @ h_prev in the backward: RecurrentGradient in params.h.
RECURRENT_FULL, RECURRENT_CUT, RECURRENT_CLIP = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class _Options:
    """The static part of a fused call: the cell and the sequence and gradient options."""

    function: str
    reverse: bool = False
    has_resets: bool = False
    recurrent_gradient: int = RECURRENT_FULL  # RECURRENT_CLIP: to [-clipval, clipval]
    clipval: float = 0.0

    def attributes(self, dtype, head_size: int) -> dict:
        return dict(function=self.function, poison_outputs=_poison_outputs,
                    has_resets=self.has_resets, reverse=self.reverse,
                    **_tiling_attributes(self.function, dtype, head_size))


def _forward_call(Wx, R, b, states, seq_lengths, resets, options: _Options, *, train: bool):
    S, B, N, D = states.shape
    T = Wx.shape[1]
    out = [
        jax.ShapeDtypeStruct((S, B, T, N, D), Wx.dtype),
        jax.ShapeDtypeStruct((S, B, N, D), Wx.dtype),
    ]
    if train:
        out += [
            jax.ShapeDtypeStruct((B, T, b.shape[0], N, D), jnp.float32),
            jax.ShapeDtypeStruct((S, B, T, N, D), jnp.float32),
        ]
    target = "flashrnn_jax_forward_train" if train else "flashrnn_jax_forward"
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        Wx, R, b, states, seq_lengths, resets, **options.attributes(Wx.dtype, D)
    )


# The batch rows of each part of dR that flashrnn_jax_backward_dr returns (params.h
# kDrPartialBatchTile: a CTA of the split backward, whatever batch tile the tiling names).
DR_PARTIAL_BATCH_TILE = 8


def _backward_call(R, states, gate_cache, states_f32, d_states_all, d_last, seq_lengths,
                   resets, options: _Options, *, weight_gradient: bool):
    """The cotangents of every bias gate's pre-activation ``[B, T, Gt, N, D]`` and of the initial
    states; with ``weight_gradient`` the former in R's dtype (the kernel forms the weight
    gradients from their float32 values, so they are needed only for dWx) and, float32, each
    batch tile's part of dR ``[batch tiles, Gr, N, D, D]`` and each batch row's part of db
    ``[B, Gt, N, D]``; without, the former in float32 and None, None."""
    gates_dtype = R.dtype if weight_gradient else jnp.float32
    out = [jax.ShapeDtypeStruct(gate_cache.shape, gates_dtype),
           jax.ShapeDtypeStruct(states.shape, jnp.float32)]
    if weight_gradient:
        Gr, N, D = R.shape[0], R.shape[1], R.shape[-1]
        B, Gt = states.shape[1], gate_cache.shape[2]
        tiles = -(-B // DR_PARTIAL_BATCH_TILE)
        out += [jax.ShapeDtypeStruct((tiles, Gr, N, D, D), jnp.float32),
                jax.ShapeDtypeStruct((B, Gt, N, D), jnp.float32)]
    target = "flashrnn_jax_backward_dr" if weight_gradient else "flashrnn_jax_backward"
    results = jax.ffi.ffi_call(target, tuple(out), vmap_method="sequential")(
        R, states, gate_cache, states_f32, d_states_all, d_last, seq_lengths, resets,
        recurrent_gradient=np.int32(options.recurrent_gradient),
        clipval=np.float32(options.clipval),
        **options.attributes(R.dtype, R.shape[-1]),
    )
    return tuple(results) if weight_gradient else (*results, None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fused(Wx, R, b, states, seq_lengths, resets, options):
    return tuple(_forward_call(Wx, R, b, states, seq_lengths, resets, options, train=False))


def _refuse_without_backward_kernel(dtype, head_size: int, function: str) -> None:
    """Raise FusedBackendUnavailableError where the call's backward has no kernel (NO_KERNEL):
    from the custom_vjp's forward rule, which runs only when the call is differentiated, so
    before any launch."""
    if extension() is None:
        return  # no compiled kernels (a call traced or emulated without them): nothing to name
    selected = _selected_paths(dtype, head_size, function)
    if isinstance(selected, str):
        return  # the fused kernels cannot run the call (it is traced or emulated): nothing to name
    name, paths = selected
    if paths and paths[1] == NO_KERNEL:
        raise FusedBackendUnavailableError(
            f"backend='fused' cannot differentiate function={function!r} with dtype "
            f"{np.dtype(dtype)} at head size {head_size}: no fused backward kernel of this "
            f"build runs it: {_no_kernel_why(name)}")


def _fused_fwd(Wx, R, b, states, seq_lengths, resets, options):
    _refuse_without_backward_kernel(Wx.dtype, states.shape[-1], options.function)
    states_all, last, gate_cache, states_f32 = _forward_call(
        Wx, R, b, states, seq_lengths, resets, options, train=True
    )
    return (states_all, last), (R, states, seq_lengths, resets, gate_cache, states_f32)


def recurrent_inputs(states, states_f32, seq_lengths, resets, options: _Options):
    """``[B, T, N, D]``: the ``h_prev`` that entered ``R @ h_prev`` at the step that read
    input ``t`` (arbitrary where ``t`` is padding, whose gate cotangents are zero).

    That is the h after reading the previous input (``t - 1``, or ``t + 1`` in reverse), or the
    initial h at the first step of a row and where the row resets.
    """
    h0, h_all = states[0], states_f32[0]
    T = h_all.shape[1]
    t = jnp.arange(T)[None, :]
    if options.reverse:
        shifted = jnp.concatenate([h_all[:, 1:], h0[:, None]], axis=1)
        first = t == seq_lengths[:, None] - 1
    else:
        shifted = jnp.concatenate([h0[:, None], h_all[:, :-1]], axis=1)
        first = jnp.broadcast_to(t == 0, seq_lengths.shape + (T,))
    if options.has_resets:
        first = first | resets
    return jnp.where(first[:, :, None, None], h0[:, None], shifted)


# How the custom_vjp contracts dR = sum over batch and time of dg h_prevᵀ (XLA, not a kernel)
# for 16-bit R: "bf16" is one product of both operands rounded to bfloat16 with float32
# accumulation on the tensor cores: dR then keeps DESIGN §4's rule with less room
# (benchmarks/precision_study.py --rounded-dr, bfloat16: dR's error at 51–81% of the bound,
# against 42–63% from exact operands), bfloat16 R only (float16 R, whose result has 3 more
# mantissa bits, takes "bf16x3" under it); "bf16x3" splits both float32 operands into bfloat16
# hi + lo parts and sums the products hi·hi, hi·lo and lo·hi (~16 mantissa bits a product, far
# below the rounding of the 16-bit dR); "float32" runs one float32 contraction at
# Precision.HIGHEST, without tensor cores. "auto" takes, from R of BF16_MIN_R_ELEMENTS per gate
# (N D², N the heads on one device under a mesh: the contraction's cost is per device), "bf16"
# for bfloat16 R and, from BF16X3_MIN_R_ELEMENTS, "bf16x3" for float16 R; "float32" below, as
# fast there and more accurate (H100, B=16, T=1024, LSTM forward+backward, in alternation: 12×64
# 3.39 / 3.65 / 3.42 ms for bf16 / bf16x3 / float32, 3×256 3.87 / 4.37 / 4.27, 1×768 6.93 /
# 7.73 / 7.94; results/quick_bench_maxnreg_H100_80GB_HBM3.json, benchmarks/NOTES.md).
# float32 R always takes "float32". Where the call's backward kernel accumulates dR (and db)
# itself (kernel_computes_weight_gradient: CMake FLASHRNN_MMA_SPLIT_BACKWARD_DR, on by default),
# "auto" takes that, no contraction at all: its operands are rounded as "bf16"'s, its float32
# parts take ceil(B / 8) Gr N D² floats, and the kernel does the work on any build with the
# option, whatever the setting. (A module setting so that the benchmark can time each.)
R_GRADIENT_CONTRACTION = "auto"
BF16_MIN_R_ELEMENTS = 256 * 256
BF16X3_MIN_R_ELEMENTS = 512 * 512


def _bfloat16_rounded(x):
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)


def _bfloat16_parts(x):
    # Rounded to bfloat16 by reduce_precision, not by a round trip of converts: XLA's GPU
    # compiler folds f32 -> bf16 -> f32 into nothing (SimplifyFPConversions, with excess
    # precision allowed, its default), which would leave every lo part zero. The parts stay
    # float32 (bfloat16 values): a product of two is exact in float32 and in TF32, the default
    # precision of a float32 GPU matmul, whereas with bfloat16 operands XLA's GPU compiler
    # rewrites a small contraction (B T = 3) into an elementwise multiply in bfloat16, which
    # rounds each product to 8 bits (an f16 Elman head of 6 then had dR 10x off).
    hi = _bfloat16_rounded(x)
    return hi, _bfloat16_rounded(x - hi)


def _bfloat16_product(spec: str, a, b):
    """``jnp.einsum(spec, a, b)`` of float32 operands holding bfloat16 values: exact products
    on the tensor cores at TF32, accumulated in float32."""
    return jnp.einsum(spec, a, b, precision=jax.lax.Precision.DEFAULT,
                      preferred_element_type=jnp.float32)


def bf16x3_einsum(spec: str, a, b):
    """``jnp.einsum(spec, a, b)`` of float32 operands to ~16 mantissa bits a product, as three
    products of their bfloat16 hi and lo parts with float32 accumulation, each exact on the
    tensor cores at TF32 (the lo·lo product, ~2⁻¹⁸ relative, is left out)."""
    (a_hi, a_lo), (b_hi, b_lo) = _bfloat16_parts(a), _bfloat16_parts(b)
    return _bfloat16_product(spec, a_hi, b_hi) + (_bfloat16_product(spec, a_hi, b_lo)
                                                  + _bfloat16_product(spec, a_lo, b_hi))


def bf16_einsum(spec: str, a, b):
    """``jnp.einsum(spec, a, b)`` of float32 operands, each rounded to bfloat16 first: one
    product, accumulated in float32."""
    return _bfloat16_product(spec, _bfloat16_rounded(a), _bfloat16_rounded(b))


def weight_gradient_contraction(r_dtype, num_heads: int, head_size: int) -> str:
    """The dR contraction ("bf16", "bf16x3" or "float32") that :data:`R_GRADIENT_CONTRACTION`
    gives R of this dtype and shape."""
    if R_GRADIENT_CONTRACTION not in ("auto", "bf16", "bf16x3", "float32"):
        raise ValueError("fused.R_GRADIENT_CONTRACTION must be 'auto', 'bf16', 'bf16x3' or "
                         f"'float32', got {R_GRADIENT_CONTRACTION!r}")
    if np.dtype(r_dtype).itemsize != 2:
        return "float32"
    if R_GRADIENT_CONTRACTION == "auto":
        elements = num_heads * head_size * head_size
        if np.dtype(r_dtype) == jnp.bfloat16:
            return "bf16" if elements >= BF16_MIN_R_ELEMENTS else "float32"
        return "bf16x3" if elements >= BF16X3_MIN_R_ELEMENTS else "float32"
    if R_GRADIENT_CONTRACTION == "bf16" and np.dtype(r_dtype) != jnp.bfloat16:
        return "bf16x3"
    return R_GRADIENT_CONTRACTION


def kernel_computes_weight_gradient(dtype, head_size: int, function: str) -> bool:
    """Whether the backward kernel of a call accumulates dR and db itself (CMake
    ``FLASHRNN_MMA_SPLIT_BACKWARD_DR``: the split tensor-core backward, bfloat16, dR's operands
    rounded as the "bf16" contraction's, db in float32), which :data:`R_GRADIENT_CONTRACTION`
    "auto" then takes instead of an XLA contraction."""
    if R_GRADIENT_CONTRACTION != "auto" or not tensor_core_kernels()["split_backward_dr"]:
        return False
    paths = kernels_for(dtype, head_size, function)
    return paths is not None and paths[1] == "mma_split"


def recurrent_weight_gradient(d_gates_r, h_prev, r_dtype):
    """dR ``[Gr, N, D, D]`` in ``r_dtype`` from the recurrent gate cotangents ``[B, T, Gr, N, D]``
    and the ``h_prev`` ``[B, T, N, D]`` of every step (both float32), as
    :data:`R_GRADIENT_CONTRACTION` says."""
    spec = "btgno,btni->gnoi"
    contraction = weight_gradient_contraction(r_dtype, *h_prev.shape[2:])
    if contraction == "bf16":
        return bf16_einsum(spec, d_gates_r, h_prev).astype(r_dtype)
    if contraction == "bf16x3":
        return bf16x3_einsum(spec, d_gates_r, h_prev).astype(r_dtype)
    return jnp.einsum(spec, d_gates_r, h_prev,
                      precision=jax.lax.Precision.HIGHEST).astype(r_dtype)


def _fused_bwd(options, residuals, cotangents):
    R, states, seq_lengths, resets, gate_cache, states_f32 = residuals
    d_states_all, d_last = cotangents
    wx_dtype = d_states_all.dtype  # the outputs, and so their cotangents, have Wx's dtype
    in_kernel = kernel_computes_weight_gradient(R.dtype, R.shape[-1], options.function)
    d_gates, d_states0, d_r_partial, d_b_partial = _backward_call(
        R, states, gate_cache, states_f32, d_states_all, d_last.astype(wx_dtype), seq_lengths,
        resets, options, weight_gradient=in_kernel,
    )
    cell = get_cell(options.function)
    offset = cell.wx_bias_offset
    d_wx = d_gates[:, :, offset : offset + cell.gates_wx].astype(wx_dtype)
    if in_kernel:
        d_r = d_r_partial.sum(axis=0).astype(R.dtype)
        d_b = d_b_partial.sum(axis=0)
    else:
        h_prev = recurrent_inputs(states, states_f32, seq_lengths, resets, options)
        d_r = recurrent_weight_gradient(d_gates[:, :, : cell.gates_r], h_prev, R.dtype)
        d_b = d_gates.sum(axis=(0, 1))
    # seq_lengths and resets are integer and boolean: no cotangent.
    return d_wx, d_r, d_b, d_states0, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def flashrnn_fused(Wx, R, b, states, seq_lengths=None, resets=None, *, function: str,
                   reverse: bool = False, gradient_recurrent_cut: bool = False,
                   gradient_recurrent_clipval: float | None = None):
    """Run the fused kernels on validated arguments (as :func:`flashrnn_jax.flashrnn`).

    ``R`` is cast to the dtype of ``Wx``, ``b`` and ``states`` to float32; their gradients come
    back in their own dtypes through those casts. ``seq_lengths`` None means full length,
    ``resets`` None no resets.
    """
    B, T = Wx.shape[:2]
    if gradient_recurrent_cut:
        recurrent_gradient, clipval = RECURRENT_CUT, 0.0
    elif gradient_recurrent_clipval is not None:
        recurrent_gradient, clipval = RECURRENT_CLIP, float(gradient_recurrent_clipval)
    else:
        recurrent_gradient, clipval = RECURRENT_FULL, 0.0
    options = _Options(function, reverse=reverse, has_resets=resets is not None,
                       recurrent_gradient=recurrent_gradient, clipval=clipval)
    lengths = (jnp.full((B,), T, jnp.int32) if seq_lengths is None
               else jnp.asarray(seq_lengths).astype(jnp.int32))
    # Without resets the kernels read no flags; a one-element placeholder fills the slot.
    flags = jnp.zeros((1, 1), jnp.bool_) if resets is None else jnp.asarray(resets, jnp.bool_)
    states_all, last = _fused(
        Wx, R.astype(Wx.dtype), b.astype(jnp.float32), states.astype(jnp.float32), lengths,
        flags, options,
    )
    return states_all, last
