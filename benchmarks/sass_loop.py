"""The SASS of a kernel's step loop, on a machine without a GPU: compile one instantiation for
sm_90a with nvcc, disassemble it with nvdisasm, and count the instructions of the loop that runs
once per time step.

Why: the step of every kernel here is latency- and issue-bound (benchmarks/NOTES.md), and the
instructions a warp issues per step are the one part of it that can be counted before a device
run. nvdisasm comes from PyPI (``pip install nvidia-cuda-nvdisasm``; the ``test`` extra has it on
x86-64 Linux) or from a CUDA toolkit on PATH.

    python benchmarks/sass_loop.py Forward LstmCell bf16 64,1,16,512
    python benchmarks/sass_loop.py Backward LstmCell bf16 64,1,16,512 \
        -D FLASHRNN_MMA_ROUNDED_OPERAND=1

prints, per kernel of the instantiation, the step loop's instructions by opcode;

    python benchmarks/sass_loop.py --table results/sass_step_loops.json --baseline-root DIR

writes the instruction counts of the step loops of the kernels behind issue 5's rows (TABLE),
beside those of the sources in DIR (another checkout's repository root), as JSON.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
CELL_HEADERS = ("elman_pointwise", "gru_pointwise", "lstm_pointwise", "slstm_pointwise")
CUDA_TYPES = {"bf16": "__nv_bfloat16", "f16": "__half", "f32": "float"}


def option_defaults(root: pathlib.Path = REPO) -> dict[str, bool]:
    """The FLASHRNN_ options of the CMakeLists.txt at ``root`` and whether each is on by
    default."""
    text = (root / "CMakeLists.txt").read_text()
    return {name: value == "ON"
            for name, value in re.findall(r'option\((FLASHRNN_\w+)\s+"[^"]*"\s+(ON|OFF)\)', text)}


def default_defines(root: pathlib.Path = REPO) -> tuple[str, ...]:
    """The kernels' CMake options as the default build of the repository at ``root`` sets them
    (its CMakeLists.txt's option() defaults), as nvcc macros."""
    return tuple(f"{name}={int(on)}" for name, on in option_defaults(root).items())


def nvdisasm() -> str | None:
    """The nvdisasm executable: the PyPI package's, else one on PATH."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for found in sorted(pathlib.Path(root).glob("cu*/bin/nvdisasm")):
            return str(found)
    return shutil.which("nvdisasm")


def instantiation_source(instantiations) -> str:
    """A translation unit that instantiates each (direction, cell, CUDA dtype, tiling) launcher."""
    headers = ("backward", "forward") + CELL_HEADERS
    return ("".join(f'#include "kernels/{h}.cuh"\n' for h in headers)
            + "namespace flashrnn {\n"
            + "".join(f"template cudaError_t Launch{d}<{cell}, {dtype}, "
                      f"Tiling<{', '.join(map(str, tile))}>>(const {d}Args&, cudaStream_t);\n"
                      for d, cell, dtype, tile in instantiations)
            + "}  // namespace flashrnn\n")


def compile_cubin(source: str, workdir: pathlib.Path, defines=(),
                  root: pathlib.Path = REPO) -> pathlib.Path:
    """nvcc -cubin for sm_90a of ``source`` against the kernels of the repository at ``root``,
    with its default build's options (default_defines) and then ``defines``, which override
    them."""
    path = workdir / "kernels.cu"
    path.write_text(source)
    cubin = workdir / "kernels.cubin"
    command = [shutil.which("nvcc") or "nvcc", "-std=c++17", "-arch=sm_90a",
               "--expt-relaxed-constexpr", "-cubin", f"-I{root / 'cuda_ffi'}",
               *(f"-D{d}" for d in merged_defines(default_defines(root), defines)),
               "-o", str(cubin), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed:\n{result.stderr[-3000:]}")
    return cubin


def merged_defines(defaults, overrides) -> list[str]:
    """NAME=VALUE macros of ``defaults`` with those of ``overrides`` (a bare NAME: 1) in their
    place."""
    values = dict(d.split("=", 1) if "=" in d else (d, "1") for d in (*defaults, *overrides))
    return [f"{name}={value}" for name, value in values.items()]


@dataclasses.dataclass(frozen=True)
class Instruction:
    predicate: str  # "@P0", "@!P2" or ""
    opcode: str  # with its modifiers, e.g. "HMMA.16816.F32.BF16"
    operands: str

    @property
    def op(self) -> str:
        """The opcode without modifiers, e.g. "HMMA"."""
        return self.opcode.split(".")[0]


_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def disassemble(cubin: pathlib.Path) -> dict[str, list[Instruction | str]]:
    """Each kernel's code: instructions, and labels as strings where they fall."""
    tool = nvdisasm()
    if tool is None:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
    text = subprocess.run([tool, "-c", str(cubin)], capture_output=True, text=True,
                          check=True, timeout=300).stdout
    kernels: dict[str, list[Instruction | str]] = {}
    body = None
    for line in text.splitlines():
        if line.startswith(".text."):
            body = kernels.setdefault(line[len(".text."):].rstrip(":"), [])
        elif body is not None:
            label, instruction = _LABEL.match(line), _LINE.match(line)
            if label:
                body.append(label.group(1))
            elif instruction:
                predicate, opcode, operands = instruction.groups()
                body.append(Instruction((predicate or "").strip(), opcode, operands.strip()))
    return kernels


def step_loop(code: list[Instruction | str]) -> list[Instruction]:
    """The instructions of the kernel's largest loop (a backward branch to a label before it,
    with every instruction between): the step loop of the persistent kernels."""
    where = {item: i for i, item in enumerate(code) if isinstance(item, str)}
    best: tuple[int, int] = (0, 0)
    for i, item in enumerate(code):
        if isinstance(item, Instruction) and item.op == "BRA":
            target = _BRANCH_TARGET.search(item.operands)
            if target and where.get(target.group(1), i) < i:
                start = where[target.group(1)]
                if i - start > best[1] - best[0]:
                    best = (start, i + 1)
    return [item for item in code[best[0]:best[1]] if isinstance(item, Instruction)]


def opcode_counts(loop: list[Instruction]) -> collections.Counter:
    return collections.Counter(instruction.op for instruction in loop)


def step_loops(instantiations, defines=(), root: pathlib.Path = REPO
               ) -> dict[str, list[Instruction]]:
    """Kernel name -> its step loop, for every kernel the instantiations compile."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = compile_cubin(instantiation_source(instantiations), pathlib.Path(tmp), defines,
                              root)
        return {name: step_loop(code) for name, code in disassemble(cubin).items()}


# The kernels behind issue 5's rows in bfloat16 (48 x 16, 12 x 64, 3 x 256, 1 x 768, 1 x 2048:
# the split, cluster and group kernels), LSTM and sLSTM; each
# forward also with its residuals (the forward of a differentiated call).
TABLE = [(direction, cell, "bf16", tile)
         for cell in ("LstmCell", "SlstmCell")
         for tile in ((16, 1, 16, 512), (64, 1, 16, 512), (256, 8, 16, 512), (768, 32, 16, 384),
                      (2048, 128, 8, 512))
         for direction in ("Forward", "Backward")]


def short_name(kernel: str) -> str:
    """A readable name of a kernel symbol: its kernel, cell, head size and residual flag."""
    m = re.match(r"_ZN8flashrnn\d+(\w+?Kernel)INS_\d+(\w+?Cell)E.*?Li(\d+)E(.*)", kernel)
    if not m:
        return kernel
    kind, cell, d, rest = m.groups()
    residuals = {"Lb0": " (outputs only)", "Lb1": " (residuals)"}
    flag = next((text for key, text in residuals.items() if key in rest), "")
    return f"{kind} {cell} D={d}{flag}"


def table(root: pathlib.Path = REPO) -> dict[str, int]:
    """Short kernel name -> the instructions of its step loop, for TABLE."""
    loops = step_loops([(d, cell, CUDA_TYPES[dtype], tile) for d, cell, dtype, tile in TABLE],
                       root=root)
    return {short_name(name): len(loop) for name, loop in sorted(loops.items())}


def _commit(root: pathlib.Path) -> str | None:
    """The checkout's commit, "+" where its kernels differ from it; None where root is no
    checkout's top (a tree unpacked by git archive, inside another checkout or not, whose
    enclosing repository's commit would say nothing of it)."""
    git = ["git", "-C", str(root)]
    top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0 or pathlib.Path(top.stdout.strip()).resolve() != root.resolve():
        return None
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "cuda_ffi", "CMakeLists.txt"])
    return commit + ("+" if dirty.returncode else "")


def write_table(path: pathlib.Path, baseline_root: pathlib.Path | None) -> None:
    counts = table()
    before = table(baseline_root) if baseline_root else {}
    nvcc = subprocess.run([shutil.which("nvcc") or "nvcc", "--version"], capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    record = {"arch": "sm_90a", "nvcc": nvcc, "commit": _commit(REPO),
              "baseline_commit": _commit(baseline_root) if baseline_root else None,
              "kernels": {name: {"instructions": n, "baseline": before.get(name)}
                          for name, n in counts.items()}}
    path.write_text(json.dumps(record, indent=1) + "\n")
    for name, n in counts.items():
        was = before.get(name)
        print(f"{n:5d}" + (f" (was {was}, {n - was:+d})" if was else "") + f"  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", nargs="?", choices=["Forward", "Backward"])
    parser.add_argument("cell", nargs="?", help="LstmCell, SlstmCell, GruCell or ElmanCell")
    parser.add_argument("dtype", nargs="?", choices=sorted(CUDA_TYPES))
    parser.add_argument("tiling", nargs="?",
                        help="D,C,BT,NT as tiling.h's Tiling, e.g. 64,1,16,512")
    parser.add_argument("-D", dest="defines", action="append", default=[],
                        help="a macro for nvcc, e.g. FLASHRNN_MMA_ROUNDED_OPERAND=1")
    parser.add_argument("--list", action="store_true", help="print the loop's instructions too")
    parser.add_argument("--table", type=pathlib.Path,
                        help="write the step loops of TABLE's kernels to this JSON file")
    parser.add_argument("--baseline-root", type=pathlib.Path,
                        help="with --table: another checkout's root, counted beside")
    parser.add_argument("--option-defaults", type=pathlib.Path, metavar="ROOT",
                        help="print NAME=ON|OFF for each option of ROOT's CMakeLists.txt "
                             "(scripts/gpu_check.sh reads them)")
    args = parser.parse_args()
    if args.option_defaults:
        for name, on in option_defaults(args.option_defaults).items():
            print(f"{name}={'ON' if on else 'OFF'}")
        return
    if args.table:
        write_table(args.table, args.baseline_root)
        return
    if not args.tiling:
        parser.error("give direction, cell, dtype and tiling, or --table")
    tile = tuple(int(v) for v in args.tiling.split(","))
    loops = step_loops([(args.direction, args.cell, CUDA_TYPES[args.dtype], tile)],
                       args.defines)
    for name, loop in loops.items():
        print(f"{name}: {len(loop)} instructions in the step loop")
        counts = opcode_counts(loop)
        print("  " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
        if args.list:
            for instruction in loop:
                print(f"    {instruction.predicate:6} {instruction.opcode} {instruction.operands}")


if __name__ == "__main__":
    main()
