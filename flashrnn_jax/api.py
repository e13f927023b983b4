"""``flashrnn()``: argument validation with clear errors, and the choice of backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_jax import fused, sharding
from flashrnn_jax.cells import get_cell
from flashrnn_jax.scan import flashrnn_scan

BACKENDS: tuple[str, ...] = ("auto", "fused", "scan")


def flashrnn(
    Wx: jax.Array,
    R: jax.Array,
    b: jax.Array,
    states: jax.Array | None = None,
    *,
    function: str = "lstm",
    backend: str = "auto",
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    batch_axis: sharding.AxisName = None,
    head_axis: sharding.AxisName = None,
    seq_lengths: jax.Array | None = None,
    resets: jax.Array | None = None,
    reverse: bool = False,
    gradient_recurrent_cut: bool = False,
    gradient_recurrent_clipval: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Run a head-wise recurrent network over a whole sequence.

    The hidden state of size ``N*D`` is split into ``N`` heads of size ``D``, each an
    independent RNN (the recurrent matrix is block-diagonal). The input projection ``W x`` is
    the caller's: ``Wx`` holds the input pre-activations of every gate.

    Args:
      Wx: ``[B, T, Gw, N, D]`` input pre-activations (batch, time, gate, head, head dim).
      R: ``[Gr, N, D, D]`` recurrent weights; gate ``g`` of head ``n`` adds
        ``R[g, n] @ h_prev`` (``R[g, n, d_out, d_in]``).
      b: ``[Gt, N, D]`` biases.
      states: ``[S, B, N, D]`` (or ``[S, B, 1, N, D]``) initial states in the cell's state
        order; ``None`` means zeros.
      function: ``"lstm"``, ``"gru"``, ``"slstm"`` or ``"elman"``; the gate counts and state
        orders are listed in :mod:`flashrnn_jax.cells`.
      backend: ``"scan"`` (``lax.scan``, every platform), ``"fused"`` (the CUDA kernels; raises
        :class:`~flashrnn_jax.FusedBackendUnavailableError` saying why when they cannot run
        the call) or ``"auto"`` (the kernels when they support the call and its gradient,
        else the scan).
      mesh: the device mesh for ``batch_axis``/``head_axis``; default: the mesh of ``Wx``'s
        sharding type, else the one set by ``jax.set_mesh``.
      batch_axis: mesh axis name (or tuple of names) that splits the batch ``B``.
      head_axis: mesh axis name (or tuple of names) that splits the heads ``N``. With either
        set, every device runs the backend on its block of rows and heads, with no
        communication in the forward pass (:mod:`flashrnn_jax.sharding`). When neither is set,
        both are read from the sharding type of ``Wx`` on meshes with ``Explicit`` axes (the
        default of ``jax.make_mesh``); on ``Auto`` meshes they must be passed. ``B`` and ``N``
        must be divisible by the number of devices along their axes (else ValueError).
        ``seq_lengths`` and ``resets`` are split along the batch axis like ``Wx``.
      seq_lengths: int ``[B]`` valid lengths (right padding), each in ``0..T``: at steps
        ``t >= seq_lengths[b]`` the states of row ``b`` stay unchanged and ``states_all``
        holds zeros; ``last_states[:, b]`` is the state after step ``seq_lengths[b] - 1``
        (the initial state for length 0). None: every row has length ``T``. Concrete
        values outside ``0..T`` raise ValueError; traced ones (under ``jit``) are clamped.
      resets: bool ``[B, T]``: where ``resets[b, t]``, the states of row ``b`` are set back to
        the initial states (``states``, zeros if None) just before input ``t`` is read. In
        input time order also when ``reverse``; ignored at padded positions.
      reverse: read every row from its last valid input back to input 0. ``states_all`` stays
        in input time order: position ``t`` holds the state after reading input ``t``;
        ``last_states`` is the state after reading input 0.
      gradient_recurrent_cut: no gradient through the recurrent path: ``h_prev`` entering
        ``R @ h_prev`` is treated as a constant (forward values unchanged).
      gradient_recurrent_clipval: ``v > 0``: the cotangent reaching ``h_prev`` through
        ``R @ h_prev`` is clipped to ``[-v, v]`` at every step (forward values unchanged).

    Every backend runs the sequence and gradient options: the fused kernels apply them as
    masks in their pointwise stage and in their backward pass, with no fallback.

    Returns:
      ``(states_all, last_states)``: ``states_all`` ``[S, B, T, N, D]`` holds every state
      after each step (``states_all[0]`` is the hidden output ``h``); ``last_states``
      ``[S, B, N, D]`` the states after the last step. Both in the dtype of ``Wx``.

    Arithmetic is float32 for float16/bfloat16/float32 inputs (matmul accumulation, pointwise
    step and the carried states) and float64 for float64 inputs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flashrnn_jax import flashrnn
      >>> B, T, N, D = 2, 5, 3, 8
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> Wx = jax.random.normal(k1, (B, T, 4, N, D))
      >>> R = 0.1 * jax.random.normal(k2, (4, N, D, D))
      >>> b = jnp.zeros((4, N, D))
      >>> states_all, last = flashrnn(Wx, R, b, function="lstm")
      >>> states_all.shape, last.shape
      ((2, 2, 5, 3, 8), (2, 2, 3, 8))
    """
    cell = get_cell(function)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    Wx, R, b = (_as_float_array(x, name) for x, name in ((Wx, "Wx"), (R, "R"), (b, "b")))
    per_fn = f"(for function={function!r})"
    _check_shape("Wx", Wx, "[B, T, Gw, N, D]", {2: (f"Gw {per_fn}", cell.gates_wx)})
    B, T, _, N, D = Wx.shape
    _check_shape("R", R, "[Gr, N, D, D]",
                 {0: (f"Gr {per_fn}", cell.gates_r), 1: ("N", N), 2: ("D", D), 3: ("D", D)})
    _check_shape("b", b, "[Gt, N, D]",
                 {0: (f"Gt {per_fn}", cell.gates_b), 1: ("N", N), 2: ("D", D)})

    S = cell.num_states
    compute_dtype = _compute_dtype(Wx, R, b)
    if states is None:
        states = jnp.zeros((S, B, N, D), compute_dtype)
    else:
        states = _as_float_array(states, "states")
        if states.ndim not in (4, 5):
            raise ValueError(
                f"states must have rank 4 [S, B, N, D] or rank 5 [S, B, 1, N, D], "
                f"got shape {states.shape}"
            )
        if states.ndim == 5:
            _check_shape("states", states, "[S, B, 1, N, D]",
                         {0: (f"S {per_fn}", S), 1: ("B", B), 2: ("1", 1), 3: ("N", N),
                          4: ("D", D)})
            states = states.reshape(S, B, N, D)
        else:
            _check_shape("states", states, "[S, B, N, D]",
                         {0: (f"S {per_fn}", S), 1: ("B", B), 2: ("N", N), 3: ("D", D)})
    compute_dtype = _compute_dtype(Wx, R, b, states)
    seq_lengths = _check_seq_lengths(seq_lengths, B, T)
    resets = _check_resets(resets, B, T)
    for name, flag in (("reverse", reverse), ("gradient_recurrent_cut", gradient_recurrent_cut)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    reverse, gradient_recurrent_cut = bool(reverse), bool(gradient_recurrent_cut)
    clipval = _check_clipval(gradient_recurrent_clipval)

    def run_scan(Wx, R, b, states, seq_lengths=None, resets=None):
        return flashrnn_scan(
            Wx, R, b, states, seq_lengths, resets, function=function,
            compute_dtype=compute_dtype, reverse=reverse,
            gradient_recurrent_cut=gradient_recurrent_cut, gradient_recurrent_clipval=clipval,
        )

    def run_fused(Wx, R, b, states, seq_lengths=None, resets=None):
        return fused.flashrnn_fused(
            Wx, R, b, states, seq_lengths, resets, function=function, reverse=reverse,
            gradient_recurrent_cut=gradient_recurrent_cut, gradient_recurrent_clipval=clipval,
        )

    def run_auto(Wx, R, b, states, seq_lengths=None, resets=None):
        # The kernels exist for this call; the platform the computation is lowered for decides.
        return jax.lax.platform_dependent(Wx, R, b, states, seq_lengths, resets,
                                          cuda=run_fused, default=run_scan)

    if backend == "scan":
        per_device = run_scan
    else:
        reason = fused.unsupported_reason(Wx.dtype, D, function, for_auto=backend == "auto",
                                          steps=T)
        if backend == "fused" and reason is not None:
            raise fused.FusedBackendUnavailableError(
                f"backend='fused' cannot run this call: {reason}. "
                "Use backend='auto' to fall back to the scan backend."
            )
        per_device = run_fused if backend == "fused" else run_auto if reason is None else run_scan

    # Many devices: the same per-device function runs on every block of batch rows and heads.
    split = sharding.plan(Wx, mesh=mesh, batch_axis=batch_axis, head_axis=head_axis)
    if split is None:
        return per_device(Wx, R, b, states, seq_lengths, resets)
    return sharding.run(per_device, split, Wx, R, b, states, seq_lengths, resets)


def _concrete_values(x) -> np.ndarray | None:
    """The values of ``x``, or None while it is traced (under jit their range is unchecked)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_seq_lengths(seq_lengths, B: int, T: int) -> jax.Array | None:
    if seq_lengths is None:
        return None
    if not isinstance(seq_lengths, jax.Array):
        seq_lengths = jnp.asarray(seq_lengths)
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must have an integer dtype, got {seq_lengths.dtype}")
    if seq_lengths.shape != (B,):
        raise ValueError(
            f"seq_lengths must have shape [B] = {(B,)}, got shape {seq_lengths.shape}"
        )
    values = _concrete_values(seq_lengths)
    if values is None:
        # Traced values cannot be checked: clamp them, so that every backend reads the same
        # rows and none indexes outside them.
        return jnp.clip(seq_lengths, 0, T)
    if values.min() < 0 or values.max() > T:
        raise ValueError(
            f"seq_lengths must lie in 0..T = 0..{T}, got values from {values.min()} to "
            f"{values.max()}"
        )
    return seq_lengths


def _check_resets(resets, B: int, T: int) -> jax.Array | None:
    if resets is None:
        return None
    if not isinstance(resets, jax.Array):
        resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise TypeError(f"resets must have dtype bool, got {resets.dtype}")
    if resets.shape != (B, T):
        raise ValueError(f"resets must have shape [B, T] = {(B, T)}, got shape {resets.shape}")
    return resets


def _check_clipval(clipval) -> float | None:
    if clipval is None:
        return None
    if isinstance(clipval, (bool, np.bool_)) or not isinstance(clipval, (int, float, np.number)):
        raise TypeError(
            f"gradient_recurrent_clipval must be None or a positive Python number, got "
            f"{clipval!r}"
        )
    clipval = float(clipval)
    if not clipval > 0:
        raise ValueError(f"gradient_recurrent_clipval must be > 0, got {clipval}")
    return clipval


def _as_float_array(x, name: str) -> jax.Array:
    if not isinstance(x, jax.Array):
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array, got {type(x).__name__}") from err
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}"
        )
    return x


def _check_shape(name: str, x: jax.Array, layout: str, expected: dict[int, tuple[str, int]]):
    """Check rank, non-empty axes and the sizes in ``expected`` (axis -> (symbol, size))."""
    rank = layout.count(",") + 1
    if x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank} {layout}, got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} {layout} must have no empty axis, got shape {x.shape}")
    for axis, (symbol, size) in expected.items():
        if x.shape[axis] != size:
            raise ValueError(
                f"{name} {layout} must have {symbol} = {size} on axis {axis}, "
                f"got shape {x.shape}"
            )


def _compute_dtype(*arrays) -> np.dtype:
    """float32, or float64 when any input is float64."""
    return np.dtype(jnp.promote_types(jnp.float32, jnp.result_type(*(a.dtype for a in arrays))))
