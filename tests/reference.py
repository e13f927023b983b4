"""Independent float64 NumPy reference of the cell equations (DESIGN.md §3).

Written from the design document alone: it imports neither jax nor flashrnn_jax, so a mistake
shared with the library cannot hide in it. Also: random inputs in the same layouts, and a
projection loss with a finite-difference gradient check built on the reference.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class CellShape(NamedTuple):
    gates_wx: int
    gates_r: int
    gates_b: int
    num_states: int


CELL_SHAPES: dict[str, CellShape] = {
    "lstm": CellShape(4, 4, 4, 2),
    "gru": CellShape(3, 3, 4, 1),
    "slstm": CellShape(4, 4, 4, 4),
    "elman": CellShape(1, 1, 1, 1),
}


def _sigmoid(x):
    return np.exp(_log_sigmoid(x))


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _lstm(wx, rh, b, states):
    _, c_prev = states
    i, f, z, o = (wx[:, g] + rh[:, g] + b[g] for g in range(4))
    c = _sigmoid(f) * c_prev + _sigmoid(i) * np.tanh(z)
    h = _sigmoid(o) * np.tanh(c)
    return h, c


def _gru(wx, rh, b, states):
    # Wx gates (r, z, n); R gates (g, r, z); bias gates (g, r, z, n).
    (h_prev,) = states
    g = rh[:, 0] + b[0]
    r = _sigmoid(wx[:, 0] + rh[:, 1] + b[1])
    z = _sigmoid(wx[:, 1] + rh[:, 2] + b[2])
    n = np.tanh(wx[:, 2] + b[3] + r * g)
    h = z * h_prev + (1.0 - z) * n
    return (h,)


def _slstm(wx, rh, b, states):
    _, c_prev, n_prev, m_prev = states
    i, f, z, o = (wx[:, g] + rh[:, g] + b[g] for g in range(4))
    log_f = _log_sigmoid(f) + m_prev
    m = np.where(n_prev == 0, i, np.maximum(i, log_f))
    i_gate = np.exp(i - m)
    f_gate = np.exp(log_f - m)
    c = f_gate * c_prev + i_gate * np.tanh(z)
    n = np.maximum(f_gate * n_prev + i_gate, 1.0)
    h = _sigmoid(o) * c / n
    return h, c, n, m


def _elman(wx, rh, b, states):
    return (np.tanh(wx[:, 0] + rh[:, 0] + b[0]),)


_STEPS = {"lstm": _lstm, "gru": _gru, "slstm": _slstm, "elman": _elman}


def reference_flashrnn(Wx, R, b, states, function):
    """Float64 reference of ``flashrnn``: ``(states_all [S,B,T,N,D], last_states [S,B,N,D])``.

    ``states`` is ``None`` (zeros), ``[S, B, N, D]`` or ``[S, B, 1, N, D]``.
    """
    Wx, R, b = (np.asarray(x, np.float64) for x in (Wx, R, b))
    B, T, _, N, D = Wx.shape
    S = CELL_SHAPES[function].num_states
    if states is None:
        state = tuple(np.zeros((S, B, N, D)))
    else:
        state = tuple(np.asarray(states, np.float64).reshape(S, B, N, D))
    step = _STEPS[function]
    per_step = []
    for t in range(T):
        # R[g, n] @ h_prev for every batch row: [1,G,N,D,D] @ [B,1,N,D,1] -> [B,G,N,D].
        rh = (R[None] @ state[0][:, None, :, :, None])[..., 0]
        state = step(Wx[:, t], rh, b, state)
        per_step.append(np.stack(state))
    states_all = np.stack(per_step, axis=2)
    return states_all, states_all[:, :, -1]


def random_states(rng: np.random.Generator, function: str, B: int, N: int, D: int) -> np.ndarray:
    """Initial states ``[S, B, N, D]``; for sLSTM n_0 >= 1 so the clamp max(n, 1) is inactive."""
    S = CELL_SHAPES[function].num_states
    states = rng.normal(size=(S, B, N, D))
    if function == "slstm":
        states[2] = 1.0 + rng.uniform(size=(B, N, D))
    return states


def random_inputs(rng: np.random.Generator, function: str, B: int, T: int, N: int, D: int):
    """``(Wx, R, b)`` in float64 with magnitudes that exercise the nonlinearities."""
    shape = CELL_SHAPES[function]
    Wx = rng.normal(size=(B, T, shape.gates_wx, N, D))
    R = rng.normal(size=(shape.gates_r, N, D, D)) / np.sqrt(D)
    b = rng.normal(size=(shape.gates_b, N, D))
    return Wx, R, b


def loss_weights(rng: np.random.Generator, function: str, B: int, T: int, N: int, D: int):
    """Random weights for :func:`project`.

    sLSTM's stabiliser m is stop-gradient, which is the exact derivative only of the output h
    (h is invariant to m; c, n and m are not), so its weights cover h alone.
    """
    S = 1 if function == "slstm" else CELL_SHAPES[function].num_states
    return rng.normal(size=(S, B, T, N, D)), rng.normal(size=(S, B, N, D))


def project(states_all, last_states, weights):
    """A scalar loss: the weighted sum of the first states (NumPy or jax arrays)."""
    w_all, w_last = weights
    S = w_all.shape[0]
    return (w_all * states_all[:S]).sum() + (w_last * last_states[:S]).sum()


def numerical_gradient(f, args, argnum, step=1e-6):
    """Central finite differences of the scalar ``f(*args)`` with respect to ``args[argnum]``.

    In float64 with the default step, truncation and round-off errors are both near 1e-10.
    """
    x = np.asarray(args[argnum], np.float64)
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        values = []
        for shift in (step, -step):
            shifted = x.copy()
            shifted[index] += shift
            values.append(f(*args[:argnum], shifted, *args[argnum + 1 :]))
        grad[index] = (values[0] - values[1]) / (2 * step)
    return grad


def assert_gradients_match_reference(grads, args, function, weights, rtol=1e-6):
    """``grads`` of ``project(flashrnn(*args), weights)`` with respect to each of ``args``
    (``(Wx, R, b)`` or ``(Wx, R, b, states)``, float64) against finite differences of the
    reference."""

    def reference_loss(Wx, R, b, states=None):
        return project(*reference_flashrnn(Wx, R, b, states, function), weights)

    for argnum, grad in enumerate(grads):
        expected = numerical_gradient(reference_loss, args, argnum)
        assert np.abs(expected).max() > 1e-3, "the loss does not depend on this argument"
        np.testing.assert_allclose(grad, expected, rtol=rtol, atol=rtol * np.abs(expected).max(),
                                   err_msg=f"gradient for argument {argnum} ({function})")


def reading_order(seq_lengths, B: int, T: int, reverse: bool) -> np.ndarray:
    """``[B, T]``: the input index row ``b`` reads at step ``s``. Forward: ``s``. Reverse: the
    first ``L = seq_lengths[b]`` inputs backwards (``L-1 .. 0``), then the padding in place."""
    order = np.tile(np.arange(T), (B, 1))
    if reverse:
        lengths = np.full(B, T) if seq_lengths is None else np.asarray(seq_lengths)
        for row, length in enumerate(lengths):
            order[row, :length] = order[row, :length][::-1]
    return order


def reference_flashrnn_options(Wx, R, b, states, function, *, seq_lengths=None, resets=None,
                               reverse=False, recurrent_h=None):
    """Float64 reference of ``flashrnn`` with the sequence options; written step by step.

    Row ``b`` reads the inputs of :func:`reading_order`, only its first ``seq_lengths[b]``
    steps; before reading input ``t`` with ``resets[b, t]`` its states are set back to the
    initial ones. ``states_all[:, b, t]`` is the state after reading input ``t`` (zero where
    ``t >= seq_lengths[b]``); ``last_states[:, b]`` the state after the last step read.

    ``recurrent_h`` ``[B, T, N, D]`` (reading order), when given, replaces the ``h_prev`` that
    enters ``R @ h_prev`` at every step: held fixed, it models a cut recurrent gradient.

    Returns ``(states_all, last_states, h_in)`` where ``h_in`` ``[B, T, N, D]`` holds the
    ``h_prev`` that entered ``R @ h_prev`` at every step in reading order (zeros for steps
    not read).
    """
    Wx, R, b = (np.asarray(x, np.float64) for x in (Wx, R, b))
    B, T, _, N, D = Wx.shape
    S = CELL_SHAPES[function].num_states
    init = (np.zeros((S, B, N, D)) if states is None
            else np.asarray(states, np.float64).reshape(S, B, N, D))
    lengths = np.full(B, T) if seq_lengths is None else np.asarray(seq_lengths)
    resets = np.zeros((B, T), bool) if resets is None else np.asarray(resets, bool)
    order = reading_order(lengths, B, T, reverse)
    step_fn = _STEPS[function]
    states_all = np.zeros((S, B, T, N, D))
    last = np.zeros((S, B, N, D))
    h_in = np.zeros((B, T, N, D))
    for row in range(B):
        state = tuple(init[:, row : row + 1])  # S arrays [1, N, D]
        for step in range(lengths[row]):
            t = order[row, step]
            if resets[row, t]:
                state = tuple(init[:, row : row + 1])
            h_prev = state[0] if recurrent_h is None else recurrent_h[row : row + 1, step]
            h_in[row, step] = state[0][0]
            rh = (R[None] @ h_prev[:, None, :, :, None])[..., 0]
            state = step_fn(Wx[row : row + 1, t], rh, b, state)
            states_all[:, row, t] = np.stack(state)[:, 0]
        last[:, row] = np.stack(state)[:, 0]
    return states_all, last, h_in
