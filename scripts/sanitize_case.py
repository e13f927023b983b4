"""A small run of every fused kernel (forward, forward with residuals, backward) for every cell,
for compute-sanitizer: one single-CTA head size (bf16, D=16) and one thread-block-cluster head
size (f32, D=128: two CTAs per head)."""

import jax
import jax.numpy as jnp

from flashrnn_jax import flashrnn
from flashrnn_jax.cells import CELLS

for function, cell in CELLS.items():
    for dtype, D in ((jnp.bfloat16, 16), (jnp.float32, 128)):
        keys = jax.random.split(jax.random.key(0), 3)
        B, T, N = 2, 3, 1
        Wx = jax.random.normal(keys[0], (B, T, cell.gates_wx, N, D), dtype)
        R = (jax.random.normal(keys[1], (cell.gates_r, N, D, D)) / D**0.5).astype(dtype)
        b = jax.random.normal(keys[2], (cell.gates_b, N, D))

        def loss(Wx, R, b):
            states_all, last = flashrnn(Wx, R, b, function=function, backend="fused")
            return states_all.astype(jnp.float32).sum() + last.astype(jnp.float32).sum()

        value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(Wx, R, b)
        jax.block_until_ready(grads)
        print(f"{function} {jnp.dtype(dtype).name} D={D}: loss {float(value):.4f}")
