// A copy by all threads of a CTA whose loads overlap: each thread loads a batch of its elements
// into registers before storing any. A loop that stores each element right after loading it
// keeps one load in flight per thread (the store waits for it, the next load waits for the
// store), one memory round trip per element: ~0.4 ms for a grid CTA's slice of R at D=1536.
#pragma once

namespace flashrnn {

// For idx in [0, count) (idx = threadIdx.x + k * blockDim.x for this thread):
// store(idx, load(idx)), kBatch loads in flight.
template <int kBatch, typename Load, typename Store>
__device__ __forceinline__ void BlockCopy(int count, Load load, Store store) {
  using Value = decltype(load(0));
  for (int base = threadIdx.x; base < count; base += kBatch * blockDim.x) {
    Value values[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int idx = base + j * blockDim.x;
      if (idx < count) values[j] = load(idx);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int idx = base + j * blockDim.x;
      if (idx < count) store(idx, values[j]);
    }
  }
}

}  // namespace flashrnn
