"""Quick benches of several builds measured in the same device call, side by side.

    python benchmarks/compare_builds.py before=out/before/quick_bench_ab.json \\
        now=out/now/quick_bench_ab.json rounded=out/rounded/quick_bench_ab.json

prints a markdown table: one row per (cell, heads x head size) of the fused records, per build
its forward / forward+backward medians in ms and their ratio to the first build's.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def fused_times(results: dict) -> dict[tuple[str, int, int], tuple[float, float]]:
    """(function, N, D) -> (fwd_ms, fwdbwd_ms) of the fused records of a quick bench."""
    return {(r["function"], r["N"], r["D"]): (r["fwd_ms"], r["fwdbwd_ms"])
            for r in results["records"] if r["impl"] == "fused"}


def comparison_table(builds: dict[str, dict]) -> str:
    """The markdown table of the builds' fused times (the first build is the baseline)."""
    labels = list(builds)
    times = {label: fused_times(results) for label, results in builds.items()}
    cases = sorted({case for t in times.values() for case in t},
                   key=lambda c: (c[0], c[2], c[1]))
    base = times[labels[0]]
    header = ("| cell | heads × D | " + " | ".join(labels) + " |\n|---|---|"
              + "---|" * len(labels) + "\n")
    rows = []
    for case in cases:
        cells = []
        for label in labels:
            t = times[label].get(case)
            if t is None:
                cells.append("—")
                continue
            text = f"{t[0]:.2f} / {t[1]:.2f}"
            b = base.get(case)
            if label != labels[0] and b is not None:
                text += f" ({t[0] / b[0]:.2f}× / {t[1] / b[1]:.2f}×)"
            cells.append(text)
        function, n, d = case
        rows.append(f"| {function} | {n} × {d} | " + " | ".join(cells) + " |")
    return header + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", metavar="LABEL=JSON",
                        help="a build's label and its quick_bench.py JSON; the first is the "
                             "baseline")
    args = parser.parse_args()
    builds = {}
    for item in args.builds:
        label, sep, path = item.partition("=")
        if not sep:
            parser.error(f"expected LABEL=JSON, got {item!r}")
        builds[label] = json.loads(pathlib.Path(path).read_text())
    gpus = {results.get("gpu") for results in builds.values()}
    if len(gpus) > 1:
        parser.error(f"the builds ran on different GPUs ({sorted(map(str, gpus))}): compare "
                     "only timings of one device call")
    print(f"{gpus.pop()}, forward / forward+backward ms (ratio to {next(iter(builds))}):\n")
    print(comparison_table(builds))


if __name__ == "__main__":
    main()
