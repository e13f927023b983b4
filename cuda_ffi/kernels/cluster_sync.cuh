// The per-step barrier and shared-memory addressing of a CTA group that cooperates on one head:
// the thread-block-cluster barrier and distributed shared memory (sm_90 or newer), and for one
// CTA a plain block barrier (a specialisation that names no cluster intrinsic, so that kernels
// of one CTA build for sm_80 too).
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

namespace flashrnn {

template <int kCluster>
struct CtaGroup {
  __device__ static int Rank() {
    return static_cast<int>(cooperative_groups::this_cluster().block_rank());
  }

  // All threads of all CTAs of the group; orders their shared-memory accesses, remote ones too.
  __device__ static void Sync() { cooperative_groups::this_cluster().sync(); }

  // Sync in two halves: Arrive after a step's shared-memory writes (a release: it waits for
  // this thread's earlier memory operations, global ones included), Wait before the next
  // step's reads. Global loads and stores placed between the two overlap the other CTAs'
  // arrival and are not held up by the release.
  __device__ static void Arrive() { __cluster_barrier_arrive(); }
  __device__ static void Wait() { __cluster_barrier_wait(); }

  // The address of `local` (a shared-memory location of this CTA) in CTA `rank`'s shared memory.
  template <typename P>
  __device__ static P* Map(P* local, int rank) {
    return cooperative_groups::this_cluster().map_shared_rank(local, rank);
  }

  // The same as a 32-bit shared::cluster address, for StoreU16 and StoreV4: a kernel that writes
  // to every CTA of a 16-CTA cluster keeps 16 of these in registers where Map's generic pointers
  // take 32.
  __device__ static uint32_t MapAddress(const void* local, int rank) {
    uint32_t remote;
    asm("mapa.shared::cluster.u32 %0, %1, %2;"
        : "=r"(remote)
        : "r"(SharedAddress(local)), "r"(rank));
    return remote;
  }
  __device__ static void StoreU16(uint32_t address, uint16_t value) {
    asm volatile("st.shared::cluster.u16 [%0], %1;" ::"r"(address), "h"(value) : "memory");
  }
  __device__ static void StoreV4(uint32_t address, uint4 value) {
    asm volatile("st.shared::cluster.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(address),
                 "r"(value.x), "r"(value.y), "r"(value.z), "r"(value.w)
                 : "memory");
  }

  // Arrival barriers: an mbarrier of this CTA that completes a phase once its one local arrival
  // (ExpectBytes) and the bytes it expects, stored into this CTA by the others with
  // StoreV4Async, are all in. A consumer waits on it without a cluster barrier and without the
  // producers' release fence: each asynchronous store completes its bytes on the barrier
  // itself, a release at cluster scope, which WaitArrivals' acquire at cluster scope pairs
  // with (an acquire at the default CTA scope would not reach threads of other CTAs), so a
  // waiter that sees the phase complete sees the bytes.
  __device__ static void InitArrivals(uint64_t* barrier) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(SharedAddress(barrier))
                 : "memory");
  }
  // After InitArrivals, before the cluster barrier that lets other CTAs store into this one.
  __device__ static void FenceArrivalsInit() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  // This phase's local arrival, and the bytes it waits for (they may have begun to arrive).
  __device__ static void ExpectBytes(uint64_t* barrier, uint32_t bytes) {
    // (One line: a brace that opens a line of the PTX would end a kernel for the compile
    // tests' parser.)
    asm volatile("{ .reg .b64 state; mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1; }"
                 ::"r"(SharedAddress(barrier)), "r"(bytes) : "memory");
  }
  // 16 bytes into another CTA's shared memory (address from MapAddress), completing on that
  // CTA's arrival barrier (`remote_barrier`, its MapAddress too).
  __device__ static void StoreV4Async(uint32_t address, uint4 value, uint32_t remote_barrier) {
    asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, "
        "[%5];" ::"r"(address), "r"(value.x), "r"(value.y), "r"(value.z), "r"(value.w),
        "r"(remote_barrier)
        : "memory");
  }
  // Until the barrier has completed the phase of this parity.
  __device__ static void WaitArrivals(uint64_t* barrier, uint32_t parity) {
    uint32_t done;
    do {
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; "
          "selp.u32 %0, 1, 0, p; }"
          : "=r"(done)
          : "r"(SharedAddress(barrier)), "r"(parity)
          : "memory");
    } while (done == 0);
  }

 private:
  __device__ static uint32_t SharedAddress(const void* local) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(local));
  }
};

template <>
struct CtaGroup<1> {
  __device__ static int Rank() { return 0; }
  __device__ static void Sync() { __syncthreads(); }
  __device__ static void Arrive() {}
  __device__ static void Wait() { __syncthreads(); }
  template <typename P>
  __device__ static P* Map(P* local, int /*rank*/) {
    return local;
  }
  __device__ static uint32_t MapAddress(const void* local, int /*rank*/) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(local));
  }
  __device__ static void StoreU16(uint32_t address, uint16_t value) {
    asm volatile("st.shared.u16 [%0], %1;" ::"r"(address), "h"(value) : "memory");
  }
};

}  // namespace flashrnn
