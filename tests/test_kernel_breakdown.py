"""benchmarks/kernel_breakdown.py: the kernels a call ran, from JAX's profiler, by kind."""

import json
import types

import jax
import jax.numpy as jnp
import pytest
from bench_runs import ROOT, run_parallel

import kernel_breakdown  # found through bench_runs, which puts benchmarks/ on sys.path


@pytest.mark.parametrize("kernel,hlo_op,kind", [
    ("void flashrnn::ForwardMmaClusterKernel<flashrnn::LstmCell, __nv_bfloat16, 64, 1, true>"
     "(flashrnn::ForwardArgs)", "custom-call.2", "fused forward"),
    ("_ZN8flashrnn22BackwardMmaSplitKernelINS_8LstmCellE13__nv_bfloat16EEvNS_12BackwardArgsE",
     "custom-call.7", "fused backward"),
    ("nvjet_tst_128x64_64x8_2x1_v_bz_TNN", "dot.4", "matmul"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", "", "matmul"),
    ("loop_convert_fusion", "loop_convert_fusion", "XLA fusion"),
    ("input_reduce_fusion_1", "input_reduce_fusion_1", "XLA fusion"),
    ("memcpy32_post", "", "copy"),
    ("copy_fusion", "copy.3", "copy"),
])
def test_kernels_are_sorted_into_kinds_by_name_and_op(kernel, hlo_op, kind):
    assert kernel_breakdown.kind_of(kernel, hlo_op) == kind


def _profile(planes):
    """A stand-in of jax.profiler.ProfileData: planes of lines of events."""
    def event(name, ns, hlo_op):
        return types.SimpleNamespace(name=name, duration_ns=ns, stats=[("hlo_op", hlo_op)])

    return types.SimpleNamespace(planes=[
        types.SimpleNamespace(name=plane, lines=[
            types.SimpleNamespace(name=line, events=[event(*e) for e in events])
            for line, events in lines.items()])
        for plane, lines in planes.items()])


def test_the_gpu_streams_are_read_and_summed_per_call():
    profile = _profile({
        "/host:CPU": {"python": [("PjitFunction(loss)", 9e6, "")]},
        "/device:GPU:0": {
            "Stream #13(Compute)": [("flashrnn::ForwardMmaClusterKernel", 2e6, "custom-call.1"),
                                    ("flashrnn::BackwardMmaSplitKernel", 3e6, "custom-call.2"),
                                    ("nvjet_tst", 1e6, "dot.1"), ("loop_add_fusion", 5e5, "add"),
                                    ("flashrnn::ForwardMmaClusterKernel", 2e6, "custom-call.1"),
                                    ("idle marker", 0, "")],
            "Stream #14(MemcpyD2D)": [("memcpy", 5e5, "")]},
    })
    source, events = kernel_breakdown.kernel_events(profile)
    assert source == "gpu" and len(events) == 6  # the host event and the empty one left out
    summary = kernel_breakdown.summarise(events, calls=2)
    assert summary["kinds_ms"] == {"fused forward": 2.0, "fused backward": 1.5, "matmul": 0.5,
                                   "XLA fusion": 0.25, "copy": 0.25}
    assert summary["kernel_ms"] == pytest.approx(4.5)
    # Longest first; a kernel launched twice a call counts both.
    first = summary["kernels"][0]
    assert (first["kind"], first["ms"], first["launches"]) == ("fused forward", 2.0, 1.0)
    assert [k["kind"] for k in summary["kernels"]][:2] == ["fused forward", "fused backward"]


def test_a_gpu_plane_without_stream_lines_is_read_whole_and_says_so():
    profile = _profile({"/device:GPU:0": {"Kernels": [("fusion_3", 1e6, "fusion.3")]}})
    source, events = kernel_breakdown.kernel_events(profile)
    assert source == "gpu, lines Kernels" and events == [("fusion_3", "fusion.3", 1e6)]


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="reads the XLA threads of a machine without an accelerator")
def test_a_traced_call_on_the_cpu_breaks_down_into_its_kinds():
    # The real profiler on the CPU: XLA's thunks of a scan-backend forward+backward.
    from flashrnn_jax import flashrnn
    from quick_bench import random_inputs

    data = random_inputs("lstm", jnp.float32, 2, 5, 1, 8, jax.random.key(0))
    loss = jax.jit(jax.grad(lambda *a: flashrnn(*a, function="lstm", backend="scan")[0].sum(),
                            argnums=(0, 1, 2)))
    traced = kernel_breakdown.traced_kernels(loss, data, calls=2)
    assert traced["source"] == "cpu" and traced["kernels"]
    assert sum(traced["kinds_ms"].values()) == pytest.approx(traced["kernel_ms"])
    assert traced["kernel_ms"] == pytest.approx(sum(k["ms"] for k in traced["kernels"]))
    assert traced["kinds_ms"]["fused forward"] == traced["kinds_ms"]["fused backward"] == 0


def test_the_script_writes_a_record_per_case_and_direction(tmp_path):
    out = tmp_path / "breakdown.json"
    code, stdout, stderr = run_parallel(ROOT / "benchmarks" / "kernel_breakdown.py", {"run": [
        "lstm:2x8", "--backend", "scan", "--dtype", "float32", "--batch", "2", "--steps", "4",
        "--calls", "2", "--json", str(out)]})["run"]
    assert code == 0, stderr
    records = json.loads(out.read_text())["records"]
    assert [(r["function"], r["N"], r["D"], r["direction"]) for r in records] == [
        ("lstm", 2, 8, "fwd"), ("lstm", 2, 8, "fwdbwd")]
    assert all(r["wall_ms"] > 0 and r["kernel_ms"] > 0 and r["pipelined_ms"] > 0
               for r in records)
    assert "lstm 2x8 | fwdbwd |" in stdout


def test_back_to_back_calls_are_timed_per_call(monkeypatch):
    """pipelined_ms: the time of the calls after the first synchronised one, divided by their
    number (a stand-in function of known cost, timed by a stand-in clock)."""
    clock = {"now": 0.0}
    monkeypatch.setattr(kernel_breakdown.time, "perf_counter", lambda: clock["now"])
    calls = []

    def fn(x):
        calls.append(x)
        clock["now"] += 0.004  # each call costs 4 ms of the stand-in clock
        return jnp.asarray(x)

    assert kernel_breakdown.pipelined_ms(fn, (1.0,), calls=5) == pytest.approx(4.0)
    assert len(calls) == 6  # one synchronised call first, then the five timed


def test_the_sm_clock_is_none_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(kernel_breakdown.shutil, "which", lambda name: None)
    assert kernel_breakdown.sm_clock_mhz() is None
