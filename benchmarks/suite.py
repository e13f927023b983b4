"""Speed suite (DESIGN §9): the paper's sweeps on one device, with baselines in the same run.

For every configuration it records the median milliseconds of the forward pass and of the
forward+backward pass (gradients of ``sum(h)`` w.r.t. all inputs and weights), after warm-up,
device-synchronised with ``jax.block_until_ready``, on fresh random data (never zeros), plus the
peak device memory of the forward+backward step. Implementations:

* ``fused``      ``flashrnn(..., backend="fused")``: the CUDA kernels; recorded as skipped, with
                 the library's reason, where they cannot run (CPU, kernels not built, ...), and
                 otherwise with ``kernels``: the kernels its forward and backward ran
                 (``fused.kernel_paths``).
* ``scan``       ``flashrnn(..., backend="scan")``: the ``lax.scan`` backend.
* ``flax_lstm``  ``flax.linen.RNN(flax.linen.OptimizedLSTMCell(N*D))``: dense (one head of size
                 N*D), input features = N*D, lstm only. Note it includes the input projection
                 ``W x`` that flashrnn leaves to the caller.
* ``cudnn_lstm`` ``jax.experimental.rnn.lstm``: cuDNN, float32 whatever ``--dtypes`` says, dense,
                 input features = N*D, lstm only, GPU only (skipped elsewhere with a reason).

Sweeps (``--sweep``):

* ``heads``  B=16, T=1024, hidden 768, (N, D) in (48,16) (24,32) (12,64) (6,128) (3,256) (1,768)
* ``batch``  B in 1..256 (powers of two), 12 x 64, T=1024 (issue 5: throughput grows with B)
* ``length`` T in 1..16384 (1, 16, 256, 1024, 4096, 16384), 12 x 64, B=16 (issue 5: time per
             step flat in T)
* ``size``   one head of D in 256..2560 (256, 512, 768, 1024, 1536, 2048, 2560), B=16, T=1024
             (issue 5: single heads up to what fits on chip; where the kernels cannot hold a
             head the fused record is skipped with the library's reason)
* ``all``    the four

Peak memory (``peak_mem_mb``, MiB): JAX cannot reset the allocator's peak between cases, so the
process-wide ``peak_bytes_in_use`` alone says nothing about one case. The suite takes the larger
of two lower bounds of the case's true peak: (a) XLA's buffer assignment for the compiled
forward+backward executable (arguments + outputs + temporaries - aliased; the fused kernels
allocate nothing outside XLA, so this covers them), and (b) where ``peak_bytes_in_use`` rose
during the case, that peak minus the ``bytes_in_use`` before the case's data was created (then
exact, allocator fragmentation included). ``None`` where the device reports no
``memory_stats()`` (CPU).

Output: ``benchmarks/results/<device kind>.json`` (or ``--out``) and, next to it,
``<stem>_<sweep>.png`` per sweep (x: head config / batch / length; y: median ms; one line per
implementation; panels forward and forward+backward; one row per function). The JSON is
rewritten after every case, so an interrupted or ``--max-minutes``-limited run keeps what it
measured (``"complete": false``).

Usage::

    python benchmarks/suite.py                                   # everything, bf16, on the GPU
    python benchmarks/suite.py --sweep heads --functions lstm slstm --dtypes bfloat16 float32
    python benchmarks/suite.py --max-minutes 25 --out benchmarks/results/H100.json
    python benchmarks/suite.py --tiny --runs 3 --out /tmp/smoke.json     # CPU smoke test
    python benchmarks/suite.py --scale 0.25                     # B, T and hidden x 1/4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import time
from fractions import Fraction

import jax
import jax.numpy as jnp

from flashrnn_jax import FUNCTIONS, FusedBackendUnavailableError, flashrnn, fused
from flashrnn_jax.cells import get_cell

try:  # run as a script: benchmarks/ is sys.path[0]
    from quick_bench import median_ms
except ImportError:  # run as `python -m benchmarks.suite` or imported from the repository root
    from benchmarks.quick_bench import median_ms

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
IMPLS = ("fused", "scan", "flax_lstm", "cudnn_lstm")
SWEEPS = ("heads", "batch", "length", "size")

# The paper's grid (FlashRNN, arXiv 2412.07752, §5).
HIDDEN = 768
HEAD_GRID = ((48, 16), (24, 32), (12, 64), (6, 128), (3, 256), (1, 768))
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTHS = (1, 16, 256, 1024, 4096, 16384)
SINGLE_HEADS = (256, 512, 768, 1024, 1536, 2048, 2560)
BASE_B, BASE_T, BASE_N = 16, 1024, 12

# --tiny: B <= 2, T <= 8, hidden 32, keeping every sweep's points (those that collapse onto the
# same size are measured once).
TINY_SCALE = (Fraction(1, 128), Fraction(1, 2048), Fraction(1, 24))

MEM_METHOD = (
    "MiB; max of XLA's buffer assignment of the compiled fwd+bwd executable (arguments + "
    "outputs + temporaries - aliased) and, when the process peak_bytes_in_use rose during the "
    "case, that peak minus bytes_in_use before the case; None without memory_stats (CPU)"
)


@dataclasses.dataclass(frozen=True)
class Case:
    sweep: str
    impl: str
    function: str
    dtype: str  # the dtype actually run (cudnn_lstm is always float32)
    B: int
    T: int
    N: int
    D: int

    @property
    def measure_key(self):
        # The sweeps share points (12x64, B=16, T=1024): measured once, recorded per sweep.
        return (self.impl, self.function, self.dtype, self.B, self.T, self.N, self.D)


# ---------------------------------------------------------------------------------------------
# Sweep grids


def _scaled(x: int, s: Fraction) -> int:
    return max(1, round(x * s))


def _heads_for(hidden: int, n: int) -> int:
    """The largest head count <= n that divides hidden: keeps the grid's order when scaled."""
    return next(k for k in range(min(n, hidden), 0, -1) if hidden % k == 0)


def sweep_points(sweep: str, scale: tuple[Fraction, Fraction, Fraction]) -> list[tuple]:
    """The (B, T, N, D) points of a sweep, scaled and deduplicated, in sweep order."""
    sb, st, sh = scale
    hidden = _scaled(HIDDEN, sh)
    n12 = _heads_for(hidden, BASE_N)
    if sweep == "heads":
        points = [(_scaled(BASE_B, sb), _scaled(BASE_T, st), _heads_for(hidden, n), 0)
                  for n, _ in HEAD_GRID]
    elif sweep == "batch":
        points = [(_scaled(b, sb), _scaled(BASE_T, st), n12, 0) for b in BATCHES]
    elif sweep == "length":
        points = [(_scaled(BASE_B, sb), _scaled(t, st), n12, 0) for t in LENGTHS]
    elif sweep == "size":
        return list(dict.fromkeys((_scaled(BASE_B, sb), _scaled(BASE_T, st), 1, _scaled(d, sh))
                                  for d in SINGLE_HEADS))
    else:
        raise ValueError(f"unknown sweep {sweep!r}")
    points = [(B, T, N, hidden // N) for B, T, N, _ in points]
    return list(dict.fromkeys(points))


def plan(sweeps, functions, dtypes, impls, scale) -> list[Case]:
    cases = []
    for sweep in sweeps:
        for function in functions:
            for dtype in dtypes:
                for B, T, N, D in sweep_points(sweep, scale):
                    for impl in impls:
                        if impl in ("flax_lstm", "cudnn_lstm") and function != "lstm":
                            continue  # dense LSTM baselines exist for the LSTM only
                        run_dtype = "float32" if impl == "cudnn_lstm" else dtype
                        cases.append(Case(sweep, impl, function, run_dtype, B, T, N, D))
    return list(dict.fromkeys(cases))  # cudnn_lstm repeats once per requested dtype


# ---------------------------------------------------------------------------------------------
# Implementations: each builds (fwd, fwdbwd, args) for one case from a fresh key.


def _loss(y):
    return y.astype(jnp.float32).sum()


def build_flashrnn(case: Case, key, backend: str):
    cell = get_cell(case.function)
    dtype = jnp.dtype(case.dtype)
    k1, k2, k3 = jax.random.split(key, 3)
    N, D = case.N, case.D
    Wx = jax.random.normal(k1, (case.B, case.T, cell.gates_wx, N, D), dtype)
    R = (jax.random.normal(k2, (cell.gates_r, N, D, D)) / math.sqrt(D)).astype(dtype)
    b = jax.random.normal(k3, (cell.gates_b, N, D)).astype(dtype)

    def fwd(Wx, R, b):
        return flashrnn(Wx, R, b, function=case.function, backend=backend)[0][0]

    fwdbwd = jax.grad(lambda *a: _loss(fwd(*a)), argnums=(0, 1, 2))
    return fwd, fwdbwd, (Wx, R, b)


def build_flax_lstm(case: Case, key):
    import flax.linen as nn

    hidden = case.N * case.D
    dtype = jnp.dtype(case.dtype)
    # Mixed precision as Flax users run it: computation in `dtype`, float32 parameters.
    model = nn.RNN(nn.OptimizedLSTMCell(hidden, dtype=dtype, param_dtype=jnp.float32))
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (case.B, case.T, hidden), dtype)
    params = model.init(k2, x)

    def fwd(params, x):
        return model.apply(params, x)

    fwdbwd = jax.grad(lambda *a: _loss(fwd(*a)), argnums=(0, 1))
    return fwd, fwdbwd, (params, x)


def build_cudnn_lstm(case: Case, key):
    from jax.experimental import rnn

    hidden = case.N * case.D
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (case.B, case.T, hidden), jnp.float32)
    h0 = jax.random.normal(k2, (1, case.B, hidden), jnp.float32)
    c0 = jax.random.normal(k3, (1, case.B, hidden), jnp.float32)
    weights = rnn.init_lstm_weight(k4, hidden, hidden, 1, False)
    seq_lengths = jnp.full((case.B,), case.T, jnp.int32)

    def fwd(x, h0, c0, weights):
        return rnn.lstm(x, h0, c0, weights, seq_lengths, input_size=hidden, hidden_size=hidden,
                        num_layers=1, dropout=0.0, bidirectional=False)[0]

    fwdbwd = jax.grad(lambda *a: _loss(fwd(*a)), argnums=(0, 1, 2, 3))
    return fwd, fwdbwd, (x, h0, c0, weights)


def skip_reason(impl: str, device) -> str | None:
    """Why `impl` cannot run on `device` at all, known before building anything."""
    if impl == "cudnn_lstm" and device.platform != "gpu":
        return f"cuDNN needs a CUDA GPU; device is {device.platform}"
    return None


def build(case: Case, key):
    if case.impl in ("fused", "scan"):
        return build_flashrnn(case, key, case.impl)
    if case.impl == "flax_lstm":
        return build_flax_lstm(case, key)
    if case.impl == "cudnn_lstm":
        return build_cudnn_lstm(case, key)
    raise ValueError(f"unknown impl {case.impl!r}")


# ---------------------------------------------------------------------------------------------
# Measuring


def _mib(n: int) -> float:
    return n / 2**20


def peak_mem_mb(compiled, device, in_use_before: int | None, peak_before: int | None):
    """The case's peak memory, as described in the module docstring; None without stats."""
    stats = device.memory_stats()
    if not stats or in_use_before is None:
        return None
    bounds = []
    analysis = compiled.memory_analysis()
    if analysis is not None:
        bounds.append(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                      + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    peak = stats.get("peak_bytes_in_use")
    if peak is not None and peak_before is not None and peak > peak_before:
        bounds.append(peak - in_use_before)  # this case set the process peak: exact
    return round(_mib(max(bounds)), 2) if bounds else None


def measure(case: Case, key, device, warmup: int, runs: int) -> dict:
    """fwd_ms, fwdbwd_ms, peak_mem_mb and skipped for one case (never raises); where the fused
    kernels run the forward but refuse to differentiate (float16 heads of 2048: no backward
    kernel), the forward's time with fwdbwd_ms None and the reason in fwdbwd_skipped."""
    out = {"fwd_ms": None, "fwdbwd_ms": None, "peak_mem_mb": None, "skipped": None}
    reason = skip_reason(case.impl, device)
    if reason:
        out["skipped"] = reason
        return out
    stats = device.memory_stats() or {}
    in_use_before = stats.get("bytes_in_use")
    peak_before = stats.get("peak_bytes_in_use")
    try:
        fwd, fwdbwd, args = build(case, key)
        # Compiled ahead of time: the fused backend says here when it cannot run the call, and
        # the executable's memory analysis is needed for peak_mem_mb.
        fwd_c = jax.jit(fwd).lower(*args).compile()
        out["fwd_ms"] = median_ms(fwd_c, *args, warmup=warmup, runs=runs)
        try:
            fwdbwd_c = jax.jit(fwdbwd).lower(*args).compile()
        except FusedBackendUnavailableError as e:
            out["fwdbwd_skipped"] = f"fused unavailable: {e}"
        else:
            out["fwdbwd_ms"] = median_ms(fwdbwd_c, *args, warmup=warmup, runs=runs)
            out["peak_mem_mb"] = peak_mem_mb(fwdbwd_c, device, in_use_before, peak_before)
        if case.impl == "fused":
            # The kernels this case ran (forward, backward): fused.kernel_paths names them.
            out["kernels"] = fused.kernels_for(jnp.dtype(case.dtype), case.D, case.function)
    except FusedBackendUnavailableError as e:
        out.update(fwd_ms=None, fwdbwd_ms=None, skipped=f"fused unavailable: {e}")
    except Exception as e:  # noqa: BLE001 -- e.g. out of memory at B=256: record, go on
        out.update(fwd_ms=None, fwdbwd_ms=None, skipped=f"{type(e).__name__}: {e}"[:500])
    return out


# ---------------------------------------------------------------------------------------------
# Plots


def plot(results: dict, stem: pathlib.Path) -> list[pathlib.Path]:
    """One PNG per sweep: rows = functions, columns = forward / forward+backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    records = [r for r in results["records"] if r["skipped"] is None]
    for sweep in SWEEPS:
        recs = [r for r in records if r["sweep"] == sweep]
        if not recs:
            continue
        functions = [f for f in FUNCTIONS if any(r["function"] == f for r in recs)]
        fig, axes = plt.subplots(len(functions), 2, figsize=(11, 3.6 * len(functions)),
                                 squeeze=False)
        for row, function in zip(axes, functions):
            frecs = [r for r in recs if r["function"] == function]
            for ax, key, title in zip(row, ("fwd_ms", "fwdbwd_ms"),
                                      ("forward", "forward+backward")):
                lines = sorted({(r["impl"], r["dtype"]) for r in frecs},
                               key=lambda x: (IMPLS.index(x[0]), x[1]))
                if sweep in ("heads", "size"):
                    configs = sorted({(r["N"], r["D"]) for r in frecs}, key=lambda c: c[1])
                    labels = [f"{n}x{d}" for n, d in configs]
                    for impl, dtype in lines:
                        pts = [(configs.index((r["N"], r["D"])), r[key]) for r in frecs
                               if (r["impl"], r["dtype"]) == (impl, dtype)
                               and r[key] is not None]
                        pts.sort()
                        if pts:
                            ax.plot(*zip(*pts), marker="o", label=f"{impl} {dtype}")
                    ax.set_xticks(range(len(configs)), labels)
                    ax.set_xlabel("heads x head size")
                else:
                    axis = "B" if sweep == "batch" else "T"
                    for impl, dtype in lines:
                        pts = sorted((r[axis], r[key]) for r in frecs
                                     if (r["impl"], r["dtype"]) == (impl, dtype)
                                     and r[key] is not None)
                        if pts:
                            ax.plot(*zip(*pts), marker="o", label=f"{impl} {dtype}")
                    ax.set_xscale("log", base=2)
                    ax.set_xlabel("batch size" if sweep == "batch" else "sequence length")
                values = [r[key] for r in frecs if r[key] is not None]
                # Baselines differ from the kernels by orders of magnitude: log-y keeps both
                # readable.
                if max(values) / min(values) > 10:
                    ax.set_yscale("log")
                ax.set_ylabel("median ms")
                fixed = {"heads": "B={B}, T={T}", "batch": "{N}x{D}, T={T}",
                         "length": "{N}x{D}, B={B}", "size": "B={B}, T={T}"}[sweep].format(
                             **frecs[0])
                ax.set_title(f"{function} {title}, {fixed}")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
        fig.suptitle(f"{results['gpu']}, jax {results['jax']}: {sweep} sweep")
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{sweep}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# CLI


def parse_scale(text: str) -> tuple[Fraction, Fraction, Fraction]:
    """'S' (B, T and hidden times S) or 'SB,ST,SH'; each a float or a fraction like 1/24."""
    parts = [Fraction(p).limit_denominator(10**6) for p in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(0 < p <= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"--scale wants S or SB,ST,SH in (0, 1], got {text!r}")
    return tuple(parts)


def device_file_name(device) -> str:
    """The device kind as a file name: ``NVIDIA H200`` -> ``NVIDIA_H200``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", device.device_kind).strip("_")


def default_out(device) -> pathlib.Path:
    return RESULTS / (device_file_name(device) + ".json")


def write_json(path: pathlib.Path, results: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)  # atomic: a run killed mid-write leaves the previous JSON


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", choices=(*SWEEPS, "all"), default="all")
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=list(FUNCTIONS))
    parser.add_argument("--dtypes", nargs="+", choices=("bfloat16", "float16", "float32"),
                        default=["bfloat16"])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--scale", type=parse_scale, default=parse_scale("1"),
                        help="shrink sizes: S, or SB,ST,SH for batch, length, hidden")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke test: B<=2, T<=8, hidden 32 (overrides --scale)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per median")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop starting new cases after this long; the JSON is still written")
    parser.add_argument("--out", type=pathlib.Path, help="JSON path (plots go next to it)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tqdm import tqdm

    device = jax.devices()[0]
    scale = TINY_SCALE if args.tiny else args.scale
    sweeps = SWEEPS if args.sweep == "all" else (args.sweep,)
    cases = plan(sweeps, args.functions, args.dtypes, args.impls, scale)
    out = args.out or default_out(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "gpu": device.device_kind, "platform": device.platform, "jax": jax.__version__,
        "tensor_core": fused.tensor_core_kernels(),
        "settings": {"sweeps": list(sweeps), "functions": args.functions, "dtypes": args.dtypes,
                     "impls": args.impls, "scale": [str(s) for s in scale],
                     "warmup": args.warmup, "runs": args.runs},
        "peak_mem_method": MEM_METHOD, "complete": False, "stopped": None, "records": [],
    }

    start = time.monotonic()
    key = jax.random.key(args.seed)
    measured = {}
    bar = tqdm(cases, unit="case", dynamic_ncols=True)
    try:
        for i, case in enumerate(bar):
            if args.max_minutes is not None and time.monotonic() - start > 60 * args.max_minutes:
                results["stopped"] = (f"--max-minutes {args.max_minutes} reached after "
                                      f"{i} of {len(cases)} cases")
                break
            bar.set_description(f"{case.sweep} {case.impl} {case.function} {case.dtype} "
                                f"B{case.B} T{case.T} {case.N}x{case.D}")
            if case.measure_key not in measured:
                # Fresh random data for every measured case.
                measured[case.measure_key] = measure(case, jax.random.fold_in(key, i), device,
                                                     args.warmup, args.runs)
            results["records"].append({**dataclasses.asdict(case), **measured[case.measure_key]})
            write_json(out, results)
        else:
            results["complete"] = True
    except KeyboardInterrupt:
        results["stopped"] = "interrupted"
    finally:
        bar.close()
        write_json(out, results)
    if not args.no_plots:
        for path in plot(results, out.with_suffix("")):
            print(f"wrote {path}")
    print(f"wrote {out}: {len(results['records'])} records"
          + (f" ({results['stopped']})" if results["stopped"] else ""))


if __name__ == "__main__":
    main()
