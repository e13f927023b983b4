"""Smoke test of benchmarks/suite.py at --tiny sizes on CPU: schema, sanity, skips, plots.

The suite runs in subprocesses, as it is run for real (its own jax process, its own flags). The
runs go in parallel, and XLA's CPU optimisations are turned down, because compile time, not
run time, is what a tiny smoke run spends.
"""

import json
import math

import pytest
from bench_runs import ROOT, run_parallel

SUITE = ROOT / "benchmarks" / "suite.py"
RECORD_KEYS = {"impl", "function", "dtype", "B", "T", "N", "D", "fwd_ms", "fwdbwd_ms",
               "peak_mem_mb", "sweep", "skipped"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    common = ["--tiny", "--runs", "3", "--warmup", "1"]
    argv = {
        "lstm": ["--sweep", "all", "--functions", "lstm", "--out", str(tmp / "lstm.json")],
        # One more cell, with the kernels and the scan only.
        "slstm": ["--sweep", "batch", "--functions", "slstm", "--impls", "fused", "scan",
                  "--out", str(tmp / "slstm.json")],
        # A spent budget stops before the first case and still writes the JSON.
        "budget": ["--max-minutes", "0", "--functions", "gru", "--out",
                   str(tmp / "budget.json")],
    }
    out = {}
    for name, (returncode, stdout, stderr) in run_parallel(
            SUITE, {name: [*common, *a] for name, a in argv.items()}).items():
        assert returncode == 0, (stdout + stderr)[-3000:]
        out[name] = json.loads((tmp / f"{name}.json").read_text())
    return tmp, out


def check_schema(results):
    assert isinstance(results["gpu"], str) and results["gpu"]
    assert isinstance(results["jax"], str)
    assert results["records"]
    for r in results["records"]:
        assert set(r) >= RECORD_KEYS, r
        if r["skipped"] is None:
            for key in ("fwd_ms", "fwdbwd_ms"):
                # No relation between the two timings is asserted: at tiny sizes on two shared
                # CPU cores, three runs' medians are noise (a forward once read 20x its
                # forward+backward while the three suite processes ran side by side).
                assert math.isfinite(r[key]) and r[key] > 0, r
        else:
            assert isinstance(r["skipped"], str) and r["skipped"], r
            assert r["fwd_ms"] is None and r["fwdbwd_ms"] is None, r
        # tiny sizes, keeping the structure: hidden 32, single heads up to 2560 / 24
        assert r["B"] <= 2 and r["T"] <= 8, r
        assert r["N"] * r["D"] <= (107 if r["sweep"] == "size" else 32), r


def test_lstm_all_sweeps(runs):
    tmp, out = runs
    results = out["lstm"]
    check_schema(results)
    assert results["complete"] is True
    recs = results["records"]
    sweeps = {"heads", "batch", "length", "size"}
    assert {r["sweep"] for r in recs} == sweeps
    assert {r["function"] for r in recs} == {"lstm"}
    # the head grid keeps its six points at tiny size, the single heads their seven
    assert len({(r["N"], r["D"]) for r in recs if r["sweep"] == "heads"}) == 6
    assert {(r["N"], r["D"]) for r in recs if r["sweep"] == "size"} == {
        (1, d) for d in (11, 21, 32, 43, 64, 85, 107)}
    for impl in ("scan", "flax_lstm"):
        done = [r for r in recs if r["impl"] == impl and r["skipped"] is None]
        assert {r["sweep"] for r in done} == sweeps, impl
    for impl in ("fused", "cudnn_lstm"):  # CPU: no kernels, no cuDNN
        mine = [r for r in recs if r["impl"] == impl]
        assert mine and all(r["skipped"] for r in mine), impl
    assert all(r["dtype"] == "float32" for r in recs if r["impl"] == "cudnn_lstm")
    assert all(r["peak_mem_mb"] is None for r in recs)  # CPU reports no memory_stats
    for sweep in sweeps:
        png = tmp / f"lstm_{sweep}.png"
        assert png.stat().st_size > 1000, png


def test_second_cell(runs):
    tmp, out = runs
    results = out["slstm"]
    check_schema(results)
    recs = results["records"]
    assert {(r["function"], r["sweep"]) for r in recs} == {("slstm", "batch")}
    assert {r["impl"] for r in recs} == {"fused", "scan"}
    assert all(r["skipped"] is None for r in recs if r["impl"] == "scan")
    assert (tmp / "slstm_batch.png").exists()
    assert not (tmp / "slstm_heads.png").exists()


def test_max_minutes_still_writes_json(runs):
    _, out = runs
    results = out["budget"]
    assert results["complete"] is False
    assert "max-minutes" in results["stopped"]
    assert results["records"] == []


def test_size_sweep_renders_for_the_readme(runs):
    """render_results.size_table: one row per single head of the run, the scan's medians as
    recorded, the fused column empty and the reason it gave where it did not run (CPU)."""
    from render_results import size_table

    _, out = runs
    results = out["lstm"]
    rows = [line for line in size_table(results).splitlines() if line.startswith("| lstm |")]
    sizes = [r for r in results["records"] if r["sweep"] == "size" and r["impl"] == "scan"]
    assert len(rows) == len({r["D"] for r in sizes}) == 7
    for r in sizes:
        row = next(line for line in rows if line.split("|")[3].strip() == str(r["D"]))
        assert f"{r['fwd_ms']:.2f} / {r['fwdbwd_ms']:.2f}" in row, row
        assert "— / —" in row and "no CUDA device" in row, row
    assert size_table({"records": [r for r in results["records"] if r["sweep"] != "size"]}) == ""


def test_a_forward_without_a_backward_keeps_its_time(monkeypatch, tmp_path):
    """A fused case whose forward runs but whose gradient is refused (float16 heads of 2048)
    records the forward's median, no forward+backward time and the refusal, and plots."""
    import jax
    import jax.numpy as jnp
    import suite

    from flashrnn_jax import FusedBackendUnavailableError

    def fwdbwd(x):
        raise FusedBackendUnavailableError("backend='fused' cannot differentiate this")

    x = jnp.arange(8.0)
    monkeypatch.setattr(suite, "build", lambda case, key: (lambda x: x * 2.0, fwdbwd, (x,)))
    case = suite.Case("size", "fused", "lstm", "float16", 1, 2, 1, 2048)
    out = suite.measure(case, jax.random.key(0), jax.devices()[0], warmup=1, runs=2)
    assert out["skipped"] is None and out["fwd_ms"] > 0 and out["fwdbwd_ms"] is None, out
    assert "cannot differentiate" in out["fwdbwd_skipped"], out
    fused_record = {**vars(case), **out}
    scan_record = {**fused_record, "impl": "scan", "fwdbwd_ms": 2 * out["fwd_ms"]}
    del scan_record["fwdbwd_skipped"]
    records = [fused_record, scan_record]
    results = {"gpu": "cpu", "jax": jax.__version__, "records": records}
    written = suite.plot(results, tmp_path / "partial")
    assert [p.name for p in written] == ["partial_size.png"] and written[0].stat().st_size > 1000


def test_suite_files_merge_with_the_later_file_winning(tmp_path):
    """render_results.merge_suites: records of several suite files, each marked with its file's
    stem and GPU; a case measured in two files on one GPU keeps the later file's record, on two
    GPUs both, and the heads table names the GPUs of its rows. other_build_rows pairs each fused
    row of a second quick bench with the first's."""
    from render_results import merge_suites, other_build_rows, suite_table

    def record(function, D, fwd, impl="fused"):
        return {"sweep": "heads", "impl": impl, "function": function, "dtype": "bfloat16",
                "B": 16, "T": 1024, "N": 768 // D, "D": D, "fwd_ms": fwd, "fwdbwd_ms": 2 * fwd,
                "peak_mem_mb": None}

    old = {"gpu": "H", "jax": "0", "records": [record("lstm", 64, 3.0), record("gru", 64, 4.0)]}
    new = {"gpu": "H", "jax": "0", "records": [record("lstm", 64, 1.5)]}
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    merged = merge_suites(dict(zip(paths, (old, new))))
    by_function = {r["function"]: r for r in merged["records"]}
    assert len(merged["records"]) == 2
    assert (by_function["lstm"]["fwd_ms"], by_function["lstm"]["run"]) == (1.5, "new")
    assert (by_function["gru"]["fwd_ms"], by_function["gru"]["run"]) == (4.0, "old")
    two = merge_suites({paths[0]: old, tmp_path / "other.json": {**new, "gpu": "G2"}})
    lstm = [(r["gpu"], r["run"], r["fwd_ms"]) for r in two["records"] if r["function"] == "lstm"]
    assert lstm == [("H", "old", 3.0), ("G2", "other", 1.5)]
    assert suite_table(two).startswith("H, G2, jax 0;")
    assert suite_table(merge_suites({paths[1]: new})).startswith("H, jax 0;")

    assert other_build_rows(old, new, "Split") == (
        "Split (forward / forward+backward ms): lstm 12 × 64: 1.50 / 3.00 (above: 3.00 / 6.00).")


def test_batch_and_length_sweeps_render_with_their_rates(runs):
    """render_results.scaling_table: one row per batch size (per length) of the run with the
    scan's medians as recorded; for fused records, the throughput B·T per µs (batch) and the
    µs per step (length) worked out here from the record's times."""
    from render_results import scaling_table

    _, out = runs
    records = out["lstm"]["records"]
    for sweep, field in (("batch", "B"), ("length", "T")):
        scan = [r for r in records if r["sweep"] == sweep and r["impl"] == "scan"]
        rows = [line for line in scaling_table(out["lstm"], sweep).splitlines()
                if line.startswith("| lstm |")]
        assert len(rows) == len({r[field] for r in scan}) >= 2
        for r in scan:
            row = next(line for line in rows if line.split("|")[3].strip() == str(r[field]))
            assert f"{r['fwd_ms']:.2f} / {r['fwdbwd_ms']:.2f}" in row, row
    fused = {"sweep": "batch", "impl": "fused", "function": "gru", "dtype": "bfloat16",
             "N": 12, "D": 64, "B": 64, "T": 1024, "fwd_ms": 2.0, "fwdbwd_ms": 8.0}
    row = scaling_table({"records": [fused]}, "batch").splitlines()[-1]
    assert "| 32.8 / 8.19 |" in row, row  # 64 * 1024 / 2000 µs, / 8000 µs
    row = scaling_table({"records": [{**fused, "sweep": "length"}]}, "length").splitlines()[-1]
    assert "| 1.95 / 7.81 |" in row, row  # 2000 µs / 1024 steps, 8000 µs / 1024
    assert scaling_table({"records": [fused]}, "length") == ""


def test_quick_bench_table_names_each_timed_dr_contraction():
    """render_results.table: the dR sentence gives bf16x3 against float32, and the one-product
    time where the quick bench measured it (older files lack it)."""
    from render_results import table

    def records(**contraction):
        case = {"function": "lstm", "dtype": "bfloat16", "B": 16, "T": 1024, "N": 1, "D": 768}
        return {"gpu": "G", "jax": "0", "records": [
            {**case, "impl": "fused", "fwd_ms": 2.0, "fwdbwd_ms": 7.0},
            {**case, "impl": "scan", "fwd_ms": 15.0, "fwdbwd_ms": 55.0},
            {**case, "impl": "fused dR bf16x3", "fwdbwd_ms": 7.5,
             "fwdbwd_dr_float32_ms": 8.0, **contraction}]}

    assert "lstm 1 × 768: 7.50 against 8.00 and 6.25." in table(
        records(fwdbwd_dr_bf16_ms=6.25), "p.png")
    assert "lstm 1 × 768: 7.50 against 8.00." in table(records(), "p.png")
