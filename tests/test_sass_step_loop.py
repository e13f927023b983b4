"""The SASS of the kernels' step loops (nvcc for sm_90a and nvdisasm, no GPU): the properties of
the instructions a warp issues every step that the sources were written to have
(``benchmarks/sass_loop.py`` extracts the loop; ``benchmarks/NOTES.md`` has the counts)."""

from __future__ import annotations

import collections

import shutil
import subprocess
import sys

import bench_runs  # noqa: F401  (puts benchmarks/ on sys.path)
import pytest
import sass_loop

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or sass_loop.nvdisasm() is None,
                                reason="needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)")

BF16 = "__nv_bfloat16"
# The split forward and backward of a head of 64 (one CTA, four warps per unit tile) and the
# cluster forward and backward of a head of 256 (8 CTAs), LSTM, bfloat16.
HOT = [("Forward", "LstmCell", BF16, (64, 1, 16, 512)),
       ("Backward", "LstmCell", BF16, (64, 1, 16, 512)),
       ("Forward", "LstmCell", BF16, (256, 8, 16, 512)),
       ("Backward", "LstmCell", BF16, (256, 8, 16, 512))]


@pytest.fixture(scope="module")
def loops():
    return sass_loop.step_loops(HOT)


def _kernels(loops, kind: str) -> dict[str, list[sass_loop.Instruction]]:
    found = {name: loop for name, loop in loops.items() if kind in name}
    assert found, (kind, list(loops))
    return found


SPLIT_FORWARD_64 = "ForwardMmaClusterKernelINS_8LstmCellE13__nv_bfloat16Li64E"


def test_the_step_loop_is_found_with_its_mma_and_barriers(loops):
    # The split forward at 64 of the default build: one gate x 4 k-tiles per warp
    # (FLASHRNN_MMA_SPLIT_FORWARD_GATES), h rounded to one bf16 operand
    # (FLASHRNN_MMA_ROUNDED_OPERAND): 4 mma; two block barriers per step. Both its variants
    # (with and without residuals).
    split_forward = _kernels(loops, SPLIT_FORWARD_64)
    assert len(split_forward) == 2
    for loop in split_forward.values():
        counts = sass_loop.opcode_counts(loop)
        assert (counts["HMMA"], counts["BAR"]) == (4, 2), counts


def test_without_the_options_the_split_forward_multiplies_hi_and_lo_parts():
    # Both options off: 4 gates x 1 k-tile per warp, as hi and lo: 8 mma, and two block
    # barriers still.
    loops = sass_loop.step_loops(HOT[:1], ("FLASHRNN_MMA_SPLIT_FORWARD_GATES=0",
                                           "FLASHRNN_MMA_ROUNDED_OPERAND=0"))
    split_forward = _kernels(loops, SPLIT_FORWARD_64)
    assert len(split_forward) == 2
    for loop in split_forward.values():
        counts = sass_loop.opcode_counts(loop)
        assert (counts["HMMA"], counts["BAR"]) == (8, 2), counts


def test_sigmoid_and_tanh_take_one_exp2_and_one_reciprocal_each(loops):
    # The LSTM's step (and its derivative) evaluates three sigmoids and two tanh: five
    # MUFU.EX2 and five MUFU.RCP, each exp2 without the range test and scalings that keep
    # subnormal results (FSETP against -126 and two FMUL by 0.5 and by itself).
    for name, loop in loops.items():
        ex2 = [i for i in loop if i.opcode == "MUFU.EX2"]
        rcp = [i for i in loop if i.opcode == "MUFU.RCP"]
        assert (len(ex2), len(rcp)) == (5, 5), name
        assert not [i for i in loop if i.op == "FSETP" and "-126" in i.operands], name


def test_partial_sums_start_from_the_first_partial(loops):
    # Each element's recurrent sums add the partials of the warps (split kernels) or CTAs
    # (cluster backward) that share K: no add of the zero register to a register in the step
    # loop (-RZ, a negation, is another idiom).
    for name, loop in loops.items():
        adds_of_zero = [i for i in loop if i.op == "FADD"
                        and "RZ" in [o.strip() for o in i.operands.split(",")[1:]]]
        assert not adds_of_zero, (name, adds_of_zero)


def test_the_step_loop_is_the_largest_backward_branch():
    code = ["start", sass_loop.Instruction("", "IADD3", "R1, R1, 0x1, RZ"), ".L_x_1",
            sass_loop.Instruction("", "FADD", "R2, R2, R3"),
            sass_loop.Instruction("@P0", "BRA", "`(.L_x_1)"), ".L_x_2",
            sass_loop.Instruction("", "HMMA.16816.F32.BF16", "R4, R8, R12, R4"),
            ".L_x_3", sass_loop.Instruction("", "BAR.SYNC.DEFER_BLOCKING", "0x0"),
            sass_loop.Instruction("@P1", "BRA", "`(.L_x_3)"),
            sass_loop.Instruction("@P2", "BRA", "`(.L_x_2)"),
            sass_loop.Instruction("", "BRA", "`(.L_x_4)"), ".L_x_4",
            sass_loop.Instruction("", "EXIT", "")]
    code[0] = ".L_x_0"
    loop = sass_loop.step_loop(code)
    assert [i.op for i in loop] == ["HMMA", "BAR", "BRA", "BRA"]


def test_disassembly_lines_are_parsed_into_predicate_opcode_and_operands():
    line = "        /*0a70*/  @!P2 LDG.E.S8 R11, desc[UR6][R28.64] ;"
    predicate, opcode, operands = sass_loop._LINE.match(line).groups()
    assert (predicate.strip(), opcode, operands.strip()) == ("@!P2", "LDG.E.S8",
                                                             "R11, desc[UR6][R28.64]")


# Where registers are tightest: the cluster kernels of 16 CTAs (heads of 512 to 1024), the
# tensor-core group kernels (1024 to 2048), the sLSTM's single-CTA backward at 128 and split
# backward at 64, bfloat16; each with its forward's residual variant.
TIGHT = [("Forward", "LstmCell", BF16, (512, 16, 16, 512)),
         ("Backward", "LstmCell", BF16, (512, 16, 16, 512)),
         ("Forward", "LstmCell", BF16, (768, 32, 16, 384)),
         ("Backward", "LstmCell", BF16, (768, 32, 16, 384)),
         ("Backward", "SlstmCell", BF16, (768, 32, 16, 384)),
         ("Forward", "ElmanCell", BF16, (1024, 16, 8, 512)),
         ("Forward", "SlstmCell", BF16, (1024, 64, 8, 512)),
         ("Forward", "LstmCell", BF16, (2048, 128, 8, 512)),
         ("Backward", "LstmCell", BF16, (2048, 128, 8, 512)),
         ("Backward", "SlstmCell", BF16, (128, 1, 16, 512)),
         ("Backward", "SlstmCell", BF16, (64, 1, 16, 512))]


def test_step_loops_keep_to_registers_but_at_2048():
    # ptxas may spill a few words where registers are tightest (tests/test_kernels_compile.py);
    # the default build's step loops keep everything in registers, but for the LSTM's forward
    # at 2048 (half of its R fragments in registers): up to 7 local accesses a step with the
    # rounded operand, reloads of the input copies' shared-memory addresses at the step's start,
    # off the mma chain (none with hi + lo parts, which take 32 more mma a step).
    loops = sass_loop.step_loops(TIGHT)
    assert len(loops) == 16, list(loops)
    for name, loop in loops.items():
        assert sass_loop.opcode_counts(loop)["HMMA"] > 0, name  # the step loop, not another
        local = [i for i in loop if i.op in ("LDL", "STL")]
        allowed = 7 if "ForwardMmaGroupKernelINS_8LstmCell" in name and "Li2048E" in name else 0
        assert len(local) <= allowed, (name, local)


def test_the_slstm_divides_by_its_normaliser_with_the_hardware_reciprocal():
    # h = o c / n and the backward's c / n: no IEEE division (its range check FCHK and the call
    # of its slow path) on the step's critical path; log σ(f̃) by one hardware lg2 per element
    # (one element per thread at 64), not libdevice's log1pf (a 9-term polynomial behind a
    # branch: BSSY/BSYNC around its special cases).
    loops = sass_loop.step_loops([("Forward", "SlstmCell", BF16, (64, 1, 16, 512)),
                                  ("Backward", "SlstmCell", BF16, (64, 1, 16, 512))])
    for name, loop in loops.items():
        assert [i for i in loop if i.opcode == "MUFU.RCP"], name
        assert not [i for i in loop if i.op in ("FCHK", "CALL")], name
        assert len([i for i in loop if i.opcode == "MUFU.LG2"]) == 1, name
        assert not [i for i in loop if i.op == "FFMA" and "0.14491446" in i.operands], name


def test_kernel_symbols_get_short_names():
    name = ("_ZN8flashrnn23ForwardMmaClusterKernelINS_8LstmCellE13__nv_bfloat16Li64ELi1ELb1EEEvNS_"
            "11ForwardArgsE")
    assert sass_loop.short_name(name) == "ForwardMmaClusterKernel LstmCell D=64 (residuals)"
    name = ("_ZN8flashrnn14BackwardKernelINS_9SlstmCellE13__nv_bfloat16NS_6TilingILi16ELi1ELi16ELi"
            "512EEEEEvNS_12BackwardArgsE")
    assert sass_loop.short_name(name) == "BackwardKernel SlstmCell D=16"


def test_split_forward_gates_option_drops_the_partial_sums_of_the_four_gate_cells():
    # FLASHRNN_MMA_SPLIT_FORWARD_GATES (on by default): at 64 each warp multiplies one gate over
    # all of K (the same number of mma), so a warp stores its 4 accumulator registers instead
    # of 4 gates x 4; the GRU's 3 gates keep K split (its loop does not change).
    cases = [("Forward", "LstmCell", BF16, (64, 1, 16, 512)),
             ("Forward", "GruCell", BF16, (64, 1, 16, 512))]
    off = sass_loop.step_loops(cases, ("FLASHRNN_MMA_SPLIT_FORWARD_GATES=0",))
    on = sass_loop.step_loops(cases)
    assert set(off) == set(on) and len(off) == 4
    for name in off:
        before, after = sass_loop.opcode_counts(off[name]), sass_loop.opcode_counts(on[name])
        assert before["HMMA"] == after["HMMA"] > 0, name
        if "LstmCell" in name:
            assert before["STS"] - after["STS"] == 12, (name, before["STS"], after["STS"])
        else:
            assert after["STS"] == before["STS"], name


def test_split_backward_16_option_takes_the_four_gate_cells_heads_of_16():
    # FLASHRNN_MMA_SPLIT_BACKWARD_16 (on by default): the LSTM's and sLSTM's bf16 backward at 16
    # is the split one (a quarter of the 4 k-tiles over (gate, unit) a warp, one rounded
    # operand: 1 m16n8k16 a step, and dR's 2 m16n8k8, FLASHRNN_MMA_SPLIT_BACKWARD_DR on by
    # default) with no local memory; the GRU's (3 gates) stays the FMA kernel, and so do all
    # three with the option off.
    cases = [("Backward", cell, BF16, (16, 1, 16, 256))
             for cell in ("LstmCell", "SlstmCell", "GruCell")]
    loops = sass_loop.step_loops(cases)
    split = sorted(name for name in loops if "BackwardMmaSplitKernel" in name)
    assert len(split) == 2 and "GruCell" not in "".join(split), list(loops)
    assert [name for name in loops if "GruCell" in name][0].startswith("_ZN8flashrnn14Backward")
    for name in split:
        counts = sass_loop.opcode_counts(loops[name])
        shapes = collections.Counter(i.opcode.split(".")[1] for i in loops[name] if i.op == "HMMA")
        assert shapes == {"16816": 1, "1688": 2}, (name, shapes)
        assert counts["LDL"] + counts["STL"] == 0, (name, counts)
    off = sass_loop.step_loops(cases, ("FLASHRNN_MMA_SPLIT_BACKWARD_16=0",))
    assert len(off) == 3, list(off)
    assert all(name.startswith("_ZN8flashrnn14Backward") for name in off), list(off)


def test_option_defaults_come_from_the_trees_cmakelists(tmp_path):
    # What the compiles here and scripts/gpu_check.sh's builds take as the default build: the
    # option() defaults of the tree's CMakeLists.txt, whatever its line breaks.
    defaults = sass_loop.option_defaults()
    assert defaults["FLASHRNN_MMA_ROUNDED_OPERAND"] is True
    assert defaults["FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD"] is False
    (tmp_path / "CMakeLists.txt").write_text(
        'option(FLASHRNN_A "one line" ON)\noption(FLASHRNN_B\n  "two, (lines)"\n  OFF)\n'
        'option(OTHER_C "not ours" ON)\n')
    assert sass_loop.option_defaults(tmp_path) == {"FLASHRNN_A": True, "FLASHRNN_B": False}
    printed = subprocess.run([sys.executable, sass_loop.__file__, "--option-defaults",
                              str(tmp_path)], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == ["FLASHRNN_A=ON", "FLASHRNN_B=OFF"]


def test_split_step_loops_keep_the_thread_index_in_registers():
    # The kernels' register cap is __maxnreg__ (launch.cuh PersistentKernelRegisters): under
    # __launch_bounds__(threads, 1), with the same cap, ptxas left registers unused and read the
    # thread index again every step to recompute addresses from it (S2R SR_TID.X in 29 of
    # these loops at fa8b1e8); the split forwards and backwards now keep them.
    cases = [(direction, cell, BF16, (d, 1, 16, 512)) for cell in ("LstmCell", "SlstmCell")
             for d in (16, 32, 64) for direction in ("Forward", "Backward")]
    loops = sass_loop.step_loops(cases)
    assert len(loops) == 18, list(loops)
    for name, loop in loops.items():
        assert not [i for i in loop if i.op == "S2R" and "SR_TID" in i.operands], name
