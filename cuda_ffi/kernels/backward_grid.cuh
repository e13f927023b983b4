// The fused backward for heads too large for a thread-block cluster: the CTA group of
// forward_grid.cuh, each CTA with the same rows of R in shared memory as the cluster backward
// (backward.cuh). Per step a CTA runs its units' pointwise derivative, multiplies their gate
// cotangents by its rows of R — a partial recurrent cotangent for every unit of the head — and
// writes that row of partials to its slot of the group's exchange buffer in global memory; after
// the group's counter barrier each CTA sums the C partials of its own units (from L2). Sequence
// options and gradient controls are those of the cluster backward: the same per-element stages.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backward_element.cuh"
#include "dtype.cuh"
#include "grid_sync.cuh"
#include "grid_workspace.h"
#include "layouts.h"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// Blocks map to groups and heads as in ForwardGridKernel.
template <typename Cell, typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    BackwardGridKernel(const BackwardArgs args, const int64_t group0) {
  using Layout = BackwardGridLayout<Cell::kGatesR, sizeof(T), Tile>;
  constexpr int D = Tile::kHeadSize, C = Tile::kCluster;
  constexpr int U = Tile::kUnits, BT = Tile::kBatchTile, P = Tile::kPerThread;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int64_t kExchange = GridExchangeFloats(true, C, BT, D);
  constexpr int64_t kPartStride = int64_t{C} * BT * D;  // floats per exchange buffer

  extern __shared__ __align__(128) unsigned char smem[];
  T* r_s = reinterpret_cast<T*>(smem);
  float* dg_s = reinterpret_cast<float*>(smem + Layout::kRBytes);

  const int64_t steps = args.steps, N = args.heads;
  const int64_t group = group0 + blockIdx.x / C;
  const int rank = static_cast<int>(blockIdx.x % C);
  const int64_t head = group % N;
  const int64_t b0 = group / N * BT;
  const int u0 = rank * U;
  const int64_t groups = GridGroups(BT, args.batch, N);
  unsigned char* workspace = static_cast<unsigned char*>(args.workspace);
  GroupCounterBarrier barrier(reinterpret_cast<unsigned*>(workspace + group * kGridCounterBytes),
                              C);
  // [2][C (source CTA)][BT][D (unit of the head)]
  float* part_g = reinterpret_cast<float*>(workspace + groups * kGridCounterBytes) +
                  group * kExchange;
  const T* R = static_cast<const T*>(args.r);
  for (int idx = threadIdx.x; idx < Gr * U * D; idx += blockDim.x) {
    const int g = idx / (U * D), o = idx / D % U, i = idx % D;
    r_s[idx] = R[((g * N + head) * D + u0 + o) * D + i];
  }

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
    length[p] = RowLength(args.seq, el.b, args.batch, steps);
    after_reset[p] = false;
    StartCotangents<Cell, T>(args, el, ds[p], d0[p]);
  }
  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  // The cotangent reaching this element's h_prev through R @ h_prev: the sum of the C partials
  // in `buffer`; none in the step T - 1 (no step after it sent any).
  auto recurrent_cotangent = [&](int64_t buffer, bool any, int row, int u) {
    float acc = 0.0f;
    if (recurrent && any) {
      const float* in = part_g + buffer * kPartStride + row * D + u0 + u;
#pragma unroll 8
      for (int src = 0; src < C; ++src) acc += __ldcg(in + src * BT * D);
    }
    return RecurrentCotangent(args, acc);
  };
  __syncthreads();  // r_s complete

  for (int64_t step = steps - 1; step >= 0; --step) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
      const Element el = element(p);
      const BackwardRowStep at = BackwardRowAt(args, el.b, el.nd, length[p], step);
      BackwardInputs<Cell, T> in;
      LoadBackwardInputs<Cell, T>(args, el, at, in);
      float dg[Gt];
      BackwardStep<Cell>(args, el, at, in,
                         recurrent_cotangent((step + 1) & 1, step + 1 < steps, row, u),
                         after_reset[p], ds[p], d0[p], dg);
      StoreGateCotangents<Cell>(args, el, at, dg);
      after_reset[p] = at.resets();
#pragma unroll
      for (int g = 0; g < Gr; ++g) dg_s[(g * BT + row) * U + u] = dg[g];
    }
    __syncthreads();

    // Partial recurrent cotangent of every unit i of the head from this CTA's units:
    // sum over gates g and owned units o of R[g, o, i] * dg[g, o], into this CTA's slot.
    float* part_out = part_g + (step & 1) * kPartStride + rank * BT * D;
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
        part_out[row * D + i] = acc;
      }
    }
    // Publishes the partials; every CTA's reads of the other buffer (above) precede it.
    barrier.Sync();
  }

  // What step 0 sent back (buffer 0) reaches the initial h.
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
    FinishCotangents<Cell>(args, element(p), recurrent_cotangent(0, steps > 0, row, u), ds[p],
                           d0[p]);
  }
}

}  // namespace flashrnn
