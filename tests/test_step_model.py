"""benchmarks/step_model.py's mechanics on small instruction streams: latencies, pipe
throughput, the scheduler's one issue a cycle and the block barrier (its constants are fitted,
benchmarks/NOTES.md; these tests check what it does with them)."""

import bench_runs  # noqa: F401  (puts benchmarks/ on sys.path)
import step_model as m
from sass_loop import Instruction


def _i(opcode, operands):
    return Instruction("", opcode, operands)


def test_a_dependent_instruction_waits_for_its_producers_latency():
    loop = [_i("FADD", "R1, R2, R3"), _i("FADD", "R4, R1, R1")]
    assert m.step_cycles(loop, 1) == m.LATENCY["FP"] + 1


def test_independent_instructions_of_one_pipe_are_spaced_by_its_throughput():
    loop = [_i("MUFU.EX2", f"R{i}, R{i + 10}") for i in range(4)]
    assert m.step_cycles(loop, 1) == 3 * m.PIPE["MUFU"] + 1


def test_warps_share_one_issue_a_cycle():
    loop = [_i("FADD", f"R{i}, R20, R21") for i in range(5)]
    assert m.step_cycles(loop, 3) == 15


def test_a_barrier_waits_for_every_warp():
    # Warp 0's exp2 issues at 0 and it reaches the barrier at 1; warp 1's waits for the MUFU
    # pipe until PIPE, reaches the barrier a cycle later; both go on BARRIER cycles after that.
    loop = [_i("MUFU.EX2", "R1, R2"), _i("BAR.SYNC.DEFER_BLOCKING", "0x0"),
            _i("FADD", "R3, R1, R1")]
    assert m.step_cycles(loop, 2) == m.PIPE["MUFU"] + 1 + m.BARRIER + 2


def test_operands_are_decoded_with_their_widths():
    mma = m.decode(_i("HMMA.16816.F32.BF16", "R36, R12, R32, R40"))
    assert mma.dests == ("R36", "R37", "R38", "R39")
    assert set(mma.sources) == {f"R{n}" for n in (*range(12, 16), 32, 33, *range(40, 44))}
    compare = m.decode(Instruction("@!P1", "ISETP.GE.AND", "P2, PT, R5, R6, PT"))
    assert compare.dests == ("P2",) and set(compare.sources) == {"P1", "R5", "R6"}
    store = m.decode(_i("STS.128", "[R8+0x10], R20"))
    assert store.dests == () and set(store.sources) == {"R8", "R20", "R21", "R22", "R23"}


def test_a_64_bit_adds_carry_is_written_by_its_low_half_and_read_by_its_high_half():
    low = m.decode(_i("IADD3", "R38, P6, R32, R66, RZ"))
    high = m.decode(_i("IADD3.X", "R39, R33, R67, RZ, P6, !PT"))
    assert low.dests == ("R38", "P6") and "P6" not in low.sources
    assert high.dests == ("R39",) and "P6" in high.sources
    lea = m.decode(_i("LEA", "R32, P5, R14, R15, 0x1"))
    assert lea.dests == ("R32", "P5")


def test_wide_shared_memory_accesses_take_the_pipe_for_each_128_bytes():
    assert m.decode(_i("LDS", "R1, [R2]")).pipe_cycles == m.PIPE["SMEM"]
    assert m.decode(_i("LDS.128", "R4, [R2]")).pipe_cycles == 4 * m.PIPE["SMEM"]
    assert m.decode(_i("FADD", "R1, R2, R3")).pipe_cycles == m.PIPE["FP"]


def test_predictions_move_the_measured_times_by_the_modelled_change(monkeypatch):
    # The base kernels modelled at 1 ms (forward) and 2 + 3 ms (differentiated forward and
    # backward), a variant at half of each: the forward is halved, forward+backward loses 2.5.
    def modelled(cell, tile, defines, warps, root=None, steps=1024, direction="Forward",
                 residuals=False):
        scale = 0.5 if defines else 1.0
        return scale * (3.0 if direction == "Backward" else 2.0 if residuals else 1.0)

    monkeypatch.setattr(m, "modelled_ms", modelled)
    monkeypatch.setattr(m, "FORWARD_BACKWARD", [("LstmCell", (64,), 4, (64,), 4, 1.5, 4.0)])
    table = m.predictions("base", {"now": (), "half": ("X=1",)}).splitlines()
    assert table[2] == "| LstmCell D=64 | 1.50 / 4.00 | 1.50 / 4.00 | 0.75 / 1.50 |"
