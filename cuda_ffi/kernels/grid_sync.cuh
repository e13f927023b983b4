// The per-step barrier of a CTA group larger than a cluster (grid_workspace.h): a counter in
// global memory that every CTA of the group adds one to per step; the k-th barrier is passed
// when the counter reaches k * C. All C CTAs must be resident at once: the launcher
// (launch.cuh) launches cooperatively, which fails instead of deadlocking when they cannot be.
#pragma once

#include <cstdint>

#include "grid_workspace.h"

namespace flashrnn {

// Where a CTA of a group beyond a cluster stands: launch.cuh runs a chunk of groups from group0
// on, C consecutive blocks each (the FMA and the tensor-core group kernels alike). Its rank in
// the group, the group's head and first batch row, and the group's barrier counter and
// exchange buffer in the workspace (grid_workspace.h).
template <int C, int BT, int D>
struct GridGroupPlace {
  int rank;
  int64_t head, b0;
  unsigned* counter;
  float* exchange;

  template <typename Args>
  __device__ GridGroupPlace(const Args& args, int64_t group0, bool backward) {
    const int64_t group = group0 + blockIdx.x / C;
    rank = static_cast<int>(blockIdx.x % C);
    head = group % args.heads;
    b0 = group / args.heads * BT;
    unsigned char* workspace = static_cast<unsigned char*>(args.workspace);
    counter = reinterpret_cast<unsigned*>(workspace + blockIdx.x / C * kGridCounterBytes);
    exchange = reinterpret_cast<float*>(workspace + GridCounterBytes(args.workspace_groups)) +
               blockIdx.x / C * static_cast<int64_t>(GridExchangeFloats(backward, C, BT, D));
  }
};

class GroupCounterBarrier {
 public:
  __device__ GroupCounterBarrier(unsigned* counter, unsigned ctas)
      : counter_(counter), ctas_(ctas) {}

  // Orders every global write of this CTA's threads before the barrier before every read of
  // the group's threads after it. Readers of the exchanged data copy it with cp.async.cg (from
  // L2), so no line of an earlier step can be served from this SM's L1.
  __device__ void Sync() {
    Arrive();
    Wait();
  }

  // Sync in two halves, as CtaGroup's (cluster_sync.cuh): Arrive after the writes the group
  // reads (the release waits for this CTA's earlier global writes), Wait before the reads.
  // Global stores placed between the two are not held up by the release.
  __device__ void Arrive() {
    __syncthreads();
    if (threadIdx.x == 0) {
      target_ += ctas_;
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter_) : "memory");
    }
  }
  __device__ void Wait() {
    if (threadIdx.x == 0) {
      unsigned seen;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter_) : "memory");
      } while (static_cast<int>(seen - target_) < 0);  // wrap-around safe
    }
    __syncthreads();
  }

 private:
  unsigned* counter_;
  unsigned ctas_;
  unsigned target_ = 0;
};

}  // namespace flashrnn
