// The shape the tensor-core kernels of heads over several CTAs share: which head sizes the
// cluster kernels take (forward_mma_cluster.cuh, backward_mma_cluster.cuh) and how many CTAs a
// head spans there, the CTA of the group kernels beyond a cluster (forward_mma_group.cuh,
// backward_mma_group.cuh), and how many registers a thread may give to R fragments before the
// rest go to shared memory.
#pragma once

#include <algorithm>

namespace flashrnn {

// Head sizes 256, 512 and 768, and 1024 for a cell with one R gate (the single-CTA tensor-core
// kernels cover up to 128; beyond 768 the R slice of a CTA with more than one R gate fits
// neither its registers nor its shared memory, while the Elman's one gate at 1024 still fits
// the registers).
template <typename Cell>
constexpr bool MmaClusterTakesHead(int head_size) {
  return head_size == 256 || head_size == 512 || head_size == 768 ||
         (head_size == 1024 && Cell::kGatesR == 1);
}

// CTAs per head: 32 units and 8 warps each (4 quarters of K for each of 2 unit tiles) up to the
// largest cluster, 16 CTAs (D = 512); at D = 768 the 16 CTAs have 48 units and 12 warps, at
// 1024 64 units and 16 warps.
template <int D>
constexpr int kMmaClusterSize = std::min(D / 32, 16);

// A CTA of the group kernels: one unit tile (so a group of D / 16 CTAs: 128 at D = 2048) and
// 16 warps, whose 512 register files and shared memory hold its R slice between them.
inline constexpr int kMmaGroupUnits = 16;
inline constexpr int kMmaGroupWarps = 16;

// Registers per thread that a warp's R fragments may take in a CTA of `threads` threads: what
// each thread can have (65536 per SM in steps of 8, at most 255) less `step_registers` for the
// rest of the step: 64 (with 56 the kernels at 768 spill in the step loop: benchmarks/NOTES.md),
// 80 for the group backward, whose elements keep their initial states' cotangents and the next
// step's inputs in registers too (with 64 its sLSTM spills 92 bytes, 23 accesses a step).
inline constexpr int kMmaStepRegisters = 64;
inline constexpr int kMmaGroupBackwardStepRegisters = 80;
// The group forward leaves 72 where its shared memory can take the rest of R (with 64 its LSTM
// and sLSTM spilled 10-17 local accesses a step at 1536 and 2-6 at 1024), 64 where it cannot
// (the LSTM and sLSTM at 2048).
inline constexpr int kMmaGroupForwardStepRegisters = 72;

constexpr int MmaFragmentRegisters(int threads, int step_registers = kMmaStepRegisters) {
  return std::min(65536 / threads / 8 * 8, 255) - step_registers;
}

}  // namespace flashrnn
