// The per-step barrier and shared-memory addressing of a CTA group that cooperates on one head:
// the thread-block-cluster barrier and distributed shared memory (sm_90 or newer), and for one
// CTA a plain block barrier (a specialisation that names no cluster intrinsic, so that kernels
// of one CTA build for sm_80 too).
#pragma once

#include <cooperative_groups.h>

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
};

}  // namespace flashrnn
