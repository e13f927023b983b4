"""A NumPy stand-in for the fused kernels' two FFI calls, for CPU tests of everything around them.

It follows the kernels' contract (the outputs, the residuals states_f32 and the gate
cotangents in input time order) and transcribes their control flow step by step: the input
index a step reads, the lengths clamped to ``0..T``, the masked steps past a row's length, the
reset that loads the initial states at the end of the step before the flagged one, and in the
backward the reset that sends the cotangent of the step's
start states to the initial states, the recurrent cotangent one iteration later included.
With it installed, ``backend="fused"`` runs on CPU through the real ``custom_vjp`` of
``flashrnn_jax.fused`` (its ``dR``, ``db`` and ``h_prev`` assembly), so those can be checked
against the float64 reference without a GPU. The pointwise step and its derivative come from
the cell registry (``jax.vjp`` of :attr:`Cell.step`); the CUDA cell derivatives are tested on
the GPU.

The gate cache is the emulator's own: per bias gate, the sum of the parts that gate's
pre-activation is made of (input, bias and, for R gates, the recurrent matmul), so that the
step can be replayed from it with zero biases.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_jax import fused
from flashrnn_jax.cells import get_cell


def _input_index(step: int, length: int, reverse: bool) -> int:
    return length - 1 - step if reverse and step < length else step


@functools.cache
def _step_fns(function: str):
    cell = get_cell(function)

    def replay(cache_t, prev):
        """The step from one row's cached pre-activations [Gt, N, D] (biases folded in)."""
        off = cell.wx_bias_offset
        wx = cache_t[off : off + cell.gates_wx]
        rh = jnp.concatenate(
            [cache_t[:off], jnp.zeros((cell.gates_r - off,) + cache_t.shape[1:], cache_t.dtype)]
        )
        return cell.step(wx, rh, jnp.zeros_like(cache_t), prev)

    def vjp(cache_t, prev, d_new):
        _, pullback = jax.vjp(replay, cache_t, prev)
        return pullback(d_new)

    return jax.jit(replay), jax.jit(vjp)


def _gate_preactivations(cell, wx_t, rh, b):
    """[Gt, N, D] per bias gate g: its input part (if any) + bias + recurrent part (if any)."""
    pre = b.copy()
    pre[cell.wx_bias_offset : cell.wx_bias_offset + cell.gates_wx] += wx_t
    pre[: cell.gates_r] += rh
    return pre


def emulate_forward(Wx, R, b, states0, seq_lengths, resets, options, train):
    cell = get_cell(options.function)
    replay, _ = _step_fns(options.function)
    Wx, R, b, states0 = (np.asarray(x, np.float64) for x in (Wx, R, b, states0))
    seq_lengths, resets = np.asarray(seq_lengths), np.asarray(resets)
    S, B, N, D = states0.shape
    T = Wx.shape[1]
    states_all = np.zeros((S, B, T, N, D))
    last = np.zeros((S, B, N, D))
    cache = np.zeros((B, T, cell.gates_b, N, D))
    for row in range(B):
        state = states0[:, row].copy()
        length = min(max(int(seq_lengths[row]), 0), T)
        for step in range(length):
            t = _input_index(step, length, options.reverse)
            rh = np.einsum("gnoi,ni->gno", R, state[0])
            cache[row, t] = _gate_preactivations(cell, Wx[row, t], rh, b)
            state = np.stack(replay(cache[row, t], tuple(state)))
            states_all[:, row, t] = state
            # As the kernel: the reset of the next step is applied at the end of this one.
            if (options.has_resets and step + 1 < length
                    and resets[row, _input_index(step + 1, length, options.reverse)]):
                state = states0[:, row].copy()
        last[:, row] = state
    outs = [states_all, last] + ([cache, states_all.copy()] if train else [])
    return outs


def emulate_backward(R, states0, cache, states_f32, d_all, d_last, seq_lengths, resets,
                     options, weight_gradient=False):
    cell = get_cell(options.function)
    _, vjp = _step_fns(options.function)
    R, states0, cache, states_f32, d_all, d_last = (
        np.asarray(x, np.float64) for x in (R, states0, cache, states_f32, d_all, d_last))
    seq_lengths, resets = np.asarray(seq_lengths), np.asarray(resets)
    S, B, N, D = states0.shape
    T = cache.shape[1]
    d_gates = np.zeros(cache.shape)
    d_states0 = np.zeros(states0.shape)
    # With weight_gradient: per batch tile, dR summed over its rows and steps from the h_prev
    # each step started from.
    d_r_partial = np.zeros((-(-B // fused.DR_PARTIAL_BATCH_TILE), cell.gates_r, N, D, D))
    for row in range(B):
        ds = d_last[:, row].copy()
        length = min(max(int(seq_lengths[row]), 0), T)
        dh_rec = np.zeros((N, D))  # sent back by the step after the current one
        after_reset = False
        for step in reversed(range(T)):
            if after_reset:
                d_states0[0, row] += dh_rec
            else:
                ds[0] += dh_rec
            dh_rec = np.zeros((N, D))
            if step >= length:
                after_reset = False
                continue
            t = _input_index(step, length, options.reverse)
            after_reset = bool(options.has_resets and resets[row, t])
            t_prev = t + 1 if options.reverse else t - 1
            prev = states0[:, row] if step == 0 or after_reset else states_f32[:, row, t_prev]
            ds += d_all[:, row, t]
            d_cache, d_prev = vjp(cache[row, t], tuple(prev), tuple(ds))
            d_gates[row, t] = d_cache
            ds = np.stack(d_prev)
            if weight_gradient:
                # Exact operands (the kernel rounds them to bfloat16; the GPU tests hold it to
                # the accuracy rule): the emulation checks where each product goes.
                d_r_partial[row // fused.DR_PARTIAL_BATCH_TILE] += np.einsum(
                    "gno,ni->gnoi", d_cache[: cell.gates_r], prev[0])
            if options.recurrent_gradient != fused.RECURRENT_CUT:
                dh_rec = np.einsum("gnoi,gno->ni", R, d_gates[row, t, : cell.gates_r])
                if options.recurrent_gradient == fused.RECURRENT_CLIP:
                    dh_rec = np.clip(dh_rec, -options.clipval, options.clipval)  # NaN stays
            if after_reset:
                d_states0[:, row] += ds
                ds = np.zeros_like(ds)
        ds[0] += dh_rec
        d_states0[:, row] += ds
    if not weight_gradient:
        return d_gates, d_states0
    # With weight_gradient also each row's part of db, its gate cotangents summed over steps
    # (d_gates then leaves in R's dtype: backward_call's shapes).
    return d_gates, d_states0, d_r_partial, d_gates.sum(axis=1)


def _callback(fn, shapes, *args):
    def host(*arrays):
        return tuple(np.asarray(x, s.dtype) for x, s in zip(fn(*arrays), shapes))

    return jax.pure_callback(host, tuple(shapes), *args, vmap_method="sequential")


def forward_call(Wx, R, b, states, seq_lengths, resets, options, *, train):
    S, B, N, D = states.shape
    T = Wx.shape[1]
    shapes = [jax.ShapeDtypeStruct((S, B, T, N, D), Wx.dtype),
              jax.ShapeDtypeStruct((S, B, N, D), Wx.dtype)]
    if train:
        shapes += [jax.ShapeDtypeStruct((B, T, b.shape[0], N, D), jnp.float32),
                   jax.ShapeDtypeStruct((S, B, T, N, D), jnp.float32)]
    return _callback(lambda *a: emulate_forward(*a, options, train), shapes,
                     Wx, R, b, states, seq_lengths, resets)


def backward_call(R, states, gate_cache, states_f32, d_all, d_last, seq_lengths, resets,
                  options, *, weight_gradient):
    S, B, N, D = states.shape
    shapes = [jax.ShapeDtypeStruct(gate_cache.shape,
                                   R.dtype if weight_gradient else jnp.float32),
              jax.ShapeDtypeStruct(states.shape, jnp.float32)]
    if weight_gradient:
        shapes += [jax.ShapeDtypeStruct(
            (-(-B // fused.DR_PARTIAL_BATCH_TILE), R.shape[0], N, D, D), jnp.float32),
            jax.ShapeDtypeStruct((B, gate_cache.shape[2], N, D), jnp.float32)]
    results = _callback(lambda *a: emulate_backward(*a, options, weight_gradient), shapes,
                        R, states, gate_cache, states_f32, d_all, d_last, seq_lengths, resets)
    return tuple(results) if weight_gradient else (*results, None, None)


def install(monkeypatch) -> None:
    """Route ``backend="fused"`` through the emulator for the rest of the test."""
    monkeypatch.setattr(fused, "_forward_call", forward_call)
    monkeypatch.setattr(fused, "_backward_call", backward_call)
    monkeypatch.setattr(fused, "unsupported_reason", lambda *args, **kwargs: None)
