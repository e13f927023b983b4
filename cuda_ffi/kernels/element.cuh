// The place of one element (one hidden unit of one head for one batch row) in the kernels'
// global layouts (params.h), shared by the forward and backward per-element stages.
#pragma once

#include <cstdint>

namespace flashrnn {

// Batch row b (< B, or a padding row of the batch tile) and column hd = head * D + unit of the
// [..., N, D] layouts (nd = N * D of them).
struct Element {
  int64_t b, hd, nd;
};

// Where state i of the element is in the [S, B, N, D] layouts: the initial and last states
// and their cotangents.
__device__ __forceinline__ int64_t StateAt(const Element& e, int64_t batch, int i) {
  return (i * batch + e.b) * e.nd + e.hd;
}

// The distance between consecutive states in the [S, B, T, N, D] layouts (states_all,
// states_f32, d_states_all).
__device__ __forceinline__ int64_t StateStride(const Element& e, int64_t batch, int64_t steps) {
  return batch * steps * e.nd;
}

}  // namespace flashrnn
