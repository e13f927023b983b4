// The compile-time tiling of one (cell, dtype, head size) instantiation.
//
// A head's recurrent matrix is split by output rows ("units") over a thread-block cluster of
// kCluster CTAs so that every CTA keeps its slice of R in shared memory for the whole sequence;
// one CTA per (head, batch tile) when the whole head fits. Each CTA serves kBatchTile batch rows.
#pragma once

#include <algorithm>
#include <cstddef>

namespace flashrnn {

template <typename Cell, typename T, int kHeadSize>
struct Tiling {
  static constexpr int kBatchTile = 16;
  // R slice per CTA at most 128 KiB: with the h / partial-gradient buffers (2 * 16 * D * 4 B)
  // and the local gate buffer this stays under the 227 KiB opt-in shared memory of sm_90.
  static constexpr std::size_t kMaxRSliceBytes = 128 * 1024;
  static constexpr std::size_t kRBytes =
      std::size_t{Cell::kGatesR} * kHeadSize * kHeadSize * sizeof(T);

  static constexpr int ClusterSize() {
    int c = 1;
    while (kRBytes / c > kMaxRSliceBytes || kHeadSize % c != 0) c *= 2;
    return c;
  }
  static constexpr int kCluster = ClusterSize();
  static_assert(kCluster <= 8, "head too large for a portable thread-block cluster");
  static constexpr int kUnits = kHeadSize / kCluster;  // hidden units owned by one CTA
  static constexpr int kElements = kUnits * kBatchTile;  // (unit, batch row) pairs per CTA
  static constexpr int kThreads = std::min(kElements, 512);
  static_assert(kElements % kThreads == 0, "elements must split evenly over the threads");
  static constexpr int kPerThread = kElements / kThreads;
  static_assert(kThreads % 32 == 0, "whole warps only");
};

constexpr std::size_t AlignUp(std::size_t bytes, std::size_t to = 128) {
  return (bytes + to - 1) / to * to;
}

}  // namespace flashrnn
