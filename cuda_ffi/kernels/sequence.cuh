// The sequence options in the kernels: a row's length and which input a step reads (the
// reset flags are read where they are used, forward_element.cuh and backward_element.cuh).
#pragma once

#include <cstdint>

#include "params.h"

namespace flashrnn {

// Steps, lengths and input indices are int: a sequence has at most 2^31 - 2 steps, so that even
// step + 2 (the inputs copied two steps ahead) is an int (flashrnn_jax.fused refuses longer
// ones), and 32-bit arithmetic keeps the per-step index work
// of the step loops at half the instructions of 64-bit (benchmarks/NOTES.md, SASS).

// Row b's length, clamped to 0..steps so that no value can index outside the row (Python
// checks concrete lengths and clamps traced ones the same way); 0 for the padding rows
// b >= batch of a batch tile.
__device__ __forceinline__ int RowLength(const SequenceArgs& seq, int64_t b, int64_t batch,
                                         int64_t steps) {
  if (b >= batch) return 0;
  const int length = seq.seq_lengths[b];
  return length < 0 ? 0 : length > steps ? static_cast<int>(steps) : length;
}

// The input that step `step` of a row of length `length` reads: `step` itself in the forward
// direction and in the padding (step >= length), `length - 1 - step` when reading in reverse.
__device__ __forceinline__ int InputIndex(const SequenceArgs& seq, int step, int length) {
  return seq.reverse && step < length ? length - 1 - step : step;
}

// The offset of row b's input t in the [B, T, ..., N, D] layouts (nd = N D; 1 for resets [B, T]).
__device__ __forceinline__ int64_t RowOffset(int64_t b, int64_t steps, int64_t nd, int t) {
  return (b * steps + t) * nd;
}

}  // namespace flashrnn
