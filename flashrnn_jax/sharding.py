"""Many devices: one ``flashrnn`` call split over a device mesh along batch and heads.

Every head is an independent RNN and every batch row an independent sequence, so a call split
into blocks of rows and heads needs no communication at all in the forward pass: each device
runs the per-device backend (the fused kernels or the ``lax.scan``, chosen exactly as on one
device) on its own block. This module wraps that per-device function in :func:`jax.shard_map`,
JAX's own SPMD machinery, so XLA sees a manual partition it cannot re-layout and the compiled
forward holds no all-gather, all-to-all or collective-permute. Differentiation goes through
``shard_map``'s transpose: ``dWx`` and the initial-state gradients stay sharded like their
inputs, and ``dR`` and ``db`` — replicated over the batch axis — are summed over it once, after
the backward recurrence (an all-reduce: the only collective of the backward pass).

Block layouts (``batch``/``heads`` the mesh axes, ``·`` not split)::

    Wx      [B@batch, T, Gw, N@heads, D]      states_all [S, B@batch, T, N@heads, D]
    R       [Gr, N@heads, D, D]               last_states [S, B@batch, N@heads, D]
    b       [Gt, N@heads, D]
    states  [S, B@batch, N@heads, D]
    seq_lengths [B@batch]                     resets [B@batch, T]   (when given)

Inputs laid out otherwise are first moved into these layouts, which does communicate: ``Wx``
split along time, gates or ``D`` is gathered there (a head's recurrence needs all of them).

How the mesh axes are found (:func:`plan`): passed as ``batch_axis`` / ``head_axis`` (with a
``mesh``, or the mesh of ``jax.set_mesh``), or, when neither is passed, read from the sharding
type of ``Wx`` on meshes with ``Explicit`` axes (the default of ``jax.make_mesh``). On meshes
with ``Auto`` axes the type carries no sharding, so the axes must be passed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Union

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

# A mesh axis name, several names (the dimension is split over their product), or None.
AxisName = Union[str, tuple[str, ...], None]


@dataclasses.dataclass(frozen=True)
class MeshPlan:
    """How one call is split: the mesh and the mesh axes that split the batch and the heads."""

    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh
    batch_axis: AxisName
    head_axis: AxisName

    def in_specs(self) -> tuple[P, P, P, P]:
        """Specs of ``(Wx, R, b, states)``."""
        batch, heads = self.batch_axis, self.head_axis
        return (P(batch, None, None, heads, None), P(None, heads, None, None),
                P(None, heads, None), P(None, batch, heads, None))

    def out_specs(self) -> tuple[P, P]:
        """Specs of ``(states_all, last_states)``."""
        batch, heads = self.batch_axis, self.head_axis
        return P(None, batch, None, heads, None), P(None, batch, heads, None)


def plan(
    Wx: jax.Array,
    *,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None,
    batch_axis: AxisName,
    head_axis: AxisName,
) -> MeshPlan | None:
    """Resolve and validate the split of a call; None runs it unsplit.

    When neither ``batch_axis`` nor ``head_axis`` is given, both are read from the sharding
    type of ``Wx`` (axis 0 and axis 3 of its spec), which is only set on meshes with
    ``Explicit`` axes. The mesh is ``mesh``, else the one of ``Wx``'s type, else the mesh of
    ``jax.set_mesh``.

    Raises:
      TypeError: an axis is neither None, a string nor a tuple of strings.
      ValueError: an axis is given without a mesh, names no axis of the mesh, is used for both
        batch and heads, or its size does not divide the batch size or the number of heads.
    """
    for name, axis in (("batch_axis", batch_axis), ("head_axis", head_axis)):
        if not (axis is None or isinstance(axis, str)
                or (isinstance(axis, tuple) and axis and all(isinstance(a, str) for a in axis))):
            raise TypeError(
                f"{name} must be None, a mesh axis name or a tuple of them, got {axis!r}"
            )
    typed = jax.typeof(Wx).sharding
    typed_mesh = _mesh_of(Wx)
    if batch_axis is None and head_axis is None:
        if typed_mesh is None:
            return None
        spec = tuple(typed.spec) + (None,) * (Wx.ndim - len(typed.spec))
        batch_axis, head_axis = spec[0], spec[3]
        if batch_axis is None and head_axis is None:
            return None
    if mesh is None:
        mesh = typed_mesh if typed_mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh.empty:
        raise ValueError(
            "batch_axis/head_axis name mesh axes, but there is no mesh: pass mesh= or call "
            "inside `with jax.set_mesh(mesh):`"
        )
    overlap = set(_names(batch_axis)) & set(_names(head_axis))
    if overlap:
        raise ValueError(
            f"batch_axis={batch_axis!r} and head_axis={head_axis!r} share the mesh axes "
            f"{sorted(overlap)}; a mesh axis can split only one of them"
        )
    B, N = Wx.shape[0], Wx.shape[3]
    _check_axis("batch_axis", batch_axis, mesh, f"the batch size B={B} of Wx", B)
    _check_axis("head_axis", head_axis, mesh, f"the number of heads N={N} of Wx", N)
    return MeshPlan(mesh, batch_axis, head_axis)


def run(
    fn: Callable, plan: MeshPlan, Wx, R, b, states, seq_lengths=None, resets=None
) -> tuple[jax.Array, jax.Array]:
    """Run ``fn(Wx, R, b, states, seq_lengths, resets) -> (states_all, last_states)`` on every
    block of ``plan``.

    ``fn`` sees one device's block (batch ``B / |batch_axis|``, heads ``N / |head_axis|``)
    and must be the single-device computation: it runs unchanged on every block.
    ``seq_lengths`` ``[B]`` and ``resets`` ``[B, T]`` (None when unused) are split along the
    batch axis like ``Wx``.
    """
    batch = plan.batch_axis
    inputs = [Wx, R, b, states]
    in_specs = list(plan.in_specs())
    extra = {}
    for name, x, spec in (("seq_lengths", seq_lengths, P(batch)),
                          ("resets", resets, P(batch, None))):
        if x is not None:
            extra[name] = len(inputs)
            inputs.append(x)
            in_specs.append(spec)
    in_specs = tuple(in_specs)
    args = tuple(_conform(x, plan.mesh, spec) for x, spec in zip(inputs, in_specs))

    def block_fn(*block):
        options = {name: block[i] for name, i in extra.items()}
        return fn(*block[:4], **options)

    # check_vma=False: the fused backend's FFI calls carry no device-variance types (JAX
    # treats their results as identical on every device, which a custom_vjp rejects), and
    # without the checks JAX also inserts no per-step variance casts into the scan, whose
    # transposes would all-reduce dR and db at every time step. The transpose of shard_map
    # then sums the cotangents of R and b over the mesh axes their specs do not name (the
    # batch axis), once, after the backward pass; out_specs name every split axis, so the
    # results are exactly those of one device.
    return jax.shard_map(
        block_fn, mesh=plan.mesh, in_specs=in_specs, out_specs=plan.out_specs(), check_vma=False
    )(*args)


def _mesh_of(Wx: jax.Array) -> jax.sharding.Mesh | jax.sharding.AbstractMesh | None:
    """The mesh of ``Wx``'s sharding type, or None; concrete for a concrete array, since
    outside ``jit`` moving arrays onto an abstract mesh needs a ``jax.set_mesh`` context."""
    mesh = getattr(jax.typeof(Wx).sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    if not isinstance(Wx, jax.core.Tracer) and isinstance(Wx.sharding, NamedSharding):
        return Wx.sharding.mesh
    return mesh


def _names(axis: AxisName) -> tuple[str, ...]:
    return () if axis is None else (axis,) if isinstance(axis, str) else axis


def _check_axis(argument: str, axis: AxisName, mesh, what: str, size: int) -> None:
    names = _names(axis)
    unknown = [a for a in names if a not in mesh.axis_names]
    if unknown:
        raise ValueError(
            f"{argument}={axis!r} names {unknown}, not an axis of the mesh (its axes: "
            f"{dict(mesh.shape)})"
        )
    parts = math.prod(mesh.shape[a] for a in names)
    if size % parts:
        raise ValueError(
            f"{argument}={axis!r}: {what} is not divisible by the {parts} devices of mesh "
            f"axis {axis!r} (mesh {dict(mesh.shape)}); choose sizes that divide evenly"
        )


def _conform(x: jax.Array, mesh, spec: P) -> jax.Array:
    """``x`` with the sharding type ``spec`` where its mesh has Explicit axes.

    ``shard_map`` requires the type of an input on Explicit axes to equal its ``in_specs``;
    a replicated input becomes sharded by a local slice. On Auto axes there is no type to
    match and XLA lays the input out for the ``shard_map`` itself.
    """
    if not any(t == AxisType.Explicit for t in mesh.axis_types):
        return x
    if jax.typeof(x).sharding.spec == spec:
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh, spec))
