"""The ``lax.scan`` backend: runs on every platform and is the oracle for the fused kernels.

Arithmetic is done in the compute dtype (float32, or float64 for float64 inputs): the
recurrent matmul at ``Precision.HIGHEST`` so GPUs do not silently drop to tf32, the pointwise
step, and the states carried between steps. Outputs are cast to the dtype of ``Wx``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from flashrnn_jax.cells import get_cell


@functools.partial(jax.jit, static_argnames=("function", "compute_dtype"))
def flashrnn_scan(
    Wx: jax.Array,
    R: jax.Array,
    b: jax.Array,
    states: jax.Array,
    *,
    function: str,
    compute_dtype,
) -> tuple[jax.Array, jax.Array]:
    """Run the recurrence with ``lax.scan``.

    Arguments are already validated and normalised by :func:`flashrnn_jax.flashrnn`:
    ``Wx`` ``[B, T, Gw, N, D]``, ``R`` ``[Gr, N, D, D]``, ``b`` ``[Gt, N, D]``, ``states``
    ``[S, B, N, D]``. Returns ``states_all`` ``[S, B, T, N, D]`` and ``last_states``
    ``[S, B, N, D]`` in the dtype of ``Wx``. Jitted, so eager calls compile once per shape.
    """
    cell = get_cell(function)
    out_dtype = Wx.dtype
    R = R.astype(compute_dtype)
    b = b.astype(compute_dtype)

    def step(carry, wx_t):
        rh = jnp.einsum(
            "gnoi,bni->bgno", R, carry[0], precision=jax.lax.Precision.HIGHEST
        )
        new = cell.step(wx_t.astype(compute_dtype), rh, b, carry)
        return new, tuple(s.astype(out_dtype) for s in new)

    init = tuple(states.astype(compute_dtype))
    last, per_step = jax.lax.scan(step, init, jnp.swapaxes(Wx, 0, 1))
    # per_step holds S arrays [T, B, N, D]; the contract is [S, B, T, N, D].
    states_all = jnp.swapaxes(jnp.stack(per_step), 1, 2)
    last_states = jnp.stack(last).astype(out_dtype)
    return states_all, last_states
