// Global memory of the CTA groups larger than a thread-block cluster (tiling.h: kCluster > 16),
// whose CTAs exchange h (forward) or partial recurrent cotangents (backward) through global
// memory and meet at a barrier counter there. Plain C++: the FFI handler sizes the scratch
// buffer with it, the launchers lay it out.
//
// The groups of a call run in chunks of at most `held` groups at once (launch.cuh: as many as
// the SMs hold, one CTA each); the workspace serves one chunk and is reused by the next, which
// runs after it on the stream. Layout: one barrier counter per group of a chunk, each on its own
// 128-byte line (zeroed before every chunk), then each group's exchange buffer in float32:
// [2][BT][D] in the forward (double-buffered h), [2][C][BT][D] in the backward (each source
// CTA's partials).
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashrnn {

// The largest thread-block cluster of sm_90 (non-portable size); larger groups use the grid
// kernels.
inline constexpr int kMaxClusterSize = 16;
inline constexpr std::size_t kGridCounterBytes = 128;
// Floats of padding after each batch row of the forward's staged h_prev (fma_exchange.cuh):
// rows D + 4 floats apart fall 4 banks apart, so that the up to 8 rows a warp reads at one k
// (kUnits < 32) hit distinct banks; a multiple of 4 keeps each row's 16-byte copies aligned.
inline constexpr int kStagedHPad = 4;
constexpr int StagedHStride(int head_size) { return head_size + kStagedHPad; }

constexpr bool IsGridGroup(int cluster) { return cluster > kMaxClusterSize; }

constexpr std::size_t GridExchangeFloats(bool backward, int cluster, int batch_tile,
                                         int head_size) {
  return std::size_t{2} * (backward ? cluster : 1) * batch_tile * head_size;
}

constexpr int64_t GridGroups(int batch_tile, int64_t batch, int64_t heads) {
  return heads * ((batch + batch_tile - 1) / batch_tile);
}

// The groups a chunk holds: the call's groups, at most as many as `sms` SMs hold at one CTA
// each (at least one: a launch that cannot hold it fails with the CUDA error).
constexpr int64_t GridGroupsHeld(int cluster, int batch_tile, int64_t batch, int64_t heads,
                                 int sms) {
  const int64_t groups = GridGroups(batch_tile, batch, heads);
  const int64_t fit = sms / cluster > 0 ? sms / cluster : 1;
  return groups < fit ? groups : fit;
}

// Bytes of the counters at the start of a workspace for `held` groups.
constexpr std::size_t GridCounterBytes(int64_t held) {
  return static_cast<std::size_t>(held) * kGridCounterBytes;
}

// Bytes of scratch for `held` groups: 0 unless the tiling is a grid group.
constexpr std::size_t GridWorkspaceBytes(bool backward, int cluster, int batch_tile,
                                         int head_size, int64_t held) {
  if (!IsGridGroup(cluster)) return 0;
  return GridCounterBytes(held) + static_cast<std::size_t>(held) *
                                      GridExchangeFloats(backward, cluster, batch_tile, head_size) *
                                      sizeof(float);
}

}  // namespace flashrnn
