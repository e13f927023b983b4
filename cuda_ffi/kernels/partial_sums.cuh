// The sum of the partial products that the warps or CTAs splitting a matmul's K leave in
// shared memory, as the thread that owns an element adds them up each step.
#pragma once

namespace flashrnn {

// value(0) + value(1) + ... + value(kCount - 1), from the first value rather than from 0.0f:
// 0.0f + x is not x for x = -0.0f, so the compiler keeps that add, one more dependent
// instruction on every step's critical path.
template <int kCount, typename Value>
__device__ __forceinline__ float SumOf(const Value& value) {
  static_assert(kCount > 0, "a sum of one value at least");
  float sum = value(0);
#pragma unroll
  for (int i = 1; i < kCount; ++i) sum += value(i);
  return sum;
}

}  // namespace flashrnn
