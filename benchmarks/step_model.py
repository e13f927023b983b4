"""A model of one step of a kernel from the SASS of its step loop (sass_loop.py), without a GPU:
the warps of one SM sub-partition (scheduler) issue the loop's instructions in order, one
instruction a cycle, each when its source registers are ready (the producer's latency after
its issue) and its pipe is free, meeting at the block barriers.

Why: the steps are bound neither by bandwidth nor by flops but by dependent latencies and issue
slots (benchmarks/NOTES.md); counting instructions alone cannot say which. It is a model, not a
simulator of the hardware: block barriers only (not the cluster or group barriers of the
kernels beyond one CTA, whose steps it therefore underestimates), every instruction of the loop
is issued (branches are not followed),
the other three schedulers are assumed to do the same (shared-memory instructions therefore take
a quarter of the SM's shared-memory throughput), and a step's input loads are ready (they are
issued a step or two ahead). Its latencies are approximations of sm_90 from published
microbenchmarks (BASE_LATENCY) times LATENCY_SCALE, which with BARRIER was fitted to the steps
measured on the device (CALIBRATION); VALIDATION lists others, which it was not fitted to.

    python benchmarks/step_model.py Forward LstmCell bf16 64,1,16,512 --warps 4
    python benchmarks/step_model.py --calibration --root <a checkout of fa8b1e8>
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import re

import sass_loop

# Cycles from an instruction's issue until its result can be read: published approximations,
# scaled by the fitted LATENCY_SCALE.
BASE_LATENCY = {"FP": 4, "INT": 4, "ALU": 4, "MUFU": 18, "CVT": 6, "SMEM": 30, "HMMA": 33,
                "S2R": 20, "CONST": 20, "NONE": 1}
LATENCY_SCALE = 1.5
LATENCY = {pipe: max(1, round(cycles * LATENCY_SCALE)) for pipe, cycles in BASE_LATENCY.items()}
# Cycles a pipe of one scheduler is busy with one warp instruction: 32 FP32 lanes; 16 lanes of
# integer multiply-add (IMAD) and of the other integer and compare operations; 4 MUFU lanes;
# shared memory at 128 bytes a cycle for the SM, shared by its 4 schedulers; one m16n8k16 mma
# per 8 cycles.
PIPE = {"FP": 1, "INT": 2, "ALU": 2, "MUFU": 8, "CVT": 2, "SMEM": 4, "HMMA": 8, "S2R": 1,
        "CONST": 1, "NONE": 1}
# Cycles from the last warp's arrival at a block barrier until its warps go on: fitted. A
# barrier alone takes ~20-40; the fit puts a cost of ~300 cycles a step's phase that the model
# does not otherwise see (benchmarks/NOTES.md).
BARRIER = 300

_CLASSES = [
    (("FADD", "FMUL", "FFMA", "HADD2", "HMUL2", "HFMA2"), "FP"),
    (("IMAD", "IMUL"), "INT"),
    (("MUFU",), "MUFU"),
    (("F2F", "F2I", "I2F", "F2FP", "I2FP", "FRND"), "CVT"),
    (("LDS", "STS", "LDSM", "ATOMS"), "SMEM"),
    (("HMMA",), "HMMA"),
    (("S2R", "S2UR", "CS2R"), "S2R"),
    (("LDC", "ULDC"), "CONST"),
]


def pipe_of(op: str) -> str:
    for ops, pipe in _CLASSES:
        if op in ops:
            return pipe
    if op in ("BAR", "BRA", "BSSY", "BSYNC", "NOP", "DEPBAR", "LDGDEPBAR", "LDGSTS", "LDG",
              "STG", "ST", "LD", "EXIT", "WARPSYNC"):
        return "NONE"
    return "ALU"  # IADD3, LOP3, SHF, SEL, ISETP, FSETP, FSEL, FMNMX, LEA, PRMT, MOV, ...


_REG = re.compile(r"\b(U?R\d+|U?P\d)\b")


def _width(opcode: str) -> int:
    """Registers an instruction writes from its first operand on."""
    if opcode.startswith("HMMA") and ".F32" in opcode:
        return 4
    if ".128" in opcode:
        return 4
    if ".64" in opcode or ".WIDE" in opcode:
        return 2
    return 1


@dataclasses.dataclass(frozen=True)
class Op:
    pipe: str
    dests: tuple[str, ...]
    sources: tuple[str, ...]
    barrier: bool
    pipe_cycles: int  # PIPE of its pipe, times the 128-byte wavefronts of a shared-memory access


def decode(instruction: sass_loop.Instruction) -> Op:
    """The pipe, written and read registers of an instruction (RZ, PT and constants ignored)."""
    op = instruction.op
    operands = [o.strip() for o in instruction.operands.split(",")] if instruction.operands else []
    predicate = _REG.findall(instruction.predicate)
    writes = op not in ("STS", "STG", "ST", "BRA", "BAR", "BSSY", "BSYNC", "LDGSTS", "NOP",
                        "DEPBAR", "LDGDEPBAR", "EXIT", "ATOMS", "RED", "REDG")
    # The carry out of a 64-bit add's low half (IADD3 R, P, ...; LEA R, P, ...), which its .X
    # high half reads.
    carry_out = op in ("IADD3", "LEA", "IMAD") and ".X" not in instruction.opcode
    dests: list[str] = []
    sources = list(predicate)
    for i, operand in enumerate(operands):
        regs = _REG.findall(operand)
        if writes and i == 0 and regs:
            base = regs[0]
            if base.startswith("R"):
                n = int(base[1:])
                dests += [f"R{n + k}" for k in range(_width(instruction.opcode))]
            else:
                dests.append(base)
            continue
        if writes and i == 1 and op in ("ISETP", "FSETP", "PLOP3", "DSETP") and regs:
            dests.append(regs[0])  # a second predicate destination
            continue
        if carry_out and i in (1, 2) and regs and regs[0].startswith("P"):
            dests.append(regs[0])
            continue
        for reg in regs:
            if not reg.startswith("R"):
                sources.append(reg)
                continue
            if op == "HMMA" and i in (1, 2, 3):
                width = {1: 4, 2: 2, 3: 4}[i]  # A, B and C fragments
            elif "[" in operand:
                width = 2 if ".64" in operand else 1  # an address
            elif op in ("STS", "STG", "ST"):
                width = _width(instruction.opcode)  # the data stored
            else:
                width = 1
            sources += [f"R{int(reg[1:]) + k}" for k in range(width)]
    pipe = pipe_of(op)
    wavefronts = _width(instruction.opcode) if pipe == "SMEM" else 1
    return Op(pipe, tuple(dests), tuple(sources), op == "BAR", PIPE[pipe] * wavefronts)


def step_cycles(loop: list[sass_loop.Instruction], warps: int) -> int:
    """Cycles of one step: ``warps`` warps on one scheduler each issue the loop once."""
    ops = [decode(i) for i in loop]
    pc = [0] * warps
    ready = [dict() for _ in range(warps)]  # register -> cycle its value can be read
    pipe_free = {pipe: 0 for pipe in PIPE}
    at_barrier: list[int] = []
    released_at = [0] * warps
    cycle, last = 0, 0
    while any(p < len(ops) for p in pc):
        issued = False
        for w in sorted(range(warps), key=lambda w: pc[w]):  # the oldest first
            if pc[w] >= len(ops) or w in at_barrier or released_at[w] > cycle:
                continue
            op = ops[pc[w]]
            if any(ready[w].get(r, 0) > cycle for r in op.sources):
                continue
            if pipe_free[op.pipe] > cycle:
                continue
            pipe_free[op.pipe] = cycle + op.pipe_cycles
            for r in op.dests:
                ready[w][r] = cycle + LATENCY[op.pipe]
            pc[w] += 1
            if op.barrier:
                at_barrier.append(w)
                if len(at_barrier) == warps:
                    for v in at_barrier:
                        released_at[v] = cycle + BARRIER
                    at_barrier.clear()
            issued = True
            last = cycle
            break
        cycle += 1
        if not issued and cycle - last > 100000:
            raise RuntimeError("the model stalled")
    return max(last, max(released_at)) + 1


# Measured forwards (H200, B = 16, T = 1024, bf16, outputs only, ms; 1024 steps at the 1.93
# GHz that ncu reported) of the kernels of commit fa8b1e8: (cell, tiling, nvcc macros, warps per
# scheduler, ms). CALIBRATION: the LSTM's split forward at 16, 32 and 64
# (results/quick_bench_split_NVIDIA_H200.json: 48 x 16, 24 x 32, 12 x 64). VALIDATION: the
# sLSTM's at 16 and 64 (same file), and the single-CTA forwards at 64 that ran before the split
# one: the LSTM's (NOTES, "Split forward ... measured": 1.69 ms), the GRU's and the Elman's
# (results/suite_heads_gru_elman_NVIDIA_H200.json, 5 runs: 1.78 and 1.48 ms).
CALIBRATION = [("LstmCell", (16, 1, 16, 512), (), 1, 0.75),
               ("LstmCell", (32, 1, 16, 512), (), 2, 0.83),
               ("LstmCell", (64, 1, 16, 512), (), 4, 1.46)]
VALIDATION = [("SlstmCell", (16, 1, 16, 512), (), 1, 0.73),
              ("SlstmCell", (64, 1, 16, 512), (), 4, 1.68),
              ("LstmCell", (64, 1, 16, 512), ("FLASHRNN_MMA_SPLIT_FORWARD=0",), 1, 1.69),
              ("GruCell", (64, 1, 16, 512), ("FLASHRNN_MMA_SPLIT_FORWARD=0",), 1, 1.78),
              ("ElmanCell", (64, 1, 16, 512), ("FLASHRNN_MMA_SPLIT_FORWARD=0",), 1, 1.48)]
CLOCK_GHZ = 1.93


@functools.cache
def _step_loops(direction: str, cell: str, tile: tuple, defines: tuple, root: pathlib.Path):
    """sass_loop.step_loops of one bf16 instantiation, compiled once for all its kernels (the
    forward's two variants, outputs only and with residuals, come from one compile)."""
    return sass_loop.step_loops([(direction, cell, "__nv_bfloat16", tile)], defines, root)


def modelled_ms(cell: str, tile, defines, warps: int, root=sass_loop.REPO, steps=1024,
                direction="Forward", residuals=False) -> float:
    """The modelled bf16 kernel of ``steps`` steps, in ms: the forward with outputs only (or
    with its residuals), or the backward."""
    loops = _step_loops(direction, cell, tuple(tile), tuple(defines), pathlib.Path(root))
    variant = "" if direction == "Backward" else "Lb1" if residuals else "Lb0"
    loop = next(loop for name, loop in loops.items() if variant in name)
    return step_cycles(loop, warps) * steps / CLOCK_GHZ / 1e6


# Forward+backward as measured with the forwards of CALIBRATION and VALIDATION (H200, B = 16,
# T = 1024, bf16, fa8b1e8; results/quick_bench_split_NVIDIA_H200.json): (cell, forward tiling
# and warps per scheduler, backward tiling and warps, forward ms, forward+backward ms). The
# backward at 16 is the FMA kernel (2 warps a scheduler), at 32 and 64 the split one.
FORWARD_BACKWARD = [("LstmCell", (16, 1, 16, 512), 1, (16, 1, 16, 256), 2, 0.75, 2.96),
                    ("LstmCell", (32, 1, 16, 512), 2, (32, 1, 16, 512), 2, 0.83, 2.80),
                    ("LstmCell", (64, 1, 16, 512), 4, (64, 1, 16, 512), 4, 1.46, 4.19),
                    ("SlstmCell", (16, 1, 16, 512), 1, (16, 1, 16, 256), 2, 0.73, 3.31),
                    ("SlstmCell", (64, 1, 16, 512), 4, (64, 1, 16, 512), 4, 1.68, 5.16)]


def predictions(base_root, variants: dict[str, tuple[str, ...]]) -> str:
    """A markdown table: per FORWARD_BACKWARD case, the measured forward / forward+backward ms
    of the sources at base_root (fa8b1e8), and per variant (name -> nvcc macros) of this
    checkout's kernels the predicted ones: the forward scaled by its modelled ratio to the
    base's, forward+backward moved by the modelled change of the differentiated forward
    (with residuals) and the backward kernel; what the model does not see of a
    forward+backward (the XLA work around the kernels, ~0.7-1.3 ms here) is kept as measured."""
    header = "| case | measured | " + " | ".join(variants) + " |"
    lines = [header, "|---|---|" + "---|" * len(variants)]
    for cell, ft, fw, bt, bw, fwd_ms, fwdbwd_ms in FORWARD_BACKWARD:
        def kernels(root, defines):
            # At 16 the split backward (one unit tile of four warps) where the build at root
            # takes it, else the FMA backward's bw warps a scheduler.
            split_16 = bt[0] == 16 and "FLASHRNN_MMA_SPLIT_BACKWARD_16=1" in (
                sass_loop.merged_defines(sass_loop.default_defines(root), defines))
            backward_warps = 1 if split_16 else bw
            return (modelled_ms(cell, ft, defines, fw, root),
                    modelled_ms(cell, ft, defines, fw, root, residuals=True)
                    + modelled_ms(cell, bt, defines, backward_warps, root, direction="Backward"))
        base_fwd, base_rest = kernels(base_root, ())
        cells = []
        for defines in variants.values():
            fwd, rest = kernels(sass_loop.REPO, defines)
            cells.append(f"{fwd_ms * fwd / base_fwd:.2f} / {fwdbwd_ms - base_rest + rest:.2f}")
        lines.append(f"| {cell} D={ft[0]} | {fwd_ms:.2f} / {fwdbwd_ms:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


# This checkout's default build, and without each of the options it turns on (macros override
# CMakeLists.txt's defaults, which sass_loop compiles with). With FLASHRNN_MMA_SPLIT_BACKWARD_DR
# (on by default) the model sees the split backward's dR products but not the XLA contraction
# they replace, which the measured forward+backward keeps: "now" overstates those cases by it.
PREDICTED_VARIANTS = {
    "now": (),
    "without rounded operand": ("FLASHRNN_MMA_ROUNDED_OPERAND=0",),
    "without split backward 16": ("FLASHRNN_MMA_SPLIT_BACKWARD_16=0",),
    "without gates split 64": ("FLASHRNN_MMA_SPLIT_FORWARD_GATES=0",),
    "without all three": ("FLASHRNN_MMA_ROUNDED_OPERAND=0", "FLASHRNN_MMA_SPLIT_BACKWARD_16=0",
                          "FLASHRNN_MMA_SPLIT_FORWARD_GATES=0"),
}


def calibration_report(root) -> None:
    """Modelled against measured ms of CALIBRATION and VALIDATION, for the sources at root (the
    measured kernels': fa8b1e8)."""
    for title, cases in (("calibration", CALIBRATION), ("validation", VALIDATION)):
        for cell, tile, defines, warps, ms in cases:
            model = modelled_ms(cell, tile, defines, warps, root)
            print(f"{title:11s} {cell:9s} D={tile[0]:<4d} {' '.join(defines):30s} "
                  f"measured {ms:.2f} ms, modelled {model:.2f} ({model / ms:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", nargs="?", choices=["Forward", "Backward"])
    parser.add_argument("cell", nargs="?")
    parser.add_argument("dtype", nargs="?", choices=sorted(sass_loop.CUDA_TYPES))
    parser.add_argument("tiling", nargs="?")
    parser.add_argument("--warps", type=int, help="warps per scheduler")
    parser.add_argument("-D", dest="defines", action="append", default=[])
    parser.add_argument("--root", type=pathlib.Path, default=sass_loop.REPO,
                        help="the checkout whose kernels to model")
    parser.add_argument("--calibration", action="store_true",
                        help="model CALIBRATION and VALIDATION against their measurements")
    parser.add_argument("--predict", action="store_true",
                        help="with --root the measured kernels' checkout: the predicted forward "
                             "and forward+backward of this checkout's kernels and options")
    args = parser.parse_args()
    if args.calibration:
        calibration_report(args.root)
        return
    if args.predict:
        print(predictions(args.root, PREDICTED_VARIANTS))
        return
    if not args.tiling or not args.warps:
        parser.error("give direction, cell, dtype, tiling and --warps, or --calibration")
    tile = tuple(int(v) for v in args.tiling.split(","))
    loops = sass_loop.step_loops([(args.direction, args.cell, sass_loop.CUDA_TYPES[args.dtype],
                                   tile)], args.defines, args.root)
    for name, loop in loops.items():
        if any(i.op in ("UCGABAR_ARV", "SYNCS", "REDG", "RED") for i in loop):
            print(f"{sass_loop.short_name(name)}: meets other CTAs each step, which the model "
                  "does not count")
        cycles = step_cycles(loop, args.warps)
        print(f"{sass_loop.short_name(name)}: {len(loop)} instructions, modelled step "
              f"{cycles} cycles ({cycles / CLOCK_GHZ / 1000:.2f} µs)")


if __name__ == "__main__":
    main()
