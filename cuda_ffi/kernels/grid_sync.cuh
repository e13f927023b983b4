// The per-step barrier of a CTA group larger than a cluster (grid_workspace.h): a counter in
// global memory that every CTA of the group adds one to per step; the k-th barrier is passed
// when the counter reaches k * C. All C CTAs must be resident at once: the launcher
// (launch.cuh) launches cooperatively, which fails instead of deadlocking when they cannot be.
#pragma once

namespace flashrnn {

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
