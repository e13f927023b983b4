"""How much accuracy the hi + lo operand of the tensor-core kernels buys, in float64 on the CPU.

The kernels multiply R by h (forward) and by the gate cotangents (backward) on the tensor
cores, whose operands are 16-bit: each float32 operand goes in as hi + lo, two 16-bit values
(~16 mantissa bits, two mma per tile). CMake ``FLASHRNN_MMA_ROUNDED_OPERAND`` rounds it to one
value instead. This study asks whether DESIGN §4's rule still holds then: a fast path's error
against float64 at most twice the scan backend's at the same dtype, plus a floor.

For each cell it runs the equations (the cell registry's steps) in float64 twice on the same
16-bit inputs: exactly, and with the recurrent operand rounded to the 16-bit dtype in the
forward's R·h and in the backward's Rᵀ·dg. Both results are then rounded to the 16-bit dtype
as the kernels' outputs and gradients are. The scan's error is modelled by the rounding of the
exact result alone (its float32 arithmetic is far smaller): a lower bound of the scan's error,
so the bound used here is the tighter one. Output: per case the rounded variant's error over
the bound (the rule holds below 1). ``--rounded-dr`` rounds dR's operands (the gate cotangents
and h) too, as a backward kernel that accumulated dR on the tensor cores would.

    python benchmarks/precision_study.py --out benchmarks/results/precision_study.json
    python benchmarks/precision_study.py --rounded-dr \
        --out benchmarks/results/precision_study_rounded_dr.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_jax.cells import get_cell

# (function, B, T, N, D): the GPU tests' shapes (B=17, T=37) at the head sizes of each kind of
# tensor-core kernel, and longer sequences, where the rounding could accumulate.
CASES = [
    ("lstm", 17, 37, 2, 64), ("lstm", 8, 37, 1, 256), ("lstm", 8, 37, 1, 768),
    ("slstm", 17, 37, 2, 64), ("gru", 17, 37, 2, 64), ("elman", 17, 37, 2, 64),
    ("lstm", 3, 1024, 2, 64), ("slstm", 3, 1024, 2, 64), ("elman", 3, 1024, 2, 64),
]


def rounded(x, dtype):
    return jnp.asarray(jnp.asarray(x, dtype), jnp.float64)


def recurrent_product(round_to, rounded_dr: bool = False):
    """R·h with h rounded to ``round_to`` (None: exact), and its vjp with the cotangent rounded
    so in Rᵀ·dg; dR from the exact operands (the fused backward forms dR outside the kernel from
    float32 states and gate cotangents), or with ``rounded_dr`` from dg and h both rounded to
    ``round_to`` (dR accumulated on the tensor cores inside the split backward kernel,
    FLASHRNN_MMA_SPLIT_BACKWARD_DR, and the "bf16" contraction of fused.R_GRADIENT_CONTRACTION)."""

    def operand(x):
        return x if round_to is None else rounded(x, round_to)

    @jax.custom_vjp
    def product(R, h):
        return jnp.einsum("gnoi,bni->bgno", R, operand(h))

    def forward(R, h):
        return product(R, h), (R, h)

    def backward(residuals, dg):
        R, h = residuals
        dr_operands = (operand(dg), operand(h)) if rounded_dr else (dg, h)
        return (jnp.einsum("bgno,bni->gnoi", *dr_operands),
                jnp.einsum("gnoi,bgno->bni", R, operand(dg)))

    product.defvjp(forward, backward)
    return product


def run(function, Wx, R, b, states, product):
    cell = get_cell(function)

    def step(carry, wx_t):
        new = cell.step(wx_t, product(R, carry[0]), b, carry)
        return new, jnp.stack(new)

    last, per_step = jax.lax.scan(step, tuple(states), jnp.swapaxes(Wx, 0, 1))
    return jnp.moveaxis(per_step, 0, 2), jnp.stack(last)


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def study(function, B, T, N, D, dtype, rng, operand_dtype=None, rounded_dr: bool = False):
    """Error over the rule's bound of the outputs and gradients with the recurrent operand
    rounded to ``operand_dtype`` (``dtype``, the kernels' case, by default), and with
    ``rounded_dr`` the operands of dR too. Needs jax_enable_x64 (main sets it; the tests'
    conftest does)."""
    cell = get_cell(function)
    S = cell.num_states
    Wx = rounded(rng.normal(size=(B, T, cell.gates_wx, N, D)), dtype)
    R = rounded(rng.normal(size=(cell.gates_r, N, D, D)) / np.sqrt(D), dtype)
    b = rounded(rng.normal(size=(cell.gates_b, N, D)), dtype)
    states = rng.normal(size=(S, B, N, D))
    if function == "slstm":
        states[2] = 1.0 + rng.uniform(size=(B, N, D))  # n >= 1, as the tests draw it
    states = rounded(states, dtype)
    w_all = jnp.asarray(rng.normal(size=(S, B, T, N, D)))
    w_last = jnp.asarray(rng.normal(size=(S, B, N, D)))
    floor = max(0.1 * float(jnp.finfo(dtype).eps), 1e-5)

    def results(round_to):
        product = recurrent_product(round_to, rounded_dr)

        def loss(Wx, R, b, states):
            states_all, last = run(function, Wx, R, b, states, product)
            return jnp.sum(states_all * w_all) + jnp.sum(last * w_last), states_all

        grads, states_all = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
            Wx, R, b, states)
        return (states_all, *grads)

    exact, approx = results(None), results(operand_dtype or dtype)
    ratios = {}
    for name, e, a in zip(("states_all", "dWx", "dR", "db", "dstates"), exact, approx):
        bound = 2 * rel_err(rounded(e, dtype), e) + floor
        ratios[name] = rel_err(rounded(a, dtype), e) / bound
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounded-dr", action="store_true",
                        help="also round dR's operands (dR inside the backward kernel)")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(args.seed)
    records = []
    for dtype in args.dtypes:
        for function, B, T, N, D in CASES:
            ratios = study(function, B, T, N, D, jnp.dtype(dtype), rng,
                           rounded_dr=args.rounded_dr)
            records.append({"function": function, "dtype": dtype, "B": B, "T": T, "N": N, "D": D,
                            "error_over_bound": ratios})
            print(f"{dtype:8} {function:6} {N}x{D:<4} B{B:<3} T{T:<5} " + "  ".join(
                f"{k} {v:.2f}" for k, v in ratios.items()), flush=True)
    worst = max(v for r in records for v in r["error_over_bound"].values())
    print(f"worst error over the rule's bound: {worst:.2f} (the rule holds below 1)")
    if args.out:
        args.out.write_text(json.dumps({"seed": args.seed, "rounded_dr": args.rounded_dr,
                                        "worst": worst, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
