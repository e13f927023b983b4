"""Shared test setup: 8 CPU devices, float64 on, a per-test seeded generator, the ``gpu`` skip."""

import functools
import importlib
import os
import zlib

import numpy as np
import pytest

# Before jax is imported: 8 CPU devices, so that tests can build device meshes
# (tests/test_sharding.py). Appended, so that flags set by the caller stay in force.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, (os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=8"))
    )

import jax  # noqa: E402

# Before any test builds an array: the references and the fp64 checks need real float64.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's id: reproducible, and different for every test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@functools.cache
def _gpu_unavailable_reason() -> str | None:
    try:
        has_cuda = bool(jax.devices("cuda"))
    except RuntimeError:
        has_cuda = False
    if not has_cuda:
        return "no CUDA device visible to JAX"
    try:
        importlib.import_module("flashrnn_jax._cuda")
    except ImportError:
        return "flashrnn_jax._cuda (the compiled kernels) is not built"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gpu") and (reason := _gpu_unavailable_reason()):
            item.add_marker(pytest.mark.skip(reason=reason))
