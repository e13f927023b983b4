// The tiling of one kernel instantiation, chosen by the ConstrINT hardware model
// (flashrnn_jax/constrint/hardware.py) and passed in by the generated instantiation files; the
// static checks below are the kernel's own guard that a tiling it is given is one it can run.
//
// A head's recurrent matrix is split by output rows ("units") over a group of kCluster CTAs (one
// CTA, a thread-block cluster of up to 16, or beyond that a group that meets through global
// memory: fma_exchange.cuh) so that every CTA keeps its slice of R in shared memory for the
// whole sequence. Each CTA serves kBatchTile batch rows with kThreads threads; each thread
// owns kPerThread (unit, batch row) elements and keeps their cell states in registers.
#pragma once

#include <cstddef>

namespace flashrnn {

template <int kHeadSize_, int kCluster_, int kBatchTile_, int kThreads_>
struct Tiling {
  static constexpr int kHeadSize = kHeadSize_;
  static constexpr int kCluster = kCluster_;
  static constexpr int kBatchTile = kBatchTile_;
  static constexpr int kThreads = kThreads_;
  static_assert(kHeadSize % kCluster == 0, "a head's units split evenly over its CTAs");
  static constexpr int kUnits = kHeadSize / kCluster;
  static constexpr int kElements = kUnits * kBatchTile;
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, at most 1024 threads");
  // More threads than elements: the tiling of the tensor-core group kernels, whose warps split
  // K and of which the first kElements threads run one element each (forward_mma_group.cuh).
  static constexpr bool kThreadsBeyondElements = kThreads > kElements;
  static_assert(kCluster >= 1 && kCluster <= 128 &&
                    ((kCluster & (kCluster - 1)) == 0 ||
                     (kThreadsBeyondElements && kCluster % 32 == 0)),
                "a CTA group of at most 128 CTAs, a power of two: a cluster up to 16 (sm_90), a "
                "cooperatively launched group beyond (grid_workspace.h); the tensor-core group "
                "kernels' groups a multiple of 32 (96 at D = 1536)");
  static_assert(kElements % kThreads == 0 || kThreads % kElements == 0,
                "(unit, batch row) elements split evenly, or one to a thread");
  static constexpr int kPerThread = kThreadsBeyondElements ? 1 : kElements / kThreads;
  static_assert(kPerThread <= 8, "per-thread cell states must stay in registers");
};

// Opt-in dynamic shared memory per block on sm_90 (227 KiB).
inline constexpr std::size_t kMaxSharedBytesPerBlock = 232448;

constexpr std::size_t AlignUp(std::size_t bytes, std::size_t to = 128) {
  return (bytes + to - 1) / to * to;
}

}  // namespace flashrnn
