// The fused forward kernel: one persistent launch runs all time steps for every head and
// batch tile. A CTA group (one CTA, or a thread-block cluster for large heads) owns one
// (head, batch tile); each CTA keeps its rows of R in shared memory for the whole sequence and
// its units' cell states and biases in registers, in float32. h_prev lives in shared memory
// (double-buffered; cluster members write their slice of h into each other's buffers), so a
// step costs one barrier and never round-trips h through global memory.
// Sequence options are masks in the pointwise stage: a row past its length keeps its states
// and writes zeros; a reset loads the initial states into the registers and h_prev before the
// step that reads the flagged input; reverse changes only the input index a step reads.
#pragma once

#include <cuda_runtime.h>

#include "cluster_sync.cuh"
#include "dtype.cuh"
#include "forward_element.cuh"
#include "forward_grid.cuh"
#include "forward_mma.cuh"
#include "forward_mma_cluster.cuh"
#include "launch.cuh"
#include "layouts.h"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// kResiduals: also write the residuals of the backward (a forward that is differentiated).
// Launch bounds (threads, 1): a persistent CTA needs no second CTA beside it on its SM, and
// without the 1 ptxas held some of these kernels to 64 registers and spilled (NOTES, v2).
template <typename Cell, typename T, typename Tile, bool kResiduals>
__global__ void __launch_bounds__(Tile::kThreads, 1) ForwardKernel(const ForwardArgs args) {
  using Layout = ForwardLayout<Cell::kGatesR, sizeof(T), Tile>;
  constexpr int D = Tile::kHeadSize;
  using Group = CtaGroup<Tile::kCluster>;
  constexpr int U = Tile::kUnits, BT = Tile::kBatchTile, P = Tile::kPerThread;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;

  extern __shared__ __align__(128) unsigned char smem[];
  T* r_s = reinterpret_cast<T*>(smem);
  float* h_s = reinterpret_cast<float*>(smem + Layout::kRBytes);

  const int64_t steps = args.steps, N = args.heads;
  const int rank = Group::Rank();
  const int64_t head = blockIdx.x / Tile::kCluster;
  const int64_t b0 = int64_t{blockIdx.y} * BT;
  const int u0 = rank * U;
  const T* R = static_cast<const T*>(args.r);

  for (int idx = threadIdx.x; idx < Gr * U * D; idx += blockDim.x) {
    const int g = idx / (U * D), u = idx / D % U, k = idx % D;
    r_s[(g * D + k) * U + u] = R[((g * N + head) * D + u0 + u) * D + k];
  }

  // Every CTA of the group must be running before its shared memory is written remotely.
  Group::Sync();

  // Element p of this thread: unit u0 + u of the head, batch row b0 + row.
  auto element = [&](int p) {
    const int e = threadIdx.x + p * Tile::kThreads;
    return Element{b0 + e / U, head * D + u0 + e % U, N * D};
  };
  int64_t length[P];
  float s[P][S];
  float bias[P][Gt];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
    length[p] = RowLength(args.seq, b0 + row, args.batch, steps);
    LoadBias<Cell>(args, element(p), bias[p]);
    LoadStates<Cell>(args, element(p), s[p]);
    for (int r = 0; r < Tile::kCluster; ++r) Group::Map(h_s, r)[row * D + u0 + u] = s[p][0];
  }
  Group::Sync();

  for (int64_t step = 0; step < steps; ++step) {
    const float* h_cur = h_s + (step & 1) * BT * D;
    float* h_next = h_s + ((step + 1) & 1) * BT * D;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
      const Element el = element(p);
      const RowStep at = RowAt(args, el.b, el.nd, length[p], step);
      const bool reset_next = ResetFlagNext(args, el.b, length[p], step) != 0;
      T wx[Cell::kGatesWx];
      LoadInputs<Cell, T>(args, el, at, wx);
      float pre[Gt];
      Preactivations<Cell, T>(bias[p], wx, pre);
      float rh[Gr] = {};
#pragma unroll 8
      for (int k = 0; k < D; ++k) {
        const float hk = h_cur[row * D + k];
#pragma unroll
        for (int g = 0; g < Gr; ++g) rh[g] += ToFloat(r_s[(g * D + k) * U + u]) * hk;
      }
      FinishStep<Cell, T, kResiduals>(args, el, at, pre, rh, s[p]);
      ReloadAtReset<Cell>(args, el, reset_next, s[p]);
      for (int r = 0; r < Tile::kCluster; ++r) Group::Map(h_next, r)[row * D + u0 + u] = s[p][0];
    }
    Group::Sync();
  }

#pragma unroll
  for (int p = 0; p < P; ++p) StoreLast<Cell, T>(args, element(p), s[p]);
}

template <typename Cell, typename T, typename Tile>
cudaError_t LaunchForward(const ForwardArgs& args, cudaStream_t stream) {
#if FLASHRNN_MMA_SPLIT_FORWARD
  if constexpr (kMmaSplitForwardSupported<T, Tile>) {
    return LaunchForwardMmaCluster<Cell, T, Tile::kHeadSize, 1>(args, stream);
  } else
#endif
#if FLASHRNN_MMA_FORWARD
  if constexpr (kMmaForwardSupported<T, Tile>) {
    return LaunchForwardMma<Cell, T, Tile::kHeadSize>(args, stream);
  } else
#endif
#if FLASHRNN_MMA_CLUSTER_FORWARD
  if constexpr (kMmaClusterForwardSupported<T, Tile>) {
    return LaunchForwardMmaCluster<Cell, T, Tile::kHeadSize, kMmaClusterSize<Tile::kHeadSize>>(
        args, stream);
  } else
#endif
  if constexpr (IsGridGroup(Tile::kCluster)) {
    using Layout = ForwardGridLayout<Cell::kGatesR, sizeof(T), Tile>;
    return LaunchGridGroups<Tile>(args.gate_cache != nullptr
                                      ? ForwardGridKernel<Cell, T, Tile, true>
                                      : ForwardGridKernel<Cell, T, Tile, false>,
                                  args, Layout::kBytes, stream);
  } else {
    using Layout = ForwardLayout<Cell::kGatesR, sizeof(T), Tile>;
    return LaunchOverHeadsAndBatchTiles<Tile>(args.gate_cache != nullptr
                                                  ? ForwardKernel<Cell, T, Tile, true>
                                                  : ForwardKernel<Cell, T, Tile, false>,
                                              args, Layout::kBytes, stream);
  }
}

}  // namespace flashrnn
