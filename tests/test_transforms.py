"""flashrnn under jit, vmap, grad and value_and_grad, on the scan backend and on "auto"."""

import functools

import jax
import numpy as np
import pytest
from reference import (
    CELL_SHAPES,
    assert_gradients_match_reference,
    loss_weights,
    project,
    random_inputs,
    random_states,
    reference_flashrnn,
)

from flashrnn_jax import flashrnn

FUNCTIONS = tuple(CELL_SHAPES)
B, T, N, D = 2, 5, 2, 3
K = 3  # the extra leading axis that vmap maps over

# The same float32 program compiled whole (jit) or op by op (eager) may fuse differently.
TOL = dict(rtol=1e-6, atol=1e-6)


def _inputs(rng, function, dtype=np.float32):
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    states = random_states(rng, function, B, N, D)
    return tuple(x.astype(dtype) for x in (Wx, R, b, states))


def _loss_fn(weights, function, backend):
    def loss(Wx, R, b, states):
        return project(*flashrnn(Wx, R, b, states, function=function, backend=backend), weights)

    return loss


def _assert_trees_close(actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, **TOL)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_jit_matches_eager(rng, function):
    args = _inputs(rng, function)
    run = functools.partial(flashrnn, function=function, backend="scan")
    _assert_trees_close(jax.jit(run)(*args), run(*args))


# states=None only for sLSTM, the one cell with a zero-state branch (m = ĩ where n_prev == 0).
@pytest.mark.parametrize(
    "function, batched_states",
    [(f, True) for f in FUNCTIONS] + [("slstm", False)],
    ids=[f"{f}-states" for f in FUNCTIONS] + ["slstm-states=None"],
)
def test_vmap_matches_loop(rng, function, batched_states):
    Wx = np.stack([_inputs(rng, function)[0] for _ in range(K)])
    _, R, b, _ = _inputs(rng, function)
    states = np.stack([_inputs(rng, function)[3] for _ in range(K)]) if batched_states else None

    run = functools.partial(flashrnn, function=function, backend="scan")
    in_axes = (0, None, None, 0 if batched_states else None)
    mapped = jax.jit(jax.vmap(run, in_axes=in_axes))(Wx, R, b, states)
    single = jax.jit(run)
    looped = [single(Wx[k], R, b, None if states is None else states[k]) for k in range(K)]
    _assert_trees_close(mapped, jax.tree.map(lambda *xs: np.stack(xs), *looped))


# Plain jit(grad) is checked against finite differences in test_gradients.
@pytest.mark.parametrize("function", FUNCTIONS)
def test_value_and_grad_under_jit(rng, function):
    args = _inputs(rng, function, np.float64)
    weights = loss_weights(rng, function, B, T, N, D)
    loss = _loss_fn(weights, function, "scan")
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*args)
    expected = project(*reference_flashrnn(*args, function), weights)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert_gradients_match_reference(grads, args, function, weights)


_TRANSFORMS = {
    "eager": lambda f: f,
    "jit": jax.jit,
    "vmap": lambda f: jax.vmap(f, in_axes=(0, None, None, 0)),
    "grad": lambda f: jax.grad(f, argnums=(0, 1, 2, 3)),
    "value_and_grad": lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3)),
}
_cpu_only = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="on a GPU 'auto' may pick the fused kernels"
)


@_cpu_only
@pytest.mark.parametrize("transform", _TRANSFORMS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_auto_traces_to_the_scan_on_cpu(rng, function, transform):
    """On CPU "auto" builds exactly the scan backend's program under every transform, so the
    numerical checks above hold for it too."""
    args = _inputs(rng, function)
    if transform == "vmap":
        args = (np.stack([args[0]] * K), *args[1:3], np.stack([args[3]] * K))
    weights = loss_weights(rng, function, B, T, N, D)
    auto, scan = (
        str(jax.make_jaxpr(_TRANSFORMS[transform](_loss_fn(weights, function, backend)))(*args))
        for backend in ("auto", "scan")
    )
    assert auto == scan


@_cpu_only
@pytest.mark.parametrize("function", FUNCTIONS)
def test_auto_matches_scan_on_cpu(rng, function):
    args = _inputs(rng, function)
    auto = flashrnn(*args, function=function, backend="auto")
    scan = flashrnn(*args, function=function, backend="scan")
    for a, s in zip(auto, scan, strict=True):
        np.testing.assert_array_equal(a, s)
