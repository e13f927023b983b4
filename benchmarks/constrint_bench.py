"""Time ConstrINT on the fused kernels' hardware model (flashrnn_jax/constrint/hardware.py).

Solves the tiling model of every (cell, dtype, head size) — the compiled grid's head sizes and
larger ones up to 2048, several of which fit no tiling and so exercise the proof of
unsatisfiability — for the H100's limits, with the disk cache off, and reports the median and
maximum solve time. Exits non-zero when the median exceeds the 20 ms target, so CI notices.

    python benchmarks/constrint_bench.py [--repeat 5] [--json out.json] [--show]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

try:
    from flashrnn_jax.constrint import hardware, solve
except ImportError:  # run from a checkout without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flashrnn_jax.constrint import hardware, solve

FUNCTIONS = tuple(hardware.RECURRENT_GATES)
DTYPES = ("bf16", "f16", "f32")
HEAD_SIZES = (16, 32, 64, 128, 256, 512, 768, 1024, 2048)
TARGET_MS = 20.0


def run(repeat: int, show: bool) -> dict:
    device = hardware.DeviceLimits.sm90()
    records = []
    for function in FUNCTIONS:
        for dtype in DTYPES:
            for head_size in HEAD_SIZES:
                text = hardware.model_text(function, dtype, head_size, device)
                runs = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    solutions = solve(text, order=hardware.PREFERENCE_ORDER, cache=False)
                    runs.append(time.perf_counter() - start)
                records.append({
                    "function": function, "dtype": dtype, "D": head_size,
                    "solve_ms": 1e3 * statistics.median(runs),
                    "tiling": solutions[0] if solutions else None,
                })
    if show:
        for r in records:
            print(f"{r['function']:6} {r['dtype']:5} D={r['D']:5} {r['solve_ms']:7.2f} ms  "
                  f"{r['tiling'] or 'no tiling fits'}")
    times = [r["solve_ms"] for r in records]
    return {
        "machine": platform.processor() or platform.machine(),
        "models": len(records),
        "unsatisfiable": sum(r["tiling"] is None for r in records),
        "median_ms": statistics.median(times),
        "max_ms": max(times),
        "records": records,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="solves per model (median kept)")
    parser.add_argument("--json", help="write the summary and per-model times here")
    parser.add_argument("--show", action="store_true", help="print every model's tiling")
    args = parser.parse_args()
    summary = run(args.repeat, args.show)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"ConstrINT hardware model, H100 limits, cache off: {summary['models']} models "
          f"({summary['unsatisfiable']} unsatisfiable); median {summary['median_ms']:.2f} ms, "
          f"max {summary['max_ms']:.2f} ms per model (target: median < {TARGET_MS:.0f} ms)")
    sys.exit(0 if summary["median_ms"] < TARGET_MS else 1)


if __name__ == "__main__":
    main()
