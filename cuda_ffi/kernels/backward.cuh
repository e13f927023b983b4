// The fused backward kernel: one persistent launch runs all time steps in reverse for every
// head and batch tile. Each CTA keeps the same rows of R as in the forward (its units' output
// rows) in shared memory. Per step it runs the cell's pointwise derivative for its units, then
// multiplies its units' gate cotangents by its rows of R, which gives a partial recurrent
// cotangent for every unit of the head; the partials are sent to the CTAs owning those units
// (distributed shared memory, double-buffered) and summed there in the next step.
// dR and db are contractions over batch and time left to XLA.
// Sequence options mirror the forward: steps past a row's length pass the state cotangent
// through unchanged and write zero gate cotangents; at a reset the cotangent of the states the
// step started from (the recurrent part included, which arrives one iteration later) goes to
// the initial states instead of the previous step. The recurrent cotangent is summed over the
// CTAs of the group before it is clipped, or is not formed at all when cut.
#pragma once

#include <cuda_runtime.h>

#include "backward_element.cuh"
#include "backward_grid.cuh"
#include "backward_mma.cuh"
#include "backward_mma_cluster.cuh"
#include "cluster_sync.cuh"
#include "dtype.cuh"
#include "launch.cuh"
#include "layouts.h"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// Launch bounds (threads, 1): a persistent CTA needs no second CTA beside it on its SM, and
// without the 1 ptxas held some of these kernels to 64 registers and spilled (NOTES, v2).
template <typename Cell, typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1) BackwardKernel(const BackwardArgs args) {
  using Layout = BackwardLayout<Cell::kGatesR, sizeof(T), Tile>;
  constexpr int D = Tile::kHeadSize;
  using Group = CtaGroup<Tile::kCluster>;
  constexpr int C = Tile::kCluster, U = Tile::kUnits, BT = Tile::kBatchTile;
  constexpr int P = Tile::kPerThread;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int kPartStride = C * BT * U;  // floats per part_s buffer

  extern __shared__ __align__(128) unsigned char smem[];
  T* r_s = reinterpret_cast<T*>(smem);
  float* part_s = reinterpret_cast<float*>(smem + Layout::kRBytes);
  float* dg_s = reinterpret_cast<float*>(smem + Layout::kRBytes + Layout::kPartBytes);

  const int64_t B = args.batch, steps = args.steps, N = args.heads;
  const int rank = Group::Rank();
  const int64_t head = blockIdx.x / C;
  const int64_t b0 = int64_t{blockIdx.y} * BT;
  const int u0 = rank * U;
  const T* R = static_cast<const T*>(args.r);
  for (int idx = threadIdx.x; idx < Gr * U * D; idx += blockDim.x) {
    const int g = idx / (U * D), o = idx / D % U, i = idx % D;
    r_s[idx] = R[((g * N + head) * D + u0 + o) * D + i];
  }
  // The step T-1 reads the partials of a step T that does not exist: zeros.
  float* part_first = part_s + (steps & 1) * kPartStride;
  for (int idx = threadIdx.x; idx < kPartStride; idx += blockDim.x) part_first[idx] = 0.0f;

  // Per element: the cotangent of the states after the current step, carried backwards; the
  // row's length; whether the step after the current one (the previous iteration) reset, so
  // that the recurrent cotangent arriving now belongs to the initial states.
  auto element = [&](int p) {
    const int e = threadIdx.x + p * Tile::kThreads;
    return Element{b0 + e / U, head * D + u0 + e % U, N * D};
  };
  float ds[P][S];
  InitialCotangents<S, true> d0[P];
  int64_t length[P];
  bool after_reset[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const Element el = element(p);
    length[p] = RowLength(args.seq, el.b, B, steps);
    after_reset[p] = false;
    StartCotangents<Cell, T>(args, el, ds[p], d0[p]);
  }
  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  // The cotangent reaching this element's h_prev through R @ h_prev, from the partials.
  auto recurrent_cotangent = [&](const float* part_in, int row, int u) {
    float acc = 0.0f;
    if (recurrent) {
      for (int src = 0; src < C; ++src) acc += part_in[(src * BT + row) * U + u];
    }
    return RecurrentCotangent(args, acc);
  };
  // Every CTA of the group must be running (and part_first zeroed) before remote writes.
  Group::Sync();

  for (int64_t step = steps - 1; step >= 0; --step) {
    const float* part_in = part_s + ((step + 1) & 1) * kPartStride;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
      const Element el = element(p);
      const BackwardRowStep at = BackwardRowAt(args, el.b, el.nd, length[p], step);
      BackwardInputs<Cell, T> in;
      LoadBackwardInputs<Cell, T>(args, el, at, in);
      float dg[Gt];
      BackwardStep<Cell>(args, el, at, in, recurrent_cotangent(part_in, row, u), after_reset[p],
                         ds[p], d0[p], dg);
      StoreGateCotangents<Cell>(args, el, at, dg);
      after_reset[p] = at.resets();
#pragma unroll
      for (int g = 0; g < Gr; ++g) dg_s[(g * BT + row) * U + u] = dg[g];
    }
    __syncthreads();

    // Partial recurrent cotangent of every unit i of the head from this CTA's output rows:
    // sum over gates g and owned units o of R[g, o, i] * dg[g, o]; sent to i's owner.
    float* part_out = part_s + (step & 1) * kPartStride;
    if (recurrent) {
      for (int e = threadIdx.x; e < D * BT; e += blockDim.x) {
        const int i = e % D, row = e / D;
        float acc = 0.0f;
#pragma unroll
        for (int g = 0; g < Gr; ++g) {
#pragma unroll 8
          for (int o = 0; o < U; ++o) {
            acc += ToFloat(r_s[(g * U + o) * D + i]) * dg_s[(g * BT + row) * U + o];
          }
        }
        Group::Map(part_out, i / U)[(rank * BT + row) * U + i % U] = acc;
      }
    }
    Group::Sync();
  }

  // What step 0 sent back reaches its h_prev: the initial h.
  const float* part_in = part_s;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
    FinishCotangents<Cell>(args, element(p), recurrent_cotangent(part_in, row, u), ds[p],
                           d0[p]);
  }
}

template <typename Cell, typename T, typename Tile>
cudaError_t LaunchBackward(const BackwardArgs& args, cudaStream_t stream) {
#if FLASHRNN_MMA_CLUSTER_BACKWARD
  if constexpr (kMmaClusterBackwardSupported<T, Tile>) {
    return LaunchBackwardMmaCluster<Cell, T, Tile::kHeadSize>(args, stream);
  } else
#endif
#if FLASHRNN_MMA_BACKWARD
  if constexpr (kMmaBackwardSupported<Cell, T, Tile>) {
    return LaunchBackwardMma<Cell, T, Tile::kHeadSize>(args, stream);
  } else
#endif
  if constexpr (IsGridGroup(Tile::kCluster)) {
    using Layout = BackwardGridLayout<Cell::kGatesR, sizeof(T), Tile>;
    return LaunchGridGroups<Tile>(BackwardGridKernel<Cell, T, Tile>, args, Layout::kBytes,
                                  stream);
  } else {
    using Layout = BackwardLayout<Cell::kGatesR, sizeof(T), Tile>;
    return LaunchOverHeadsAndBatchTiles<Tile>(BackwardKernel<Cell, T, Tile>, args,
                                              Layout::kBytes, stream);
  }
}

}  // namespace flashrnn
