"""Many devices: flashrnn and the Flax layers split over a (data × heads) mesh of 8 CPU devices.

Oracles: the same call on one device (and, for the forward, the float64 NumPy reference of
tests/reference.py); the compiled HLO text, whose collective instructions show any
communication XLA inserted. conftest.py gives the CPU platform 8 devices.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from reference import loss_weights, project, random_inputs, random_states, \
    reference_flashrnn

import flashrnn_jax.linen
import flashrnn_jax.nnx
from flashrnn_jax import flashrnn, fused

FUNCTIONS = ("lstm", "gru", "slstm", "elman")
MESHES = ((8, 1), (4, 2), (2, 4))  # (data, heads)
B, T, N, D = 8, 4, 4, 3  # B and N divide every mesh axis above

# The layouts flashrnn splits on: batch on "data", heads on "heads".
WX, R_SPEC, B_SPEC, STATES = (P("data", None, None, "heads", None), P(None, "heads", None, None),
                              P(None, "heads", None), P(None, "data", "heads", None))
STATES_ALL = P(None, "data", None, "heads", None)
COLLECTIVE = re.compile(
    r"\b(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)(?:-start)?\("
)


def make_mesh(shape, axis_type=AxisType.Explicit) -> jax.sharding.Mesh:
    return jax.make_mesh(shape, ("data", "heads"), axis_types=(axis_type, axis_type))


def put(x, mesh, spec) -> jax.Array:
    return jax.device_put(x, NamedSharding(mesh, spec))


def assert_sharded(x: jax.Array, mesh, spec) -> None:
    assert x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim), (x.sharding, spec)


def collectives(hlo: str) -> list[tuple[str, str]]:
    """``(opcode, instruction)`` of every collective in compiled HLO text."""
    return [(m.group(1), line) for line in hlo.splitlines() if (m := COLLECTIVE.search(line))]


def loop_computations(hlo: str) -> set[str]:
    """Names of the computations run inside a while loop (bodies and what they call)."""
    calls, current = {}, None
    for line in hlo.splitlines():
        if header := re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line):
            current = header.group(1)
            calls[current] = set()
        elif current is not None:
            calls[current] |= set(re.findall(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)",
                                             line))
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                calls[current] |= {b.strip().lstrip("%") for b in branches.split(",")}
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    reached, todo = set(), list(bodies)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(calls.get(name, ()))
    return reached


def all_reduce_sizes_outside_loops(hlo: str) -> list[int]:
    """Element counts of every all-reduced operand; asserts none is reduced inside a loop."""
    in_loops = loop_computations(hlo)
    sizes, current = [], None
    for line in hlo.splitlines():
        if header := re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line):
            current = header.group(1)
        m = COLLECTIVE.search(line)
        if m and m.group(1) == "all-reduce":
            assert current not in in_loops, f"all-reduce inside a loop: {line}"
            result_type = line.split("=", 1)[1].split(" all-reduce")[0]
            sizes += [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                      for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", result_type)]
    return sorted(sizes)


def inputs(function: str, seed: int = 0, batch: int = B, heads: int = N):
    """float64 ``(Wx, R, b, states)`` and loss weights (NumPy)."""
    rng = np.random.default_rng(seed)
    Wx, R, b = random_inputs(rng, function, batch, T, heads, D)
    states = random_states(rng, function, batch, heads, D)
    return (Wx, R, b, states), loss_weights(rng, function, batch, T, heads, D)


def loss(Wx, R, b, states, w_all, w_last, *, function, **sharding):
    return project(*flashrnn(Wx, R, b, states, function=function, backend="scan", **sharding),
                   (w_all, w_last))


grad_fn = jax.grad(loss, argnums=(0, 1, 2, 3))


@functools.cache
def one_device(function: str):
    """Outputs and gradients of the whole call on one device: the oracle of every split."""
    args, weights = inputs(function)
    outputs = jax.jit(functools.partial(flashrnn, function=function, backend="scan"))(*args)
    grads = jax.jit(functools.partial(grad_fn, function=function))(*args, *weights)
    return args, weights, outputs, grads


def sharded_args(function: str, mesh):
    args, weights, _, _ = one_device(function)
    specs = (WX, R_SPEC, B_SPEC, STATES, STATES_ALL, STATES)
    return tuple(put(x, mesh, s) for x, s in zip((*args, *weights), specs))


def compiled(f, *args):
    """The compiled executable and its HLO text (one compilation serves both)."""
    executable = jax.jit(f).lower(*args).compile()
    return executable, executable.as_text()


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("function", FUNCTIONS)
def test_split_equals_one_device_with_no_communication(function, mesh_shape):
    """Explicit-axes mesh (jax.make_mesh's default): the split is read from the inputs."""
    mesh = make_mesh(mesh_shape)
    args, weights, outputs, grads = one_device(function)
    sharded = sharded_args(function, mesh)

    forward, hlo = compiled(functools.partial(flashrnn, function=function, backend="scan"),
                            *sharded[:4])
    states_all, last = forward(*sharded[:4])
    # The forward moves nothing between devices, and its results stay split.
    assert collectives(hlo) == []
    assert_sharded(states_all, mesh, STATES_ALL)
    assert_sharded(last, mesh, STATES)
    for got, want in zip((states_all, last), outputs):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(states_all, reference_flashrnn(*args, function)[0], rtol=1e-9,
                               atol=1e-9)

    backward, hlo = compiled(functools.partial(grad_fn, function=function), *sharded)
    got = backward(*sharded)
    # The only communication: one sum over the batch axis of each of dR and db, after the loop.
    assert {op for op, _ in collectives(hlo)} == {"all-reduce"}
    R_block, b_block = args[1][:, : N // mesh_shape[1]], args[2][:, : N // mesh_shape[1]]
    assert all_reduce_sizes_outside_loops(hlo) == sorted([R_block.size, b_block.size])
    for g, want, spec, name in zip(got, grads, (WX, R_SPEC, B_SPEC, STATES),
                                   ("Wx", "R", "b", "states")):
        assert_sharded(g, mesh, spec)
        np.testing.assert_allclose(g, want, rtol=1e-11, atol=1e-11, err_msg=f"d{name}")


def test_auto_mesh_takes_the_axes_as_arguments():
    """On Auto axes the types carry no split: mesh and axes are passed, or the mesh is set."""
    mesh = make_mesh((4, 2), AxisType.Auto)
    _, _, outputs, grads = one_device("lstm")
    sharded = sharded_args("lstm", mesh)
    axes = dict(batch_axis="data", head_axis="heads")

    forward, hlo = compiled(
        functools.partial(flashrnn, function="lstm", backend="scan", mesh=mesh, **axes),
        *sharded[:4])
    assert collectives(hlo) == []
    for got, want in zip(forward(*sharded[:4]), outputs):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    with jax.set_mesh(mesh):  # the mesh from the context
        got = jax.jit(functools.partial(grad_fn, function="lstm", **axes))(*sharded)
    for g, want in zip(got, grads):
        np.testing.assert_allclose(g, want, rtol=1e-11, atol=1e-11)


def test_one_split_axis_and_initial_states_none():
    """Heads only (batch whole on every device), and zero initial states made by flashrnn."""
    mesh = make_mesh((2, 4))
    (Wx, R, b, _), _ = inputs("gru", seed=1)
    want = flashrnn(Wx, R, b, function="gru", backend="scan")
    args = (put(Wx, mesh, P(None, None, None, "heads")), put(R, mesh, R_SPEC),
            put(b, mesh, B_SPEC))
    forward, hlo = compiled(functools.partial(flashrnn, function="gru", backend="scan"), *args)
    assert collectives(hlo) == []
    states_all, last = forward(*args)
    assert_sharded(states_all, mesh, P(None, None, None, "heads", None))
    np.testing.assert_allclose(states_all, want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last, want[1], rtol=1e-12, atol=1e-12)
    # Eager, the split is read from the concrete arrays the same way.
    states_all, _ = flashrnn(*args, function="gru", backend="scan")
    assert_sharded(states_all, mesh, P(None, None, None, "heads", None))
    np.testing.assert_allclose(states_all, want[0], rtol=1e-12, atol=1e-12)


def test_sizes_that_do_not_divide_the_mesh_are_named():
    mesh = make_mesh((4, 2))
    (Wx, R, b, states), _ = inputs("lstm", batch=6, heads=3)
    call = functools.partial(flashrnn, Wx, R, b, states, function="lstm", backend="scan",
                             mesh=mesh)
    with pytest.raises(ValueError, match=r"batch_axis='data': the batch size B=6 of Wx is not "
                                         r"divisible by the 4 devices of mesh axis 'data'"):
        call(batch_axis="data")
    with pytest.raises(ValueError, match=r"head_axis='heads': the number of heads N=3 of Wx is "
                                         r"not divisible by the 2 devices of mesh axis 'heads'"):
        call(head_axis="heads")


def test_bad_axis_arguments_are_named():
    (Wx, R, b, _), _ = inputs("elman")
    call = functools.partial(flashrnn, Wx, R, b, function="elman", backend="scan")
    with pytest.raises(ValueError, match=r"pass mesh= or call inside `with jax.set_mesh"):
        call(batch_axis="data")
    mesh = make_mesh((4, 2))
    with pytest.raises(ValueError, match=r"head_axis='model' names \['model'\], not an axis of "
                                         r"the mesh"):
        call(mesh=mesh, head_axis="model")
    with pytest.raises(ValueError, match=r"share the mesh axes \['data'\]"):
        call(mesh=mesh, batch_axis="data", head_axis=("data", "heads"))
    with pytest.raises(TypeError, match=r"batch_axis must be None, a mesh axis name or a tuple"):
        call(mesh=mesh, batch_axis=0)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=str)
def test_fused_backend_goes_through_the_same_split(monkeypatch, axis_type):
    """The fused kernels cannot run here, but their calls can be traced and lowered for CUDA:
    each kernel sees one device's block, and the forward has no collective."""
    monkeypatch.setattr(fused, "unsupported_reason", lambda *args, **kwargs: None)
    monkeypatch.setattr(fused, "_tiling_attributes", lambda *args: {})
    mesh = make_mesh((4, 2), axis_type)
    sharded = tuple(x.astype(jnp.float32) for x in sharded_args("lstm", mesh))
    block = f"tensor<{B // 4}x{T}x4x{N // 2}x{D}xf32>"  # Wx of one device
    # Explicit axes: the split is read from the inputs; Auto axes: it is passed.
    axes = {} if axis_type == AxisType.Explicit else dict(batch_axis="data", head_axis="heads")

    def lowered(f, *args):
        with jax.set_mesh(mesh):
            return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

    forward = lowered(functools.partial(flashrnn, function="lstm", backend="fused", **axes),
                      *sharded[:4])
    kernel_calls = [line for line in forward.splitlines() if "@flashrnn_jax_forward" in line]
    assert kernel_calls and all(block in line for line in kernel_calls)
    assert not re.search(r"all_gather|all_to_all|collective_permute|all_reduce", forward)

    def fused_loss(Wx, R, b, states, w_all, w_last):
        outputs = flashrnn(Wx, R, b, states, function="lstm", backend="fused", **axes)
        return project(*outputs, (w_all, w_last))

    backward = lowered(jax.grad(fused_loss, argnums=(0, 1, 2, 3)), *sharded)
    assert "@flashrnn_jax_backward" in backward
    assert not re.search(r"all_gather|all_to_all|collective_permute", backward)
    assert "all_reduce" in backward  # dR and db summed over the batch axis


@pytest.mark.gpu
@pytest.mark.parametrize("split", ["batch", "heads"])
def test_fused_split_over_the_gpus_equals_one_gpu(split):
    """Split over every GPU JAX sees (scripts/multi_gpu_check.sh runs it on several)."""
    gpus = jax.devices("cuda")
    shape = (len(gpus), 1) if split == "batch" else (1, len(gpus))
    mesh = jax.make_mesh(shape, ("data", "heads"), devices=gpus)
    # 4 rows or 4 heads per GPU along the split axis, so that any GPU count divides the sizes.
    batch, heads = (4 * len(gpus), 4) if split == "batch" else (4, 4 * len(gpus))
    rng = np.random.default_rng(0)
    Wx, R, b = (x.astype(np.float32) for x in random_inputs(rng, "slstm", batch, 64, heads, 32))
    states = random_states(rng, "slstm", batch, heads, 32).astype(np.float32)
    w_all, w_last = (w.astype(np.float32)
                     for w in loss_weights(rng, "slstm", batch, 64, heads, 32))

    def fused_loss(*args):
        return project(*flashrnn(*args, function="slstm", backend="fused"), (w_all, w_last))

    run = jax.jit(jax.value_and_grad(fused_loss, argnums=(0, 1, 2, 3)))
    want = run(Wx, R, b, states)
    got = run(*(put(x, mesh, s) for x, s in zip((Wx, R, b, states),
                                                 (WX, R_SPEC, B_SPEC, STATES))))
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# Flax layers: F input features, H = NH * DH hidden units.
F, NH, DH = 5, 4, 3
H = NH * DH
PARAM_SPECS = {"kernel": P(None, None, "heads", None),
               "recurrent_kernel": P(None, "heads", None, None), "bias": P(None, "heads", None)}


def layer_inputs(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, T, F))


def linen_reference(function: str, params: dict, x: np.ndarray):
    """One device: the layer without axes on NumPy copies of the parameters."""
    layer = flashrnn_jax.linen.FlashRNN(H, function=function, num_heads=NH)
    params = jax.tree_util.tree_map(np.asarray, params)

    def out_sum(params):
        return jnp.sum(jnp.sin(layer.apply({"params": params}, x)))

    return layer.apply({"params": params}, x), jax.grad(out_sum)(params)


def test_linen_layer_with_sharded_parameters_and_inputs():
    mesh = make_mesh((4, 2))
    layer = flashrnn_jax.linen.FlashRNN(H, function="slstm", num_heads=NH, batch_axis="data",
                                        head_axis="heads")
    x = put(layer_inputs(), mesh, P("data"))
    abstract = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert nn.get_partition_spec(abstract)["params"] == PARAM_SPECS
    variables = jax.jit(layer.init, out_shardings=nn.get_sharding(abstract, mesh))(
        jax.random.key(0), x)
    params = nn.unbox(variables)["params"]
    for name, spec in PARAM_SPECS.items():
        assert_sharded(params[name], mesh, spec)

    forward, hlo = compiled(layer.apply, {"params": params}, x)
    assert [op for op, _ in collectives(hlo)] == []
    y = forward({"params": params}, x)
    assert_sharded(y, mesh, P("data", None, "heads"))

    def out_sum(params):
        return jnp.sum(jnp.sin(layer.apply({"params": params}, x)))

    backward, hlo = compiled(jax.grad(out_sum), params)
    assert not {op for op, _ in collectives(hlo)} - {"all-reduce"}
    grads = backward(params)
    y_want, grads_want = linen_reference("slstm", params, layer_inputs())
    np.testing.assert_allclose(y, y_want, rtol=1e-12, atol=1e-12)
    for name, spec in PARAM_SPECS.items():
        assert_sharded(grads[name], mesh, spec)
        np.testing.assert_allclose(grads[name], grads_want[name], rtol=1e-10, atol=1e-10,
                                   err_msg=name)


def test_nnx_layer_on_an_auto_mesh():
    mesh = make_mesh((2, 4), AxisType.Auto)
    with jax.set_mesh(mesh):  # Flax shards annotated parameters where they are created
        layer = flashrnn_jax.nnx.FlashRNN(F, H, function="gru", num_heads=NH, batch_axis="data",
                                          head_axis="heads", rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(layer)
        assert nnx.to_pure_dict(nnx.get_partition_spec(state)) == PARAM_SPECS
        for name, spec in PARAM_SPECS.items():
            assert_sharded(getattr(layer, name)[...], mesh, spec)
        x = put(layer_inputs(), mesh, P("data"))

        def apply(state, x):
            return nnx.merge(graphdef, state)(x)

        forward, hlo = compiled(apply, state, x)
        assert collectives(hlo) == []
        y = forward(state, x)
    params = {name: getattr(layer, name)[...] for name in PARAM_SPECS}
    np.testing.assert_allclose(y, linen_reference("gru", params, layer_inputs())[0],
                               rtol=1e-12, atol=1e-12)


def test_layers_without_axes_carry_no_partitioning():
    x = jnp.ones((2, T, F))
    variables = jax.eval_shape(flashrnn_jax.linen.FlashRNN(H, num_heads=NH).init,
                               jax.random.key(0), x)
    assert not any(isinstance(v, nn.Partitioned) for v in variables["params"].values())
    layer = nnx.eval_shape(lambda: flashrnn_jax.nnx.FlashRNN(F, H, num_heads=NH,
                                                             rngs=nnx.Rngs(0)))
    assert nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(layer))) == dict.fromkeys(
        PARAM_SPECS, P())
