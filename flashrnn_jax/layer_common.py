"""What the Linen and NNX layers share: head layout, initializers, the forward pass and the carry.

Both :class:`flashrnn_jax.linen.FlashRNN` and :class:`flashrnn_jax.nnx.FlashRNN` hold the same
three parameters and run the same computation; only how parameters are created and stored
differs. Everything else lives here so the two layers cannot drift apart.

Parameters (``F`` input features, ``H = N * D`` hidden size, ``N`` heads of size ``D``):

============================  ==================  ==========================================
name                          shape               meaning
============================  ==================  ==========================================
``kernel``                    ``[F, Gw, N, D]``   input projection; ``kernel[:, g, n, d]``
                                                  feeds gate ``g``, head ``n``, unit ``d``
``recurrent_kernel``          ``[Gr, N, D, D]``   ``R[g, n, d_out, d_in]``, one matrix per
                                                  gate and head (block-diagonal recurrence)
``bias``                      ``[Gt, N, D]``      gate biases
============================  ==================  ==========================================

``kernel.reshape(F, Gw * H)`` is the flat matrix whose column ``g*H + n*D + d`` feeds gate ``g``,
head ``n``, unit ``d``. The head axis ``N`` is an axis of its own in every parameter so that a
device mesh can split all three by heads (``head_axis``): a split of the flat ``Gw * H`` columns
would cut across gates, not heads.

The carry is one array ``[S, *batch, H]``: the cell's ``S`` states in the cell's order (state 0
is ``h``; see :mod:`flashrnn_jax.cells`), heads concatenated along the last axis as in the
output. The carry returned by a call can be passed back as ``initial_carry`` to continue the
sequence.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.typing import Dtype, Initializer, PrecisionLike

from flashrnn_jax.api import flashrnn
from flashrnn_jax.cells import Cell, get_cell
from flashrnn_jax.scan import reversal_indices
from flashrnn_jax.sharding import AxisName

default_kernel_init: Initializer = jax.nn.initializers.lecun_normal()
default_recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal()
default_bias_init: Initializer = jax.nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    """The cell and the split of ``hidden_size`` into ``num_heads`` heads of ``head_size``."""

    cell: Cell
    hidden_size: int
    num_heads: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def kernel_shape(self, in_features: int) -> tuple[int, int, int, int]:
        return (in_features, self.cell.gates_wx, self.num_heads, self.head_size)

    @property
    def recurrent_kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.cell.gates_r, self.num_heads, self.head_size, self.head_size)

    @property
    def bias_shape(self) -> tuple[int, int, int]:
        return (self.cell.gates_b, self.num_heads, self.head_size)

    def carry_shape(self, batch_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.cell.num_states, *batch_shape, self.hidden_size)


def head_layout(function: str, hidden_size: int, num_heads: int) -> HeadLayout:
    """Validate the layer's configuration; raise ValueError naming the offending argument."""
    cell = get_cell(function)
    for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size must be divisible by num_heads (each head has hidden_size // "
            f"num_heads units), got hidden_size={hidden_size} and num_heads={num_heads}"
        )
    return HeadLayout(cell, hidden_size, num_heads)


def blockwise(init: Initializer) -> Initializer:
    """Apply a matrix initializer to every ``[D, D]`` block of a ``[..., D, D]`` parameter.

    Each block gets its own key, so ``blockwise(orthogonal())`` makes every ``R[g, n]``
    orthogonal (the plain initializer on the whole array would only make the stacked columns
    orthonormal) and fan-in based initializers see the head size ``D``, not ``Gr * N * D``.
    """

    def init_blocks(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
        *lead, d_out, d_in = shape
        keys = jax.random.split(key, math.prod(lead))
        # Draw in at least float32, then round to `dtype`: jax's orthogonal initializer needs a
        # QR decomposition, which has no bfloat16/float16 implementation.
        draw_dtype = jnp.promote_types(dtype, jnp.float32)
        blocks = jax.vmap(lambda k: init(k, (d_out, d_in), draw_dtype))(keys)
        return blocks.reshape(shape).astype(dtype)

    return init_blocks


def flat_kernel_init(init: Initializer) -> Initializer:
    """Draw the ``[F, Gw, N, D]`` kernel as the flat ``[F, Gw * N * D]`` matrix, then reshape.

    As :class:`flax.linen.DenseGeneral`: fan-in based initializers see ``fan_in = F`` (on the
    4-d shape they would take ``F * Gw * N`` for it), and the values equal those of the flat
    layout for the same key.
    """

    def init_flat(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
        return init(key, (shape[0], math.prod(shape[1:])), dtype).reshape(shape)

    return init_flat


def partition_names(head_axis: AxisName) -> dict[str, tuple[AxisName, ...]] | None:
    """Per parameter, the mesh axis of each of its axes: the heads axis ``N`` on ``head_axis``.

    None when ``head_axis`` is None, so that single-device layers carry no metadata.
    """
    if head_axis is None:
        return None
    return {
        "kernel": (None, None, head_axis, None),
        "recurrent_kernel": (None, head_axis, None, None),
        "bias": (None, head_axis, None),
    }


def split_time(inputs: jax.Array, time_major: bool) -> tuple[jax.Array, tuple[int, ...]]:
    """Return the inputs as ``[*batch, T, F]`` and the batch shape."""
    if inputs.ndim < 2:
        layout = "[T, *batch, features]" if time_major else "[*batch, T, features]"
        raise ValueError(f"inputs must have shape {layout} (rank >= 2), got shape {inputs.shape}")
    if time_major:
        inputs = jnp.moveaxis(inputs, 0, -2)
    return inputs, inputs.shape[:-2]


def zeros_carry(layout: HeadLayout, batch_shape: tuple[int, ...], dtype: Dtype) -> jax.Array:
    """The carry a sequence starts from: all states zero, ``[S, *batch, H]``."""
    return jnp.zeros(layout.carry_shape(batch_shape), dtype)


def apply(
    layout: HeadLayout,
    inputs: jax.Array,
    kernel: jax.Array,
    recurrent_kernel: jax.Array,
    bias: jax.Array,
    *,
    initial_carry: jax.Array | None,
    time_major: bool,
    dtype: Dtype | None,
    precision: PrecisionLike,
    backend: str,
    batch_axis: AxisName = None,
    head_axis: AxisName = None,
    seq_lengths: jax.Array | None = None,
    resets: jax.Array | None = None,
    reverse: bool = False,
    keep_order: bool = False,
    gradient_recurrent_cut: bool = False,
    gradient_recurrent_clipval: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Run the layer; return ``(carry [S, *batch, H], h [*batch, T, H] or [T, *batch, H])``.

    ``batch_axis``, ``head_axis``, ``reverse`` and the gradient options are passed on to
    :func:`flashrnn_jax.flashrnn`; ``seq_lengths`` ``[*batch]`` and ``resets`` ``[*batch, T]``
    (``[T, *batch]`` when ``time_major``) are flattened to its ``[B]`` and ``[B, T]``. As
    :class:`flax.linen.RNN`: with ``reverse`` and not ``keep_order`` the output is in reading
    order (position ``j`` of row ``b`` holds the step that read input ``L_b - 1 - j``).
    """
    x, batch_shape = split_time(jnp.asarray(inputs), time_major)
    *_, T, F = x.shape
    if F != kernel.shape[0]:
        raise ValueError(
            f"inputs must have in_features = {kernel.shape[0]} on the last axis, got inputs of "
            f"shape {jnp.shape(inputs)}"
        )
    # As flax.linen.Dense: every operand is cast to `dtype`, or to the promotion of the
    # input and parameter dtypes when `dtype` is None. The kernels see one dtype.
    x, kernel, recurrent_kernel, bias = promote_dtype(
        x, kernel, recurrent_kernel, bias, dtype=dtype
    )
    B = math.prod(batch_shape)
    N, D = layout.num_heads, layout.head_size
    Wx = jnp.einsum("btf,fgnd->btgnd", x.reshape(B, T, F), kernel, precision=precision)

    states = None
    if initial_carry is not None:
        expected = layout.carry_shape(batch_shape)
        if jnp.shape(initial_carry) != expected:
            raise ValueError(
                f"initial_carry must have shape [S, *batch, hidden_size] = {expected} for "
                f"function={layout.cell.name!r} and inputs of shape {jnp.shape(inputs)}, got "
                f"{jnp.shape(initial_carry)}"
            )
        states = jnp.asarray(initial_carry, Wx.dtype).reshape(layout.cell.num_states, B, N, D)

    if seq_lengths is not None:
        seq_lengths = jnp.asarray(seq_lengths)
        if seq_lengths.shape != batch_shape:
            raise ValueError(
                f"seq_lengths must have the batch shape {batch_shape} of the inputs, got "
                f"shape {seq_lengths.shape}"
            )
        seq_lengths = seq_lengths.reshape(B)
    if resets is not None:
        resets = jnp.asarray(resets)
        layout_name = "[T, *batch]" if time_major else "[*batch, T]"
        expected = (T, *batch_shape) if time_major else (*batch_shape, T)
        if resets.shape != expected:
            raise ValueError(
                f"resets must have shape {layout_name} = {expected}, got shape {resets.shape}"
            )
        if time_major:
            resets = jnp.moveaxis(resets, 0, -1)
        resets = resets.reshape(B, T)

    states_all, last = flashrnn(
        Wx, recurrent_kernel, bias, states, function=layout.cell.name, backend=backend,
        batch_axis=batch_axis, head_axis=head_axis, seq_lengths=seq_lengths, resets=resets,
        reverse=reverse, gradient_recurrent_cut=gradient_recurrent_cut,
        gradient_recurrent_clipval=gradient_recurrent_clipval,
    )
    h = states_all[0]
    if reverse and not keep_order:
        index = reversal_indices(seq_lengths, B, T)
        h = jnp.take_along_axis(h, index.reshape(B, T, 1, 1), axis=1)
    h = h.reshape(*batch_shape, T, layout.hidden_size)
    if time_major:
        h = jnp.moveaxis(h, -2, 0)
    carry = last.reshape(layout.carry_shape(batch_shape))
    return carry, h


def residual_flags(residual, num_layers: int) -> tuple[bool, ...]:
    """``residual`` (a bool, or one bool per layer) as one bool per layer."""
    if isinstance(residual, bool):
        return (residual,) * num_layers
    flags = tuple(residual)
    if len(flags) != num_layers or not all(isinstance(f, bool) for f in flags):
        raise ValueError(
            f"residual must be a bool or a sequence of {num_layers} bools (one per layer), got "
            f"{residual!r}"
        )
    return flags


def run_stack(layers, flags, inputs, *, initial_carry, seq_lengths, resets, time_major,
              extra=None):
    """Run ``layers`` one after the other; return ``(tuple of carries, output)``.

    Every layer is called with the :class:`flax.linen.RNN` protocol (``return_carry=True``,
    ``time_major``, ``seq_lengths`` and ``resets`` when given, and ``extra``). Where
    ``flags[i]``, layer ``i``'s input is added to its output (the shapes must match).
    """
    if initial_carry is None:
        initial_carry = (None,) * len(layers)
    if len(initial_carry) != len(layers):
        raise ValueError(
            f"initial_carry must hold one carry (or None) per layer, {len(layers)} in all, got "
            f"{len(initial_carry)}"
        )
    options = dict(extra or {})
    if seq_lengths is not None:
        options["seq_lengths"] = seq_lengths
    if resets is not None:
        options["resets"] = resets
    carries = []
    x = inputs
    for i, (layer, carry0, residual) in enumerate(zip(layers, initial_carry, flags)):
        carry, y = layer(x, initial_carry=carry0, return_carry=True, time_major=time_major,
                         **options)
        if residual:
            if jnp.shape(y) != jnp.shape(x):
                raise ValueError(
                    f"residual connection around layer {i}: its output shape {jnp.shape(y)} "
                    f"differs from its input shape {jnp.shape(x)}; set residual=False for "
                    "layers that change the feature size"
                )
            y = y + x
        carries.append(carry)
        x = y
    return tuple(carries), x
