"""The fused CUDA backend: loading the compiled extension, FFI registration, support checks.

The extension ``flashrnn_jax._cuda`` is built by CMake only where nvcc and a CUDA-enabled
jaxlib are found; without it the package is pure JAX and ``backend="auto"`` runs the scan.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import jax


class FusedBackendUnavailableError(RuntimeError):
    """``backend="fused"`` was asked for a call the fused kernels cannot run."""


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
        stacklevel=3,
    )


def unsupported_reason(dtype, head_size: int, function: str) -> str | None:
    """Why the fused kernels cannot run a call, or None when they can."""
    if not _has_cuda_device():
        return "no CUDA device is visible to JAX"
    if extension() is None:
        _warn_kernels_missing()
        return "flashrnn_jax was installed without its CUDA kernels (flashrnn_jax._cuda)"
    return "the fused kernels are not part of this version of flashrnn_jax yet"


def flashrnn_fused(Wx, R, b, states, *, function):
    raise FusedBackendUnavailableError(unsupported_reason(Wx.dtype, Wx.shape[-1], function))
