"""The CUDA kernels compile for sm_90a without a GPU, with and without the tensor-core forward,
and the latter keeps its static properties: the mma.sync instructions per step, no spills.

Where there is no GPU (CI), this is what guards the kernel sources between device runs; it needs
only nvcc (the kernels include no XLA header).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc")

SOURCE = """
#include "kernels/backward.cuh"
#include "kernels/forward.cuh"
#include "kernels/gru_pointwise.cuh"
#include "kernels/lstm_pointwise.cuh"
#include "kernels/slstm_pointwise.cuh"

namespace flashrnn {
// A single-CTA head and a cluster head, as the hardware model tiles them.
template cudaError_t LaunchForward<LstmCell, __nv_bfloat16, Tiling<64, 1, 16, 512>>(
    const ForwardArgs&, cudaStream_t);
template cudaError_t LaunchForward<SlstmCell, __half, Tiling<256, 4, 16, 512>>(
    const ForwardArgs&, cudaStream_t);
template cudaError_t LaunchBackward<GruCell, float, Tiling<32, 1, 16, 512>>(
    const BackwardArgs&, cudaStream_t);
}  // namespace flashrnn
"""


def _compile(tmp_path, mma: bool, *extra: str) -> subprocess.CompletedProcess:
    source = tmp_path / "kernels.cu"
    source.write_text(SOURCE)
    return subprocess.run(
        [NVCC, "-std=c++17", "-arch=sm_90a", "--expt-relaxed-constexpr",
         f"-DFLASHRNN_MMA_FORWARD={int(mma)}", f"-I{REPO / 'cuda_ffi'}", *extra, str(source)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )


def test_default_kernels_compile_without_the_tensor_core_forward(tmp_path):
    result = _compile(tmp_path, False, "--ptx", "-o", str(tmp_path / "k.ptx"))
    assert result.returncode == 0, result.stderr[-3000:]
    ptx = (tmp_path / "k.ptx").read_text()
    assert "ForwardKernel" in ptx and "BackwardKernel" in ptx
    assert "ForwardMmaKernel" not in ptx and "mma.sync" not in ptx


def test_tensor_core_forward_compiles_with_its_mma_count_and_no_spills(tmp_path):
    result = _compile(tmp_path, True, "-c", "-Xptxas", "-v", "-o", str(tmp_path / "k.o"))
    assert result.returncode == 0, result.stderr[-3000:]
    # ptxas reports every kernel: the LSTM bf16 D=64 forward is the tensor-core one now.
    reports = dict(re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?spill loads)",
                              result.stderr, re.S))
    mma = [name for name in reports if "ForwardMmaKernel" in name]
    assert len(mma) == 2, list(reports)  # forward only, and with the residuals
    for name in mma:
        assert "0 bytes spill stores, 0 bytes spill loads" in reports[name], reports[name]
    ptx = _compile(tmp_path, True, "--ptx", "-o", str(tmp_path / "k.ptx"))
    assert ptx.returncode == 0, ptx.stderr[-3000:]
    entries = re.findall(r"\.entry (\w+)\((.*?)\n\}\n", (tmp_path / "k.ptx").read_text(), re.S)
    counts = {name: body.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
              for name, body in entries if "ForwardMmaKernel" in name}
    # 4 k-tiles x 1 n-tile (batch tile 8) x 4 gates x (hi, lo) per step, unrolled.
    assert sorted(counts.values()) == [32, 32], counts
