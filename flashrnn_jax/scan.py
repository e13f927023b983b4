"""The ``lax.scan`` backend: runs on every platform and is the oracle for the fused kernels.

Arithmetic is done in the compute dtype (float32, or float64 for float64 inputs): the
recurrent matmul at ``Precision.HIGHEST`` so GPUs do not silently drop to tf32, the pointwise
step, and the states carried between steps. Outputs are cast to the dtype of ``Wx``.

Sequence options (validated by :func:`flashrnn_jax.flashrnn`):

- ``seq_lengths`` ``[B]``: step ``s`` of row ``b`` is masked when ``s >= seq_lengths[b]``: the
  carried states stay unchanged and the output there is zero.
- ``resets`` ``[B, T]``: where ``resets[b, t]``, the states of row ``b`` are set back to the
  initial states just before input ``t`` is read.
- ``reverse``: every row is read from its last valid input back to input 0 (a per-row index
  reversal of the first ``seq_lengths[b]`` positions); ``resets`` and the outputs stay in
  input time order, so position ``t`` holds the states after reading input ``t``.
- ``gradient_recurrent_cut`` / ``gradient_recurrent_clipval``: the cotangent of ``h_prev``
  coming back through ``R @ h_prev`` is dropped / clipped to ``[-v, v]`` at every step; the
  forward values are unchanged and the other paths of ``h_prev`` (GRU's ``z·h_prev``) keep
  their gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from flashrnn_jax.cells import get_cell


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def clip_gradient(x: jax.Array, clipval: float) -> jax.Array:
    """The identity, whose backward pass clips the cotangent to ``[-clipval, clipval]``."""
    return x


def _clip_gradient_fwd(x, clipval):
    return x, None


def _clip_gradient_bwd(clipval, _, g):
    return (jnp.clip(g, -clipval, clipval),)


clip_gradient.defvjp(_clip_gradient_fwd, _clip_gradient_bwd)


def reversal_indices(seq_lengths: jax.Array | None, B: int, T: int) -> jax.Array:
    """``[B, T]`` time indices that reverse the first ``seq_lengths[b]`` positions of row ``b``
    and keep the others in place (an involution); all rows reversed when ``seq_lengths`` is
    None."""
    t = jnp.arange(T)[None, :]
    if seq_lengths is None:
        return jnp.broadcast_to(T - 1 - t, (B, T))
    lengths = seq_lengths[:, None].astype(jnp.int32)
    return jnp.where(t < lengths, lengths - 1 - t, t)


@functools.partial(
    jax.jit,
    static_argnames=("function", "compute_dtype", "reverse", "gradient_recurrent_cut",
                     "gradient_recurrent_clipval"),
)
def flashrnn_scan(
    Wx: jax.Array,
    R: jax.Array,
    b: jax.Array,
    states: jax.Array,
    seq_lengths: jax.Array | None = None,
    resets: jax.Array | None = None,
    *,
    function: str,
    compute_dtype,
    reverse: bool = False,
    gradient_recurrent_cut: bool = False,
    gradient_recurrent_clipval: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Run the recurrence with ``lax.scan``.

    Arguments are already validated and normalised by :func:`flashrnn_jax.flashrnn`:
    ``Wx`` ``[B, T, Gw, N, D]``, ``R`` ``[Gr, N, D, D]``, ``b`` ``[Gt, N, D]``, ``states``
    ``[S, B, N, D]``, ``seq_lengths`` int ``[B]`` or None, ``resets`` bool ``[B, T]`` or None.
    Returns ``states_all`` ``[S, B, T, N, D]`` and ``last_states`` ``[S, B, N, D]`` in the dtype
    of ``Wx``. Jitted, so eager calls compile once per shape.
    """
    cell = get_cell(function)
    out_dtype = Wx.dtype
    B, T = Wx.shape[:2]
    R = R.astype(compute_dtype)
    b = b.astype(compute_dtype)
    init = tuple(states.astype(compute_dtype))

    def recurrent_input(h):
        if gradient_recurrent_cut:
            return jax.lax.stop_gradient(h)
        if gradient_recurrent_clipval is not None:
            return clip_gradient(h, gradient_recurrent_clipval)
        return h

    def cell_step(carry, wx_t):
        rh = jnp.einsum(
            "gnoi,bni->bgno", R, recurrent_input(carry[0]),
            precision=jax.lax.Precision.HIGHEST,
        )
        return cell.step(wx_t.astype(compute_dtype), rh, b, carry)

    # Reading order: step s of row b reads input index[b, s] (identity unless reversed).
    index = reversal_indices(seq_lengths, B, T) if reverse else None
    if index is not None:
        Wx = jnp.take_along_axis(Wx, index.reshape(B, T, 1, 1, 1), axis=1)
        if resets is not None:
            resets = jnp.take_along_axis(resets, index, axis=1)

    xs = {"wx": jnp.swapaxes(Wx, 0, 1)}
    if seq_lengths is not None:
        xs["valid"] = jnp.arange(T)[:, None] < seq_lengths[None, :].astype(jnp.int32)  # [T, B]
    if resets is not None:
        xs["reset"] = jnp.swapaxes(resets, 0, 1)  # [T, B]

    def bcast(mask):  # [B] -> [B, 1, 1]
        return mask[:, None, None]

    def step(carry, x):
        start = carry
        if "reset" in x:
            start = tuple(jnp.where(bcast(x["reset"]), s0, s) for s0, s in zip(init, carry))
        new = cell_step(start, x["wx"])
        if "valid" in x:
            valid = bcast(x["valid"])
            out = tuple(jnp.where(valid, n, jnp.zeros_like(n)) for n in new)
            new = tuple(jnp.where(valid, n, s) for n, s in zip(new, carry))
        else:
            out = new
        return new, tuple(s.astype(out_dtype) for s in out)

    last, per_step = jax.lax.scan(step, init, xs)
    # per_step holds S arrays [T, B, N, D]; the contract is [S, B, T, N, D].
    states_all = jnp.swapaxes(jnp.stack(per_step), 1, 2)
    if index is not None:
        # The reversal is an involution: position t holds the step that read input t.
        states_all = jnp.take_along_axis(states_all, index.reshape(1, B, T, 1, 1), axis=2)
    last_states = jnp.stack(last).astype(out_dtype)
    return states_all, last_states
