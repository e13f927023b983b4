"""Flax Linen layers: a head-wise LSTM, GRU, sLSTM or Elman network over a whole sequence."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype, Initializer, PrecisionLike

from flashrnn_jax import layer_common
from flashrnn_jax.layer_common import HeadLayout
from flashrnn_jax.sharding import AxisName


class FlashRNN(nn.Module):
    r"""A head-wise recurrent layer that runs a whole sequence in one call.

    The hidden state of size ``hidden_size = N * D`` is split into ``N = num_heads`` heads of
    size ``D``, each an independent RNN: ``R`` is block-diagonal. The input projection is one
    matmul for all gates and heads, then :func:`flashrnn_jax.flashrnn` runs the recurrence
    (the fused CUDA kernels under ``backend="auto"`` where they support the call, else
    ``lax.scan``). Per head, with ``Wx = x_t W`` and ``Rh = R[g, n] @ h_{t-1}`` per gate
    (σ the logistic sigmoid, a tilde a pre-activation):

    - ``"lstm"``: ``ĩ,f̃,z̃,õ = Wx + Rh + b``; ``c = σ(f̃)·c_prev + σ(ĩ)·tanh(z̃)``;
      ``h = σ(õ)·tanh(c)``.
    - ``"gru"``: ``g̃ = Rh_g + b_g``; ``r = σ(Wx_r + Rh_r + b_r)``; ``z = σ(Wx_z + Rh_z + b_z)``;
      ``n = tanh(Wx_n + b_n + r·g̃)``; ``h = z·h_prev + (1 − z)·n``.
    - ``"slstm"``: ``ĩ,f̃,z̃,õ = Wx + Rh + b``; ``m = max(ĩ, log σ(f̃) + m_prev)`` (``m = ĩ``
      from a zero state); ``i' = exp(ĩ − m)``; ``f' = exp(log σ(f̃) + m_prev − m)``;
      ``c = f'·c_prev + i'·tanh(z̃)``; ``n = max(f'·n_prev + i', 1)``; ``h = σ(õ)·c / n``.
    - ``"elman"``: ``h = tanh(Wx + Rh + b)``.

    Parameters: ``kernel`` ``[in_features, Gw, N, D]`` (``kernel[:, g, n]`` feeds gate ``g`` of
    head ``n``; reshaped to ``[in_features, Gw * hidden_size]`` it is the flat input matrix),
    ``recurrent_kernel`` ``[Gr, N, D, D]`` (``R[g, n, d_out, d_in]``) and ``bias``
    ``[Gt, N, D]``, with the gate orders of :mod:`flashrnn_jax.cells` (FlashRNN's, so PyTorch
    FlashRNN weights port across).

    The carry is one array ``[S, *batch, hidden_size]``: the cell's states in its order
    (``h, c`` for lstm; ``h, c, n, m`` for slstm; ``h`` for gru and elman), heads concatenated
    as in the output. Pass the carry a call returns as ``initial_carry`` to the next call to
    continue the sequence; zeros (see :meth:`initialize_carry`) start one.

    Many devices: ``head_axis`` names the mesh axis that splits the heads. The parameters then
    carry :func:`flax.linen.with_partitioning` metadata with the heads axis ``N`` of each on
    it (:func:`flax.linen.get_partition_spec` / :func:`flax.linen.get_sharding` turn it into
    shardings), and :func:`flashrnn_jax.flashrnn` runs each device's block of heads there; with
    ``batch_axis`` also its block of batch rows. The mesh is the one of the inputs' sharding
    type (on ``Explicit`` axes, the default of ``jax.make_mesh``) or of ``jax.set_mesh``. Inside
    ``jax.set_mesh`` Linen applies the metadata as sharding constraints, which ``Explicit``
    axes reject: there, make the mesh with ``Auto`` axes (``examples/data_parallel.py``).

    Attributes:
      hidden_size: number of hidden units ``N * D``, the size of the output's last axis.
      function: ``"lstm"``, ``"gru"``, ``"slstm"`` or ``"elman"``.
      num_heads: number of heads ``N``; must divide ``hidden_size``.
      backend: ``"auto"``, ``"fused"`` or ``"scan"``, passed to :func:`flashrnn_jax.flashrnn`.
      dtype: the dtype of the computation: inputs and parameters are cast to it, and the output
        and carry have it (default: the promotion of the input and parameter dtypes). The
        recurrence itself accumulates in float32 (float64 for float64).
      param_dtype: the dtype of the parameters (default: float32).
      precision: precision of the input projection matmul, as for :class:`flax.linen.Dense`.
      kernel_init: initializer of ``kernel``, called with the flat shape ``[in_features,
        Gw * hidden_size]`` as by :class:`flax.linen.DenseGeneral` (default: lecun_normal,
        fan-in ``in_features``).
      recurrent_kernel_init: initializer of ONE ``[D, D]`` recurrent matrix; it is called with
        its own key for every gate and head (default: orthogonal, so every ``R[g, n]`` is an
        orthogonal matrix). It draws in at least float32 and is rounded to ``param_dtype``.
      bias_init: initializer of ``bias``, called with the whole shape ``[Gt, N, D]``
        (default: zeros; e.g. a positive forget-gate bias ``bias[1]`` helps LSTMs remember).
      gradient_recurrent_cut: no gradient through ``R @ h_prev`` (see
        :func:`flashrnn_jax.flashrnn`).
      gradient_recurrent_clipval: clip the cotangent of ``h_prev`` through ``R @ h_prev`` to
        ``[-v, v]`` at every step, or None.
      batch_axis: mesh axis name (or tuple of names) that splits the batch, or None.
      head_axis: mesh axis name (or tuple of names) that splits the heads, or None (the
        default: no partitioning metadata).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flashrnn_jax.linen import FlashRNN
      >>> layer = FlashRNN(hidden_size=64, function="slstm", num_heads=4)
      >>> x = jax.random.normal(jax.random.key(1), (8, 100, 16))  # [batch, time, features]
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (4, 4, 16), 'kernel': (16, 4, 4, 16), 'recurrent_kernel': (4, 4, 16, 16)}
      >>> y = layer.apply(variables, x)
      >>> y.shape
      (8, 100, 64)

      Continuing from a returned carry equals running the whole sequence at once:

      >>> carry, y1 = layer.apply(variables, x[:, :60], return_carry=True)
      >>> carry.shape  # [S, batch, hidden_size]: h, c, n, m
      (4, 8, 64)
      >>> y2 = layer.apply(variables, x[:, 60:], initial_carry=carry)
      >>> bool(jnp.allclose(jnp.concatenate([y1, y2], axis=1), y, atol=1e-5))
      True
    """

    hidden_size: int
    function: str = "lstm"
    num_heads: int = 1
    backend: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    kernel_init: Initializer = layer_common.default_kernel_init
    recurrent_kernel_init: Initializer = layer_common.default_recurrent_kernel_init
    bias_init: Initializer = layer_common.default_bias_init
    gradient_recurrent_cut: bool = False
    gradient_recurrent_clipval: float | None = None
    batch_axis: AxisName = None
    head_axis: AxisName = None

    def __post_init__(self) -> None:
        # Fail at construction, not at the first init/apply deep inside a model.
        layer_common.head_layout(self.function, self.hidden_size, self.num_heads)
        super().__post_init__()

    @property
    def _layout(self) -> HeadLayout:
        return layer_common.head_layout(self.function, self.hidden_size, self.num_heads)

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: jax.Array | None = None,
        init_key: Any = None,
        seq_lengths: jax.Array | None = None,
        resets: jax.Array | None = None,
        return_carry: bool | None = False,
        time_major: bool | None = False,
        reverse: bool | None = False,
        keep_order: bool | None = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Run the layer over a sequence.

        Args:
          inputs: ``[*batch, T, in_features]``, or ``[T, *batch, in_features]`` when
            ``time_major``.
          initial_carry: ``[S, *batch, hidden_size]`` states to start from, e.g. the carry of
            a previous call, cast to the computation dtype; None starts from zeros.
          return_carry: also return the carry after the last step.
          time_major: inputs and output have time on axis 0.
          seq_lengths: int ``[*batch]`` valid lengths (right padding): the states stop
            changing after them (the returned carry is the state after the last valid
            step) and the output is zero there.
          resets: bool ``[*batch, T]`` (``[T, *batch]`` when ``time_major``): where set, the
            states go back to the initial carry before that input is read.
          reverse: read each sequence from its last valid input back to the first.
          keep_order: with ``reverse``, return the output in input time order (else in
            reading order, as :class:`flax.linen.RNN`).

        The call protocol is :class:`flax.linen.RNN`'s, so the layer works inside
        ``Bidirectional``. Padded positions of the output hold zeros.

        Returns:
          ``h`` ``[*batch, T, hidden_size]`` (``[T, *batch, hidden_size]`` when
          ``time_major``), or ``(carry, h)`` when ``return_carry``.
        """
        del init_key  # the carry starts at zeros; kept for the nn.RNN protocol
        layout = self._layout
        names = layer_common.partition_names(self.head_axis)

        def init(name: str, initializer: Initializer) -> Initializer:
            return initializer if names is None else nn.with_partitioning(initializer, names[name])

        kernel = self.param(
            "kernel", init("kernel", layer_common.flat_kernel_init(self.kernel_init)),
            layout.kernel_shape(jnp.shape(inputs)[-1]), self.param_dtype,
        )
        recurrent_kernel = self.param(
            "recurrent_kernel",
            init("recurrent_kernel", layer_common.blockwise(self.recurrent_kernel_init)),
            layout.recurrent_kernel_shape, self.param_dtype,
        )
        bias = self.param("bias", init("bias", self.bias_init), layout.bias_shape,
                          self.param_dtype)
        carry, h = layer_common.apply(
            layout, inputs, kernel, recurrent_kernel, bias,
            initial_carry=initial_carry, time_major=bool(time_major), dtype=self.dtype,
            precision=self.precision, backend=self.backend, batch_axis=self.batch_axis,
            head_axis=self.head_axis, seq_lengths=seq_lengths, resets=resets,
            reverse=bool(reverse), keep_order=bool(keep_order),
            gradient_recurrent_cut=self.gradient_recurrent_cut,
            gradient_recurrent_clipval=self.gradient_recurrent_clipval,
        )
        return (carry, h) if return_carry else h

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array | None, input_shape: tuple[int, ...]) -> jax.Array:
        """Zero states ``[S, *batch, hidden_size]`` in ``param_dtype``, as flax's cells.

        Args:
          rng: unused (the carry starts at zero); kept for the flax cell protocol.
          input_shape: the shape of one time step's input, ``(*batch, in_features)``.
        """
        del rng
        return layer_common.zeros_carry(self._layout, tuple(input_shape[:-1]), self.param_dtype)


def _fixed(function: str):
    """A dataclass field that pins ``function`` in a subclass (not an argument of __init__)."""
    return dataclasses.field(default=function, init=False)


class LSTM(FlashRNN):
    """:class:`FlashRNN` with ``function="lstm"``: ``LSTM(hidden_size, num_heads=...)``."""

    function: str = _fixed("lstm")


class GRU(FlashRNN):
    """:class:`FlashRNN` with ``function="gru"``: ``GRU(hidden_size, num_heads=...)``."""

    function: str = _fixed("gru")


class SLSTM(FlashRNN):
    """:class:`FlashRNN` with ``function="slstm"``: ``SLSTM(hidden_size, num_heads=...)``."""

    function: str = _fixed("slstm")


class Elman(FlashRNN):
    """:class:`FlashRNN` with ``function="elman"``: ``Elman(hidden_size, num_heads=...)``."""

    function: str = _fixed("elman")


class StackedRNN(nn.Module):
    """Layers run one after the other, each optionally with a residual connection.

    Each layer must follow the :class:`flax.linen.RNN` call protocol (:class:`FlashRNN`,
    :class:`flax.linen.Bidirectional` of two of them, ``nn.RNN``...); ``seq_lengths`` and
    ``resets`` are passed to every layer (``resets`` only when given).

    Attributes:
      layers: the layers, first to last.
      residual: a bool for every layer, or one per layer: where True the layer's input is
        added to its output (``y = layer(x) + x``; the sizes must match, so typically False
        for a first layer that changes the feature size).

    Example:
      >>> import jax
      >>> from flashrnn_jax.linen import FlashRNN, StackedRNN
      >>> stack = StackedRNN([FlashRNN(32, "lstm", num_heads=4) for _ in range(3)],
      ...                    residual=(False, True, True))
      >>> x = jax.random.normal(jax.random.key(0), (2, 10, 8))
      >>> variables = stack.init(jax.random.key(1), x)
      >>> carries, y = stack.apply(variables, x, return_carry=True)
      >>> y.shape, len(carries)
      ((2, 10, 32), 3)
    """

    layers: Sequence[nn.Module]
    residual: bool | Sequence[bool] = False

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Sequence[Any] | None = None,
        seq_lengths: jax.Array | None = None,
        resets: jax.Array | None = None,
        return_carry: bool = False,
        time_major: bool = False,
    ) -> jax.Array | tuple[tuple[Any, ...], jax.Array]:
        """Run the stack; return the last layer's output, or ``(carries, output)`` with one
        carry per layer when ``return_carry``. ``initial_carry``: one carry (or None) per
        layer."""
        flags = layer_common.residual_flags(self.residual, len(self.layers))
        carries, y = layer_common.run_stack(
            self.layers, flags, inputs, initial_carry=initial_carry, seq_lengths=seq_lengths,
            resets=resets, time_major=time_major,
        )
        return (carries, y) if return_carry else y
