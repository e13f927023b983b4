"""Run the fused kernels once per configuration, for a profiler (ncu) to capture, or time them
over a few sequence lengths to split the per-step cost from the fixed cost of a call.

    ncu -k regex:Kernel python3 benchmarks/profile_case.py lstm:12x64 slstm:48x16 --grad
    python3 benchmarks/profile_case.py lstm:12x64 --time --steps 128 1024

Timing as in quick_bench.py: median of device-synchronised runs after warm-up, random data.
"""

import argparse

import jax
import jax.numpy as jnp
from quick_bench import median_ms, random_inputs

from flashrnn_jax import flashrnn


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
            data = random_inputs(function, jnp.dtype(args.dtype), args.batch, T, N, D,
                                 jax.random.key(0))
            for name, fn in (("fwd", forward), ("fwdbwd", grad))[: 2 if args.grad else 1]:
                if not args.time:
                    jax.block_until_ready(fn(*data))
                    continue
                ms = median_ms(fn, *data)
                print(f"{config} B={args.batch} T={T} {name}: {ms:.3f} ms, "
                      f"{1e3 * ms / T:.2f} us/step")


if __name__ == "__main__":
    main()
