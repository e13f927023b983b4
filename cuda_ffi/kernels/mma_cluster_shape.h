// The shape both tensor-core cluster kernels share (forward_mma_cluster.cuh,
// backward_mma_cluster.cuh): which head sizes they take, how many CTAs a head spans, and how
// many registers a thread may give to R fragments before the rest go to shared memory.
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

// Registers per thread that a warp's R fragments may take in a CTA of `threads` threads: what
// each thread can have (65536 per SM in steps of 8, at most 255) less 64 for the rest of the
// step (with 56 the kernels at 768 spill in the step loop: benchmarks/NOTES.md).
constexpr int MmaFragmentRegisters(int threads) {
  return std::min(65536 / threads / 8 * 8, 255) - 64;
}

}  // namespace flashrnn
