"""A small run of every fused kernel (forward, forward with residuals, backward) for every cell,
for compute-sanitizer: single-CTA heads (bf16, D=16: the split forward for the LSTM and sLSTM,
the single-CTA tensor-core forward for the GRU and Elman, the FMA backward; D=32: the split
forward and backward for the LSTM and sLSTM, the single-CTA tensor-core kernels for the GRU and
Elman; D=64: the split forward and backward for every cell), a cluster head (f32, D=128: two CTAs per head, the
FMA kernels), a bf16 head of 256 (the cluster tensor-core forward and backward where they are
built), a bf16 head of 512 and two of 768 (the tensor-core kernels on 16-CTA clusters; at 768
the LSTM, sLSTM and GRU with part of R in shared memory) and two f32 heads of 768 (groups of
CTAs beyond a cluster, exchanging through global memory; the Elman on a 16-CTA cluster), and a
bf16 head of 2048 last (every cell on the tensor-core group kernels, whose warps reuse their
part of the staged h for their partial sums); each
plain, and with every sequence option and the recurrent
gradient clip (lengths 0, 3 and 2 of 3; a reset; reverse).

SANITIZE_HEAD_SIZES (e.g. "16 32 64", through gpu_check.sh) replaces these heads by the ones it
names, each in bf16 and f16."""

import os
import time

import jax
import jax.numpy as jnp

from flashrnn_jax import flashrnn, fused
from flashrnn_jax.cells import CELLS

SIZES = [(jnp.bfloat16, 16), (jnp.bfloat16, 32), (jnp.bfloat16, 64), (jnp.float32, 128),
         (jnp.bfloat16, 256), (jnp.bfloat16, 512), (jnp.bfloat16, 768), (jnp.float32, 768),
         (jnp.bfloat16, 2048)]
if os.environ.get("SANITIZE_HEAD_SIZES"):
    SIZES = [(dtype, int(d)) for d in os.environ["SANITIZE_HEAD_SIZES"].split()
             for dtype in (jnp.bfloat16, jnp.float16)]

# Heads outermost and the largest last, so that a sanitizer cut by its timeout has checked
# every smaller head, as the printed cases show.
for dtype, D in SIZES:
    for function, cell in CELLS.items():
        keys = jax.random.split(jax.random.key(0), 3)
        # Two heads of 768: in f32 two groups of 128 CTAs, one launch each (the second reuses
        # the first's exchange buffers and counters).
        B, T, N = 3, 3, 2 if D == 768 else 1
        R = (jax.random.normal(keys[1], (cell.gates_r, N, D, D)) / D**0.5).astype(dtype)
        b = jax.random.normal(keys[2], (cell.gates_b, N, D))
        Wx = jax.random.normal(keys[0], (B, T, cell.gates_wx, N, D), dtype)
        options = {
            "plain": {},
            "options": dict(seq_lengths=jnp.array([0, 3, 2], jnp.int32),
                            resets=jnp.array([[0, 1, 0]] * B, bool), reverse=True,
                            gradient_recurrent_clipval=0.5),
        }
        # A forward without a backward kernel (float16 heads of 2048): the forward only.
        forward_only = fused.kernels_for(dtype, D, function)[1] == fused.NO_KERNEL
        for name, opts in options.items():
            def loss(Wx, R, b):
                states_all, last = flashrnn(Wx, R, b, function=function, backend="fused",
                                            **opts)
                return states_all.astype(jnp.float32).sum() + last.astype(jnp.float32).sum()

            start = time.perf_counter()
            if forward_only:
                value = loss(Wx, R, b)
            else:
                value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(Wx, R, b)
                jax.block_until_ready(grads)
            # The seconds under the sanitizer tell the next run which cases its timeout must fit.
            print(f"{function} {jnp.dtype(dtype).name} D={D} {name}: loss {float(value):.4f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
