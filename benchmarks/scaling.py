"""Weak scaling of ``flashrnn`` over several devices (issue 8): the work per device stays fixed
while the number of devices n grows, split by the library's own sharding (``mesh=``,
``batch_axis=``, ``head_axis=``: :mod:`flashrnn_jax.sharding`).

Per device: B=16 batch rows, 12 heads of D=64, T=1024, bfloat16 (``--dtype``). Two series, each
for n in 1, 2, 4, ... up to ``jax.device_count()`` (or ``--devices``):

* ``batch``  mesh n x 1 (axes ``batch`` x ``heads``): global B = 16·n, N = 12. The backward sums
             dR and db over the devices once (an all-reduce); the forward communicates nothing.
* ``heads``  mesh 1 x n: B = 16, global N = 12·n. No communication, forward or backward.

For every point it records the median milliseconds of the forward pass and of the
forward+backward pass (gradients of ``sum(h)`` w.r.t. Wx, R and b), after warm-up and
device-synchronised (``quick_bench.median_ms``), on random data placed with the sharding:

* ``throughput``     global B·T·N·D / fwd+bwd seconds: element-steps per second (one element-step
                     is one hidden unit of one batch row advanced by one time step, forward and
                     backward).
* ``efficiency``     per-device throughput at n over the throughput at n=1 of the same series
                     (fwd+bwd; 1.0 at n=1 and for perfect weak scaling, since the work per
                     device is the same: it equals fwdbwd_ms(n=1) / fwdbwd_ms(n)).
* ``fwd_efficiency`` the same for the forward pass alone.
* ``device_block``   the [B, T, N, D] block of ``h`` each device holds, read from the sharded
                     result, and ``devices_used`` the number of devices holding one: evidence
                     that the call was split as the series says.
* ``check_max_rel_err`` (``--check``): for h, dWx, dR and db, max |sharded - one device| /
                     max |one device| against the same call on the same data unsplit on one
                     device; the run exits with status 1 if any exceeds the tolerance of the
                     dtype (``CHECK_TOLERANCE``).

The issue's target, fwd+bwd efficiency >= 0.90 at 2 devices, is printed under the table and
recorded under ``"target"``.

Output: ``benchmarks/results/scaling_<device kind>_x<largest n>.json`` (``--out``: another path,
or a folder for that file name), rewritten after every point: {"gpu", "platform", "gpu_count"
(the largest n), "jax", "tensor_core", "settings", "per_device", "target", "records": [...]}.

Usage::

    python benchmarks/scaling.py                          # lstm, fused kernels, all GPUs
    python benchmarks/scaling.py --functions lstm slstm --devices 1 2 8 --check
    python benchmarks/scaling.py --backend scan --out /tmp/scaling.json
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python benchmarks/scaling.py --tiny --backend scan --check --out /tmp/scaling.json

On the multi-GPU machine ``scripts/multi_gpu_check.sh`` builds the kernels, runs the sharded GPU
tests and this benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from flashrnn_jax import FUNCTIONS, flashrnn, fused
from flashrnn_jax.sharding import MeshPlan

try:  # run as a script: benchmarks/ is sys.path[0]
    from quick_bench import median_ms, random_inputs
    from suite import RESULTS, device_file_name, write_json
except ImportError:  # imported from the repository root as benchmarks.scaling
    from benchmarks.quick_bench import median_ms, random_inputs
    from benchmarks.suite import RESULTS, device_file_name, write_json

SERIES = ("batch", "heads")
BACKENDS = ("fused", "scan")
DTYPES = ("bfloat16", "float16", "float32")
MESH_AXES = ("batch", "heads")
TARGET = {"gpu_count": 2, "min_efficiency": 0.90}
# --check: largest max |sharded - one device| / max |one device| accepted. The split runs the
# same per-row arithmetic; only the sums of dR and db over the devices change order and, in
# 16-bit dtypes, round the per-device partial sums once more.
CHECK_TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3, "float32": 1e-5}


@dataclasses.dataclass(frozen=True)
class Block:
    """The sizes each device works on."""

    B: int
    T: int
    N: int
    D: int


PER_DEVICE = Block(B=16, T=1024, N=12, D=64)
# --tiny: like suite.py's --tiny (B <= 2, T <= 8, hidden 32), per device.
TINY_PER_DEVICE = Block(B=2, T=8, N=2, D=16)


def mesh_shape(series: str, n: int) -> tuple[int, int]:
    """(devices along ``batch``, devices along ``heads``) of a series' point."""
    return (n, 1) if series == "batch" else (1, n)


def default_devices(count: int) -> list[int]:
    """1, 2, 4, ... up to ``count``."""
    return [2**k for k in range(count.bit_length())]


# Cached: the n=1 points of the two series are the same call, compiled once.
@functools.cache
def split_functions(function: str, backend: str, **split):
    """The jitted forward (``h``) and forward+backward (gradients of ``sum(h)`` w.r.t. Wx, R, b)
    of one call; ``split`` holds flashrnn's mesh arguments, empty for the unsplit call."""

    def forward(Wx, R, b):
        return flashrnn(Wx, R, b, function=function, backend=backend, **split)[0][0]

    def loss(Wx, R, b):
        return forward(Wx, R, b).astype(jnp.float32).sum()

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def max_rel_err(got: jax.Array, want: jax.Array) -> float:
    # In NumPy: gathered to the host once, where jnp would compile every op per shape.
    got, want = (np.asarray(x).astype(np.float64) for x in (got, want))
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def check_split(fwd, fwdbwd, one_device_fns, data, sharded) -> dict[str, float]:
    """The split call's outputs against the same call unsplit on one device, same data."""
    want = (one_device_fns[0](*data), *one_device_fns[1](*data))
    got = (fwd(*sharded), *fwdbwd(*sharded))
    return {name: max_rel_err(g, w) for name, g, w in zip(("h", "dWx", "dR", "db"), got, want)}


def measure_point(function: str, series: str, n: int, args, per_device: Block, key) -> dict:
    """One record (without the efficiencies, which need the series' n=1 point)."""
    n_batch, n_heads = mesh_shape(series, n)
    B, T, N, D = per_device.B * n_batch, per_device.T, per_device.N * n_heads, per_device.D
    mesh = jax.make_mesh((n_batch, n_heads), MESH_AXES, devices=jax.devices()[:n])
    layout = MeshPlan(mesh, *MESH_AXES)
    data = random_inputs(function, jnp.dtype(args.dtype), B, T, N, D, key)
    sharded = tuple(jax.device_put(x, NamedSharding(mesh, spec))
                    for x, spec in zip(data, layout.in_specs()))
    fwd, fwdbwd = split_functions(function, args.backend, mesh=mesh, batch_axis=MESH_AXES[0],
                                  head_axis=MESH_AXES[1])
    check = None
    if args.check:
        check = check_split(fwd, fwdbwd, split_functions(function, args.backend), data, sharded)
    del data  # frees the unsplit copy on device 0 before the timing
    h = fwd(*sharded)
    fwd_ms = median_ms(fwd, *sharded, warmup=args.warmup, runs=args.runs)
    fwdbwd_ms = median_ms(fwdbwd, *sharded, warmup=args.warmup, runs=args.runs)
    return {"impl": args.backend, "function": function, "dtype": args.dtype, "series": series,
            "gpu_count": n, "mesh": dict(zip(MESH_AXES, (n_batch, n_heads))),
            "B": B, "T": T, "N": N, "D": D,
            "device_block": list(h.addressable_shards[0].data.shape),
            "devices_used": len(h.sharding.device_set),
            "fwd_ms": fwd_ms, "fwdbwd_ms": fwdbwd_ms,
            "throughput": B * T * N * D / (fwdbwd_ms / 1e3),
            "check_max_rel_err": check}


def add_efficiencies(record: dict, baseline: dict) -> None:
    """Per-device throughput over the n=1 throughput; the work per device is equal, so this is
    the ratio of the times."""
    n = record["gpu_count"]
    record["efficiency"] = record["throughput"] / n / baseline["throughput"]
    record["fwd_efficiency"] = baseline["fwd_ms"] / record["fwd_ms"]


def target_results(records: list[dict]) -> list[dict]:
    return [{"function": r["function"], "series": r["series"], "efficiency": r["efficiency"],
             "met": r["efficiency"] >= TARGET["min_efficiency"]}
            for r in records if r["gpu_count"] == TARGET["gpu_count"]]


def check_failures(records: list[dict], dtype: str) -> list[str]:
    tolerance = CHECK_TOLERANCE[dtype]
    return [f"{r['function']} {r['series']} n={r['gpu_count']} {name}: {err:.3g} > {tolerance}"
            for r in records if r["check_max_rel_err"]
            for name, err in r["check_max_rel_err"].items() if not err <= tolerance]


def print_table(results: dict) -> None:
    print(f"{'function':8} {'series':6} {'n':>3} {'B':>5} {'N':>5} {'fwd ms':>9} "
          f"{'fwd+bwd ms':>11} {'fwd eff':>8} {'fwd+bwd eff':>12}")
    for r in results["records"]:
        print(f"{r['function']:8} {r['series']:6} {r['gpu_count']:>3} {r['B']:>5} {r['N']:>5} "
              f"{r['fwd_ms']:9.3f} {r['fwdbwd_ms']:11.3f} {r['fwd_efficiency']:8.3f} "
              f"{r['efficiency']:12.3f}")
    target = results["target"]
    head = (f"fwd+bwd efficiency at {target['gpu_count']} devices >= "
            f"{target['min_efficiency']:.2f} (issue 8):")
    if not target["results"]:
        print(f"{head} not measured (no point with {target['gpu_count']} devices)")
    for t in target["results"]:
        print(f"{head} {t['function']} {t['series']} {t['efficiency']:.3f} "
              f"{'met' if t['met'] else 'NOT met'}")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=["lstm"])
    parser.add_argument("--backend", choices=BACKENDS, default="fused")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--series", nargs="+", choices=SERIES, default=list(SERIES))
    parser.add_argument("--devices", nargs="+", type=int, metavar="N",
                        help="device counts to measure; must include 1 (the baseline of the "
                             "efficiency); default 1, 2, 4, ... up to jax.device_count()")
    parser.add_argument("--tiny", action="store_true",
                        help=f"CPU smoke test: per device {TINY_PER_DEVICE} instead of "
                             f"{PER_DEVICE}")
    parser.add_argument("--check", action="store_true",
                        help="compare every split call with the same call on one device")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per median")
    parser.add_argument("--out", type=pathlib.Path,
                        help="JSON path, or an existing folder for the default file name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    available = jax.device_count()
    if args.devices is None:
        args.devices = default_devices(available)
    bad = [n for n in args.devices if not 1 <= n <= available]
    if bad:
        parser.error(f"--devices {bad}: each count must lie in 1..{available} "
                     f"(jax.device_count() on {jax.devices()[0].platform})")
    if len(set(args.devices)) != len(args.devices):
        parser.error(f"--devices {args.devices} lists a count twice")
    if 1 not in args.devices:
        parser.error(f"--devices {args.devices} must include 1: the efficiency of each point "
                     "is relative to the one-device point of its series")
    args.devices.sort()
    for name in ("warmup", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    args.per_device = TINY_PER_DEVICE if args.tiny else PER_DEVICE
    if args.backend == "fused":
        for function in args.functions:
            reason = fused.unsupported_reason(jnp.dtype(args.dtype), args.per_device.D, function)
            if reason is not None:
                parser.error(f"--backend fused cannot run {function} {args.dtype} "
                             f"D={args.per_device.D}: {reason}; --backend scan runs everywhere")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    per_device = args.per_device
    device = jax.devices()[0]
    out = args.out or RESULTS
    if out.is_dir():
        out = out / f"scaling_{device_file_name(device)}_x{args.devices[-1]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "gpu": device.device_kind, "platform": device.platform, "gpu_count": args.devices[-1],
        "jax": jax.__version__, "tensor_core": fused.tensor_core_kernels(),
        "settings": {"functions": args.functions, "backend": args.backend, "dtype": args.dtype,
                     "series": args.series, "devices": args.devices, "check": args.check,
                     "warmup": args.warmup, "runs": args.runs, "seed": args.seed},
        "per_device": dataclasses.asdict(per_device),
        "target": {**TARGET, "results": []}, "records": [],
    }
    key = jax.random.key(args.seed)
    for function in args.functions:
        for series in args.series:
            for n in args.devices:
                key, point_key = jax.random.split(key)  # fresh random data for every point
                print(f"{function} {series} n={n} ...", file=sys.stderr, flush=True)
                record = measure_point(function, series, n, args, per_device, point_key)
                if n == 1:  # the devices are sorted: n=1 comes first
                    baseline = record
                add_efficiencies(record, baseline)
                results["records"].append(record)
                write_json(out, results)
    results["target"]["results"] = target_results(results["records"])
    write_json(out, results)
    print(f"wrote {out}: {len(results['records'])} records")
    print_table(results)
    failures = check_failures(results["records"], args.dtype)
    if failures:
        sys.exit("--check: split results differ from one device:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
