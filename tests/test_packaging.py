"""The build configures with or without the CUDA kernels and says clearly when they are not built."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")


def _configure(tmp_path, *defines):
    return subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"),
         f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True, text=True, timeout=300,
    )


def test_configure_without_cuda_says_so(tmp_path):
    result = _configure(tmp_path, "-DFLASHRNN_CUDA=OFF")
    assert result.returncode == 0, result.stderr
    assert "the CUDA kernels are NOT built (FLASHRNN_CUDA=OFF)" in " ".join(result.stderr.split())


def test_auto_skips_cuda_without_a_cuda_jaxlib(tmp_path):
    """AUTO builds the kernels only with nvcc and a CUDA jaxlib; otherwise it configures a pure
    Python package and names the reason."""
    import importlib.metadata as metadata

    if any((d.metadata["Name"] or "").lower().startswith(("jax-cuda", "jax_cuda"))
           for d in metadata.distributions()):
        pytest.skip("this environment has a CUDA jaxlib: AUTO would build the kernels")
    result = _configure(tmp_path, "-DFLASHRNN_CUDA=AUTO")
    assert result.returncode == 0, result.stderr
    message = " ".join(result.stderr.split())
    assert "the CUDA kernels are NOT built" in message
    assert "no CUDA compiler" in message or "jaxlib has no CUDA plugin" in message
