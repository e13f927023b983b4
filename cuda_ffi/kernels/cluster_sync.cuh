// The per-step barrier and shared-memory addressing of a CTA group that cooperates on one head:
// a plain block barrier for one CTA, the thread-block-cluster barrier and distributed shared
// memory otherwise.
#pragma once

#include <cooperative_groups.h>

namespace flashrnn {

template <int kCluster>
struct CtaGroup {
  __device__ static int Rank() {
    if constexpr (kCluster == 1) {
      return 0;
    } else {
      return static_cast<int>(cooperative_groups::this_cluster().block_rank());
    }
  }

  // All threads of all CTAs of the group; orders their shared-memory accesses, remote ones too.
  __device__ static void Sync() {
    if constexpr (kCluster == 1) {
      __syncthreads();
    } else {
      cooperative_groups::this_cluster().sync();
    }
  }

  // Sync in two halves: Arrive after a step's shared-memory writes (a release: for a cluster
  // it waits for this thread's earlier memory operations, global ones included), Wait before
  // the next step's reads. Global loads and stores placed between the two overlap the other
  // CTAs' arrival and are not held up by the release.
  __device__ static void Arrive() {
    if constexpr (kCluster > 1) __cluster_barrier_arrive();
  }
  __device__ static void Wait() {
    if constexpr (kCluster == 1) {
      __syncthreads();
    } else {
      __cluster_barrier_wait();
    }
  }

  // The address of `local` (a shared-memory location of this CTA) in CTA `rank`'s shared memory.
  template <typename P>
  __device__ static P* Map(P* local, int rank) {
    if constexpr (kCluster == 1) {
      return local;
    } else {
      return cooperative_groups::this_cluster().map_shared_rank(local, rank);
    }
  }
};

}  // namespace flashrnn
