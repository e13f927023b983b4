"""The CUDA kernels compile for sm_90a without a GPU, with and without the tensor-core forward
and backward, and these keep their static properties: the mma.sync instructions per step, no
spills.

Where there is no GPU (CI), this is what guards the kernel sources between device runs; it needs
only nvcc (the kernels include no XLA header).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import bench_runs  # noqa: F401  (puts benchmarks/ on sys.path)
import jax
import pytest
from sass_loop import default_defines, instantiation_source, short_name

from flashrnn_jax.constrint import hardware, solve

REPO = pathlib.Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc")

# (direction, cell, dtype, tiling): a single-CTA head and cluster heads as the hardware model
# tiles them, and the tensor-core backward's cases nearest its register limit.
INSTANTIATIONS = [
    ("Forward", "LstmCell", "__nv_bfloat16", (64, 1, 16, 512)),
    ("Forward", "SlstmCell", "__half", (256, 4, 16, 512)),
    ("Forward", "LstmCell", "__nv_bfloat16", (256, 4, 16, 512)),
    ("Backward", "GruCell", "float", (32, 1, 16, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (64, 1, 16, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (128, 1, 16, 512)),
    ("Backward", "GruCell", "__nv_bfloat16", (128, 1, 16, 512)),
    ("Backward", "SlstmCell", "__nv_bfloat16", (64, 1, 16, 512)),
    ("Backward", "SlstmCell", "__nv_bfloat16", (128, 1, 16, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (256, 4, 16, 512)),
    ("Backward", "SlstmCell", "__nv_bfloat16", (256, 4, 16, 512)),
    # Heads beyond a cluster: groups of 32 to 128 CTAs that meet through global memory, but for
    # 16-bit heads of 512 and 768 and Elman heads of 1024, which the tensor-core cluster kernels
    # take (768: R partly in shared memory).
    ("Forward", "LstmCell", "__nv_bfloat16", (768, 32, 16, 384)),
    ("Backward", "LstmCell", "__nv_bfloat16", (768, 32, 16, 384)),
    ("Forward", "GruCell", "__nv_bfloat16", (512, 16, 16, 512)),
    ("Backward", "GruCell", "__nv_bfloat16", (512, 16, 16, 512)),
    ("Forward", "LstmCell", "__nv_bfloat16", (512, 16, 16, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (512, 16, 16, 512)),
    ("Backward", "SlstmCell", "__nv_bfloat16", (768, 32, 16, 384)),
    ("Forward", "ElmanCell", "__nv_bfloat16", (1024, 16, 8, 512)),
    ("Backward", "ElmanCell", "__nv_bfloat16", (1024, 16, 8, 512)),
    ("Forward", "LstmCell", "__nv_bfloat16", (1024, 64, 16, 256)),
    ("Backward", "LstmCell", "__half", (768, 32, 16, 384)),
    ("Forward", "GruCell", "float", (1024, 64, 8, 128)),
    ("Backward", "SlstmCell", "__half", (1536, 128, 8, 96)),
]


SOURCE = instantiation_source(INSTANTIATIONS)

MMA = "mma.sync.aligned.m16n8k16.row.col.f32."


def _compile(tmp_path, mma: bool, *extra: str, source_text: str = SOURCE
             ) -> subprocess.CompletedProcess:
    """nvcc on source_text (SOURCE) with all tensor-core kernels (mma) or none."""
    source = tmp_path / "kernels.cu"
    source.write_text(source_text)
    return subprocess.run(
        [NVCC, "-std=c++17", "-arch=sm_90a", "--expt-relaxed-constexpr",
         f"-DFLASHRNN_MMA_FORWARD={int(mma)}", f"-DFLASHRNN_MMA_BACKWARD={int(mma)}",
         f"-DFLASHRNN_MMA_CLUSTER_FORWARD={int(mma)}",
         f"-DFLASHRNN_MMA_CLUSTER_BACKWARD={int(mma)}",
         f"-I{REPO / 'cuda_ffi'}", *extra, str(source)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )


def _ptxas_reports_and_ptx(tmp_path, *flags: str, source_text: str = SOURCE):
    """ptxas -v's report of every kernel (name -> its lines up to the spill counts) and every
    kernel's PTX body (name -> text), all tensor-core kernels on plus ``flags``: one compile,
    which keeps its PTX (named after the source and -arch of _compile)."""
    result = _compile(tmp_path, True, *flags, "-c", "-Xptxas", "-v", "-keep", "-keep-dir",
                      str(tmp_path), "-o", str(tmp_path / "k.o"), source_text=source_text)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = dict(re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?spill loads)",
                              result.stderr, re.S))
    ptx = (tmp_path / "kernels.compute_90a.ptx").read_text()
    entries = dict(re.findall(r"\.entry (\w+)\((.*?)\n\}\n", ptx, re.S))
    return reports, entries


def _off_and_on(tmp_path, option: str, source_text: str, *flags: str):
    """_ptxas_reports_and_ptx of source_text with ``option`` defined 0 and 1 (plus flags)."""
    builds = []
    for on in (0, 1):
        (tmp_path / f"{option}{on}").mkdir()
        builds.append(_ptxas_reports_and_ptx(tmp_path / f"{option}{on}", *flags,
                                             f"-D{option}={on}", source_text=source_text))
    return builds


def _spilled(report: str) -> int:
    """The bytes of spill stores in a kernel's ptxas report."""
    return int(re.search(r"(\d+) bytes spill stores", report).group(1))


@pytest.fixture(scope="module")
def mma_build(tmp_path_factory):
    """_ptxas_reports_and_ptx of SOURCE with the single-CTA and cluster tensor-core kernels on
    and the options params.h leaves off (the hi + lo operand, no split kernels: a build with
    those options off), compiled once; test_default_build_... compiles the default build."""
    return _ptxas_reports_and_ptx(tmp_path_factory.mktemp("mma"))


def test_kernels_compile_without_the_tensor_core_kernels(tmp_path):
    result = _compile(tmp_path, False, "--ptx", "-o", str(tmp_path / "k.ptx"))
    assert result.returncode == 0, result.stderr[-3000:]
    ptx = (tmp_path / "k.ptx").read_text()
    assert "ForwardKernel" in ptx and "BackwardKernel" in ptx
    assert "Mma" not in ptx and "mma.sync" not in ptx


def test_tensor_core_kernels_compile_with_their_mma_count_and_no_spills(mma_build):
    # ptxas reports every kernel: the forwards (LSTM bf16 D=64 in one CTA; LSTM bf16 and sLSTM
    # f16 at D=256, GRU and LSTM bf16 at 512, LSTM bf16 at 768 and Elman bf16 at 1024 over a
    # cluster) and the bf16
    # backwards are the tensor-core ones now; each forward with residuals too.
    reports, entries = mma_build
    forward = [name for name in reports if "ForwardMmaKernel" in name]
    cluster = [name for name in reports if "ForwardMmaClusterKernel" in name]
    backward = [name for name in reports if "BackwardMmaKernel" in name]
    cluster_backward = [name for name in reports if "BackwardMmaClusterKernel" in name]
    assert (len(forward), len(cluster), len(backward), len(cluster_backward)) == (2, 12, 5, 7), \
        list(reports)
    # Allowed to spill a few words (outside the step loop, but for up to 3 local accesses a
    # step in the backward at 768 with these options): where
    # registers are tightest, the sLSTM's single-CTA backward at D=128 (255 registers) and the
    # cluster kernels of 16 CTAs at D=512 to 1024 (255 registers, and 168 for 384 threads at
    # 768). No other kernel spills.
    slstm128 = [name for name in backward if "SlstmCell" in name and "Li128E" in name]
    assert len(slstm128) == 1, backward
    large = [name for name in cluster + cluster_backward
             if any(f"Li{d}E" in name for d in (512, 768, 1024))]
    assert len(large) == 13, large
    for name in slstm128 + large:
        assert _spilled(reports[name]) <= 24, reports[name]
    for name in forward + cluster + backward + cluster_backward:
        if name not in slstm128 + large:
            assert "0 bytes spill stores, 0 bytes spill loads" in reports[name], reports[name]
    counts = {name: body.count(MMA) for name, body in entries.items() if "Mma" in name}
    # Forward: 4 k-tiles x 1 n-tile (batch tile 8) x 4 gates x (hi, lo) per step, unrolled; the
    # cluster forward at D=256 as many: a quarter of the 16 k-tiles per warp; at 768 a quarter
    # of 48 (6 from registers, 6 from shared memory); the GRU at 512 3 gates x 8 k-tiles.
    assert sorted(c for name, c in counts.items()
                  if "Forward" in name and "LstmCell" in name) == [32] * 4 + [64] * 2 + [96] * 2, \
        counts
    assert [c for name, c in counts.items()
            if "ForwardMmaClusterKernel" in name and "GruCell" in name] == [48, 48], counts
    # Backward, LSTM D=64: 16 k-tiles over (gate, unit) x (hi, lo), in the step loop and once
    # after it.
    lstm64 = [c for name, c in counts.items() if "BackwardMmaKernelINS_8LstmCell" in name
              and "Li64E" in name]
    assert lstm64 == [64], counts
    # Cluster backward: per warp its products (destination unit tiles) x (Gr gates x U units /
    # 16) k-tiles x (hi, lo), once: in the step loop, whose last iteration also sends step 0's
    # product back. D=256: 2 x 8 (LSTM, sLSTM); 512: 4 x 6 (GRU), 4 x 8 (LSTM); 768: 4 x 12
    # (LSTM, sLSTM); Elman 1024: 4 x 4. The Elman forward at 1024: 16 k-tiles of one gate.
    cluster_counts = sorted(c for name, c in counts.items() if "BackwardMmaClusterKernel" in name)
    assert cluster_counts == [32, 32, 32, 48, 64, 96, 96], counts
    assert [c for name, c in counts.items()
            if "ForwardMmaClusterKernel" in name and "ElmanCell" in name] == [32, 32], counts


# A tiling of the tensor-core group kernels (hardware.takes_tensor_core_group): 16-bit LSTM,
# sLSTM and GRU heads of 2048 on 128 CTAs of 16 units, 8 batch rows and 512 threads.
GROUP_TILE = (2048, 128, 8, 512)
GROUP_SOURCE = instantiation_source([
    ("Forward", "LstmCell", "__nv_bfloat16", (1024, 64, 8, 512)),
    ("Forward", "SlstmCell", "__nv_bfloat16", (1024, 64, 8, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (1024, 64, 8, 512)),
    ("Forward", "GruCell", "__nv_bfloat16", (1536, 96, 8, 512)),
    ("Backward", "GruCell", "__nv_bfloat16", (1536, 96, 8, 512)),
    ("Forward", "LstmCell", "__nv_bfloat16", GROUP_TILE),
    ("Forward", "GruCell", "__half", GROUP_TILE),
    ("Backward", "LstmCell", "__nv_bfloat16", GROUP_TILE),
    ("Backward", "SlstmCell", "__nv_bfloat16", GROUP_TILE),
    ("Backward", "GruCell", "__nv_bfloat16", GROUP_TILE),
    ("Backward", "LstmCell", "__half", GROUP_TILE),
])


def test_tensor_core_group_kernels_take_heads_of_1024_to_2048(tmp_path):
    """The tensor-core group kernels: each of 16 warps multiplies a sixteenth of K for every
    gate (forward: D / 256 k-tiles x Gr gates x (hi, lo) a step) or its C / 16 destination CTAs'
    products (backward: C / 16 x Gr k-tiles x (hi, lo)); within PersistentKernelRegisters' 128
    registers and few spills; their group meets at the release/acquire counter barrier and
    copies the exchange from L2 (cp.async.cg). float16 has no tensor-core backward
    (backward_mma.cuh): its tiling compiles to no kernel (KernelPath kNone), which fused.py
    refuses by name."""
    reports, entries = _ptxas_reports_and_ptx(tmp_path, source_text=GROUP_SOURCE)
    forward = sorted(name for name in reports if "ForwardMmaGroupKernel" in name)
    backward = sorted(name for name in reports if "BackwardMmaGroupKernel" in name)
    # Forwards with and without residuals; the float16 backward has none.
    assert len(forward) == 10 and len(backward) == 5, list(reports)
    assert not any("6__half" in name for name in backward), backward
    assert set(reports) == set(forward + backward), list(reports)
    for name in forward + backward:
        spilled = _spilled(reports[name])
        # A few words at most, outside the step loop (tests/test_sass_step_loop.py): the LSTM
        # forward at 2048, where half of its R fragments must be registers, and the sLSTM
        # forward at 1024 (benchmarks/NOTES.md).
        assert spilled <= 24, reports[name]
        body = entries[name]
        gates = 3 if "GruCell" in name else 4
        k_tiles = {"Li1024E": 4, "Li1536E": 6, "Li2048E": 8}[re.search(r"Li\d+E", name).group()]
        assert body.count(MMA) == k_tiles * gates * 2, (name, body.count(MMA))
        assert "red.release.gpu.global.add.u32" in body and "ld.acquire.gpu.global.u32" in body
        assert "cp.async.cg.shared.global" in body


def _group_layouts_source(cases) -> str:
    """Instantiations of the tensor-core group kernels' layouts (their static checks) for
    (cell, CUDA dtype, head size) cases, each once."""
    lines = [f"template struct MmaGroupForwardLayout<{cell}, {dtype}, {d}>;"
             for cell, dtype, d in cases]
    lines += [f"template struct MmaGroupBackwardLayout<{GATES_R[cell]}, {d}>;"
              for cell, _, d in cases]
    return "".join(
        f'#include "kernels/{header}.cuh"\n'
        for header in ("forward_mma_group", "backward_mma_group", "elman_pointwise",
                       "gru_pointwise", "lstm_pointwise", "slstm_pointwise")
    ) + "namespace flashrnn {\n" + "\n".join(dict.fromkeys(lines)) + "\n}  // namespace flashrnn\n"


# The CUDA cell types (kernels/*_pointwise.cuh) of the functions, and their R gates as the
# hardware model counts them.
CUDA_CELLS = {"lstm": "LstmCell", "gru": "GruCell", "slstm": "SlstmCell", "elman": "ElmanCell"}
GATES_R = {CUDA_CELLS[function]: gates for function, gates in hardware.RECURRENT_GATES.items()}


def test_tensor_core_group_layouts_hold_every_tiling_the_model_admits(tmp_path):
    """Every (cell, 16-bit dtype, head size) for which the hardware model admits the tensor-core
    group kernels (TC == 2) passes their layouts' static checks (shared memory, registers, the
    partial sums in a warp's part of h); and the checks are real: an LSTM head of 512, which the
    model refuses them, fails to compile."""
    dtypes = {"bf16": "__nv_bfloat16", "f16": "__half"}
    admitted = [(CUDA_CELLS[function], dtypes[dtype], d)
                for function in CUDA_CELLS for dtype in dtypes
                for d in (512, 1024, 1536, 2048, 2560)
                if solve(hardware.model_text(function, dtype, d, hardware.DeviceLimits.sm90())
                         + "\nTC == 2;", cache=False)]
    assert ("LstmCell", "__nv_bfloat16", 2048) in admitted
    assert ("LstmCell", "__nv_bfloat16", 512) not in admitted
    assert not any(d == 2560 for _, _, d in admitted), admitted
    result = _compile(tmp_path, True, "-c", "-o", str(tmp_path / "layouts.o"),
                      source_text=_group_layouts_source(admitted))
    assert result.returncode == 0, result.stderr[-3000:]
    refused = _compile(tmp_path, True, "-c", "-o", str(tmp_path / "refused.o"),
                       source_text=_group_layouts_source([("LstmCell", "__nv_bfloat16", 512)]))
    assert refused.returncode != 0 and "partial sums fit" in refused.stderr, refused.stderr[-2000:]


# The hardware model's tilings of these heads (the split kernel launches its own shape).
SPLIT_FORWARD_SOURCE = instantiation_source([
    ("Forward", cell, "__nv_bfloat16", (d, 1, 16, 256 if d == 16 else 512))
    for cell in ("LstmCell", "GruCell") for d in (16, 32, 64)])


def test_split_forward_takes_heads_of_16_to_64_one_element_per_thread(tmp_path):
    """FLASHRNN_MMA_SPLIT_FORWARD: bf16 heads of 16, 32 and 64 run the cluster forward's layout
    on one CTA (C = 1) without spills, four warps per unit tile: at 64 each multiplies a
    quarter of K for the 4 gates, at 32 half of K for 2 gates, at 16 all of K for one gate, as
    hi and lo (8, 4 and 2 mma per step). The GRU's 3 gates split only at 64; at 16 and 32 it
    keeps the single-CTA tensor-core forward."""
    reports, entries = _ptxas_reports_and_ptx(tmp_path, "-DFLASHRNN_MMA_SPLIT_FORWARD=1",
                                              source_text=SPLIT_FORWARD_SOURCE)
    split = {d: [name for name in reports if "ForwardMmaClusterKernel" in name
                 and f"Li{d}ELi1E" in name] for d in (16, 32, 64)}
    # forward only and with residuals: the LSTM at every size, the GRU at 64
    assert {d: len(names) for d, names in split.items()} == {16: 2, 32: 2, 64: 4}, list(reports)
    single = [name for name in reports if "ForwardMmaKernel" in name]
    assert len(single) == 4 and all("GruCell" in name for name in single), single
    for name in sum(split.values(), []):
        assert "0 bytes spill stores, 0 bytes spill loads" in reports[name], reports[name]
    lstm = {d: [entries[name].count(MMA) for name in names if "LstmCell" in name]
            for d, names in split.items()}
    assert lstm == {16: [2, 2], 32: [4, 4], 64: [8, 8]}, lstm


def test_cluster_kernels_store_to_global_memory_only_between_the_barrier_halves(mma_build):
    """In the cluster tensor-core kernels the arrive of each step's cluster barrier is a release,
    which waits for every global memory operation the thread has issued before it. So within the
    steps every global store (the forward's outputs, the backward's gate cotangents; a reduction
    or read-modify-write of the initial states' cotangents would show as one too) must sit
    between an arrive and its wait; only the epilogue after the last wait stores elsewhere."""
    cluster = {name: body for name, body in mma_build[1].items() if "MmaClusterKernel" in name}
    # forwards (6 x with/without residuals) and backwards (7)
    assert len(cluster) == 19, list(cluster)
    for name, body in cluster.items():
        # (Not the "red.global" in cp.async's "shared.global".)
        events = re.findall(r"barrier\.cluster\.(arrive|wait)|(?<![\w.])((?:st|red|atom)\.global)",
                            body)
        last_wait = max(i for i, (barrier, _) in enumerate(events) if barrier == "wait")
        between_halves = False
        for i, (barrier, store) in enumerate(events[:last_wait]):
            if barrier:
                between_halves = barrier == "arrive"
            else:
                assert between_halves, f"{name}: {store} before a cluster barrier's arrive"
        assert any(store for _, store in events[:last_wait]), f"{name}: no store in the steps"


def test_cluster_forwards_of_16_ctas_push_h_in_16_byte_pieces(mma_build):
    """kStagedBroadcast: the cluster forwards of 16 CTAs (heads of 512 to 1024) send their h
    slice to the other CTAs as 16-byte remote stores after a block barrier; the 8-CTA forward
    (256) keeps one 2-byte remote store per CTA, hi and lo, for each thread."""
    forwards = {name: body for name, body in mma_build[1].items()
                if "ForwardMmaClusterKernel" in name}
    assert len(forwards) == 12, list(forwards)
    for name, body in forwards.items():
        wide, narrow = body.count("st.shared::cluster.v4.b32"), body.count("st.shared::cluster.u16")
        # In the prologue and in the step loop: at 256 one store per CTA, hi and lo; from 512
        # on (C - 1) x 2 x 8 x U / 8 pushes over the CTA's U x 8 threads, 3.75 a thread at 512,
        # 768 and 1024, so 4 unrolled.
        if "Li256ELi8E" in name:
            assert (wide, narrow) == (0, 2 * 8 * 2), (name, wide, narrow)
        else:
            assert (wide, narrow) == (2 * 4, 0), (name, wide, narrow)


ASYNC_PUSH_SOURCE = instantiation_source([
    ("Forward", "LstmCell", "__nv_bfloat16", (256, 8, 16, 256)),
    ("Forward", "LstmCell", "__nv_bfloat16", (768, 32, 16, 384)),
    ("Forward", "SlstmCell", "__half", (768, 32, 16, 384)),
    ("Forward", "ElmanCell", "__nv_bfloat16", (1024, 16, 8, 512))])


@pytest.mark.parametrize("rounded", [0, 1], ids=["hi+lo", "rounded"])
def test_async_push_replaces_the_step_cluster_barrier_by_arrival_barriers(tmp_path, rounded):
    """FLASHRNN_MMA_CLUSTER_ASYNC_PUSH: the 8- and 16-CTA cluster forwards stage h and push it
    by st.async onto the destination's mbarrier, thread 0 arms the step's barrier, and the step
    waits on it: within the steps no cluster barrier (only the prologue's two and one at the
    end), the staged pushes (half of them with FLASHRNN_MMA_ROUNDED_OPERAND), a word or two
    of spill at most (the Elman's at 1024, in the prologue)."""
    reports, entries = _ptxas_reports_and_ptx(tmp_path, "-DFLASHRNN_MMA_CLUSTER_ASYNC_PUSH=1",
                                              f"-DFLASHRNN_MMA_ROUNDED_OPERAND={rounded}",
                                              source_text=ASYNC_PUSH_SOURCE)
    forwards = {name: body for name, body in entries.items() if "ForwardMmaClusterKernel" in name}
    assert len(forwards) == 8, list(forwards)
    for name, body in forwards.items():
        events = re.findall(r"barrier\.cluster\.arrive|st\.async|mbarrier\.try_wait|"
                            r"mbarrier\.arrive\.expect_tx|st\.shared::cluster\.v4", body)
        # (C - 1) x parts x 8 x U / 8 pushes of 16 bytes over U x 8 threads, unrolled: with hi
        # and lo 1.75 a thread at 256 (2), 3.75 at 512, 768 and 1024 (4); with hi alone half.
        pushes = (2 if "Li256ELi8E" in name else 4) // (1 + rounded)
        # Prologue: the initial h's plain stores between two cluster barriers; steps: the
        # arming, the pushes, the wait; then one cluster barrier before the CTA leaves.
        assert events == (["barrier.cluster.arrive"] + ["st.shared::cluster.v4"] * pushes
                          + ["barrier.cluster.arrive", "mbarrier.arrive.expect_tx"]
                          + ["st.async"] * pushes
                          + ["mbarrier.try_wait", "barrier.cluster.arrive"]), (name, events)
        assert "fence.mbarrier_init.release.cluster" in body, name
        assert _spilled(reports[name]) <= 8, (name, reports[name])


def test_grid_kernels_meet_at_a_release_acquire_counter_and_stage_the_exchange_from_l2(mma_build):
    """The kernels of groups beyond a cluster (ForwardGridKernel, BackwardGridKernel): without
    spills; their barrier publishes with a release add and waits with acquire loads at GPU
    scope; the exchanged h or partials are staged by cp.async.cg (from L2, so that no SM can
    serve a line of an earlier step from its L1), all copies issued before one wait."""
    reports, entries = mma_build
    grid = [name for name in reports if "GridKernel" in name]
    # Forwards with and without residuals.
    assert len(grid) == 2 * 2 + 2, list(reports)
    for name in grid:
        assert "0 bytes spill stores, 0 bytes spill loads" in reports[name], reports[name]
    for name in grid:
        body = entries[name]
        assert "red.release.gpu.global.add.u32" in body, name
        assert "ld.acquire.gpu.global.u32" in body, name
        assert "cp.async.cg.shared.global" in body and "cp.async.wait_group 0" in body, name


SPLIT_BACKWARD_SOURCE = instantiation_source([
    ("Backward", cell, "__nv_bfloat16", (d, 1, 16, 512))
    for cell in ("LstmCell", "SlstmCell", "GruCell") for d in (32, 64)])


def test_split_backward_takes_bf16_heads_of_32_and_64_with_a_quarter_of_k_per_warp(tmp_path):
    """FLASHRNN_MMA_SPLIT_BACKWARD: bf16 heads of 32 and 64 run the split backward (four warps
    per unit tile, one element per thread) instead of the single-CTA tensor-core backward,
    without spills; each warp multiplies its quarter of the k-tiles over K = (gate, unit) as hi
    and lo, in the step loop and once after it (step 0's cotangent to the initial h): LSTM and
    sLSTM 2 + 2 k-tiles at 32, 4 + 4 at 64, the GRU 3 + 3 at 64; the GRU at 32 (6 k-tiles, no
    quarters) keeps the single-CTA kernel."""
    reports, entries = _ptxas_reports_and_ptx(tmp_path, "-DFLASHRNN_MMA_SPLIT_BACKWARD=1",
                                              source_text=SPLIT_BACKWARD_SOURCE)
    split = [name for name in reports if "BackwardMmaSplitKernel" in name]
    assert len(split) == 5, list(reports)
    single = [name for name in reports if "BackwardMmaKernel" in name]
    assert len(single) == 1 and "GruCell" in single[0] and "Li32E" in single[0], single
    for name in split:
        assert "0 bytes spill stores, 0 bytes spill loads" in reports[name], reports[name]
    counts = {re.search(r"INS_\d+(\w+?)CellE.*?Li(\d+)E", name).groups():
              entries[name].count(MMA) for name in split}
    assert counts == {("Lstm", "32"): 8, ("Lstm", "64"): 16, ("Slstm", "32"): 8,
                      ("Slstm", "64"): 16, ("Gru", "64"): 12}, counts


SPLIT_BACKWARD_DR_SOURCE = instantiation_source(
    [("Backward", cell, "__nv_bfloat16", tiling)
     for cell in ("LstmCell", "SlstmCell")
     for tiling in ((16, 1, 16, 256), (32, 1, 16, 512), (64, 1, 16, 512))]
    + [("Backward", cell, "__nv_bfloat16", (64, 1, 16, 512)) for cell in ("GruCell", "ElmanCell")])
MMA_K8 = "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32"
LDMATRIX_TRANS = "ldmatrix.sync.aligned.m8n8.x{}.trans.shared.b16"


def test_split_backward_dr_accumulates_dR_on_the_tensor_cores_without_spills(tmp_path):
    """FLASHRNN_MMA_SPLIT_BACKWARD_DR: the split backward accumulates dR itself, one
    mma.m16n8k8 per (m-tile of (gate, unit) rows, n-tile of 8 inputs) of its warp (the m-tiles
    round-robin over the warps: one each here) in the step loop and once after it (step 0), from
    fragments that ldmatrix.trans reads (one x2 for the m-tile, one x4 per four n-tiles, x2 at
    16), without spills; off, none of it."""
    (off_reports, off_ptx), (on_reports, on_ptx) = _off_and_on(
        tmp_path, "FLASHRNN_MMA_SPLIT_BACKWARD_DR", SPLIT_BACKWARD_DR_SOURCE,
        "-DFLASHRNN_MMA_SPLIT_BACKWARD=1", "-DFLASHRNN_MMA_SPLIT_BACKWARD_16=1")
    split = [name for name in on_reports if "BackwardMmaSplitKernel" in name]
    assert len(split) == 8, list(on_reports)
    for name in split:
        assert "0 bytes spill stores, 0 bytes spill loads" in on_reports[name], on_reports[name]
        assert MMA_K8 not in off_ptx[name] and ".trans" not in off_ptx[name], name
        d = int(re.search(r"Li(\d+)E", name).group(1))
        n_tiles = d // 8
        assert on_ptx[name].count(MMA_K8) == 2 * n_tiles, name
        x2 = on_ptx[name].count(LDMATRIX_TRANS.format(2))
        x4 = on_ptx[name].count(LDMATRIX_TRANS.format(4))
        assert (x2, x4) == ((2 * 2, 0) if d == 16 else (2, 2 * n_tiles // 4)), (name, x2, x4)


INPUTS_AHEAD_SOURCE = instantiation_source([
    ("Backward", "LstmCell", "__nv_bfloat16", (64, 1, 16, 512)),
    ("Backward", "SlstmCell", "__nv_bfloat16", (256, 4, 16, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (768, 32, 16, 384))])


def test_backward_inputs_two_ahead_unrolls_the_step_in_two_slots(tmp_path):
    """FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD: the split backward (64) and the 8-CTA cluster backward
    (256) run their step body twice per loop iteration, one per register slot of inputs (one
    more copy of the step's block or cluster barriers), and spill no more than without; the
    16-CTA cluster backward (768), which has no registers for a second slot, is unchanged."""
    (reports_one, entries_one), (reports_two, entries_two) = _off_and_on(
        tmp_path, "FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD", INPUTS_AHEAD_SOURCE,
        "-DFLASHRNN_MMA_SPLIT_BACKWARD=1")
    kernels = [name for name in entries_one
               if "BackwardMmaSplit" in name or "BackwardMmaCluster" in name]
    assert len(kernels) == 3, list(entries_one)

    def barriers(body):
        return len(re.findall(r"bar\.sync|barrier\.sync|barrier\.cluster\.arrive", body))

    for name in kernels:
        # Per step: the split backward's two block barriers, the cluster backward's block
        # barrier and cluster barrier.
        per_step = 0 if "Li768E" in name else 2
        assert barriers(entries_two[name]) - barriers(entries_one[name]) == per_step, name
        assert _spilled(reports_two[name]) <= _spilled(reports_one[name]), (
            name, reports_one[name], reports_two[name])


ROUNDED_OPERAND_SOURCE = instantiation_source([
    ("Forward", "LstmCell", "__nv_bfloat16", (64, 1, 16, 512)),
    ("Forward", "LstmCell", "__nv_bfloat16", (128, 1, 16, 256)),
    ("Forward", "LstmCell", "__nv_bfloat16", (256, 8, 16, 256)),
    ("Forward", "SlstmCell", "__half", (768, 32, 16, 384)),
    ("Backward", "LstmCell", "__nv_bfloat16", (64, 1, 16, 512)),
    ("Backward", "LstmCell", "__nv_bfloat16", (768, 32, 16, 384)),
    ("Forward", "LstmCell", "__nv_bfloat16", (1024, 64, 8, 512)),
    ("Backward", "GruCell", "__nv_bfloat16", (1024, 64, 8, 512))])


def test_rounded_operand_halves_the_mma_and_the_exchanged_h(tmp_path):
    """FLASHRNN_MMA_ROUNDED_OPERAND: every tensor-core kernel runs half the mma.sync (no lo
    part), the cluster forwards send half the remote stores of h (hi only), the group forward
    publishes and stages less, and none spills more than with hi + lo."""
    (reports_parts, entries_parts), (reports_rounded, entries_rounded) = _off_and_on(
        tmp_path, "FLASHRNN_MMA_ROUNDED_OPERAND", ROUNDED_OPERAND_SOURCE,
        "-DFLASHRNN_MMA_SPLIT_FORWARD=1", "-DFLASHRNN_MMA_SPLIT_BACKWARD=1")
    kernels = [name for name, body in entries_parts.items() if MMA in body]
    # The five forwards with and without residuals, the three backwards.
    assert len(kernels) == 2 * 5 + 3, list(entries_parts)

    def remote_stores(body):
        return len(re.findall(r"st\.shared::cluster\.(?:v4|u16)|st\.async", body))

    for name in kernels:
        parts, rounded = entries_parts[name], entries_rounded[name]
        assert parts.count(MMA) == 2 * rounded.count(MMA), name
        assert remote_stores(parts) == 2 * remote_stores(rounded), name
        if "ForwardMmaCluster" in name and "Li64E" not in name:
            assert remote_stores(rounded) > 0, name
        if "ForwardMmaGroup" in name:
            # The group forward publishes hi alone to its exchange and copies back only it.
            copies = [body.count("cp.async.cg.shared.global") for body in (parts, rounded)]
            assert copies[1] < copies[0], (name, copies)
            stores = [len(re.findall(r"st\.global\.(?:b16|u16)", body))
                      for body in (parts, rounded)]
            assert stores[1] < stores[0], (name, stores)
        assert _spilled(reports_rounded[name]) <= _spilled(reports_parts[name]), (
            name, reports_parts[name], reports_rounded[name])


def test_default_build_spills_only_where_registers_are_tightest(tmp_path):
    """The kernels as the default build compiles them (CMakeLists.txt's options: the split
    kernels, the rounded operand, the async push, the gates split at 64, the split backward at
    16): no spills but a few words in four, the LSTM's group forward at 2048 (its rounded
    operand's input-copy addresses, reloaded at the step's start: tests/test_sass_step_loop.py),
    the sLSTM's group forward at 1024, the GRU's group backward at 1536 and 2048 and the sLSTM's
    single-CTA backward at 128."""
    defaults = [f"-D{define}" for define in default_defines()]
    assert "-DFLASHRNN_MMA_ROUNDED_OPERAND=1" in defaults
    allowed = {"ForwardMmaGroupKernel LstmCell D=2048": 32,
               "ForwardMmaGroupKernel SlstmCell D=1024": 16,
               "BackwardMmaGroupKernel GruCell": 8,
               "BackwardMmaKernel SlstmCell D=128": 8}
    names = []
    for part, source_text in (("single", SOURCE), ("group", GROUP_SOURCE)):
        (tmp_path / part).mkdir()
        reports, _ = _ptxas_reports_and_ptx(tmp_path / part, *defaults, source_text=source_text)
        for name, report in reports.items():
            short = short_name(name)
            names.append(short)
            limit = next((v for k, v in allowed.items() if short.startswith(k)), 0)
            assert _spilled(report) <= limit, (short, report)
    # The default build's own kernels: the split forward and backward at 64 among them.
    assert "ForwardMmaClusterKernel LstmCell D=64 (outputs only)" in names
    assert "BackwardMmaSplitKernel SlstmCell D=64" in names
    assert all(any(name.startswith(k) for name in names) for k in allowed), names


@pytest.mark.parametrize("dr", (0, 1))
def test_ffi_handlers_compile_and_export_every_target(tmp_path, dr):
    """cuda_ffi/ffi/flashrnn_ffi.cu against the installed jaxlib's XLA FFI headers, with a
    one-kernel grid (CMake generates the real one) and FLASHRNN_MMA_SPLIT_BACKWARD_DR off and
    on: it compiles and exports the handler of each target module.cc registers."""
    (tmp_path / "compiled_grid.inc").write_text(
        "FLASHRNN_KERNEL(lstm, LstmCell, BF16, __nv_bfloat16, 64, 1, 16, 512)\n")
    obj = tmp_path / "ffi.o"
    result = subprocess.run(
        [NVCC, "-std=c++17", "-arch=sm_90a", "--expt-relaxed-constexpr",
         "-DFLASHRNN_MMA_SPLIT_BACKWARD=1", f"-DFLASHRNN_MMA_SPLIT_BACKWARD_DR={dr}",
         f"-I{jax.ffi.include_dir()}", f"-I{REPO / 'cuda_ffi'}", f"-I{tmp_path}", "-c",
         str(REPO / "cuda_ffi" / "ffi" / "flashrnn_ffi.cu"), "-o", str(obj)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True).stdout
    exported = set(re.findall(r" T (Flashrnn\w+)$", symbols, re.M))
    registered = set(re.findall(r"Capsule\((Flashrnn\w+)\)",
                                (REPO / "cuda_ffi" / "ffi" / "module.cc").read_text()))
    assert registered == {"FlashrnnForward", "FlashrnnForwardTrain", "FlashrnnBackward",
                          "FlashrnnBackwardDr"}
    assert exported == registered, exported
