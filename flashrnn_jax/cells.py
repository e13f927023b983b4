"""The registry of recurrent cells: gate and state counts and the pointwise step of each.

Every backend reads the cell definitions from here. The scan backend calls :attr:`Cell.step`
directly; the fused CUDA kernels implement the same equations in
``cuda_ffi/kernels/<cell>_pointwise.cuh`` and are tested against this module's results.

Gate layouts and state orders follow FlashRNN (PyTorch) so weights port across unchanged:

========  ==============  =============  ================  ==========
function  Wx gates (Gw)   R gates (Gr)   bias gates (Gt)   states (S)
========  ==============  =============  ================  ==========
lstm      i, f, z, o      i, f, z, o     i, f, z, o        h, c
slstm     i, f, z, o      i, f, z, o     i, f, z, o        h, c, n, m
gru       r, z, n         g, r, z        g, r, z, n        h
elman     h               h              h                 h
========  ==============  =============  ================  ==========

A step takes ``wx`` ``[..., Gw, N, D]`` (this time step's input pre-activations), ``rh``
``[..., Gr, N, D]`` (the recurrent matmul ``R[g, n] @ h_prev`` per gate), ``b`` ``[Gt, N, D]`` and
the previous states (a tuple of ``S`` arrays ``[..., N, D]``, state 0 is ``h``), and returns the
new states in the same order. All arrays share one floating dtype, the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

States = tuple[jax.Array, ...]
StepFn = Callable[[jax.Array, jax.Array, jax.Array, States], States]


@dataclasses.dataclass(frozen=True)
class Cell:
    """A recurrent cell: its name, gate counts, state names and pointwise step."""

    name: str
    gates_wx: int
    gates_r: int
    gates_b: int
    state_names: tuple[str, ...]
    step: StepFn
    # Wx gate g adds to bias gate g + wx_bias_offset (GRU: Wx r, z, n are bias gates 1..3);
    # the R gates are bias gates 0 .. gates_r - 1 for every cell.
    wx_bias_offset: int = 0

    @property
    def num_states(self) -> int:
        return len(self.state_names)


def _lstm_step(wx, rh, b, states):
    _, c_prev = states
    pre = wx + rh + b
    i, f, z, o = (pre[..., g, :, :] for g in range(4))
    c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(z)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


def _gru_step(wx, rh, b, states):
    (h_prev,) = states
    g_pre = rh[..., 0, :, :] + b[0]
    r = jax.nn.sigmoid(wx[..., 0, :, :] + rh[..., 1, :, :] + b[1])
    z = jax.nn.sigmoid(wx[..., 1, :, :] + rh[..., 2, :, :] + b[2])
    n = jnp.tanh(wx[..., 2, :, :] + b[3] + r * g_pre)
    h = z * h_prev + (1 - z) * n
    return (h,)


def _elman_step(wx, rh, b, states):
    return (jnp.tanh(wx[..., 0, :, :] + rh[..., 0, :, :] + b[0]),)


# The largest exponent of the sLSTM forget gate f' = exp(L - m); see _slstm_step.
SLSTM_MAX_LOG_F = 80.0


def _slstm_step(wx, rh, b, states):
    _, c_prev, n_prev, m_prev = states
    pre = wx + rh + b
    i, f, z, o = (pre[..., g, :, :] for g in range(4))
    log_f_plus_m = jax.nn.log_sigmoid(f) + m_prev
    # The stabiliser only rescales c and n (h is invariant to it), so its gradient is dropped,
    # as in xLSTM. From zero states (n_prev == 0) there is nothing to rescale and m starts at i.
    m = jax.lax.stop_gradient(jnp.where(n_prev == 0, i, jnp.maximum(i, log_f_plus_m)))
    i_gate = jnp.exp(i - m)
    # L - m <= 0 except from zero states (m = i), where a closed input gate makes it large: the
    # cap keeps f' finite (float32 exp overflows above ~88.7) so that f' * 0 stays 0.
    log_f_rel = log_f_plus_m - m
    f_gate = jnp.exp(jnp.where(log_f_rel > SLSTM_MAX_LOG_F, SLSTM_MAX_LOG_F, log_f_rel))
    c = f_gate * c_prev + i_gate * jnp.tanh(z)
    n_raw = f_gate * n_prev + i_gate
    # max(n_raw, 1) with the gradient passed to n_raw at the tie: from zero states n_raw is
    # exactly 1 and its derivative cancels the one through c, as it does in the exact function.
    n = jnp.where(n_raw >= 1, n_raw, jnp.ones_like(n_raw))
    h = jax.nn.sigmoid(o) * c / n
    return h, c, n, m


CELLS: dict[str, Cell] = {
    cell.name: cell
    for cell in (
        Cell("lstm", 4, 4, 4, ("h", "c"), _lstm_step),
        Cell("gru", 3, 3, 4, ("h",), _gru_step, wx_bias_offset=1),
        Cell("slstm", 4, 4, 4, ("h", "c", "n", "m"), _slstm_step),
        Cell("elman", 1, 1, 1, ("h",), _elman_step),
    )
}

FUNCTIONS: tuple[str, ...] = tuple(CELLS)


def get_cell(function: str) -> Cell:
    """Return the cell named ``function``, or raise ValueError listing the known ones."""
    if not isinstance(function, str) or function not in CELLS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {function!r}")
    return CELLS[function]
