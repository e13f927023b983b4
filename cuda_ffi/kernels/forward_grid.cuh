// The fused forward for heads too large for a thread-block cluster: a group of C > 16 CTAs per
// (head, batch tile), each keeping its U = D / C units' rows of R in shared memory as the
// cluster kernel does (forward.cuh), exchanging h through global memory instead of
// distributed shared memory. Per step a CTA copies the head's h_prev [BT][D] from the group's
// exchange buffer (L2) into shared memory, runs its units' matmul and cell step, writes its
// slice of h to the other buffer and meets the group at a counter barrier (grid_sync.cuh).
// Numerics and sequence options are those of the cluster kernel: the same per-element stages.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"
#include "forward_element.cuh"
#include "grid_sync.cuh"
#include "grid_workspace.h"
#include "layouts.h"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// Block x of a launch is CTA x % C of group group0 + x / C; group g is head g % N of batch
// tile g / N (launch.cuh launches the groups in as many chunks as can be resident at once).
template <typename Cell, typename T, typename Tile, bool kResiduals>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    ForwardGridKernel(const ForwardArgs args, const int64_t group0) {
  using Layout = ForwardGridLayout<Cell::kGatesR, sizeof(T), Tile>;
  constexpr int D = Tile::kHeadSize, C = Tile::kCluster;
  constexpr int U = Tile::kUnits, BT = Tile::kBatchTile, P = Tile::kPerThread;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int64_t kExchange = GridExchangeFloats(false, C, BT, D);

  extern __shared__ __align__(128) unsigned char smem[];
  T* r_s = reinterpret_cast<T*>(smem);
  // h_prev of the step, staged from the exchange buffer.
  float* h_s = reinterpret_cast<float*>(smem + Layout::kRBytes);

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
  float* h_g = reinterpret_cast<float*>(workspace + groups * kGridCounterBytes) +
               group * kExchange;  // [2][BT][D]
  const T* R = static_cast<const T*>(args.r);

  for (int idx = threadIdx.x; idx < Gr * U * D; idx += blockDim.x) {
    const int g = idx / (U * D), u = idx / D % U, k = idx % D;
    r_s[(g * D + k) * U + u] = R[((g * N + head) * D + u0 + u) * D + k];
  }

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
    h_g[row * D + u0 + u] = s[p][0];
  }
  barrier.Sync();

  for (int64_t step = 0; step < steps; ++step) {
    const float* h_cur = h_g + (step & 1) * BT * D;
    float* h_next = h_g + ((step + 1) & 1) * BT * D;
    for (int idx = threadIdx.x; idx < BT * D; idx += blockDim.x) h_s[idx] = __ldcg(h_cur + idx);
    __syncthreads();
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
        const float hk = h_s[row * D + k];
#pragma unroll
        for (int g = 0; g < Gr; ++g) rh[g] += ToFloat(r_s[(g * D + k) * U + u]) * hk;
      }
      FinishStep<Cell, T, kResiduals>(args, el, at, pre, rh, s[p]);
      ReloadAtReset<Cell>(args, el, reset_next, s[p]);
      h_next[row * D + u0 + u] = s[p][0];
    }
    // Publishes h_next to the group; every CTA's reads of h_cur (staged above) precede it.
    barrier.Sync();
  }

#pragma unroll
  for (int p = 0; p < P; ++p) StoreLast<Cell, T>(args, element(p), s[p]);
}

}  // namespace flashrnn
