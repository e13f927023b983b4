"""The fused kernels' hardware model: their tiling as a ConstrINT model of the GPU's limits.

A kernel instantiation is a (cell, dtype, head size ``D``) with a tiling: ``C`` CTAs per head (a
thread-block cluster when ``1 < C <= 16``; beyond, a cooperatively launched group that exchanges
through global memory, ``cuda_ffi/kernels/fma_exchange.cuh``) that split the head's ``D`` output
units, ``BT`` batch rows per CTA, ``NT`` threads per CTA, each owning ``P`` (unit, batch row)
elements. The model states the kernels' invariants and the device's limits as constraints (each
with a comment naming the limit), and prefers the fewest CTAs per head (the cheapest per-step
barrier), then the largest batch tile, then the most threads; where only a group beyond a
cluster fits, the tensor-core group kernels' (below), else the largest group
(GRID_PREFERENCE_ORDER). The numbers mirror
``cuda_ffi/kernels/tiling.h`` and the ``*Layout`` structs of ``forward.cuh``/``backward.cuh``,
whose static checks reject a tiling the kernels cannot run.

Among groups beyond a cluster, the model's variable ``TC`` = 2 admits the tensor-core group
kernels (``forward_mma_group.cuh``): 16-bit, one unit tile and a batch tile of 8 per CTA, 512
threads whose registers keep part of the CTA's R slice beside its shared memory, so that they
also hold the 16-bit LSTM, sLSTM and GRU heads of 2048 that no FMA kernel holds. They are
preferred among groups (GRID_PREFERENCE_ORDER); in float16, which has no tensor-core backward,
and in a build without them (``compiled_tilings(tensor_core_groups=False)``), only where no FMA
kernel fits. Their tilings are the only ones with more threads
than (unit, batch row) elements, by which the C++ side tells them (``tiling.h``
``kThreadsBeyondElements``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping

from .solver import solve

# Bytes per element of the kernels' storage dtypes, by the names CMake and XLA use.
DTYPE_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "BF16": 2, "F16": 2, "F32": 4}
# Gate counts of R per cell (flashrnn_jax.cells, kept here so the model imports no jax).
RECURRENT_GATES = {"lstm": 4, "gru": 3, "slstm": 4, "elman": 1}

# Shared-memory slack for the 128-byte alignment of the kernels' buffers.
_ALIGNMENT_SLACK = 256
# Floats of padding after each batch row of a grid forward's staged h (grid_workspace.h's
# kStagedHPad: rows fall in distinct banks).
_STAGED_H_PAD = 4
# Registers a kernel thread may need: ptxas (sm_90a, the default grid with the sequence
# options) reports 29 to 128, the top ones at 512 threads where the launch bounds cap them
# (Elman and sLSTM at D=128, and D=256, spill 4-24 bytes there).
_REGISTERS_PER_THREAD = 128
# The kernels keep at most this many elements' states per thread in registers (tiling.h).
_MAX_ELEMENTS_PER_THREAD = 8
# The smallest group of CTAs per head that the grid kernels run (tiling.h: clusters up to 16).
_MIN_GRID_GROUP = 32
# Threads per CTA the kernels are tuned for (more only adds barrier cost at one CTA per SM).
_MAX_THREADS = 512
# The tensor-core group kernels (mma_cluster_shape.h, forward_mma_group.cuh): units per CTA,
# threads per CTA, registers per thread kept for the step beside the R fragments.
_MMA_GROUP_UNITS = 16
_MMA_GROUP_THREADS = 512
_MMA_STEP_REGISTERS = 64
_MMA_GROUP_BACKWARD_STEP_REGISTERS = 80


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """The limits of a CUDA device that the kernels' tiling depends on."""

    name: str
    shared_memory_per_block_optin: int
    registers_per_sm: int
    max_threads_per_block: int
    max_cluster_size: int
    sm_count: int

    @classmethod
    def sm90(cls) -> DeviceLimits:
        """Hopper (H100, H200): the target the build compiles for."""
        return cls("sm_90", 232448, 65536, 1024, 16, 132)

    @classmethod
    def from_properties(cls, props: Mapping) -> DeviceLimits:
        """From ``flashrnn_jax._cuda.device_properties()``."""
        major = props["compute_capability"][0]
        return cls(
            str(props["name"]),
            int(props["shared_memory_per_block_optin"]),
            int(props["registers_per_sm"]),
            int(props["max_threads_per_block"]),
            16 if major >= 9 else 1,
            int(props["sm_count"]),
        )


@dataclasses.dataclass(frozen=True)
class Tiling:
    cluster: int
    batch_tile: int
    threads: int

    def as_dict(self) -> dict[str, int]:
        return {"C": self.cluster, "BT": self.batch_tile, "NT": self.threads}

    @property
    def grid_group(self) -> bool:
        """Whether a head runs on a group of CTAs beyond a cluster, meeting through global
        memory (fma_exchange.cuh), rather than on one CTA or a cluster."""
        return self.cluster >= _MIN_GRID_GROUP


class InfeasibleTilingError(ValueError):
    """No tiling of the fused kernels fits the device; the message names the binding limit."""


def _constraints(function: str, dtype: str, head_size: int, device: DeviceLimits):
    """(constraint text, comment, is a device limit) triples of the model."""
    G, E, D = RECURRENT_GATES[function], DTYPE_BYTES[dtype], head_size
    return [
        (f"D == {D}; G == {G}; E == {E};", "the problem: head size, R gates, bytes per element",
         False),
        ("C == [1, 2, 4, 8, 16, 32, 64, 96, 128];",
         "CTAs per head: a power of two, or 96 for the tensor-core group kernels (tiling.h)",
         False),
        ("TC == 2 | C == [1, 2, 4, 8, 16, 32, 64, 128];",
         "CTAs per head of the FMA kernels: a power of two (tiling.h)", False),
        ("U * C == D;", "a head's units split evenly over its CTAs (tiling.h)", False),
        ("BT == [8, 16];", "batch rows per CTA (tiling.h); more only idles rows at small batch",
         False),
        ("TC == 2 | NT * P == U * BT;",
         "(unit, batch row) elements split evenly over threads (tiling.h)", False),
        ("NT == 32 * W;", "whole warps (tiling.h)", False),
        (f"P <= {_MAX_ELEMENTS_PER_THREAD};", "per-thread cell states stay in registers", False),
        (f"NT <= {_MAX_THREADS};", "threads per CTA the kernels are written for", False),
        (f"C <= {device.max_cluster_size} | {_MIN_GRID_GROUP} <= C;",
         "maximum thread-block cluster size of the device (larger groups meet through global "
         "memory)", True),
        (f"C <= {device.sm_count};",
         "streaming multiprocessors: a group's CTAs must be resident at once, one per SM", True),
        (f"NT <= {device.max_threads_per_block};", "maximum threads per block", True),
        (f"NT * {_REGISTERS_PER_THREAD} <= {device.registers_per_sm};",
         "registers per SM (one CTA per SM)", True),
        (f"G * D * U * E + 2 * BT * D * 4 + {_ALIGNMENT_SLACK} "
         f"<= {device.shared_memory_per_block_optin} | {_MIN_GRID_GROUP} <= C;",
         "shared memory per block, forward: R slice + double-buffered h (forward.cuh)", True),
        (f"G * U * D * E + 2 * BT * D * 4 + G * BT * U * 4 + {_ALIGNMENT_SLACK} "
         f"<= {device.shared_memory_per_block_optin} | {_MIN_GRID_GROUP} <= C;",
         "shared memory per block, backward: R slice + partial cotangents + gate cotangents "
         "(backward.cuh)", True),
        (f"G * D * U * E + BT * D * 4 + {4 * _STAGED_H_PAD} * BT + {_ALIGNMENT_SLACK} "
         f"<= {device.shared_memory_per_block_optin} | TC == 2;",
         "shared memory per block, forward of a group beyond a cluster: R slice + the step's h "
         "(fma_exchange.cuh; less than the cluster kernels need)", True),
        (f"G * U * D * E + G * BT * U * 4 + BT * D * 4 + {_ALIGNMENT_SLACK} "
         f"<= {device.shared_memory_per_block_optin} | TC == 2;",
         "shared memory per block, backward of a group beyond a cluster: R slice + gate "
         "cotangents + the step's partials (fma_exchange.cuh)", True),
    ] + _tensor_core_group_constraints(device)


def _tensor_core_group_constraints(device: DeviceLimits):
    """The tensor-core group kernels (``TC == 2``), as ``_constraints`` gives them.

    Shared memory of the forward (``MmaGroupForwardLayout``): each of 16 warps' part of h, hi
    and lo, 8 rows of D / 16 + 8 values (16 (D + 128) E bytes); 3 input stages of 8 rows of
    16 G + 8 values; and the R fragments that the registers do not hold: those hold ``KR``
    k-tiles of every gate per warp, 16 bytes per lane each (8192 G KR bytes per CTA), at most as
    many as leave 64 registers of a thread for the step (the kernel keeps fewer where shared
    memory takes the rest; the model asks whether the most it may keep suffices). Of the
    backward (``MmaGroupBackwardLayout``): the gate cotangents, hi and lo, 8 rows of 16 G + 8
    values; the partials received, 4 warps x C sources x 32 floats (32 D bytes); and the Rᵀ
    fragments beyond the ``KB`` products of G k-tiles per warp in registers (8192 G KB bytes),
    which leave 80 registers for the step."""
    U, NT = _MMA_GROUP_UNITS, _MMA_GROUP_THREADS
    registers = device.registers_per_sm // NT
    return [
        ("TC == [1, 2];", "the kernels: 1 the FMA kernels, 2 the tensor-core group kernels",
         False),
        ("TC == 1 | E == 2;", "tensor-core group kernels: 16-bit inputs", False),
        (f"TC == 1 | U == {U};", "tensor-core group kernels: one unit tile per CTA", False),
        ("TC == 1 | BT == 8;", "tensor-core group kernels: one mma batch tile per CTA", False),
        (f"TC == 1 | NT == {NT};",
         f"tensor-core group kernels: {NT} threads, {NT // 32} warps splitting K (the 128 of "
         "warps 0 to 3 run one element each)", False),
        ("TC == 1 | P == 1;", "tensor-core group kernels: an element thread runs one element",
         False),
        ("TC == 1 | 512 * G <= D * E + 128 * E;",
         "tensor-core group forward: a warp's partial sums (G x 4 x 32 floats) fit its part of "
         "h, 8 rows of hi and lo of D / 16 + 8 values", False),
        ("KR <= 8;", "tensor-core group kernels: a warp's k-tiles of R in registers, of its "
         "D / 256 (D <= 2048: 128 CTAs of 16 units)", False),
        ("TC == 1 | C == [64, 96, 128];",
         "tensor-core group kernels: whole k-tiles per warp (D / 256; 96 CTAs for D = 1536)",
         False),
        (f"TC == 1 | KR * {16 * NT // 32} <= D;",
         "tensor-core group kernels: a warp's k-tiles, D / 256", False),
        (f"TC == 1 | 4 * G * KR + {_MMA_STEP_REGISTERS} <= {registers};",
         f"registers per thread of the tensor-core group kernels' {NT}: R fragments and the "
         "step (mma_cluster_shape.h)", True),
        (f"TC == 1 | G * U * D * E + 16 * D * E + 2048 * E + 384 * G * E + 192 * E + "
         f"{_ALIGNMENT_SLACK} <= {device.shared_memory_per_block_optin} + {16 * NT} * G * KR;",
         "shared memory per block, tensor-core group forward: h + input stages + the R slice "
         "beyond the registers (forward_mma_group.cuh)", True),
        ("KB <= 8;", "tensor-core group backward: a warp's products in registers, of its C / 16",
         False),
        (f"TC == 1 | KB * {16 * NT // 32} <= D;",
         "tensor-core group backward: a warp's products, C / 16 = D / 256", False),
        (f"TC == 1 | 4 * G * KB + {_MMA_GROUP_BACKWARD_STEP_REGISTERS} <= {registers};",
         f"registers per thread of the tensor-core group backward's {NT}: Rᵀ fragments and the "
         "step (mma_cluster_shape.h)", True),
        (f"TC == 1 | G * U * D * E + 256 * G * E + 128 * E + 32 * D + {_ALIGNMENT_SLACK} "
         f"<= {device.shared_memory_per_block_optin} + {16 * NT} * G * KB;",
         "shared memory per block, tensor-core group backward: gate cotangents + the partials "
         "received + the R slice beyond the registers (backward_mma_group.cuh)", True),
    ]


# The fewest CTAs per head (cheapest per-step barrier), then the largest batch tile, most
# threads; the FMA kernels first (the tensor-core group kernels' groups are larger than any
# cluster, GRID_PREFERENCE_ORDER decides among groups).
PREFERENCE_ORDER = (("TC", "smallest"), ("C", "smallest"), ("BT", "largest"), ("NT", "largest"))
# Where only a group beyond a cluster fits: the tensor-core group kernels where they fit (their
# step is the tensor cores' share of the head's matmul, a few hundred cycles, where an FMA group
# thread runs a whole dot product over D: ~7 µs a step at 1024, benchmarks/NOTES.md), else the
# largest FMA group. Every thread of the FMA group kernels runs its elements' whole dot product,
# so their step is that chain times the warps per scheduler: more CTAs for the same head mean
# fewer warps each (at 768, 128 CTAs of 3 warps against 32 of 12), while a device full of groups
# does the same work either way.
GRID_PREFERENCE_ORDER = (("TC", "largest"), ("C", "largest"), ("BT", "largest"),
                         ("NT", "largest"))


def preference_key(tiling: Tiling) -> tuple:
    """Sort key of the preference among tilings (PREFERENCE_ORDER, GRID_PREFERENCE_ORDER), over
    the tiling's own fields: a compiled tensor-core group tiling (``TC``, which a Tiling does
    not carry) is always the larger group beside an FMA one (compiled_tilings), so C orders
    them as TC would."""
    values = tiling.as_dict()
    order = GRID_PREFERENCE_ORDER if tiling.grid_group else PREFERENCE_ORDER
    return (tiling.grid_group,
            *(values[name] if how == "smallest" else -values[name] for name, how in order
              if name in values))


def model_text(function: str, dtype: str, head_size: int, device: DeviceLimits) -> str:
    """The model in the ConstrINT language, one commented constraint per line."""
    return "\n".join(f"{text}  # {comment}"
                     for text, comment, _ in _constraints(function, dtype, head_size, device))


def _binding_limits(function, dtype, head_size, device, fixed: str) -> list[str]:
    """The device limits that alone, with the kernel invariants (and ``fixed``), leave no
    tiling; if none does alone, all device limits (they bind together)."""
    constraints = _constraints(function, dtype, head_size, device)
    invariants = "\n".join(text for text, _, is_limit in constraints if not is_limit) + fixed
    limits = [(text, comment) for text, comment, is_limit in constraints if is_limit]
    alone = [comment for text, comment in limits
             if not solve(f"{invariants}\n{text}", order=PREFERENCE_ORDER, cache=False)]
    return alone or [f"{comment} (together)" for _, comment in limits]


def _infeasible(function, dtype, head_size, device, fixed: str, what: str):
    limits = _binding_limits(function, dtype, head_size, device, fixed)
    # The tensor-core group kernels' own bound is a kernel invariant, not a device limit, so
    # _binding_limits never names it.
    beyond = ("; the tensor-core group kernels, whose registers hold R beside shared memory, "
              "take heads of 1024 to 2048 only (at most 128 CTAs of 16 units)"
              if DTYPE_BYTES[dtype] == 2 and head_size > 2048 else "")
    return InfeasibleTilingError(
        f"{what} for function={function!r}, dtype {dtype}, head size {head_size} on "
        f"{device.name}; binding: {' and '.join(limits)}{beyond}"
    )


def compiled_tilings(function: str, dtype: str, head_size: int,
                     device: DeviceLimits | None = None,
                     tensor_core_groups: bool = True) -> list[Tiling]:
    """The tilings to compile, preferred first: the model's first in PREFERENCE_ORDER and, where
    that is a group beyond a cluster (no cluster fits), the first in GRID_PREFERENCE_ORDER before
    it, the smallest group staying as the fallback for devices with fewer SMs (H100 PCIe: 114)
    where it has fewer CTAs;
    :class:`InfeasibleTilingError` naming the binding limit where none fits.
    ``tensor_core_groups``: whether the build has the tensor-core group kernels (CMake
    ``FLASHRNN_MMA_CLUSTER_FORWARD`` and ``_BACKWARD``); without them, and for float16 (no
    tensor-core backward: ``backward_mma.cuh``), the FMA kernels wherever they fit, so that a
    call can be run and differentiated."""
    device = device or DeviceLimits.sm90()
    model = model_text(function, dtype, head_size, device)
    if ((dtype.lower() == "f16" or not tensor_core_groups)
            and solve(model + "\nTC == 1;")):
        model += "\nTC == 1;"
    solutions = solve(model, order=PREFERENCE_ORDER)
    if not solutions:
        raise _infeasible(function, dtype, head_size, device, "", "no fused-kernel tiling fits")
    first = Tiling(solutions[0]["C"], solutions[0]["BT"], solutions[0]["NT"])
    if not first.grid_group:
        return [first]
    largest = solve(model, order=GRID_PREFERENCE_ORDER)[0]
    preferred = Tiling(largest["C"], largest["BT"], largest["NT"])
    # A fallback of no fewer CTAs fits no device that the preferred tiling does not.
    return [preferred] if preferred.cluster <= first.cluster else [preferred, first]


def choose_tiling(function: str, dtype: str, head_size: int,
                  device: DeviceLimits | None = None) -> Tiling:
    """The preferred tiling, or :class:`InfeasibleTilingError` naming the binding limit."""
    return compiled_tilings(function, dtype, head_size, device)[0]


def check_tiling(function: str, dtype: str, head_size: int, tiling: Tiling,
                 device: DeviceLimits) -> None:
    """Raise :class:`InfeasibleTilingError` when a (compiled) tiling does not fit ``device``."""
    fixed = "".join(f"\n{k} == {v};" for k, v in tiling.as_dict().items())
    if not solve(model_text(function, dtype, head_size, device) + fixed, cache=False):
        raise _infeasible(function, dtype, head_size, device, fixed,
                          f"the compiled tiling {tiling} does not fit")


def takes_tensor_core_group(function: str, dtype: str, head_size: int, tiling: Tiling,
                            device: DeviceLimits | None = None) -> bool:
    """Whether ``tiling`` is one of the tensor-core group kernels (``TC == 2``): no FMA kernel
    runs it (``tiling.h`` ``kThreadsBeyondElements`` tells it in C++)."""
    device = device or DeviceLimits.sm90()
    fixed = "".join(f"\n{k} == {v};" for k, v in tiling.as_dict().items())
    model = model_text(function, dtype, head_size, device) + fixed
    return bool(solve(model, cache=False)) and not solve(model + "\nTC == 1;", cache=False)


def pick_compiled(function: str, dtype: str, head_size: int, compiled: Iterable[Tiling],
                  device: DeviceLimits) -> Tiling:
    """Among compiled tilings of one (cell, dtype, head size), the first in the model's
    preference order that fits ``device``; :class:`InfeasibleTilingError` when none does."""
    candidates = sorted(compiled, key=preference_key)
    error = None
    for tiling in candidates:
        try:
            check_tiling(function, dtype, head_size, tiling, device)
            return tiling
        except InfeasibleTilingError as err:
            error = err
    if error is None:
        raise ValueError(f"no compiled tiling given for {function} {dtype} D={head_size}")
    raise error


def main(argv=None) -> None:
    """Print ``function dtype head_size cluster batch_tile threads`` for CMake, one line per
    tiling to compile (compiled_tilings), and one ``# skipped:`` line naming the combinations
    no tiling fits (CMake warns with it; a fused call names the binding limit)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--functions", required=True, help="';'-separated, e.g. 'lstm;gru'")
    parser.add_argument("--dtypes", required=True, help="';'-separated, e.g. 'bf16;f32'")
    parser.add_argument("--head-sizes", required=True, help="';'-separated, e.g. '16;64'")
    parser.add_argument("--no-tensor-core-groups", action="store_true",
                        help="the build has no tensor-core group kernels (CMake "
                             "FLASHRNN_MMA_CLUSTER_FORWARD or _BACKWARD off)")
    args = parser.parse_args(argv)
    skipped = []
    for function in args.functions.split(";"):
        for dtype in args.dtypes.split(";"):
            for head_size in args.head_sizes.split(";"):
                try:
                    tilings = compiled_tilings(
                        function, dtype, int(head_size),
                        tensor_core_groups=not args.no_tensor_core_groups)
                except InfeasibleTilingError:
                    skipped.append(f"function={function!r} {dtype} {head_size}")
                    continue
                for t in tilings:
                    print(function, dtype, head_size, t.cluster, t.batch_tile, t.threads)
    if skipped:
        # One line without ';', which CMake would take for a list separator.
        print(f"# skipped: no kernel tiling fits on chip, so these are not built (backend="
              f"'fused' names the binding limit at a call): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
