"""The fused kernels' hardware model: its tilings pass the kernels' own static checks, it names
the binding limit when nothing fits, and it picks among compiled tilings by device."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import shutil
import subprocess

import pytest

from flashrnn_jax.constrint import hardware

REPO = pathlib.Path(__file__).resolve().parent.parent
FUNCTIONS = ("lstm", "gru", "slstm", "elman")
DTYPES = ("bf16", "f16", "f32")
DEFAULT_HEAD_SIZES = (6, 16, 24, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 2560)
H100 = hardware.DeviceLimits.sm90()


# The default grid's combinations that fit no tiling (CMake skips them): heads whose R slice and
# staged h exceed the shared memory of 128 CTAs — with more than one R gate float32 heads of
# 1536 and 2048 and every head of 2560 — where the tensor-core group kernels (16-bit, 128 CTAs
# at most, R in registers and shared memory) do not take them either; the Elman's single gate
# fits up to 2560 but in float32.
INFEASIBLE = ({(function, "f32", d) for function in ("lstm", "gru", "slstm") for d in (1536, 2048)}
              | {(function, dtype, 2560) for function in ("lstm", "gru", "slstm")
                 for dtype in DTYPES}
              | {("elman", "f32", 2560)})
# The combinations the tensor-core group kernels take (hardware.GRID_PREFERENCE_ORDER): 16-bit
# heads of 2048 with more than one R gate, which only they hold, and in bfloat16 (which has
# their backward) heads of 1024 and 1536 and the Elman's of 2048, which groups of FMA kernels
# would hold.
TENSOR_CORE_GROUP = ({(function, dtype, 2048) for function in ("lstm", "gru", "slstm")
                      for dtype in ("bf16", "f16")}
                     | {(function, "bf16", d) for function in ("lstm", "gru", "slstm")
                        for d in (1024, 1536)}
                     | {("elman", "bf16", d) for d in (1536, 2048)})


def _grid():
    for function, dtype, head_size in itertools.product(FUNCTIONS, DTYPES, DEFAULT_HEAD_SIZES):
        if (function, dtype, head_size) in INFEASIBLE:
            with pytest.raises(hardware.InfeasibleTilingError):
                hardware.choose_tiling(function, dtype, head_size)
            continue
        for tiling in hardware.compiled_tilings(function, dtype, head_size):
            yield function, dtype, head_size, tiling


def test_default_grid_fits_and_prefers_single_ctas():
    for function, dtype, head_size, tiling in _grid():
        # Small heads need no cluster; every chosen tiling is feasible on the H100 model.
        if hardware.DTYPE_BYTES[dtype] * 4 * head_size**2 <= 64 * 1024:
            assert tiling.cluster == 1, (function, dtype, head_size, tiling)
        hardware.check_tiling(function, dtype, head_size, tiling, H100)


def test_models_parse_without_warnings():
    """ConstrINT ignores parentheses (they do not group) and warns where a model has any: a
    constraint written as ``BT * (D + 4) * 4`` would silently mean something else. Every model
    of the default grid, on the H100 limits and on a device with fewer SMs, parses cleanly."""
    import warnings

    from flashrnn_jax.constrint import parser

    for device in (H100, dataclasses.replace(H100, sm_count=114)):
        for function, dtype, head_size in itertools.product(FUNCTIONS, DTYPES,
                                                            DEFAULT_HEAD_SIZES):
            text = hardware.model_text(function, dtype, head_size, device)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                parser.parse(text)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler")
def test_tilings_pass_the_kernels_static_checks(tmp_path):
    """Compile the kernels' Tiling and shared-memory Layout static_asserts (plain C++ headers
    shared with the CUDA kernels) for every tiling the model chooses."""
    lines = ['#include "kernels/layouts.h"', "namespace flashrnn {"]
    for function, dtype, head_size, t in _grid():
        tile = f"Tiling<{head_size}, {t.cluster}, {t.batch_tile}, {t.threads}>"
        gates, size = hardware.RECURRENT_GATES[function], hardware.DTYPE_BYTES[dtype]
        # The C++ side tells the tensor-core group kernels' tilings by their threads (their
        # layouts' checks are nvcc's: tests/test_kernels_compile.py).
        tensor_core = hardware.takes_tensor_core_group(function, dtype, head_size, t)
        beyond = "true" if tensor_core else "false"
        lines.append(f"static_assert({tile}::kThreadsBeyondElements == {beyond});")
        if tensor_core:
            continue
        # Groups beyond a cluster run the grid kernels, with their own layouts.
        grid = "Grid" if t.grid_group else ""
        lines += [f"template struct Forward{grid}Layout<{gates}, {size}, {tile}>;",
                  f"template struct Backward{grid}Layout<{gates}, {size}, {tile}>;"]
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
    # An LSTM head of 2560 in bf16 has 52 MB of R: more than the shared memory of 128 CTAs, and
    # beyond the heads the tensor-core group kernels take.
    with pytest.raises(hardware.InfeasibleTilingError,
                       match="shared memory per block.*tensor-core group kernels.*1024 to 2048"):
        hardware.choose_tiling("lstm", "bf16", 2560)
    with pytest.raises(hardware.InfeasibleTilingError) as float32:
        hardware.choose_tiling("lstm", "f32", 2560)
    assert "tensor-core" not in str(float32.value)


def test_heads_beyond_a_cluster_take_the_largest_group_that_meets_through_global_memory():
    """R of an LSTM head of 768 in bf16 (4.7 MB) does not fit 16 CTAs' shared memory. Groups
    of 32 or more CTAs fit; the model takes the largest, 128 (fewer warps per SM, a shorter
    step: hardware.GRID_PREFERENCE_ORDER), and no more CTAs than the device has SMs."""
    assert 16 * H100.shared_memory_per_block_optin < 4 * 768 * 768 * 2
    assert 4 * 768 * (768 // 32) * 2 + 8 * 768 * 4 <= H100.shared_memory_per_block_optin
    tiling = hardware.choose_tiling("lstm", "bf16", 768)
    assert tiling == hardware.Tiling(128, 16, 96), tiling
    hardware.check_tiling("lstm", "bf16", 768, hardware.Tiling(32, 8, 192), H100)
    assert hardware.pick_compiled("lstm", "bf16", 768, [hardware.Tiling(32, 8, 192), tiling],
                                  H100) == tiling
    few_sms = dataclasses.replace(H100, name="small GPU", sm_count=100)
    assert hardware.choose_tiling("lstm", "bf16", 768, few_sms).cluster == 64
    no_group = dataclasses.replace(H100, name="small GPU", sm_count=24)
    with pytest.raises(hardware.InfeasibleTilingError, match="streaming multiprocessors"):
        hardware.choose_tiling("lstm", "bf16", 768, no_group)


def test_16_bit_heads_of_2048_fit_on_the_tensor_core_group_kernels():
    """R of an LSTM head of 2048 in bf16 (33.6 MB; 256 KB for each of 128 CTAs' 16 units) is
    more than 128 CTAs' shared memory, but not more than their shared memory and half the
    register file of 512 threads (64 of 128 registers each for R fragments) together: one
    tiling, 128 CTAs of one unit tile and 8 batch rows, on the tensor-core group kernels, and
    only on a device with 128 SMs or more."""
    slice_bytes = 4 * 16 * 2048 * 2
    assert slice_bytes > H100.shared_memory_per_block_optin
    assert slice_bytes <= H100.shared_memory_per_block_optin + 512 * 64 * 4
    for function, dtype, head_size in sorted(TENSOR_CORE_GROUP):
        if function == "elman" or head_size != 2048:
            continue
        tilings = hardware.compiled_tilings(function, dtype, head_size)
        assert tilings == [hardware.Tiling(128, 8, 512)], (function, dtype, tilings)
        assert hardware.takes_tensor_core_group(function, dtype, head_size, tilings[0])
        h100_pcie = dataclasses.replace(H100, name="H100 PCIe", sm_count=114)
        with pytest.raises(hardware.InfeasibleTilingError, match="streaming multiprocessors"):
            hardware.check_tiling(function, dtype, head_size, tilings[0], h100_pcie)
    # The preferred (first) tiling of every combination of the default grid.
    preferred = {}
    for function, dtype, head_size, tiling in _grid():
        preferred.setdefault((function, dtype, head_size), tiling)
    for (function, dtype, head_size), tiling in preferred.items():
        assert hardware.takes_tensor_core_group(function, dtype, head_size, tiling) == (
            (function, dtype, head_size) in TENSOR_CORE_GROUP), (function, dtype, head_size)
    # With fewer registers per SM the fragments no longer fit: no tiling.
    half_registers = dataclasses.replace(H100, name="small GPU", registers_per_sm=32768)
    with pytest.raises(hardware.InfeasibleTilingError):
        hardware.choose_tiling("lstm", "bf16", 2048, half_registers)


def test_groups_prefer_the_tensor_core_kernels_where_they_fit():
    """Among groups beyond a cluster the tensor-core group kernels come first (a step of a few
    hundred tensor-core cycles, where an FMA group thread runs a whole dot product): bf16 heads
    of 1024 and 1536 on 64 and 96 CTAs of 16 units, alone (the FMA fallback would need as many
    SMs); the Elman bf16 head of 2048 on 128, with the FMA group of 64 CTAs beside it for GPUs
    with fewer SMs; float16 keeps the FMA groups where they fit (it has no tensor-core
    backward)."""
    assert hardware.compiled_tilings("lstm", "bf16", 1024) == [hardware.Tiling(64, 8, 512)]
    # 96 CTAs of 16 units at 1536 (the FMA groups are powers of two: 128 of 12 units).
    assert hardware.compiled_tilings("gru", "bf16", 1536) == [hardware.Tiling(96, 8, 512)]
    elman = hardware.compiled_tilings("elman", "bf16", 2048)
    assert elman[0] == hardware.Tiling(128, 8, 512) and len(elman) == 2, elman
    assert not hardware.takes_tensor_core_group("elman", "bf16", 2048, elman[1])
    h100_pcie = dataclasses.replace(H100, name="H100 PCIe", sm_count=114)
    assert hardware.pick_compiled("elman", "bf16", 2048, elman, H100) == elman[0]
    assert hardware.pick_compiled("elman", "bf16", 2048, elman, h100_pcie) == elman[1]
    for function in ("lstm", "elman"):
        f16 = hardware.compiled_tilings(function, "f16", 1024)
        assert not any(hardware.takes_tensor_core_group(function, "f16", 1024, t) for t in f16)
        # The run time asks with XLA's dtype names.
        assert hardware.compiled_tilings(function, "F16", 1024) == f16
    # A build without the tensor-core group kernels (CMake: hardware.main
    # --no-tensor-core-groups) keeps the FMA groups wherever they fit; only they hold 2048.
    without = hardware.compiled_tilings("lstm", "bf16", 1024, tensor_core_groups=False)
    assert without == hardware.compiled_tilings("lstm", "f16", 1024), without
    assert hardware.compiled_tilings("lstm", "bf16", 2048, tensor_core_groups=False) == [
        hardware.Tiling(128, 8, 512)]


def test_a_smaller_group_is_compiled_beside_the_largest_for_devices_with_fewer_sms():
    tilings = hardware.compiled_tilings("lstm", "bf16", 768)
    assert [t.cluster for t in tilings] == [128, 32], tilings
    for tiling in tilings:
        hardware.check_tiling("lstm", "bf16", 768, tiling, H100)
    h100_pcie = dataclasses.replace(H100, name="H100 PCIe", sm_count=114)
    assert hardware.pick_compiled("lstm", "bf16", 768, tilings, H100) == tilings[0]
    assert hardware.pick_compiled("lstm", "bf16", 768, tilings, h100_pcie) == tilings[1]
    # Heads that fit a cluster compile that tiling alone.
    assert hardware.compiled_tilings("lstm", "bf16", 256) == [
        hardware.choose_tiling("lstm", "bf16", 256)]


def test_cluster_limit_binds_on_a_device_without_clusters():
    # 16 SMs: no group beyond a cluster either.
    no_clusters = hardware.DeviceLimits("old GPU", 232448, 65536, 1024, 1, 16)
    with pytest.raises(hardware.InfeasibleTilingError, match="cluster size"):
        hardware.choose_tiling("lstm", "f32", 256, no_clusters)


def test_compiled_tiling_refused_on_a_smaller_device():
    tiling = hardware.choose_tiling("lstm", "bf16", 128)  # 128 KiB of R in one CTA
    small = hardware.DeviceLimits("small GPU", 100 * 1024, 65536, 1024, 16, 132)
    with pytest.raises(hardware.InfeasibleTilingError, match="shared memory per block"):
        hardware.check_tiling("lstm", "bf16", 128, tiling, small)


def test_pick_compiled_prefers_the_model_order_among_fitting_tilings():
    one_cta = hardware.Tiling(1, 16, 512)
    cluster = hardware.Tiling(2, 16, 512)
    assert hardware.pick_compiled("lstm", "bf16", 128, [cluster, one_cta], H100) == one_cta
    small = hardware.DeviceLimits("small GPU", 100 * 1024, 65536, 1024, 16, 132)
    assert hardware.pick_compiled("lstm", "bf16", 128, [cluster, one_cta], small) == cluster


def test_cmake_listing_without_tensor_core_groups(capsys):
    hardware.main(["--functions=gru", "--dtypes=bf16", "--head-sizes=1536",
                   "--no-tensor-core-groups"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"gru bf16 1536 {t.cluster} {t.batch_tile} {t.threads}" for t in
                     hardware.compiled_tilings("gru", "f16", 1536)], lines
    assert all(line.split()[-1] != "512" for line in lines), lines


def test_cmake_listing(capsys):
    hardware.main(["--functions=lstm;elman", "--dtypes=bf16", "--head-sizes=64;2560"])
    lines = capsys.readouterr().out.splitlines()
    t = hardware.choose_tiling("lstm", "bf16", 64)
    assert f"lstm bf16 64 {t.cluster} {t.batch_tile} {t.threads}" in lines
    assert any(line.startswith("# skipped:") and "'lstm'" in line and "2560" in line
               for line in lines)
