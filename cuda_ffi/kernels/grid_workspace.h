// Global memory of the CTA groups larger than a thread-block cluster (tiling.h: kCluster > 16),
// whose CTAs exchange h (forward) or partial recurrent cotangents (backward) through global
// memory and meet at a barrier counter there. Plain C++: the FFI handler sizes the scratch
// buffer with it, the launchers lay it out.
//
// Layout: one counter per (head, batch tile) group, each on its own 128-byte line (zeroed
// before every launch), then each group's exchange buffer in float32: [2][BT][D] in the
// forward (double-buffered h), [2][C][BT][D] in the backward (each source CTA's partials).
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashrnn {

// The largest thread-block cluster of sm_90 (non-portable size); larger groups use the grid
// kernels.
inline constexpr int kMaxClusterSize = 16;
inline constexpr std::size_t kGridCounterBytes = 128;

constexpr bool IsGridGroup(int cluster) { return cluster > kMaxClusterSize; }

constexpr std::size_t GridExchangeFloats(bool backward, int cluster, int batch_tile,
                                         int head_size) {
  return std::size_t{2} * (backward ? cluster : 1) * batch_tile * head_size;
}

constexpr int64_t GridGroups(int batch_tile, int64_t batch, int64_t heads) {
  return heads * ((batch + batch_tile - 1) / batch_tile);
}

// Bytes of scratch a call needs: 0 unless the tiling is a grid group.
constexpr std::size_t GridWorkspaceBytes(bool backward, int cluster, int batch_tile,
                                         int head_size, int64_t batch, int64_t heads) {
  if (!IsGridGroup(cluster)) return 0;
  const auto groups = static_cast<std::size_t>(GridGroups(batch_tile, batch, heads));
  return groups * (kGridCounterBytes +
                   GridExchangeFloats(backward, cluster, batch_tile, head_size) * sizeof(float));
}

}  // namespace flashrnn
