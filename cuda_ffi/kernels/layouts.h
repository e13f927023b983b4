// Shared-memory layouts of the fused kernels, in plain C++ so that the host compiler can check
// the static limits for any tiling (tests/test_constrint_hardware.py compiles them for every
// tiling the hardware model chooses).
#pragma once

#include <cstddef>

#include "grid_workspace.h"
#include "tiling.h"

namespace flashrnn {

// A CTA's slice of R in shared memory: Gr gates x kUnits units x D inputs, in the order each
// kernel reads it (below).
template <int kGatesR, std::size_t kElementBytes, typename Tile>
constexpr std::size_t RSliceBytes() {
  return AlignUp(std::size_t{kGatesR} * Tile::kHeadSize * Tile::kUnits * kElementBytes);
}

// One float per (batch row of the tile, unit of the head), rows kRowFloats apart: h_prev of a
// step.
template <typename Tile, int kRowFloats = Tile::kHeadSize>
constexpr std::size_t HeadRowsBytes() {
  return std::size_t{Tile::kBatchTile} * kRowFloats * sizeof(float);
}

template <int kGatesR, std::size_t kElementBytes, typename Tile>
struct ForwardLayout {
  // r_s [Gr][D (input k)][kUnits (output u)]: lanes with consecutive units read consecutive
  // words. h_s [2][kBatchTile][D] float: h_prev of the whole head, double-buffered.
  static constexpr std::size_t kRBytes = RSliceBytes<kGatesR, kElementBytes, Tile>();
  static constexpr std::size_t kHBytes = 2 * HeadRowsBytes<Tile>();
  static constexpr std::size_t kBytes = kRBytes + kHBytes;
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

template <int kGatesR, std::size_t kElementBytes, typename Tile>
struct BackwardLayout {
  // r_s [Gr][kUnits (output o)][D (input i)] as in global memory: lanes with consecutive i
  // read consecutive words. part_s [2][kCluster (source)][kBatchTile][kUnits] float.
  // dg_s [Gr][kBatchTile][kUnits] float: this CTA's recurrent gate cotangents of one step.
  static constexpr std::size_t kRBytes = RSliceBytes<kGatesR, kElementBytes, Tile>();
  static constexpr std::size_t kPartBytes =
      AlignUp(2 * std::size_t{Tile::kCluster} * Tile::kBatchTile * Tile::kUnits * sizeof(float));
  static constexpr std::size_t kGateBytes =
      std::size_t{kGatesR} * Tile::kBatchTile * Tile::kUnits * sizeof(float);
  static constexpr std::size_t kBytes = kRBytes + kPartBytes + kGateBytes;
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

// The grid kernels (ForwardGridKernel, BackwardGridKernel) keep the same R slices and stage
// [kBatchTile][D] floats a step from the exchange in global memory (fma_exchange.cuh): the
// forward its h_prev (rows padded to StagedHStride(D): distinct banks), the backward the partial
// cotangents of its units ([kCluster][kBatchTile][kUnits], as many); the backward also keeps its
// gate cotangents dg_s [Gr][kBatchTile][kUnits].
template <int kGatesR, std::size_t kElementBytes, typename Tile>
struct ForwardGridLayout {
  static constexpr std::size_t kRBytes = RSliceBytes<kGatesR, kElementBytes, Tile>();
  static constexpr std::size_t kBytes =
      kRBytes + HeadRowsBytes<Tile, StagedHStride(Tile::kHeadSize)>();
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

template <int kGatesR, std::size_t kElementBytes, typename Tile>
struct BackwardGridLayout {
  static constexpr std::size_t kRBytes = RSliceBytes<kGatesR, kElementBytes, Tile>();
  static constexpr std::size_t kGateBytes =
      AlignUp(std::size_t{kGatesR} * Tile::kBatchTile * Tile::kUnits * sizeof(float));
  static constexpr std::size_t kBytes = kRBytes + kGateBytes + HeadRowsBytes<Tile>();
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

}  // namespace flashrnn
