"""Flax NNX layers: a head-wise LSTM, GRU, sLSTM or Elman network over a whole sequence."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer, PrecisionLike

from flashrnn_jax import layer_common
from flashrnn_jax.sharding import AxisName


class FlashRNN(nnx.Module):
    r"""A head-wise recurrent layer that runs a whole sequence in one call.

    The NNX twin of :class:`flashrnn_jax.linen.FlashRNN`: same parameters (names, shapes,
    layouts, initializers), same equations, same call protocol and carry format, so both give
    the same output for the same parameter values.

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
    ``[Gt, N, D]``, with the gate orders of :mod:`flashrnn_jax.cells`. The carry is one array
    ``[S, *batch, hidden_size]``: the cell's states in its order (``h, c`` for lstm; ``h, c, n,
    m`` for slstm; ``h`` for gru and elman), heads concatenated as in the output; pass a
    returned carry as ``initial_carry`` to continue the sequence.

    Many devices: ``head_axis`` names the mesh axis that splits the heads. The parameters then
    carry :func:`flax.nnx.with_partitioning` metadata with the heads axis ``N`` of each on it
    (:func:`flax.nnx.get_partition_spec` reads it; Flax shards them at construction inside
    ``jax.set_mesh(mesh)``, which it then requires), and :func:`flashrnn_jax.flashrnn` runs
    each device's block of heads there; with ``batch_axis`` also its block of batch rows.

    Args:
      in_features: size of the inputs' last axis.
      hidden_size: number of hidden units ``N * D``, the size of the output's last axis.
      function: ``"lstm"``, ``"gru"``, ``"slstm"`` or ``"elman"``.
      num_heads: number of heads ``N``; must divide ``hidden_size``.
      backend: ``"auto"``, ``"fused"`` or ``"scan"``, passed to :func:`flashrnn_jax.flashrnn`.
      dtype: the dtype of the computation: inputs and parameters are cast to it, and the output
        and carry have it (default: the promotion of the input and parameter dtypes). The
        recurrence itself accumulates in float32 (float64 for float64).
      param_dtype: the dtype of the parameters (default: float32).
      precision: precision of the input projection matmul, as for :class:`flax.nnx.Linear`.
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
      rngs: the ``params`` stream draws the initial parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from flashrnn_jax.nnx import FlashRNN
      >>> layer = FlashRNN(16, 64, function="slstm", num_heads=4, rngs=nnx.Rngs(0))
      >>> layer.recurrent_kernel.shape, layer.kernel.shape, layer.bias.shape
      ((4, 4, 16, 16), (16, 4, 4, 16), (4, 4, 16))
      >>> x = jax.random.normal(jax.random.key(1), (8, 100, 16))  # [batch, time, features]
      >>> y = layer(x)
      >>> y.shape
      (8, 100, 64)

      Continuing from a returned carry equals running the whole sequence at once:

      >>> carry, y1 = layer(x[:, :60], return_carry=True)
      >>> carry.shape  # [S, batch, hidden_size]: h, c, n, m
      (4, 8, 64)
      >>> y2 = layer(x[:, 60:], initial_carry=carry)
      >>> bool(jnp.allclose(jnp.concatenate([y1, y2], axis=1), y, atol=1e-5))
      True
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        function: str = "lstm",
        num_heads: int = 1,
        backend: str = "auto",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = layer_common.default_kernel_init,
        recurrent_kernel_init: Initializer = layer_common.default_recurrent_kernel_init,
        bias_init: Initializer = layer_common.default_bias_init,
        gradient_recurrent_cut: bool = False,
        gradient_recurrent_clipval: float | None = None,
        batch_axis: AxisName = None,
        head_axis: AxisName = None,
        rngs: nnx.Rngs,
    ):
        self._layout = layer_common.head_layout(function, hidden_size, num_heads)
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.function = function
        self.num_heads = num_heads
        self.backend = backend
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.batch_axis = batch_axis
        self.head_axis = head_axis
        self.gradient_recurrent_cut = gradient_recurrent_cut
        self.gradient_recurrent_clipval = gradient_recurrent_clipval
        names = layer_common.partition_names(head_axis)

        def init(name: str, initializer: Initializer) -> Initializer:
            return initializer if names is None else nnx.with_partitioning(
                initializer, names[name])

        self.kernel = nnx.Param(
            init("kernel", layer_common.flat_kernel_init(kernel_init))(
                rngs.params(), self._layout.kernel_shape(in_features), param_dtype
            )
        )
        self.recurrent_kernel = nnx.Param(
            init("recurrent_kernel", layer_common.blockwise(recurrent_kernel_init))(
                rngs.params(), self._layout.recurrent_kernel_shape, param_dtype
            )
        )
        self.bias = nnx.Param(
            init("bias", bias_init)(rngs.params(), self._layout.bias_shape, param_dtype)
        )

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: jax.Array | None = None,
        rngs: Any = None,
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
            reading order, as :class:`flax.nnx.RNN`).

        The call protocol is :class:`flax.nnx.RNN`'s, so the layer works inside
        ``Bidirectional``. Padded positions of the output hold zeros.

        Returns:
          ``h`` ``[*batch, T, hidden_size]`` (``[T, *batch, hidden_size]`` when
          ``time_major``), or ``(carry, h)`` when ``return_carry``.
        """
        del rngs  # the carry starts at zeros; kept for the nnx.RNN protocol
        carry, h = layer_common.apply(
            self._layout, inputs, self.kernel[...], self.recurrent_kernel[...], self.bias[...],
            initial_carry=initial_carry, time_major=bool(time_major), dtype=self.dtype,
            precision=self.precision, backend=self.backend, batch_axis=self.batch_axis,
            head_axis=self.head_axis, seq_lengths=seq_lengths, resets=resets,
            reverse=bool(reverse), keep_order=bool(keep_order),
            gradient_recurrent_cut=self.gradient_recurrent_cut,
            gradient_recurrent_clipval=self.gradient_recurrent_clipval,
        )
        return (carry, h) if return_carry else h

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None) -> jax.Array:
        """Zero states ``[S, *batch, hidden_size]`` in ``param_dtype``, as flax's NNX cells.

        Args:
          input_shape: the shape of one time step's input, ``(*batch, in_features)``.
          rngs: unused (the carry starts at zero); kept for the NNX cell protocol.
        """
        del rngs
        return layer_common.zeros_carry(self._layout, tuple(input_shape[:-1]), self.param_dtype)


class _FixedFunction(FlashRNN):
    """:class:`FlashRNN` with ``function`` pinned by the subclass."""

    FUNCTION: ClassVar[str]

    def __init__(self, in_features: int, hidden_size: int, **kwargs: Any):
        super().__init__(in_features, hidden_size, function=self.FUNCTION, **kwargs)


class LSTM(_FixedFunction):
    """:class:`FlashRNN` with ``function="lstm"``: ``LSTM(in_features, hidden_size, ...)``."""

    FUNCTION = "lstm"


class GRU(_FixedFunction):
    """:class:`FlashRNN` with ``function="gru"``: ``GRU(in_features, hidden_size, ...)``."""

    FUNCTION = "gru"


class SLSTM(_FixedFunction):
    """:class:`FlashRNN` with ``function="slstm"``: ``SLSTM(in_features, hidden_size, ...)``."""

    FUNCTION = "slstm"


class Elman(_FixedFunction):
    """:class:`FlashRNN` with ``function="elman"``: ``Elman(in_features, hidden_size, ...)``."""

    FUNCTION = "elman"


class StackedRNN(nnx.Module):
    """Layers run one after the other, each optionally with a residual connection.

    Each layer must follow the :class:`flax.nnx.RNN` call protocol (:class:`FlashRNN`,
    :class:`flax.nnx.Bidirectional` of two of them, ``nnx.RNN``...); ``seq_lengths`` and
    ``resets`` are passed to every layer (``resets`` only when given).

    Args:
      layers: the layers, first to last.
      residual: a bool for every layer, or one per layer: where True the layer's input is
        added to its output (``y = layer(x) + x``; the sizes must match).

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from flashrnn_jax.nnx import FlashRNN, StackedRNN
      >>> rngs = nnx.Rngs(0)
      >>> stack = StackedRNN([FlashRNN(8, 32, num_heads=4, rngs=rngs),
      ...                     FlashRNN(32, 32, num_heads=4, rngs=rngs)], residual=(False, True))
      >>> stack(jax.random.normal(jax.random.key(1), (2, 10, 8))).shape
      (2, 10, 32)
    """

    def __init__(self, layers, *, residual=False):
        self.layers = nnx.List(layers)
        self.residual = layer_common.residual_flags(residual, len(self.layers))

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry=None,
        seq_lengths: jax.Array | None = None,
        resets: jax.Array | None = None,
        return_carry: bool = False,
        time_major: bool = False,
    ):
        """Run the stack; return the last layer's output, or ``(carries, output)`` with one
        carry per layer when ``return_carry``. ``initial_carry``: one carry (or None) per
        layer."""
        carries, y = layer_common.run_stack(
            list(self.layers), self.residual, inputs, initial_carry=initial_carry,
            seq_lengths=seq_lengths, resets=resets, time_major=time_major,
        )
        return (carries, y) if return_carry else y
