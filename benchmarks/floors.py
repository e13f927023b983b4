"""Floor estimates of the fused kernels for the paper's head grid (DESIGN §9), per cell.

For every (heads, head size) at hidden 768, B=16, T=1024, bf16, and each cell, three lower
bounds on a forward pass, and the largest of them:

- ``memory_ms``: the bytes that must cross HBM (Wx in; states_all and last_states out) at the
  device's measured copy bandwidth;
- ``flops_ms``: the recurrent matmul ``2·Gr·D²·N·B·T`` at the measured dense bf16 rate, spread
  over only the SMs that hold a head (one CTA per head and batch tile of 16, or a cluster);
- ``chain_ms``: ``T`` dependent steps, each at least one barrier among the CTAs of a head
  (``__syncthreads`` for one CTA, a cluster barrier with a DSMEM write otherwise, the measured
  floors of DESIGN §6) plus that step's matmul on those SMs' tensor cores.

The forward+backward floor is taken as twice the forward chain plus the memory of the residual
and cotangent traffic (the backward runs the chain in reverse with ``Rᵀ``; ``dR`` and ``db`` are
large contractions whose time is the flops floor at full rate on the whole chip).

The constants are measurements, not datasheet values: the copy bandwidth and the bf16 matrix
rate read on the lent H200 (the device tool's KINDS.md), the barrier floors on the lent H100
(DESIGN §6), whose 4- and 8-CTA values are interpolated. Writes ``results/floors_<gpu>.json`` and prints a table for ``NOTES.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib

HIDDEN, B, T = 768, 16, 1024
HEAD_GRID = ((48, 16), (24, 32), (12, 64), (6, 128), (3, 256), (1, 768))
# (gates of Wx, gates of R, bias gates, states) as in flashrnn_jax/cells.py, kept here so that
# the script runs without the package.
CELLS = {"lstm": (4, 4, 4, 2), "gru": (3, 3, 4, 1), "slstm": (4, 4, 4, 4), "elman": (1, 1, 1, 1)}


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    sms: int
    copy_bytes_per_s: float  # device-to-device copy, bytes read plus written per second
    bf16_flops_per_s: float  # dense bf16 matrix product on random data
    cta_barrier_s: float  # one __syncthreads step of a persistent kernel
    cluster2_barrier_s: float  # cluster barrier with a DSMEM write, 2 CTAs
    cluster16_barrier_s: float  # the same, 16 CTAs
    max_cluster: int
    smem_bytes_per_sm: int
    register_bytes_per_sm: int

    def cluster_barrier_s(self, ctas: int) -> float:
        """Measured at 2 and 16 CTAs; sizes between are interpolated in log2 of the size."""
        share = (math.log2(ctas) - 1) / 3
        return self.cluster2_barrier_s + share * (self.cluster16_barrier_s - self.cluster2_barrier_s)


H200 = Device(
    name="NVIDIA H200", sms=132, copy_bytes_per_s=4.3e12, bf16_flops_per_s=788e12,
    cta_barrier_s=0.06e-6, cluster2_barrier_s=0.45e-6, cluster16_barrier_s=0.73e-6,
    max_cluster=16, smem_bytes_per_sm=227 * 1024, register_bytes_per_sm=256 * 1024,
)


def fewest_ctas_per_head(Gr: int, D: int, device: Device) -> int:
    """The fewest CTAs (a power of two, at most a cluster) whose shared memory and three
    quarters of whose registers (the rest run the step) hold a head's R in bf16."""
    capacity = device.smem_bytes_per_sm + 0.75 * device.register_bytes_per_sm
    ctas = 1
    while Gr * D * D * 2 > ctas * capacity and ctas < device.max_cluster:
        ctas *= 2
    return ctas


def step_s(Gr: int, D: int, ctas: int, device: Device) -> float:
    """One step's critical path: the barrier among a head's CTAs plus its matmul on them."""
    barrier = device.cta_barrier_s if ctas == 1 else device.cluster_barrier_s(ctas)
    return barrier + 2 * Gr * D * D * min(B, 16) / (ctas * device.bf16_flops_per_s / device.sms)


def floors(function: str, N: int, D: int, device: Device) -> dict:
    Gw, Gr, _, S = CELLS[function]
    # Splitting a head over more CTAs than R needs trades matmul time for barrier time: take
    # the best split a cluster allows.
    fewest = fewest_ctas_per_head(Gr, D, device)
    splits = [c for c in (1, 2, 4, 8, 16) if fewest <= c <= device.max_cluster and c <= D // 16]
    ctas = min(splits, key=lambda c: step_s(Gr, D, c, device))
    batch_tiles = math.ceil(B / 16)
    busy_sms = min(device.sms, N * batch_tiles * ctas)
    per_sm_flops = device.bf16_flops_per_s / device.sms
    flops = 2 * Gr * D * D * N * B * T
    bytes_fwd = 2 * (B * T * Gw * N * D + S * B * T * N * D + S * B * N * D)
    memory_s = bytes_fwd / device.copy_bytes_per_s
    flops_s = flops / (busy_sms * per_sm_flops)
    chain_s = T * step_s(Gr, D, ctas, device)
    fwd_s = max(memory_s, flops_s, chain_s)
    # Backward: residuals (gate cache and states in float32) read, Wx/state cotangents written.
    bytes_bwd = 4 * (B * T * 4 * N * D + S * B * T * N * D) + 2 * (B * T * Gw * N * D)
    reductions_s = 2 * flops / device.bf16_flops_per_s  # dR = Σ δg hᵀ, db: whole chip
    bwd_s = max(bytes_bwd / device.copy_bytes_per_s, 2 * chain_s) + reductions_s
    ms = 1e3
    return {
        "function": function, "N": N, "D": D, "B": B, "T": T, "ctas_per_head": ctas,
        "busy_sms": busy_sms, "memory_ms": memory_s * ms, "flops_ms": flops_s * ms,
        "chain_ms": chain_s * ms, "step_us": step_s(Gr, D, ctas, device) * 1e6,
        "fwd_floor_ms": fwd_s * ms, "fwdbwd_floor_ms": (fwd_s + bwd_s) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "floors_NVIDIA_H200.json"))
    args = parser.parse_args()
    records = [floors(f, N, D, H200) for f in CELLS for N, D in HEAD_GRID]
    pathlib.Path(args.out).write_text(json.dumps(
        {"gpu": H200.name, "device_constants": dataclasses.asdict(H200), "records": records},
        indent=1))
    print("| cell | N×D | CTAs/head | step µs | memory ms | flops ms | chain ms | "
          "fwd floor ms | fwd+bwd floor ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['function']} | {r['N']}×{r['D']} | {r['ctas_per_head']} | "
              f"{r['step_us']:.2f} | {r['memory_ms']:.3f} | {r['flops_ms']:.3f} | "
              f"{r['chain_ms']:.3f} | {r['fwd_floor_ms']:.3f} | {r['fwdbwd_floor_ms']:.3f} |")


if __name__ == "__main__":
    main()
