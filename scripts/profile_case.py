"""Run the fused kernels once per configuration, for a profiler (ncu) to capture, or time them
over a few sequence lengths to split the per-step cost from the fixed cost of a call.

    ncu -k regex:Kernel python3 scripts/profile_case.py lstm:12x64 slstm:48x16 --grad
    python3 scripts/profile_case.py lstm:12x64 --time --steps 128 1024
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_jax import flashrnn
from flashrnn_jax.cells import get_cell


def inputs(function, B, T, N, D, dtype):
    cell = get_cell(function)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    Wx = jax.random.normal(k1, (B, T, cell.gates_wx, N, D), dtype)
    R = (jax.random.normal(k2, (cell.gates_r, N, D, D)) / D**0.5).astype(dtype)
    b = jax.random.normal(k3, (cell.gates_b, N, D)).astype(dtype)
    return Wx, R, b


def step_functions(function):
    def forward(Wx, R, b):
        return flashrnn(Wx, R, b, function=function, backend="fused")[0]

    def loss(Wx, R, b):
        return forward(Wx, R, b).astype(jnp.float32).sum()

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="+", help="function:NxD")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[1024])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--grad", action="store_true", help="also run forward+backward")
    parser.add_argument("--time", action="store_true", help="print median ms of 20 runs")
    args = parser.parse_args()
    for config in args.configs:
        function, shape = config.split(":")
        N, D = map(int, shape.split("x"))
        forward, grad = step_functions(function)
        for T in args.steps:
            data = inputs(function, args.batch, T, N, D, jnp.dtype(args.dtype))
            for name, fn in (("fwd", forward), ("fwdbwd", grad))[: 2 if args.grad else 1]:
                jax.block_until_ready(fn(*data))
                if not args.time:
                    continue
                times = []
                for _ in range(20):
                    start = time.perf_counter()
                    jax.block_until_ready(fn(*data))
                    times.append(time.perf_counter() - start)
                ms = 1e3 * float(np.median(times))
                print(f"{config} B={args.batch} T={T} {name}: {ms:.3f} ms, "
                      f"{1e3 * ms / T:.2f} us/step")


if __name__ == "__main__":
    main()
