"""benchmarks/compare_builds.py: the quick benches of several builds of one call, side by side."""

import json
import subprocess
import sys

from bench_runs import ROOT

import compare_builds  # found through bench_runs, which puts benchmarks/ on sys.path


def _bench(gpu, times):
    return {"gpu": gpu, "records": [
        {"impl": impl, "function": f, "N": n, "D": d, "fwd_ms": a, "fwdbwd_ms": b}
        for (impl, f, n, d), (a, b) in times.items()]}


def test_builds_compare_by_case_with_ratios_to_the_first():
    before = _bench("G", {("fused", "lstm", 12, 64): (2.0, 4.0),
                          ("scan", "lstm", 12, 64): (9.0, 9.0),
                          ("fused", "slstm", 48, 16): (1.0, 3.0)})
    now = _bench("G", {("fused", "lstm", 12, 64): (1.5, 3.0)})
    lines = compare_builds.comparison_table({"before": before, "now": now}).splitlines()
    assert lines[0] == "| cell | heads × D | before | now |"
    assert "| lstm | 12 × 64 | 2.00 / 4.00 | 1.50 / 3.00 (0.75× / 0.75×) |" in lines
    assert "| slstm | 48 × 16 | 1.00 / 3.00 | — |" in lines
    assert len(lines) == 4  # the scan record is no build's fused time


def test_builds_of_different_gpus_are_refused(tmp_path):
    paths = []
    for label, gpu in (("before", "G"), ("now", "other")):
        paths.append(tmp_path / f"{label}.json")
        paths[-1].write_text(json.dumps(_bench(gpu, {("fused", "lstm", 12, 64): (1.0, 2.0)})))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_builds.py"),
                          f"before={paths[0]}", f"now={paths[1]}"], capture_output=True,
                         text=True)
    assert run.returncode != 0 and "different GPUs" in run.stderr
