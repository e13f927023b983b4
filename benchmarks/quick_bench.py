"""Quick benchmark for scripts/gpu_check.sh: fused vs scan backend, forward and forward+backward,
and the per-step cost of the sequence masks in the fused kernels (``impl="fused+masks"``: full
``seq_lengths`` and 1% random ``resets``, so that every step does the same work as without;
timed in alternation with the plain kernels on the same data, ``*_plain_ms``).

Median milliseconds of device-synchronised runs after warm-up, on random data, baseline (scan)
measured in the same run. Writes JSON records and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_jax import flashrnn, fused
from flashrnn_jax.cells import get_cell
from flashrnn_jax.constrint import hardware


def median_ms(fn, *args, warmup: int = 3, runs: int = 20) -> float:
    return interleaved_median_ms([fn], *args, warmup=warmup, runs=runs)[0]


def interleaved_median_ms(fns, *args, warmup: int = 3, runs: int = 20) -> list[float]:
    """Median ms of each function, timed in turn within every round, so that a slow drift of
    the clocks or a neighbour's load reaches all of them alike (what a cost ratio needs)."""
    for fn in fns:
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            fn_times.append(time.perf_counter() - start)
    return [1e3 * float(np.median(t)) for t in times]


def random_inputs(function, dtype, B, T, N, D, key):
    """Random ``Wx, R, b`` of a call (R scaled by 1/sqrt(D) so that the states stay bounded)."""
    cell = get_cell(function)
    k1, k2, k3 = jax.random.split(key, 3)
    Wx = jax.random.normal(k1, (B, T, cell.gates_wx, N, D), dtype)
    R = (jax.random.normal(k2, (cell.gates_r, N, D, D)) / D**0.5).astype(dtype)
    b = jax.random.normal(k3, (cell.gates_b, N, D)).astype(dtype)
    return Wx, R, b


def case_functions(function, backend, B, T, key, masks=False):
    """The jitted forward and forward+backward of one case (``masks``: full ``seq_lengths`` and
    1% random ``resets``)."""
    options = {}
    if masks:
        options = {"seq_lengths": jnp.full((B,), T, jnp.int32),
                   "resets": jax.random.uniform(key, (B, T)) < 0.01}

    def run(Wx, R, b):
        return flashrnn(Wx, R, b, function=function, backend=backend, **options)[0]

    def loss(Wx, R, b):
        return run(Wx, R, b).astype(jnp.float32).sum()

    return jax.jit(run), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def record(impl, function, dtype, B, T, N, D, **fields):
    return {"impl": impl, "function": function, "dtype": jnp.dtype(dtype).name,
            "B": B, "T": T, "N": N, "D": D, **fields}


def bench_case(function, backend, dtype, B, T, N, D, key):
    """The median times of one case; for the fused backend also the kernels it ran."""
    key, mask_key = jax.random.split(key)
    data = random_inputs(function, dtype, B, T, N, D, key)
    fwd, fwdbwd = case_functions(function, backend, B, T, mask_key)
    kernels = {} if backend != "fused" else {"kernels": fused.kernels_for(dtype, D, function)}
    return record(backend, function, dtype, B, T, N, D, **kernels,
                  fwd_ms=median_ms(fwd, *data), fwdbwd_ms=median_ms(fwdbwd, *data))


def bench_mask_cost(function, dtype, B, T, N, D, key):
    """The fused kernels with and without masks, timed in alternation on the same data."""
    key, mask_key = jax.random.split(key)
    data = random_inputs(function, dtype, B, T, N, D, key)
    plain = case_functions(function, "fused", B, T, mask_key)
    masked = case_functions(function, "fused", B, T, mask_key, masks=True)
    fields = {}
    for name, plain_fn, masked_fn in zip(("fwd", "fwdbwd"), plain, masked):
        # A cost of a few percent needs more rounds than a speed-up: the spread of single runs
        # is of that order.
        plain_ms, masked_ms = interleaved_median_ms([plain_fn, masked_fn], *data, runs=100)
        fields.update({f"{name}_ms": masked_ms, f"{name}_plain_ms": plain_ms,
                       f"{name}_cost_vs_plain": masked_ms / plain_ms - 1.0})
    return record("fused+masks", function, dtype, B, T, N, D, **fields)


def bench_weight_gradient_contraction(function, dtype, B, T, N, D, key):
    """The fused forward+backward with dR contracted as three bfloat16 products, as one
    float32 contraction and as one bfloat16 product (``fused.R_GRADIENT_CONTRACTION``; "auto"
    takes the third for large bfloat16 R, the second below, where the backward kernel does not
    accumulate dR itself), timed in alternation on the same data."""
    key, mask_key = jax.random.split(key)
    data = random_inputs(function, dtype, B, T, N, D, key)
    compiled = []
    for setting in ("bf16x3", "float32", "bf16"):
        _, fwdbwd = case_functions(function, "fused", B, T, mask_key)
        # The setting is read while the backward is traced.
        with mock.patch.object(fused, "R_GRADIENT_CONTRACTION", setting):
            compiled.append(fwdbwd.lower(*data).compile())
    bf16x3_ms, float32_ms, bf16_ms = interleaved_median_ms(compiled, *data, runs=50)
    return record("fused dR bf16x3", function, dtype, B, T, N, D, fwdbwd_ms=bf16x3_ms,
                  fwdbwd_dr_float32_ms=float32_ms, dr_float32_over_bf16x3=float32_ms / bf16x3_ms,
                  fwdbwd_dr_bf16_ms=bf16_ms)


def bench_group_sizes(function, dtype, B, T, N, D, key):
    """For a head beyond a cluster: the fused kernels on the preferred (largest) group of CTAs
    and on the smallest compiled beside it (chosen as for a device with fewer SMs than the
    largest group needs); none where the head has no such pair or neither direction runs a
    group kernel on it (16-bit heads of 768 run the tensor-core cluster kernels whatever the
    tiling)."""
    # The installed build's tilings, preferred first.
    tilings = sorted(fused.compiled_grid().get(
        (function, fused._XLA_DTYPE_NAMES[np.dtype(dtype)], D), ()), key=hardware.preference_key)
    kernels = fused.kernels_for(dtype, D, function)
    if len(tilings) < 2 or kernels is None or "fma_grid_group" not in kernels:
        return []
    preferred = bench_case(function, "fused", dtype, B, T, N, D, key)
    limits = dataclasses.replace(fused.device_limits(), sm_count=tilings[0].cluster - 1)
    with fused.tilings_as_for(limits):
        smallest = bench_case(function, "fused", dtype, B, T, N, D, key)
    return [{**rec, "impl": f"fused@C{tiling.cluster}", "cluster": tiling.cluster}
            for rec, tiling in ((preferred, tilings[0]), (smallest, tilings[-1]))]


def heads_by_size(text: str) -> tuple[int, int]:
    """``"12x64"`` -> ``(12, 64)``."""
    try:
        N, D = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected heads x head size such as 12x64, got {text!r}") from None
    return N, D


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1024)
    # The rows of issue 5's table: 48 x 16 and 12 x 64 (the split kernels), 3 x 256 and 1 x 768
    # (the tensor-core kernels on 8- and 16-CTA clusters, R partly in shared memory at 768).
    parser.add_argument("--shapes", nargs="+", type=heads_by_size,
                        default=[(48, 16), (12, 64), (3, 256), (1, 768)],
                        help="heads x head size of the cases, e.g. 12x64 (default: 48x16 12x64 "
                             "3x256 1x768); the mask cost is measured at those of 64 and 256")
    parser.add_argument("--no-masks", action="store_true", help="leave out the mask cost")
    parser.add_argument("--no-groups", action="store_true",
                        help="leave out the two group sizes of heads beyond a cluster (float32, "
                             "where the group kernels run)")
    parser.add_argument("--no-contraction", action="store_true",
                        help="leave out the dR contraction's two settings (LSTM)")
    parser.add_argument("--no-scan", action="store_true",
                        help="leave out the scan backend (an A/B of two builds, whose baseline is "
                             "the other build)")
    parser.add_argument("--functions", nargs="+", choices=("lstm", "slstm"),
                        default=["lstm", "slstm"])
    args = parser.parse_args()
    key = jax.random.key(0)
    records = []
    backends = ("fused",) if args.no_scan else ("fused", "scan")
    for function in args.functions:
        for N, D in args.shapes:
            for backend in backends:
                records.append(bench_case(function, backend, jnp.bfloat16, args.batch,
                                          args.steps, N, D, key))
    group_records = [] if args.no_groups else [
        rec for function in args.functions for N, D in args.shapes
        for rec in bench_group_sizes(function, jnp.float32, args.batch, args.steps, N, D, key)]
    mask_records = [] if args.no_masks else [
        bench_mask_cost("lstm", jnp.bfloat16, args.batch, args.steps, N, D, key)
        for N, D in args.shapes if D in (64, 256)]
    contraction_records = [] if args.no_contraction else [
        bench_weight_gradient_contraction("lstm", jnp.bfloat16, args.batch, args.steps, N, D, key)
        for N, D in args.shapes]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": jax.devices()[0].device_kind, "jax": jax.__version__,
                       "tensor_core": fused.tensor_core_kernels(),
                       "records": records + group_records + mask_records
                       + contraction_records}, f, indent=1)
    print(f"{'function':8} {'N x D':>8} {'impl':>6} {'fwd ms':>9} {'fwd+bwd ms':>11} "
          f"{'speed-up':>9}")
    for case in range(0, len(records), len(backends)):
        scan_rec = records[case + 1] if len(backends) == 2 else None
        for r in records[case:case + len(backends)]:
            speedup = ("" if scan_rec is None
                       else f"{scan_rec['fwdbwd_ms'] / r['fwdbwd_ms']:8.1f}x")
            print(f"{r['function']:8} {r['N']:>3}x{r['D']:<4} {r['impl']:>6} "
                  f"{r['fwd_ms']:9.3f} {r['fwdbwd_ms']:11.3f} {speedup}")

    for rec in group_records:
        print(f"{rec['function']:8} {rec['N']:>3}x{rec['D']:<4} {rec['impl']:>6} "
              f"{rec['fwd_ms']:9.3f} {rec['fwdbwd_ms']:11.3f} ({rec['dtype']})")

    print(f"{'dR':8} {'N x D':>8} {'bf16x3 fwd+bwd ms':>18} {'float32 fwd+bwd ms':>19} "
          f"{'bf16 fwd+bwd ms':>16}")
    for rec in contraction_records:
        print(f"{rec['function']:8} {rec['N']:>3}x{rec['D']:<4} {rec['fwdbwd_ms']:18.3f} "
              f"{rec['fwdbwd_dr_float32_ms']:19.3f} {rec['fwdbwd_dr_bf16_ms']:16.3f}")

    print(f"{'masks':8} {'N x D':>8} {'fwd ms':>9} {'cost':>7} {'fwd+bwd ms':>11} {'cost':>7}")
    for masked in mask_records:
        print(f"{masked['function']:8} {masked['N']:>3}x{masked['D']:<4} "
              f"{masked['fwd_ms']:9.3f} {100 * masked['fwd_cost_vs_plain']:6.1f}% "
              f"{masked['fwdbwd_ms']:11.3f} {100 * masked['fwdbwd_cost_vs_plain']:6.1f}%")


if __name__ == "__main__":
    main()

