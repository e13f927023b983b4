// The sequence options in the kernels: a row's length and which input a step reads (the
// reset flags are read where they are used, forward_element.cuh and backward_element.cuh).
#pragma once

#include <cstdint>

#include "params.h"

namespace flashrnn {

// Row b's length, clamped to 0..steps so that no value can index outside the row (Python
// checks concrete lengths and clamps traced ones the same way); 0 for the padding rows
// b >= batch of a batch tile.
__device__ __forceinline__ int64_t RowLength(const SequenceArgs& seq, int64_t b,
                                             int64_t batch, int64_t steps) {
  if (b >= batch) return 0;
  const int64_t length = seq.seq_lengths[b];
  return length < 0 ? 0 : length > steps ? steps : length;
}

// The input that step `step` of a row of length `length` reads: `step` itself in the forward
// direction and in the padding (step >= length), `length - 1 - step` when reading in reverse.
__device__ __forceinline__ int64_t InputIndex(const SequenceArgs& seq, int64_t step,
                                              int64_t length) {
  return seq.reverse && step < length ? length - 1 - step : step;
}

}  // namespace flashrnn
