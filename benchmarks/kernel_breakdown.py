"""Where the time of a call goes: every kernel the device ran during a few forwards and a few
forwards+backwards of one case, from JAX's profiler (``jax.profiler.start_trace``, read back with
``jax.profiler.ProfileData``), per call and summed by kind — the fused kernels, XLA's matmuls,
XLA's other fusions, copies — beside the call's wall-clock median measured outside the trace.

    python3 benchmarks/kernel_breakdown.py lstm:12x64 slstm:12x64 lstm:1x768 --json out.json

The forward+backward of the fused backend is its forward with residuals, the backward kernel
and the XLA work around them (dR, db, the cast of dWx, h_prev): this tells them apart, which a
wall-clock time cannot. Kernel times are the device's own (no profiler replay), so they add up
to at most the wall time; the rest ("gap") is launch latency and host work between kernels. On
a machine without a GPU the events are XLA's CPU thunks (threads that overlap: their sum may
exceed the wall time), which is what the tests use.

Beside the wall time of device-synchronised calls, each record has the time per call of calls
issued back to back with one synchronisation at the end (``pipelined_ms``: the host's work of a
call overlaps the device's of the one before, so what is left above the kernels is the device
idling between them), and the SM clock ``nvidia-smi`` reports right after the timed calls
(``sm_clock_mhz``, None without it): two readings for a gap larger than a call's fixed cost.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import jax
from quick_bench import case_functions, median_ms, random_inputs

KINDS = ("fused forward", "fused backward", "matmul", "XLA fusion", "copy")

# cuBLAS's and CUTLASS's GEMM kernels (nvjet: cuBLAS 12.9+ on Hopper), XLA's Triton GEMMs.
_MATMUL = re.compile(r"gemm|nvjet|cutlass|xmma|cublas|wgmma|triton_.*dot|\bdot", re.IGNORECASE)
_COPY = re.compile(r"memcpy|memset|copy", re.IGNORECASE)


def kind_of(kernel: str, hlo_op: str = "") -> str:
    """The kind of a kernel, from its name and the HLO op it ran for (either may be empty)."""
    if "flashrnn" in kernel:
        return "fused backward" if "Backward" in kernel else "fused forward"
    if _MATMUL.search(kernel) or _MATMUL.search(hlo_op):
        return "matmul"
    if _COPY.search(kernel) or _COPY.search(hlo_op):
        return "copy"
    return "XLA fusion"


def kernel_events(profile) -> tuple[str, list[tuple[str, str, float]]]:
    """``(source, [(kernel, hlo_op, duration_ns), ...])``: the kernels of the first GPU plane's
    streams (its every line where none is named "Stream ...", the source then naming them), or
    without a GPU plane the XLA thunks of the host's XLA threads."""
    gpu = [p for p in profile.planes if p.name.startswith("/device:GPU")]
    if gpu:
        lines = [line for line in gpu[0].lines if line.name.startswith("Stream")]
        source = "gpu"
        if not lines:
            lines = list(gpu[0].lines)
            source = "gpu, lines " + ", ".join(line.name for line in lines)
    else:
        host = [p for p in profile.planes if p.name == "/host:CPU"]
        lines = [line for p in host for line in p.lines if line.name.startswith("tf_XLA")]
        source = "cpu"
    events = []
    for line in lines:
        for event in line.events:
            if event.duration_ns <= 0:
                continue
            stats = dict(event.stats)
            events.append((event.name, str(stats.get("hlo_op", "")), float(event.duration_ns)))
    return source, events


def summarise(events, calls: int) -> dict:
    """Per call: the total kernel time and that of each kind (ms), and every (kernel, HLO op)
    with its time and launches, longest first."""
    per_kernel = collections.defaultdict(lambda: [0.0, 0])
    for kernel, hlo_op, duration_ns in events:
        entry = per_kernel[(kernel, hlo_op)]
        entry[0] += duration_ns
        entry[1] += 1
    kinds = dict.fromkeys(KINDS, 0.0)
    kernels = []
    for (kernel, hlo_op), (total_ns, count) in per_kernel.items():
        ms, kind = total_ns / calls / 1e6, kind_of(kernel, hlo_op)
        kinds[kind] += ms
        kernels.append({"kernel": kernel, "hlo_op": hlo_op, "kind": kind, "ms": ms,
                        "launches": count / calls})
    kernels.sort(key=lambda k: -k["ms"])
    return {"kernel_ms": sum(kinds.values()), "kinds_ms": kinds, "kernels": kernels}


def traced_kernels(fn, args, calls: int = 5, warmup: int = 3) -> dict:
    """Warm ``fn`` up (``warmup`` calls; none where the caller just timed it), trace ``calls``
    device-synchronised calls of it, and summarise what the device ran during them."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        finally:
            jax.profiler.stop_trace()
        files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        if len(files) != 1:
            raise RuntimeError(f"expected one xplane.pb under {trace_dir}, found {files}")
        source, events = kernel_events(jax.profiler.ProfileData.from_file(files[0]))
    if not events:
        raise RuntimeError("the trace holds no kernel events: nothing to break down")
    return {"source": source, **summarise(events, calls)}


def pipelined_ms(fn, args, calls: int = 20) -> float:
    """ms per call of ``calls`` calls of ``fn`` issued back to back, synchronised once at the end
    (after one synchronised call, so that none waits on earlier work)."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    outs = [fn(*args) for _ in range(calls)]
    jax.block_until_ready(outs)
    return 1e3 * (time.perf_counter() - start) / calls


def sm_clock_mhz() -> float | None:
    """The first GPU's SM clock now, as nvidia-smi reports it (None without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits"]
    result = subprocess.run(query, capture_output=True, text=True, timeout=30)
    lines = result.stdout.split()
    return float(lines[0]) if result.returncode == 0 and lines else None


def breakdown_case(function, backend, dtype, B, T, N, D, key, calls: int = 5) -> list[dict]:
    """The forward's and forward+backward's records of one case."""
    key, mask_key = jax.random.split(key)
    data = random_inputs(function, dtype, B, T, N, D, key)
    records = []
    for direction, fn in zip(("fwd", "fwdbwd"), case_functions(function, backend, B, T, mask_key)):
        wall_ms = median_ms(fn, *data)  # which warms fn up for the trace too
        clock = sm_clock_mhz()
        back_to_back = pipelined_ms(fn, data)
        traced = traced_kernels(fn, data, calls, warmup=0)
        records.append({"impl": backend, "function": function, "dtype": jax.numpy.dtype(dtype).name,
                        "B": B, "T": T, "N": N, "D": D, "direction": direction,
                        "wall_ms": wall_ms, "gap_ms": wall_ms - traced["kernel_ms"],
                        "pipelined_ms": back_to_back, "sm_clock_mhz": clock, **traced})
    return records


def table(records) -> str:
    head = ["case", "dir", "wall ms", "back to back", "kernels", *KINDS, "gap", "SM MHz"]
    rows = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in records:
        clock = "—" if r.get("sm_clock_mhz") is None else f"{r['sm_clock_mhz']:.0f}"
        rows.append(" | ".join([f"{r['function']} {r['N']}x{r['D']}", r["direction"],
                                f"{r['wall_ms']:.3f}", f"{r['pipelined_ms']:.3f}",
                                f"{r['kernel_ms']:.3f}",
                                *(f"{r['kinds_ms'][k]:.3f}" for k in KINDS),
                                f"{r['gap_ms']:.3f}", clock]))
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="function:NxD, e.g. lstm:12x64")
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=5, help="calls traced per direction")
    parser.add_argument("--top", type=int, default=8, help="kernels printed per record")
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args()
    records = []
    for config in args.configs:
        function, shape = config.split(":")
        N, D = map(int, shape.split("x"))
        records += breakdown_case(function, args.backend, jax.numpy.dtype(args.dtype),
                                  args.batch, args.steps, N, D, jax.random.key(0), args.calls)
    for r in records:
        print(f"{r['function']} {r['N']}x{r['D']} {r['direction']} ({r['source']}):")
        for k in r["kernels"][:args.top]:
            print(f"  {k['ms']:8.3f} ms  x{k['launches']:<5g} {k['kind']:<14} "
                  f"{k['hlo_op'][:40]:<40} {k['kernel'][:90]}")
    print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": jax.devices()[0].device_kind, "jax": jax.__version__,
                       "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
