"""Render committed benchmark JSON into the README's tables and PNG plots.

Reads ``benchmarks/results/quick_bench_<gpu>.json`` (written on the GPU by
``benchmarks/quick_bench.py``), writes ``benchmarks/results/quick_bench_<gpu>.png`` and replaces
the text between the ``<!-- quick-bench -->`` markers of README.md (with ``--other``, also the
fused rows of a second quick bench of the same call on another build, beside the first's, under
``--other-label``); with ``--suite``, also the heads, size, batch and length sweeps of
``benchmarks/suite.py``'s JSON files between the ``<!-- suite-heads -->`` markers, beside the
targets of issue 5 (FlashRNN's fused kernels and cuDNN as measured there), each row naming the
file (run) it comes from, and the suite's plots from those files. No number is typed by hand.

    python benchmarks/render_results.py benchmarks/results/quick_bench_NVIDIA_H200.json \
        --other benchmarks/results/quick_bench_split_NVIDIA_H200.json --other-label "The split \
        kernels, on by default since this run (a build of them beside the one above, same call)" \
        --suite benchmarks/results/NVIDIA_H200.json benchmarks/results/suite_size_NVIDIA_H200.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKERS = ("<!-- quick-bench -->", "<!-- /quick-bench -->")
SUITE_MARKERS = ("<!-- suite-heads -->", "<!-- /suite-heads -->")

# Issue 5's targets for LSTM and sLSTM (bf16, B=16, T=1024, hidden 768): forward and
# forward+backward ms, by (heads, head size). They are the issue's, not measurements here.
TARGETS = {(1, 768): (2.0, 6.0), (3, 256): (1.5, 4.5), (12, 64): (1.0, 3.0), (48, 16): (1.0, 3.0)}


# The fields that name a case of the quick bench.
QUICK_CASE = ("function", "N", "D", "dtype", "B", "T")


def table(results: dict, plot_name: str) -> str:
    by_case = _by_case(results["records"], QUICK_CASE)
    lines = [
        f"{results['gpu']}, jax {results['jax']}; median ms, B and T as listed.",
        "",
        ("| function | heads × D | dtype | B | T | fused fwd | scan fwd | fused fwd+bwd "
         "| scan fwd+bwd | fwd+bwd speed-up |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    masks, groups, contractions = [], [], []
    for (function, N, D, dtype, B, T), impls in by_case.items():
        groups += [f"{function} {N} × {D} {dtype} on {g['cluster']}-CTA groups: "
                   f"{g['fwd_ms']:.2f} / {g['fwdbwd_ms']:.2f}" for impl, g in impls.items()
                   if impl.startswith("fused@C")]
        if "fused" not in impls or "scan" not in impls:
            continue
        f, s = impls["fused"], impls["scan"]
        if "fused dR bf16x3" in impls:
            c = impls["fused dR bf16x3"]
            one_product = ("" if "fwdbwd_dr_bf16_ms" not in c
                           else f" and {c['fwdbwd_dr_bf16_ms']:.2f}")
            contractions.append(f"{function} {N} × {D}: {c['fwdbwd_ms']:.2f} against "
                                f"{c['fwdbwd_dr_float32_ms']:.2f}{one_product}")
        if "fused+masks" in impls:
            m = impls["fused+masks"]
            masks.append(f"{function} {N} × {D}: forward {m['fwd_cost_vs_plain']:+.1%}, "
                         f"forward+backward {m['fwdbwd_cost_vs_plain']:+.1%}")
        lines.append(
            f"| {function} | {N} × {D} | {dtype} | {B} | {T} | {f['fwd_ms']:.2f} | "
            f"{s['fwd_ms']:.2f} | {f['fwdbwd_ms']:.2f} | {s['fwdbwd_ms']:.2f} | "
            f"{s['fwdbwd_ms'] / f['fwdbwd_ms']:.1f}× |"
        )
    if groups:
        lines += ["", "Heads beyond a cluster on the preferred group of CTAs and on the smallest "
                  "compiled beside it (forward / forward+backward ms): " + "; ".join(groups)
                  + "."]
    if contractions:
        lines += ["", "Forward+backward ms with dR contracted as three bfloat16 products against "
                  "one float32 contraction and, where timed, against one bfloat16 product "
                  "(`fused.R_GRADIENT_CONTRACTION`: \"auto\" takes, for bfloat16 R, the third "
                  "from `fused.BF16_MIN_R_ELEMENTS` a gate and the second below, where the "
                  "backward kernel does not accumulate dR itself), timed in alternation: "
                  + "; ".join(contractions) + "."]
    if masks:
        lines += ["", "Cost of the sequence masks in the fused kernels (full `seq_lengths` and 1% "
                  "random `resets`, timed in alternation with the plain kernels on the same "
                  "data): " + "; ".join(masks) + "."]
    lines += ["", f"![quick benchmark](benchmarks/results/{plot_name})"]
    return "\n".join(lines)


def other_build_rows(results: dict, other: dict, label: str) -> str:
    """One sentence: the fused rows of ``other`` (a quick bench of another build in the same
    call), each beside the same case's fused row of ``results``."""
    before = {case: impls.get("fused")
              for case, impls in _by_case(results["records"], QUICK_CASE).items()}
    rows = []
    for case, impls in _by_case(other["records"], QUICK_CASE).items():
        f, old = impls.get("fused"), before.get(case)
        if f is None:
            continue
        function, N, D = case[:3]
        against = ("" if old is None
                   else f" (above: {old['fwd_ms']:.2f} / {old['fwdbwd_ms']:.2f})")
        rows.append(f"{function} {N} × {D}: {f['fwd_ms']:.2f} / {f['fwdbwd_ms']:.2f}{against}")
    return f"{label} (forward / forward+backward ms): " + "; ".join(rows) + "."


def _ms(record: dict | None, key: str) -> str:
    value = None if record is None else record[key]
    return "—" if value is None else f"{value:.2f}"


def _cells(impls: dict, names: tuple[str, ...], missing: str = "") -> list[str]:
    """"forward / forward+backward" of each implementation named, ``missing`` for one not in
    the case (None: its times as "— / —")."""
    return [f"{_ms(impls.get(impl), 'fwd_ms')} / {_ms(impls.get(impl), 'fwdbwd_ms')}"
            if impl in impls or missing is None else missing for impl in names]


def _runs(impls: dict) -> str:
    """The files (merge_suites' ``run``) that a case's records come from."""
    return ", ".join(dict.fromkeys(r.get("run", "") for r in impls.values()))


def _by_case(records: list[dict], fields: tuple[str, ...]) -> dict:
    """{(the records' values of fields): {impl: record}}, in the records' order."""
    by_case = {}
    for r in records:
        by_case.setdefault(tuple(r[f] for f in fields), {})[r["impl"]] = r
    return by_case


def _gpus(results: dict, records: list[dict]) -> str:
    """The GPUs the records ran on (merge_suites marks each; else the results' own)."""
    return ", ".join(dict.fromkeys(r.get("gpu", results.get("gpu", "")) for r in records))


def suite_table(results: dict) -> str:
    """The heads sweep: per function and head split, fused and scan forward / forward+backward,
    the dense LSTM baselines (flax, cuDNN float32) and issue 5's target."""
    heads = [r for r in results["records"] if r["sweep"] == "heads"]
    by_case = _by_case(heads, ("function", "N", "D"))
    first = heads[0]
    lines = [
        (f"{_gpus(results, heads)}, jax {results['jax']}; bf16 (cuDNN float32), B={first['B']}, "
         f"T={first['T']}, hidden {first['N'] * first['D']}; median ms, forward / "
         "forward+backward; — where an implementation did not run the case (the JSON records "
         "why: for the fused kernels, the build's head sizes at the time); run: the file under "
         "`benchmarks/results/` a row comes from (each a different session's kernels)."),
        "",
        ("| function | heads × D | fused | scan | flax LSTM | cuDNN LSTM (f32) | fused peak MiB "
         "| target | run |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (function, N, D), impls in by_case.items():
        cells = _cells(impls, ("fused", "scan", "flax_lstm", "cudnn_lstm"))
        fused = impls.get("fused")
        peak = ("—" if fused is None or fused["peak_mem_mb"] is None
                else f"{fused['peak_mem_mb']:.0f}")
        target = TARGETS.get((N, D)) if function in ("lstm", "slstm") else None
        goal = "" if target is None else f"≤ {target[0]:.1f} / ≤ {target[1]:.1f}"
        lines.append(f"| {function} | {N} × {D} | " + " | ".join(cells)
                     + f" | {peak} | {goal} | {_runs(impls)} |")
    return "\n".join(lines)


def size_table(results: dict) -> str:
    """The size sweep (single heads): per function and head size, fused and scan forward /
    forward+backward, the kernels the fused call ran or why it did not; "" without the sweep."""
    sizes = [r for r in results["records"]
             if r["sweep"] == "size" and r["impl"] in ("fused", "scan")]
    if not sizes:
        return ""
    by_case = _by_case(sizes, ("function", "dtype", "D"))
    first = sizes[0]
    lines = [
        (f"Single heads (size sweep) on {_gpus(results, sizes)}, B={first['B']}, "
         f"T={first['T']}; median ms, forward / forward+backward; where the fused kernels did "
         "not run a head, why."),
        "",
        "| function | dtype | D | fused | scan | fused kernels (forward, backward) or why not "
        "| run |",
        "|---|---|---|---|---|---|---|",
    ]
    for (function, dtype, D), impls in by_case.items():
        cells = _cells(impls, ("fused", "scan"), missing=None)
        fused = impls.get("fused") or {}
        kernels = fused.get("kernels")
        why = (", ".join(kernels) if kernels
               else (fused.get("skipped") or "").replace("|", "/").replace("\n", " "))
        lines.append(f"| {function} | {dtype} | {D} | " + " | ".join(cells)
                     + f" | {why} | {_runs(impls)} |")
    return "\n".join(lines)


# The batch and length sweeps: the swept field, its column, and what the fused records give
# per point besides their times (issue 5: throughput grows with the batch; the time per step
# stays flat over the length).
SCALING = {
    "batch": ("B", "B", "fused rows·steps per µs, forward / forward+backward",
              lambda r, key: r["B"] * r["T"] / (r[key] * 1e3)),
    "length": ("T", "T", "fused µs per step, forward / forward+backward",
               lambda r, key: r[key] * 1e3 / r["T"]),
}


def scaling_table(results: dict, sweep: str) -> str:
    """The batch or length sweep: per function, dtype and swept value, fused and scan forward /
    forward+backward, and the fused throughput (batch) or time per step (length) derived from
    them; "" without the sweep."""
    field, column, derived_name, derived = SCALING[sweep]
    points = [r for r in results["records"]
              if r["sweep"] == sweep and r["impl"] in ("fused", "scan")]
    if not points:
        return ""
    by_case = _by_case(points, ("function", "dtype", field))
    first = points[0]
    fixed = ", ".join(f"{k}={first[k]}" for k in ("N", "D", "B", "T") if k != field)
    lines = [
        (f"{sweep.capitalize()} sweep on {_gpus(results, points)}, {fixed}; median ms, "
         "forward / forward+backward."),
        "",
        f"| function | dtype | {column} | fused | scan | {derived_name} | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for (function, dtype, value), impls in by_case.items():
        cells = _cells(impls, ("fused", "scan"), missing=None)
        fused = impls.get("fused")
        rate = "—" if fused is None or fused["fwd_ms"] is None else " / ".join(
            "—" if fused[key] is None else f"{derived(fused, key):.3g}"
            for key in ("fwd_ms", "fwdbwd_ms"))
        lines.append(f"| {function} | {dtype} | {value} | " + " | ".join(cells)
                     + f" | {rate} | {_runs(impls)} |")
    return "\n".join(lines)


def merge_suites(suites: dict[pathlib.Path, dict]) -> dict:
    """The records of several suite.py files (path -> its JSON, in order), each marked with its
    file's stem (``run``) and GPU (``gpu``, which the tables name); where two files measured the
    same case on the same GPU, the later file's record (a case of two GPUs keeps both)."""
    merged = {}
    for path, suite in suites.items():
        for r in suite["records"]:
            key = (suite["gpu"], r["sweep"], r["impl"], r["function"], r["dtype"], r["B"],
                   r["T"], r["N"], r["D"])
            merged.pop(key, None)  # re-inserted last: the later file's order
            merged[key] = {**r, "run": path.stem, "gpu": suite["gpu"]}
    gpus = ", ".join(dict.fromkeys(suite["gpu"] for suite in suites.values()))
    return {**next(iter(suites.values())), "gpu": gpus, "records": list(merged.values())}


def replace_block(text: str, markers: tuple[str, str], body: str) -> str:
    if markers[0] not in text:
        raise ValueError(f"README.md has no {markers[0]} block")
    block = f"{markers[0]}\n{body}\n{markers[1]}"
    pattern = re.escape(markers[0]) + ".*?" + re.escape(markers[1])
    return re.sub(pattern, lambda _: block, text, flags=re.DOTALL)


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["function"], r["N"], r["D"]) for r in results["records"]
                    if r["impl"] in ("fused", "scan")})
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
    parser.add_argument("--other", type=pathlib.Path,
                        help="a quick bench of another build in the same call")
    parser.add_argument("--other-label", help="what --other measured (required with it)")
    parser.add_argument("--suite", type=pathlib.Path, nargs="+",
                        help="benchmarks/suite.py JSON files (later ones win on a shared case)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    png = args.results.with_suffix(".png")
    plot(results, png)
    readme = ROOT / "README.md"
    body = table(results, png.name)
    if args.other:
        if not args.other_label:
            parser.error("--other needs --other-label: what the other build is")
        other = json.loads(args.other.read_text())
        body += "\n\n" + other_build_rows(results, other, args.other_label)
    text = replace_block(readme.read_text(), MARKERS, body)
    if args.suite:
        from suite import plot as suite_plot

        suites = {path: json.loads(path.read_text()) for path in args.suite}
        suite = merge_suites(suites)
        plots = [p for path, one in suites.items() for p in suite_plot(one, path.with_suffix(""))]
        links = "\n".join(f"![{p.stem}](benchmarks/results/{p.name})" for p in plots)
        tables = [suite_table(suite), size_table(suite), scaling_table(suite, "batch"),
                  scaling_table(suite, "length")]
        body = "\n\n".join(t for t in tables if t) + f"\n\n{links}"
        text = replace_block(text, SUITE_MARKERS, body)
    readme.write_text(text)


if __name__ == "__main__":
    main()
