"""The fused kernels' hardware model: its tilings pass the kernels' own static checks, it names
the binding limit when nothing fits, and it picks among compiled tilings by device."""

from __future__ import annotations

import itertools
import pathlib
import shutil
import subprocess

import pytest

from flashrnn_jax.constrint import hardware

REPO = pathlib.Path(__file__).resolve().parent.parent
FUNCTIONS = ("lstm", "gru", "slstm", "elman")
DTYPES = ("bf16", "f16", "f32")
DEFAULT_HEAD_SIZES = (6, 16, 24, 32, 64, 128, 256)
H100 = hardware.DeviceLimits.sm90()


def _grid():
    for function, dtype, head_size in itertools.product(FUNCTIONS, DTYPES, DEFAULT_HEAD_SIZES):
        yield function, dtype, head_size, hardware.choose_tiling(function, dtype, head_size)


def test_default_grid_fits_and_prefers_single_ctas():
    for function, dtype, head_size, tiling in _grid():
        # Small heads need no cluster; every chosen tiling is feasible on the H100 model.
        if hardware.DTYPE_BYTES[dtype] * 4 * head_size**2 <= 64 * 1024:
            assert tiling.cluster == 1, (function, dtype, head_size, tiling)
        hardware.check_tiling(function, dtype, head_size, tiling, H100)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler")
def test_tilings_pass_the_kernels_static_checks(tmp_path):
    """Compile the kernels' Tiling and shared-memory Layout static_asserts (plain C++ headers
    shared with the CUDA kernels) for every tiling the model chooses."""
    lines = ['#include "kernels/layouts.h"', "namespace flashrnn {"]
    for function, dtype, head_size, t in _grid():
        tile = f"Tiling<{head_size}, {t.cluster}, {t.batch_tile}, {t.threads}>"
        gates, size = hardware.RECURRENT_GATES[function], hardware.DTYPE_BYTES[dtype]
        lines += [f"template struct ForwardLayout<{gates}, {size}, {tile}>;",
                  f"template struct BackwardLayout<{gates}, {size}, {tile}>;"]
    lines.append("}")
    source = tmp_path / "tilings.cc"
    # Cells sharing a gate count and dtypes sharing a width give the same instantiation once.
    source.write_text("\n".join(dict.fromkeys(lines)) + "\n")
    subprocess.run(["g++", "-std=c++17", "-fsyntax-only", f"-I{REPO / 'cuda_ffi'}", str(source)],
                   check=True)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler")
def test_static_checks_reject_an_oversized_tiling(tmp_path):
    """The same compile fails for a tiling over the shared-memory limit: the check is real."""
    source = tmp_path / "too_big.cc"
    source.write_text('#include "kernels/layouts.h"\nnamespace flashrnn {\n'
                      "template struct ForwardLayout<4, 4, Tiling<256, 1, 16, 512>>;\n}\n")
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", f"-I{REPO / 'cuda_ffi'}", str(source)],
        capture_output=True, text=True)
    assert result.returncode != 0 and "shared memory per block" in result.stderr


def test_too_large_head_names_the_binding_limit():
    with pytest.raises(hardware.InfeasibleTilingError, match="shared memory per block"):
        hardware.choose_tiling("lstm", "bf16", 1024)


def test_cluster_limit_binds_on_a_device_without_clusters():
    no_clusters = hardware.DeviceLimits("old GPU", 232448, 65536, 1024, 1)
    with pytest.raises(hardware.InfeasibleTilingError, match="cluster size"):
        hardware.choose_tiling("lstm", "f32", 256, no_clusters)


def test_compiled_tiling_refused_on_a_smaller_device():
    tiling = hardware.choose_tiling("lstm", "bf16", 128)  # 128 KiB of R in one CTA
    small = hardware.DeviceLimits("small GPU", 100 * 1024, 65536, 1024, 16)
    with pytest.raises(hardware.InfeasibleTilingError, match="shared memory per block"):
        hardware.check_tiling("lstm", "bf16", 128, tiling, small)


def test_pick_compiled_prefers_the_model_order_among_fitting_tilings():
    one_cta = hardware.Tiling(1, 16, 512)
    cluster = hardware.Tiling(2, 16, 512)
    assert hardware.pick_compiled("lstm", "bf16", 128, [cluster, one_cta], H100) == one_cta
    small = hardware.DeviceLimits("small GPU", 100 * 1024, 65536, 1024, 16)
    assert hardware.pick_compiled("lstm", "bf16", 128, [cluster, one_cta], small) == cluster


def test_cmake_listing(capsys):
    hardware.main(["--functions=lstm;elman", "--dtypes=bf16", "--head-sizes=64;1024"])
    lines = capsys.readouterr().out.splitlines()
    t = hardware.choose_tiling("lstm", "bf16", 64)
    assert f"lstm bf16 64 {t.cluster} {t.batch_tile} {t.threads}" in lines
    assert any(line.startswith("# skipped:") and "'lstm'" in line and "1024" in line
               for line in lines)
