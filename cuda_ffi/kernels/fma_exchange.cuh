// Where a CTA of the FMA kernels (forward.cuh, backward.cuh) stands in its head's group, and how
// the group's CTAs exchange what a step needs from each other: h_prev in the forward, the
// partial recurrent cotangents in the backward. Two ways, one per group size (tiling.h):
//
// ClusterExchange: one CTA or a thread-block cluster of up to 16. Each CTA keeps the head's
// whole h_prev, and the partials sent to it, in its shared memory (double-buffered); a CTA
// writes its values into every member's buffer (distributed shared memory), and the group meets
// at the cluster barrier. Grid (heads * C, batch tiles).
//
// GridExchange: a group of 32 to 128 CTAs, beyond a cluster. The buffers are in global memory
// (grid_workspace.h), written once and staged each step into shared memory by cp.async.cg:
// from L2, so that no SM may serve a line of an earlier step from its L1, and all copies of a
// CTA in flight at once (a load-then-store loop waits an L2 round trip per element: ~40 µs a
// step for h at 768). The backward's partials are laid out by owner, so that a CTA stages its
// own C x BT x U block and sums it there as the cluster kernels do. The group meets at a
// counter barrier (grid_sync.cuh). Groups are numbered head-fastest from the launch's first one
// (launch.cuh LaunchGridGroups launches them in chunks); within the workspace a group has the
// place of its CTAs' blocks in the launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "async_copy.cuh"
#include "cluster_sync.cuh"
#include "grid_sync.cuh"
#include "grid_workspace.h"

namespace flashrnn {

template <typename Tile>
class ClusterExchange {
  using Group = CtaGroup<Tile::kCluster>;
  static constexpr int C = Tile::kCluster, D = Tile::kHeadSize, U = Tile::kUnits;
  static constexpr int BT = Tile::kBatchTile;
  static constexpr int kHValues = BT * D;         // floats per h buffer
  static constexpr int kPartValues = C * BT * U;  // floats per partials buffer: [source][row][unit]

 public:
  static constexpr int kHStride = D;  // floats between batch rows of H()
  // buffers: this CTA's shared memory after its slice of R (layouts.h).
  template <typename Args>
  __device__ ClusterExchange(const Args& /*args*/, int64_t /*group0*/, bool /*backward*/,
                             float* buffers)
      : rank(Group::Rank()),
        head(blockIdx.x / C),
        b0(int64_t{blockIdx.y} * BT),
        buffers_(buffers) {}

  const int rank;
  const int64_t head, b0;

  // Every CTA of the group must be running before its shared memory is written remotely.
  __device__ void BeforeFirstExchange() { Group::Sync(); }
  __device__ void Sync() { Group::Sync(); }

  // Forward: h of unit `unit` of the head for batch row `row` into buffer `buffer` of every CTA.
  __device__ void PublishH(int64_t buffer, int row, int unit, float h) {
    for (int r = 0; r < C; ++r) Group::Map(buffers_ + buffer * kHValues, r)[row * D + unit] = h;
  }
  // Forward: the head's h in `buffer`, [BT][D], after the Sync that completed it.
  __device__ const float* H(int64_t buffer) { return buffers_ + buffer * kHValues; }
  // Backward: the partials sent to this CTA are in its shared memory already.
  __device__ void ReceivePartials(int64_t /*buffer*/) {}

  // Backward: the partials of a step T that does not exist (read by step T - 1) are zeros.
  __device__ void ZeroPartials(int64_t buffer) {
    float* first = buffers_ + buffer * kPartValues;
    for (int idx = threadIdx.x; idx < kPartValues; idx += blockDim.x) first[idx] = 0.0f;
  }
  // Backward: this CTA's partial cotangent of unit i of the head, batch row `row`, into the
  // slot of this CTA in the buffer of i's owner.
  __device__ void PublishPartial(int64_t buffer, int row, int i, float partial) {
    Group::Map(buffers_ + buffer * kPartValues, i / U)[(rank * BT + row) * U + i % U] = partial;
  }
  // Backward: the sum of the C partials of this CTA's unit u, batch row `row`, in `buffer`.
  __device__ float SumPartials(int64_t buffer, int row, int u) const {
    const float* in = buffers_ + buffer * kPartValues;
    float sum = 0.0f;
    for (int src = 0; src < C; ++src) sum += in[(src * BT + row) * U + u];
    return sum;
  }

 private:
  float* const buffers_;
};

template <typename Tile>
class GridExchange {
  static constexpr int C = Tile::kCluster, D = Tile::kHeadSize, U = Tile::kUnits;
  static constexpr int BT = Tile::kBatchTile;
  static constexpr int64_t kHValues = int64_t{BT} * D;
  // Partials buffer: [owner][source][row][unit of the owner], an owner's block as large as h.
  static constexpr int64_t kPartValues = int64_t{C} * BT * D;
  static constexpr int64_t kOwnerValues = int64_t{C} * BT * U;
  static_assert(kHValues % 4 == 0 && kOwnerValues % 4 == 0, "16-byte copies");

 public:
  static constexpr int kHStride = StagedHStride(D);  // floats between batch rows of H()
  // group0: the launch's first group; stage: shared memory for kHValues floats (the forward's
  // h_prev, the backward's partials of this CTA's units).
  template <typename Args>
  __device__ GridExchange(const Args& args, int64_t group0, bool backward, float* stage)
      : GridExchange(GridGroupPlace<C, BT, D>(args, group0, backward), stage) {}

  const int rank;
  const int64_t head, b0;

  // (A barrier: the backward's zeroed slots must be complete before step T - 1 reads them.)
  __device__ void BeforeFirstExchange() { barrier_.Sync(); }
  __device__ void Sync() { barrier_.Sync(); }

  __device__ void PublishH(int64_t buffer, int row, int unit, float h) {
    exchange_[buffer * kHValues + row * D + unit] = h;
  }
  // Stages the head's h in `buffer` into shared memory (its readers follow the barrier inside).
  __device__ const float* H(int64_t buffer) {
    StageFromL2<D, kHStride>(exchange_ + buffer * kHValues, kHValues);
    return stage_;
  }

  // Each CTA zeroes its own slot in every owner's block; the barrier before the first step
  // publishes them.
  __device__ void ZeroPartials(int64_t buffer) {
    float* part = exchange_ + buffer * kPartValues;
    for (int idx = threadIdx.x; idx < kHValues; idx += blockDim.x) {
      const int owner = idx / (BT * U), at = idx % (BT * U);
      part[owner * kOwnerValues + rank * BT * U + at] = 0.0f;
    }
  }
  __device__ void PublishPartial(int64_t buffer, int row, int i, float partial) {
    exchange_[buffer * kPartValues + i / U * kOwnerValues + (rank * BT + row) * U + i % U] =
        partial;
  }
  // Stages the partials sent to this CTA in `buffer` (its readers follow the barrier inside).
  __device__ void ReceivePartials(int64_t buffer) {
    StageFromL2<kOwnerValues, kOwnerValues>(
        exchange_ + buffer * kPartValues + rank * kOwnerValues, kOwnerValues);
  }
  __device__ float SumPartials(int64_t /*buffer*/, int row, int u) const {
    float sum = 0.0f;
    for (int src = 0; src < C; ++src) sum += stage_[(src * BT + row) * U + u];
    return sum;
  }

 private:
  __device__ GridExchange(const GridGroupPlace<C, BT, D>& place, float* stage)
      : rank(place.rank),
        head(place.head),
        b0(place.b0),
        barrier_(place.counter, C),
        exchange_(place.exchange),
        stage_(stage) {}

  // `values` floats from global memory into stage_, rows of kRow floats placed kStride floats
  // apart, 16 bytes per cp.async.cg, every copy of the CTA issued before one wait, then the
  // block barrier that publishes them.
  template <int64_t kRow, int64_t kStride>
  __device__ void StageFromL2(const float* source, int64_t values) {
    static_assert(kRow % 4 == 0 && kStride % 4 == 0, "16-byte copies");
    const uint32_t stage = static_cast<uint32_t>(__cvta_generic_to_shared(stage_));
    for (int64_t chunk = threadIdx.x; chunk < values / 4; chunk += blockDim.x) {
      const int64_t from = 4 * chunk, at = from / kRow * kStride + from % kRow;
      CopyAsync16(stage + static_cast<uint32_t>(4 * at), source + 4 * chunk);
    }
    WaitForCopies();
    __syncthreads();
  }

  GroupCounterBarrier barrier_;
  float* const exchange_;
  float* const stage_;
};

}  // namespace flashrnn
