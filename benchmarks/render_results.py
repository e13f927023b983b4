"""Render committed benchmark JSON into the README's table and a PNG plot.

Reads ``benchmarks/results/quick_bench_<gpu>.json`` (written on the GPU by
``benchmarks/quick_bench.py``), writes ``benchmarks/results/quick_bench_<gpu>.png`` and replaces
the text between the ``<!-- quick-bench -->`` markers of README.md. No number is typed by hand.

    python benchmarks/render_results.py benchmarks/results/quick_bench_H100_80GB_HBM3.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKERS = ("<!-- quick-bench -->", "<!-- /quick-bench -->")


def table(results: dict, plot_name: str) -> str:
    by_case = {}
    for r in results["records"]:
        by_case.setdefault((r["function"], r["N"], r["D"], r["dtype"], r["B"], r["T"]), {})[
            r["impl"]
        ] = r
    lines = [
        f"{results['gpu']}, jax {results['jax']}; median ms, B and T as listed.",
        "",
        "| function | heads × D | dtype | B | T | fused fwd | scan fwd | fused fwd+bwd "
        "| scan fwd+bwd | fwd+bwd speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    masks = []
    for (function, N, D, dtype, B, T), impls in by_case.items():
        f, s = impls["fused"], impls["scan"]
        if "fused+masks" in impls:
            m = impls["fused+masks"]
            masks.append(f"{function} {N} × {D}: forward {m['fwd_cost_vs_plain']:+.1%}, "
                         f"forward+backward {m['fwdbwd_cost_vs_plain']:+.1%}")
        lines.append(
            f"| {function} | {N} × {D} | {dtype} | {B} | {T} | {f['fwd_ms']:.2f} | "
            f"{s['fwd_ms']:.2f} | {f['fwdbwd_ms']:.2f} | {s['fwdbwd_ms']:.2f} | "
            f"{s['fwdbwd_ms'] / f['fwdbwd_ms']:.1f}× |"
        )
    if masks:
        lines += ["", "Cost of the sequence masks in the fused kernels (full `seq_lengths` and 1% "
                  "random `resets`, timed in alternation with the plain kernels on the same "
                  "data): " + "; ".join(masks) + "."]
    lines += ["", f"![quick benchmark](benchmarks/results/{plot_name})"]
    return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["function"], r["N"], r["D"]) for r in results["records"]})
    labels = [f"{f}\n{n}×{d}" for f, n, d in cases]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    width = 0.38
    for ax, key, title in zip(axes, ("fwd_ms", "fwdbwd_ms"), ("forward", "forward+backward")):
        for k, impl in enumerate(("fused", "scan")):
            values = [
                next(r[key] for r in results["records"]
                     if (r["function"], r["N"], r["D"]) == case and r["impl"] == impl)
                for case in cases
            ]
            ax.bar([i + (k - 0.5) * width for i in range(len(cases))], values, width,
                   label=impl)
        ax.set_xticks(range(len(cases)), labels)
        ax.set_ylabel("median ms")
        ax.set_title(f"{title}, bf16, B={results['records'][0]['B']}, "
                     f"T={results['records'][0]['T']}")
        ax.legend()
    fig.suptitle(results["gpu"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=pathlib.Path)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    png = args.results.with_suffix(".png")
    plot(results, png)
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{MARKERS[0]}\n{table(results, png.name)}\n{MARKERS[1]}"
    pattern = re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1])
    readme.write_text(re.sub(pattern, lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()
