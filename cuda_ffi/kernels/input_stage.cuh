// The input pre-activations (Wx) of the tensor-core forwards, copied into shared memory by
// cp.async two steps before the step that reads them.
//
// Why: a step of these kernels is a few microseconds at most, of the order of one DRAM latency.
// Loaded into registers at the end of the step before, Wx was converted by the first
// instructions of the next step (ptxas hoists the conversion above the matmul), so every step
// waited for a DRAM round trip there: ~30% of the stall samples of the LSTM 12x64 forward
// (ncu, benchmarks/NOTES.md). Copies issued two steps ahead have a whole step to land; the
// block barrier that ends each step makes every thread's copies visible to all.
//
// Layout: [stage][batch row][gate][unit] in the input dtype, kStages stages used in rotation,
// each batch row padded by 8 values so that the four rows a warp reads at once (the m16n8
// accumulator's row pairs) start in distinct banks. One copy moves 16 bytes: kChunk units of one
// gate of one row, contiguous in Wx [B, T, Gw, N, D].
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "forward_element.cuh"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// kUnits units of the head from unit0 (a CTA's share of it) for kRows batch rows, copied by
// kThreads threads.
template <typename Cell, typename T, int kUnits, int kRows, int kThreads>
struct InputStage {
  static constexpr int kStages = 3;  // the step being read and the two in flight
  static constexpr int kGates = Cell::kGatesWx;
  static constexpr int kChunk = 16 / static_cast<int>(sizeof(T));
  static_assert(kUnits % kChunk == 0, "whole 16-byte copies of a CTA's units");
  static constexpr int kRowStride = kGates * kUnits + 8;
  static constexpr int kStageValues = kRows * kRowStride;
  static constexpr std::size_t kBytes = AlignUp(std::size_t{kStages} * kStageValues * sizeof(T));
  static constexpr int kChunksPerRow = kGates * kUnits / kChunk;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static constexpr int kCopiesPerThread = (kChunks + kThreads - 1) / kThreads;

  // The copies of this thread: each one's source at input 0 of its row (batch row b, gate g,
  // unit: b * steps * Gw * nd + g * nd + the unit's column), its row's length, its place in a
  // stage, and the offset from the source of the input that the next Issue copies, which moves
  // by `delta` a step (Gw * nd values, the distance between consecutive inputs of a row;
  // negative when reading in reverse): a step's source is an add, not the input index times
  // the row's values (benchmarks/NOTES.md, SASS).
  const T* source[kCopiesPerThread];
  int length[kCopiesPerThread];
  int at[kCopiesPerThread];  // -1: this thread has no such copy (kChunks is not a multiple)
  int64_t next[kCopiesPerThread];
  int delta;  // a step's input row of Wx, Gw * nd values, is far below 2^31 values

  __device__ InputStage(const ForwardArgs& args, int64_t b0, int64_t head_unit0, int64_t nd)
      : delta(static_cast<int>(args.seq.reverse ? -kGates * nd : kGates * nd)) {
#pragma unroll
    for (int k = 0; k < kCopiesPerThread; ++k) {
      const int c = static_cast<int>(threadIdx.x) + k * kThreads;
      const int row = c / kChunksPerRow, g = c % kChunksPerRow * kChunk / kUnits;
      const int unit = c % kChunksPerRow * kChunk % kUnits;
      const int64_t b = b0 + row;
      const bool copies = kChunks % kThreads == 0 || c < kChunks;
      length[k] = copies ? RowLength(args.seq, b, args.batch, args.steps) : 0;
      source[k] = static_cast<const T*>(args.wx) +
                  (copies && b < args.batch
                       ? b * args.steps * kGates * nd + g * nd + head_unit0 + unit
                       : 0);
      at[k] = copies ? row * kRowStride + g * kUnits + unit : -1;
      // Step 0 reads input 0, or the row's last in reverse.
      next[k] = args.seq.reverse && length[k] > 0 ? int64_t{length[k] - 1} * -delta : 0;
    }
  }

  // Start the copies of step `step` into stage `stage` and close them as one cp.async group
  // (an empty group past the last step, so that every thread counts the same groups). Rows past
  // their length read nothing: the stage is zero-filled there (the step keeps its states).
  // Called for steps 0, 1, 2, ... in turn, once each.
  __device__ void Issue(const ForwardArgs& args, T* stages, int stage, int step) {
#pragma unroll
    for (int k = 0; k < kCopiesPerThread; ++k) {
      if ((kChunks % kThreads == 0 || at[k] >= 0) && step < static_cast<int>(args.steps)) {
        const bool active = step < length[k];
        const T* src = active ? source[k] + next[k] : source[k];
        next[k] += delta;
        const uint32_t dst = static_cast<uint32_t>(
            __cvta_generic_to_shared(stages + stage * kStageValues + at[k]));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                     "r"(active ? 16 : 0));
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  }

  // Wait for this thread's copies of every group but the newest; the block barrier after it
  // publishes them to the other threads.
  __device__ static void WaitAllButNewest() { asm volatile("cp.async.wait_group 1;\n" ::); }

  // Wx of gate g of the CTA's unit `unit`, batch row `row`, from stage `stage`.
  __device__ static T Get(const T* stages, int stage, int row, int g, int unit) {
    return stages[stage * kStageValues + row * kRowStride + g * kUnits + unit];
  }
};

// The input pre-activations of an element from a stage, as LoadInputs gives them from global
// memory (the zero fill of the padding included).
template <typename Cell, typename T, typename Stage>
__device__ __forceinline__ void StagedInputs(const T* stages, int stage, int row, int unit,
                                             T (&wx)[Cell::kGatesWx]) {
#pragma unroll
  for (int g = 0; g < Cell::kGatesWx; ++g) wx[g] = Stage::Get(stages, stage, row, g, unit);
}

}  // namespace flashrnn
