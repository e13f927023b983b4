"""Smoke test of benchmarks/scaling.py at --tiny sizes on 4 forced CPU devices: the schema, the
global sizes of each series, the efficiencies against the recorded times, the split itself
(``--check``: every split call equals the same call on one device; each device holds one
per-device block), and the argument errors.

The benchmark runs in subprocesses, as it is run for real: the device count must be set in
XLA_FLAGS before jax initialises, and this test process already has its 8 devices (conftest.py).
The runs go in parallel, with XLA's CPU optimisations turned down, because compile time, not
run time, is what a tiny run spends.
"""

import json
import math

import pytest
from bench_runs import ROOT, run_parallel

SCALING = ROOT / "benchmarks" / "scaling.py"
DEVICES = 4
PER_DEVICE = {"B": 2, "T": 8, "N": 2, "D": 16}  # scaling.py's --tiny block
RECORD_KEYS = {"impl", "function", "dtype", "series", "gpu_count", "mesh", "B", "T", "N", "D",
               "device_block", "devices_used", "fwd_ms", "fwdbwd_ms", "throughput",
               "efficiency", "fwd_efficiency", "check_max_rel_err"}
TINY = ["--tiny", "--backend", "scan", "--runs", "3", "--warmup", "1"]
RUNS = {
    # The defaults: lstm, bfloat16, both series, n = 1, 2, 4.
    "lstm": [*TINY, "--check"],
    # Another cell in float32, where a split call must match one device to rounding.
    "gru_f32": [*TINY, "--check", "--functions", "gru", "--dtype", "float32", "--series",
                "heads", "--devices", "2", "1"],
}
ARGUMENT_ERRORS = {
    "too_many_devices": (["--devices", "1", "8"], "each count must lie in 1..4"),
    "no_baseline": (["--devices", "2", "4"], "must include 1"),
    "repeated": (["--devices", "1", "2", "2"], "lists a count twice"),
    "no_runs": (["--runs", "0"], "--runs must be >= 1"),
    # The default backend is the CUDA kernels: refused up front on CPU, saying what to use.
    "fused_on_cpu": ([], ("--backend fused cannot run lstm bfloat16 D=16: no CUDA device is "
                          "visible to JAX; --backend scan runs everywhere")),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (return code, stdout, stderr, JSON or None) of every run, started together."""
    tmp = tmp_path_factory.mktemp("scaling")
    argv = {**RUNS, **{name: ["--tiny", *a] for name, (a, _) in ARGUMENT_ERRORS.items()}}
    out_args = {name: tmp / f"{name}.json" for name in argv}
    # An existing folder: the default file name, with the largest device count, goes there.
    out_args["gru_f32"] = tmp / "folder"
    out_args["gru_f32"].mkdir()
    paths = {**out_args, "gru_f32": tmp / "folder" / "scaling_cpu_x2.json"}
    done = run_parallel(SCALING, {name: [*a, "--out", str(out_args[name])]
                                  for name, a in argv.items()},
                        f"--xla_force_host_platform_device_count={DEVICES}")
    return {name: (*result, json.loads(paths[name].read_text()) if paths[name].exists() else None)
            for name, result in done.items()}


def completed(runs, name) -> dict:
    returncode, stdout, stderr, results = runs[name]
    assert returncode == 0, (stdout + stderr)[-3000:]
    return results


def by_series(results) -> dict[str, dict[int, dict]]:
    series = {}
    for r in results["records"]:
        series.setdefault(r["series"], {})[r["gpu_count"]] = r
    return series


def test_schema(runs):
    results = completed(runs, "lstm")
    assert results["gpu"] == "cpu" and results["platform"] == "cpu"
    assert isinstance(results["jax"], str) and results["jax"]
    assert results["gpu_count"] == DEVICES
    assert results["settings"]["devices"] == [1, 2, 4]
    assert results["per_device"] == PER_DEVICE
    for r in results["records"]:
        assert set(r) >= RECORD_KEYS, r
        assert (r["impl"], r["function"], r["dtype"]) == ("scan", "lstm", "bfloat16")
        for key in ("fwd_ms", "fwdbwd_ms", "throughput"):
            assert math.isfinite(r[key]) and r[key] > 0, r


def test_each_series_scales_its_axis(runs):
    series = by_series(completed(runs, "lstm"))
    assert set(series) == {"batch", "heads"}
    for name, points in series.items():
        assert sorted(points) == [1, 2, 4]
        for n, r in points.items():
            grown = {"B": n} if name == "batch" else {"N": n}
            want = {k: v * grown.get(k, 1) for k, v in PER_DEVICE.items()}
            assert {k: r[k] for k in PER_DEVICE} == want, r
            assert r["mesh"] == ({"batch": n, "heads": 1} if name == "batch"
                                 else {"batch": 1, "heads": n})


def test_every_device_holds_one_per_device_block(runs):
    """The call really was split: n devices hold the output, each a block of the per-device
    size (an unsplit call would give one device the whole global array)."""
    for results in (completed(runs, "lstm"), completed(runs, "gru_f32")):
        for r in results["records"]:
            assert r["devices_used"] == r["gpu_count"], r
            assert r["device_block"] == [PER_DEVICE[k] for k in ("B", "T", "N", "D")], r


@pytest.mark.parametrize("name, tolerance", [("lstm", 2e-2), ("gru_f32", 1e-5)])
def test_split_results_equal_one_device(runs, name, tolerance):
    for r in completed(runs, name)["records"]:
        errors = r["check_max_rel_err"]
        assert set(errors) == {"h", "dWx", "dR", "db"}, r
        assert all(0 <= e <= tolerance for e in errors.values()), r


def test_efficiency_is_the_per_device_throughput_ratio(runs):
    results = completed(runs, "lstm")
    for points in by_series(results).values():
        base = points[1]
        assert base["efficiency"] == 1.0 and base["fwd_efficiency"] == 1.0
        for n, r in points.items():
            seconds = r["fwdbwd_ms"] / 1e3
            assert r["throughput"] == pytest.approx(r["B"] * r["T"] * r["N"] * r["D"] / seconds)
            assert r["efficiency"] == pytest.approx(r["throughput"] / n / base["throughput"])
            # Equal work per device: the ratio of the times.
            assert r["efficiency"] == pytest.approx(base["fwdbwd_ms"] / r["fwdbwd_ms"])
            assert r["fwd_efficiency"] == pytest.approx(base["fwd_ms"] / r["fwd_ms"])
    target = results["target"]
    assert (target["gpu_count"], target["min_efficiency"]) == (2, 0.90)
    two = {r["series"]: r for r in results["records"] if r["gpu_count"] == 2}
    assert {t["series"] for t in target["results"]} == set(two)
    for t in target["results"]:
        assert t["efficiency"] == two[t["series"]]["efficiency"]
        assert t["met"] == (t["efficiency"] >= 0.90)


def test_table_is_printed_last(runs):
    completed(runs, "lstm")
    lines = runs["lstm"][1].strip().splitlines()
    assert lines[-2].startswith("fwd+bwd efficiency at 2 devices >= 0.90 (issue 8): lstm batch")
    assert lines[-1].startswith("fwd+bwd efficiency at 2 devices >= 0.90 (issue 8): lstm heads")
    assert lines[-9].split()[:3] == ["function", "series", "n"]


def test_chosen_function_dtype_series_and_devices(runs):
    results = completed(runs, "gru_f32")
    assert results["gpu_count"] == 2
    assert [(r["function"], r["dtype"], r["series"], r["gpu_count"])
            for r in results["records"]] == [("gru", "float32", "heads", 1),
                                              ("gru", "float32", "heads", 2)]


@pytest.mark.parametrize("name", ARGUMENT_ERRORS)
def test_argument_errors_are_named(runs, name):
    returncode, _, stderr, results = runs[name]
    assert returncode == 2, stderr
    assert ARGUMENT_ERRORS[name][1] in stderr
    assert results is None  # refused before anything was measured or written
