"""Issue 5's memory clause, on the traced program (no GPU needed): a forward that is not
differentiated asks its kernel for its outputs only, and a differentiated one keeps as residuals
no more than every state of every step in float32 plus one gate cache (the pre-activations of
every bias gate in float32), besides the call's own inputs.

The sizes expected are worked out from the cell table of tests/reference.py, not from the
library's."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from reference import CELL_SHAPES, random_inputs

from flashrnn_jax import flashrnn
from flashrnn_jax import fused

B, T, N, D = 3, 5, 2, 16


@pytest.fixture
def traceable_fused(monkeypatch):
    """The fused backend traced on CPU: the kernels' FFI calls are staged, never lowered."""
    monkeypatch.setattr(fused, "unsupported_reason", lambda *args, **kwargs: None)
    monkeypatch.setattr(fused, "_tiling_attributes", lambda *args: {})


def _kernel_calls(jaxpr) -> list:
    """The FFI calls of a traced program, nested jaxprs included, in order."""
    calls = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "ffi_call":
            calls.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            calls += _kernel_calls(sub)
    return calls


def _bytes(avals) -> int:
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in avals)


@pytest.mark.parametrize("function", sorted(CELL_SHAPES))
def test_forward_writes_its_outputs_and_training_keeps_states_and_one_gate_cache(
        function, rng, traceable_fused):
    shape = CELL_SHAPES[function]
    Wx, R, b = (jnp.asarray(x, jnp.bfloat16) for x in random_inputs(rng, function, B, T, N, D))

    def forward(Wx, R, b):
        return flashrnn(Wx, R, b, function=function, backend="fused")

    (call,) = _kernel_calls(jax.make_jaxpr(forward)(Wx, R, b).jaxpr)
    outputs = [v.aval for v in call.outvars]
    # states_all [S, B, T, N, D] and the last states [S, B, N, D], in the input dtype.
    assert [(a.shape, a.dtype) for a in outputs] == [
        ((shape.num_states, B, T, N, D), jnp.bfloat16),
        ((shape.num_states, B, N, D), jnp.bfloat16)], outputs

    def loss(Wx, R, b):
        states_all, last = forward(Wx, R, b)
        return jnp.sum(states_all.astype(jnp.float32)) + jnp.sum(last.astype(jnp.float32))

    train, backward = _kernel_calls(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(
        Wx, R, b).jaxpr)
    train_outputs = [v.aval for v in train.outvars]
    assert train_outputs[:2] == outputs
    residuals = train_outputs[2:]
    all_states_f32 = shape.num_states * B * T * N * D * 4
    one_gate_cache = shape.gates_b * B * T * N * D * 4
    assert _bytes(residuals) <= all_states_f32 + one_gate_cache, residuals
    # What jax keeps between the forward and the backward (the leaves of the vjp function):
    # of the size of a sequence, those residuals only.
    kept = jax.make_jaxpr(lambda *args: jax.tree.leaves(jax.vjp(forward, *args)[1]))(Wx, R, b)
    kept_sequences = [v.aval for v in kept.jaxpr.outvars if T in v.aval.shape[:3]]
    assert _bytes(kept_sequences) <= all_states_f32 + one_gate_cache, kept_sequences
    # The backward reads those residuals, the inputs and the output cotangents: nothing else
    # of the size of a sequence.
    sequence_sized = [v.aval for v in backward.invars if T in v.aval.shape[:3]]
    assert _bytes(sequence_sized) <= _bytes(residuals) + shape.num_states * B * T * N * D * 2
