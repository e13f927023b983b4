// Copies of 16 bytes from global into shared memory by cp.async through L2 only (.cg): the group
// kernels stage what the other CTAs of their group wrote in the step, which this SM's L1 would
// not see.
#pragma once

#include <cstdint>

namespace flashrnn {

// Starts the copy of 16 bytes at global `from` to shared address `to`.
__device__ __forceinline__ void CopyAsync16(uint32_t to, const void* from) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(from) : "memory");
}

// Waits for every copy this thread has started; a barrier after it publishes them to the
// other threads that read them.
__device__ __forceinline__ void WaitForCopies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

}  // namespace flashrnn
