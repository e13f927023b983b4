"""Argument validation: the right exception type, and a message that names the argument, the
expected value and the actual one. Also the import from a source tree without compiled code."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from reference import CELL_SHAPES, random_inputs, random_states, reference_flashrnn

import flashrnn_jax
from flashrnn_jax import BACKENDS, FUNCTIONS, FusedBackendUnavailableError, flashrnn

FUNCTION_LIST = tuple(CELL_SHAPES)
# Sizes distinct from each other, from the gate and state counts and from axis numbers, so a
# message that lacks the expected value cannot contain it by accident.
B, T, N, D = 5, 6, 7, 9
GATE_AXIS = {"Wx": 2, "R": 0, "b": 0}
GATE_SYMBOL = {"Wx": "Gw", "R": "Gr", "b": "Gt"}


def _valid_args(rng, function):
    Wx, R, b = random_inputs(rng, function, B, T, N, D)
    return {"Wx": Wx, "R": R, "b": b, "states": random_states(rng, function, B, N, D)}


def _gate_count(function, name):
    shape = CELL_SHAPES[function]
    return {"Wx": shape.gates_wx, "R": shape.gates_r, "b": shape.gates_b}[name]


def _call(args, function="lstm", backend="scan"):
    return flashrnn(args["Wx"], args["R"], args["b"], args["states"], function=function,
                    backend=backend)


def _resize(rng, x, axis, size):
    """``x`` with axis ``axis`` changed to ``size``."""
    shape = list(x.shape)
    shape[axis] = size
    return rng.normal(size=shape)


def _mentions(message, word):
    return re.search(rf"(?<!\w){re.escape(str(word))}(?!\w)", message) is not None


def _assert_message(error, argument, expected, actual):
    """The message names ``argument``, ``expected`` (outside the ``actual`` text) and ``actual``."""
    message = str(error.value)
    assert _mentions(message, argument), (argument, message)
    assert str(actual) in message, (actual, message)
    assert _mentions(message.replace(str(actual), ""), expected), (expected, message)


def test_every_function_is_covered():
    assert set(FUNCTIONS) == set(CELL_SHAPES)


@pytest.mark.parametrize("change", [-1, 1], ids=["rank-1", "rank+1"])
@pytest.mark.parametrize("name, rank", [("Wx", 5), ("R", 4), ("b", 3)])
def test_wrong_rank(rng, name, rank, change):
    args = _valid_args(rng, "lstm")
    args[name] = args[name][0] if change < 0 else args[name][None]
    with pytest.raises(ValueError) as error:
        _call(args)
    _assert_message(error, name, rank, args[name].shape)


@pytest.mark.parametrize("rank", [3, 6])
def test_states_wrong_rank_names_both_layouts(rng, rank):
    args = _valid_args(rng, "lstm")
    args["states"] = args["states"][0] if rank == 3 else args["states"][:, :, None, None]
    with pytest.raises(ValueError) as error:
        _call(args)
    message = str(error.value)
    assert _mentions(message, "states") and str(args["states"].shape) in message
    compact = message.replace(" ", "")
    assert "[S,B,N,D]" in compact and "[S,B,1,N,D]" in compact, message


@pytest.mark.parametrize("name", ["Wx", "R", "b"])
@pytest.mark.parametrize("function", FUNCTION_LIST)
def test_wrong_gate_count(rng, function, name):
    args = _valid_args(rng, function)
    expected = _gate_count(function, name)
    args[name] = _resize(rng, args[name], GATE_AXIS[name], expected + 1)
    with pytest.raises(ValueError) as error:
        _call(args, function)
    _assert_message(error, name, expected, args[name].shape)
    assert GATE_SYMBOL[name] in str(error.value)


@pytest.mark.parametrize("layout", ["[S,B,N,D]", "[S,B,1,N,D]"])
@pytest.mark.parametrize("function", FUNCTION_LIST)
def test_wrong_state_count(rng, function, layout):
    args = _valid_args(rng, function)
    expected = CELL_SHAPES[function].num_states
    args["states"] = _resize(rng, args["states"], 0, expected + 1)
    if layout == "[S,B,1,N,D]":
        args["states"] = args["states"][:, :, None]
    with pytest.raises(ValueError) as error:
        _call(args, function)
    _assert_message(error, "states", expected, args["states"].shape)


@pytest.mark.parametrize(
    "name, axis, expected",
    [
        ("R", 1, N), ("R", 2, D), ("R", 3, D),
        ("b", 1, N), ("b", 2, D),
        ("states", 1, B), ("states", 2, N), ("states", 3, D),
    ],
    ids=["R-N", "R-D_out", "R-not-square", "b-N", "b-D", "states-B", "states-N", "states-D"],
)
def test_size_mismatch_with_Wx(rng, name, axis, expected):
    args = _valid_args(rng, "lstm")
    args[name] = _resize(rng, args[name], axis, expected + 1)
    with pytest.raises(ValueError) as error:
        _call(args)
    _assert_message(error, name, expected, args[name].shape)


@pytest.mark.parametrize("axis, expected", [(1, B), (2, 1), (3, N), (4, D)],
                         ids=["B", "unit-axis", "N", "D"])
def test_five_axis_states_size_mismatch(rng, axis, expected):
    args = _valid_args(rng, "lstm")
    args["states"] = _resize(rng, args["states"][:, :, None], axis, expected + 1)
    with pytest.raises(ValueError) as error:
        _call(args)
    _assert_message(error, "states", expected, args["states"].shape)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_])
@pytest.mark.parametrize("name", ["Wx", "R", "b", "states"])
def test_non_float_dtype(rng, name, dtype):
    args = _valid_args(rng, "lstm")
    args[name] = np.ones(args[name].shape, dtype)
    with pytest.raises(TypeError) as error:
        _call(args)
    message = str(error.value)
    assert _mentions(message, name), message
    assert "float" in message and f"got {np.dtype(dtype).name}" in message, message


# states=None is valid (zeros); None for Wx, R or b (say, "no bias") is not.
@pytest.mark.parametrize(
    "name, value", [(name, "text") for name in ("Wx", "R", "b", "states")]
    + [(name, None) for name in ("Wx", "R", "b")]
)
def test_non_array_argument(rng, name, value):
    args = _valid_args(rng, "lstm")
    args[name] = value
    with pytest.raises(TypeError) as error:
        _call(args)
    message = str(error.value)
    assert _mentions(message, name), message
    assert "array" in message and type(value).__name__ in message, message


@pytest.mark.parametrize("function", ["tanh", "LSTM", "", 3, None])
def test_unknown_function(rng, function):
    args = _valid_args(rng, "lstm")
    with pytest.raises(ValueError) as error:
        _call(args, function=function)
    message = str(error.value)
    assert _mentions(message, "function") and repr(function) in message, message
    assert all(repr(name) in message for name in FUNCTIONS), message


@pytest.mark.parametrize("backend", ["cuda", "Scan", "", 0, None])
def test_unknown_backend(rng, backend):
    args = _valid_args(rng, "lstm")
    with pytest.raises(ValueError) as error:
        _call(args, backend=backend)
    message = str(error.value)
    assert _mentions(message, "backend") and repr(backend) in message, message
    assert all(repr(name) in message for name in BACKENDS), message


@pytest.mark.parametrize(
    "name, axis",
    [("Wx", 0), ("Wx", 1), ("Wx", 3), ("Wx", 4), ("R", 2), ("b", 1), ("states", 1)],
    ids=["Wx-B", "Wx-T", "Wx-N", "Wx-D", "R-D", "b-N", "states-B"],
)
def test_empty_axis(rng, name, axis):
    args = _valid_args(rng, "lstm")
    args[name] = _resize(rng, args[name], axis, 0)
    with pytest.raises(ValueError) as error:
        _call(args)
    message = str(error.value)
    assert _mentions(message, name) and str(args[name].shape) in message
    assert re.search("empty|zero|size", message), message


_cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU-only path")


@_cpu_only
@pytest.mark.parametrize("function", FUNCTION_LIST)
def test_fused_backend_without_cuda_says_why(rng, function):
    args = _valid_args(rng, function)
    with pytest.raises(FusedBackendUnavailableError) as error:
        _call(args, function, backend="fused")
    assert "no CUDA device" in str(error.value), str(error.value)


@_cpu_only
def test_auto_backend_runs_on_cpu_without_warning(rng):
    args = _valid_args(rng, "slstm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        states_all, last_states = _call(args, "slstm", backend="auto")
    expected_all, expected_last = reference_flashrnn(args["Wx"], args["R"], args["b"],
                                                     args["states"], "slstm")
    np.testing.assert_allclose(states_all, expected_all, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last_states, expected_last, rtol=1e-12, atol=1e-12)


def _stand_in_kernels(monkeypatch, tiling_of, paths):
    """A CUDA device and a compiled module stood in for: ``tiling_of(head_size)`` is the tiling
    selected, ``paths`` the build's kernel_paths."""
    from flashrnn_jax import fused

    monkeypatch.setattr(fused, "_has_cuda_device", lambda: True)
    monkeypatch.setattr(fused, "extension", lambda: object())
    monkeypatch.setattr(fused, "_select_tiling", lambda function, dtype, d: tiling_of(d))
    monkeypatch.setattr(fused, "kernel_paths", lambda: paths)


def test_auto_takes_every_kernel_of_the_build(monkeypatch):
    """The backend choice with kernels present (stood in for here): every kernel of the build
    has run on a GPU, so 'auto' takes each, at any head size, as 'fused' does; the benchmarks'
    record of what ran names the selected tiling's kernels."""
    from flashrnn_jax import fused
    from flashrnn_jax.constrint import hardware

    key = lambda d: ("lstm", "F32", d)  # noqa: E731
    tilings = {32: hardware.Tiling(1, 16, 512), 64: hardware.Tiling(1, 16, 512),
               256: hardware.Tiling(4, 16, 512), 512: hardware.Tiling(16, 16, 256),
               768: hardware.Tiling(128, 16, 96), 2048: hardware.Tiling(128, 8, 512)}
    paths = {(key(32), tilings[32]): ("mma_split", "mma"),
             (key(64), tilings[64]): ("mma", "mma_split"),
             (key(256), tilings[256]): ("mma_cluster", "mma_cluster"),
             (key(512), tilings[512]): ("mma_cluster", "fma"),
             (key(768), tilings[768]): ("fma", "fma_grid_group"),
             (key(2048), tilings[2048]): ("mma_grid_group", "mma_grid_group")}
    _stand_in_kernels(monkeypatch, tilings.__getitem__, paths)
    for d in tilings:
        assert fused.unsupported_reason(np.dtype("float32"), d, "lstm") is None
        assert fused.unsupported_reason(np.dtype("float32"), d, "lstm", for_auto=True) is None
    assert fused.kernels_for(np.dtype("float32"), 512, "lstm") == ("mma_cluster", "fma")
    assert fused.kernels_for(np.dtype("float32"), 32, "lstm") == ("mma_split", "mma")
    assert fused.kernels_for(np.dtype("int8"), 512, "lstm") is None


def test_sequences_beyond_the_kernels_32_bit_step_count_are_refused(monkeypatch):
    """The kernels count steps in int, up to step + 2: 'fused' refuses T > 2^31 - 2, naming T,
    before tracing a kernel call (shapes only, under eval_shape); 'auto' takes the scan;
    T = 2^31 - 2 passes."""
    from flashrnn_jax import fused
    from flashrnn_jax.constrint import hardware

    tiling = hardware.Tiling(1, 16, 512)
    _stand_in_kernels(monkeypatch, lambda d: tiling,
                      {(("lstm", "BF16", 32), tiling): ("mma_split", "mma_split")})
    bf16 = jax.numpy.bfloat16
    assert fused.unsupported_reason(bf16, 32, "lstm", steps=2**31 - 2) is None
    reason = fused.unsupported_reason(bf16, 32, "lstm", for_auto=True, steps=2**31 - 1)
    assert "T = 2147483647" in reason and "2147483646" in reason, reason
    Wx = jax.ShapeDtypeStruct((1, 2**31, 4, 1, 32), bf16)
    R = jax.ShapeDtypeStruct((4, 1, 32, 32), bf16)
    b = jax.ShapeDtypeStruct((4, 1, 32), np.float32)
    with pytest.raises(FusedBackendUnavailableError, match="T = 2147483648"):
        jax.eval_shape(lambda *a: flashrnn(*a, function="lstm", backend="fused"), Wx, R, b)

    def no_kernel_call(*args, **kwargs):
        raise AssertionError("'auto' traced the fused kernels for T > 2^31 - 1")

    monkeypatch.setattr(fused, "flashrnn_fused", no_kernel_call)
    out = jax.eval_shape(lambda *a: flashrnn(*a, function="lstm", backend="auto"), Wx, R, b)
    assert out[0].shape == (2, 1, 2**31, 1, 32), out


def test_a_direction_without_a_kernel_is_named_before_any_call(monkeypatch):
    """A tiling that only the tensor-core group kernels hold has no backward in float16 (and
    neither direction with their CMake options off): 'fused' runs the forward and refuses to
    differentiate, naming why, before any kernel runs; 'auto' leaves the call to the scan
    since it may be differentiated; without a forward 'fused' refuses the call."""
    from flashrnn_jax import fused
    from flashrnn_jax.constrint import hardware

    tiling = hardware.Tiling(128, 8, 512)
    paths = {(("lstm", "F16", 2048), tiling): ("mma_grid_group", "none"),
             (("gru", "BF16", 2048), tiling): ("none", "none")}
    _stand_in_kernels(monkeypatch, lambda d: tiling, paths)
    f16 = np.dtype("float16")
    assert fused.unsupported_reason(f16, 2048, "lstm") is None
    reason = fused.unsupported_reason(f16, 2048, "lstm", for_auto=True)
    assert "no fused backward kernel" in reason and "use bfloat16" in reason, reason
    reason = fused.unsupported_reason(jax.numpy.bfloat16, 2048, "gru")
    assert "no fused forward kernel" in reason and "FLASHRNN_MMA_CLUSTER_FORWARD" in reason
    # The custom_vjp's forward rule refuses before its launch (it runs only under a gradient).
    Wx = np.zeros((1, 1, 4, 1, 2048), np.float16)
    states = np.zeros((2, 1, 1, 2048), np.float32)
    with pytest.raises(fused.FusedBackendUnavailableError,
                       match="cannot differentiate function='lstm'.*float16.*2048.*use bfloat16"):
        fused._fused_fwd(Wx, None, None, states, None, None, fused._Options("lstm"))


def test_the_tiling_chosen_is_one_a_kernel_of_the_build_runs(monkeypatch):
    """A guard against a grid configured otherwise than the model does (e.g. by hand): where a
    compiled tiling has no kernel ("none" both ways) and an FMA group is compiled beside it,
    the FMA group runs; a tiling with a forward but no backward is taken only where nothing
    differentiable fits."""
    from flashrnn_jax import fused
    from flashrnn_jax.constrint import hardware

    group, fma = hardware.Tiling(128, 8, 512), hardware.Tiling(64, 8, 256)
    key = ("elman", "BF16", 2048)
    grid = {key: (group, fma)}
    monkeypatch.setattr(fused, "compiled_grid", lambda: grid)
    monkeypatch.setattr(fused, "_device_limits", hardware.DeviceLimits.sm90)
    fused._select_tiling.cache_clear()
    try:
        for group_paths, chosen in (((fused.NO_KERNEL, fused.NO_KERNEL), fma),
                                    (("mma_grid_group", fused.NO_KERNEL), fma),
                                    (("mma_grid_group", "mma_grid_group"), group)):
            paths = {(key, group): group_paths, (key, fma): ("fma_grid_group",) * 2}
            monkeypatch.setattr(fused, "kernel_paths", lambda paths=paths: paths)
            fused._select_tiling.cache_clear()
            assert fused._select_tiling(*key) == chosen, group_paths
    finally:
        fused._select_tiling.cache_clear()


def test_tilings_as_for_sets_the_limits_inside_only():
    """fused.tilings_as_for: the tilings are chosen for the given limits inside (nested: the
    innermost), for the device's own again after."""
    import dataclasses

    from flashrnn_jax import fused
    from flashrnn_jax.constrint import hardware

    limits = hardware.DeviceLimits.sm90()
    few = dataclasses.replace(limits, sm_count=114)
    with fused.tilings_as_for(few):
        assert fused._device_limits() == few
        with fused.tilings_as_for(limits):
            assert fused._device_limits() == limits
        assert fused._device_limits() == few
    assert fused._limits_override is None


def test_runs_from_a_source_tree_without_compiled_module(rng, tmp_path):
    """A source checkout: the package's files minus any compiled extension built in place."""
    source = Path(flashrnn_jax.__file__).parent
    shutil.copytree(source, tmp_path / "flashrnn_jax",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    Wx, R, b = (x.astype(np.float32) for x in random_inputs(rng, "gru", 2, 3, 2, 4))
    np.savez(tmp_path / "inputs.npz", Wx=Wx, R=R, b=b)
    script = textwrap.dedent(f"""
        import numpy as np
        import flashrnn_jax
        from flashrnn_jax import fused, flashrnn
        assert flashrnn_jax.__file__.startswith({str(tmp_path)!r}), flashrnn_jax.__file__
        assert fused.extension() is None
        inputs = np.load({str(tmp_path / "inputs.npz")!r})
        states_all, _ = flashrnn(inputs["Wx"], inputs["R"], inputs["b"], function="gru")
        np.save({str(tmp_path / "out.npy")!r}, np.asarray(states_all))
    """)
    # cwd too: ``python -c`` puts the working directory first on sys.path.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    states_all = np.load(tmp_path / "out.npy")
    assert states_all.dtype == np.float32
    expected, _ = reference_flashrnn(Wx, R, b, None, "gru")
    np.testing.assert_allclose(states_all, expected, rtol=1e-5, atol=1e-6)
