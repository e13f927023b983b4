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
        : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(local))), "r"(rank));
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
