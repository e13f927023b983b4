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
#include "backward_mma.cuh"
#include "backward_mma_cluster.cuh"
#include "backward_mma_group.cuh"
#include "backward_mma_split.cuh"
#include "block_copy.cuh"
#include "fma_exchange.cuh"
#include "dtype.cuh"
#include "launch.cuh"
#include "layouts.h"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// The FMA backward of one CTA: the same rows of R as its forward in shared memory, dg_s its
// gate cotangents of a step, the partial recurrent cotangents through its group's Exchange
// (fma_exchange.cuh); the kernels below differ only in the Exchange.
template <typename Cell, typename T, typename Tile, typename Exchange>
__device__ __forceinline__ void FmaBackward(const BackwardArgs& args, T* r_s, float* dg_s,
                                            Exchange& ex) {
  constexpr int D = Tile::kHeadSize;
  constexpr int U = Tile::kUnits, BT = Tile::kBatchTile;
  constexpr int P = Tile::kPerThread;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;

  const int64_t B = args.batch, N = args.heads;
  const int steps = static_cast<int>(args.steps);
  const int64_t head = ex.head, b0 = ex.b0;
  const int u0 = ex.rank * U;
  const T* R = static_cast<const T*>(args.r);
  BlockCopy<8>(
      Gr * U * D,
      [&](int idx) {
        const int g = idx / (U * D), o = idx / D % U, i = idx % D;
        return R[((g * N + head) * D + u0 + o) * D + i];
      },
      [&](int idx, T value) { r_s[idx] = value; });
  // The step T-1 reads the partials of a step T that does not exist: zeros.
  ex.ZeroPartials(steps & 1);

  // Per element: the cotangent of the states after the current step, carried backwards; the
  // row's length; whether the step after the current one (the previous iteration) reset, so
  // that the recurrent cotangent arriving now belongs to the initial states.
  auto element = [&](int p) {
    const int e = threadIdx.x + p * Tile::kThreads;
    return Element{b0 + e / U, head * D + u0 + e % U, N * D};
  };
  float ds[P][S];
  InitialCotangents<S, true> d0[P];
  int length[P];
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
  auto recurrent_cotangent = [&](int64_t buffer, int row, int u) {
    return RecurrentCotangent(args, recurrent ? ex.SumPartials(buffer, row, u) : 0.0f);
  };
  // Every CTA of the group must be running (and the zeros written) before remote writes.
  ex.BeforeFirstExchange();

  for (int step = steps - 1; step >= 0; --step) {
    if (recurrent) ex.ReceivePartials((step + 1) & 1);
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
      const Element el = element(p);
      const BackwardRowStep at = BackwardRowAt(args, el.b, el.nd, length[p], step);
      BackwardInputs<Cell, T> in;
      LoadBackwardInputs<Cell, T>(args, el, at, in);
      float dg[Gt];
      BackwardStep<Cell>(args, el, at, in, recurrent_cotangent((step + 1) & 1, row, u),
                         after_reset[p], ds[p], d0[p], dg);
      StoreGateCotangents<Cell>(args, el, at, dg);
      after_reset[p] = at.resets();
#pragma unroll
      for (int g = 0; g < Gr; ++g) dg_s[(g * BT + row) * U + u] = dg[g];
    }
    __syncthreads();

    // Partial recurrent cotangent of every unit i of the head from this CTA's output rows:
    // sum over gates g and owned units o of R[g, o, i] * dg[g, o]; sent to i's owner.
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
        ex.PublishPartial(step & 1, row, i, acc);
      }
    }
    ex.Sync();
  }

  // What step 0 sent back reaches its h_prev: the initial h.
  if (recurrent) ex.ReceivePartials(0);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
    FinishCotangents<Cell>(args, element(p), recurrent_cotangent(0, row, u), ds[p], d0[p]);
  }
}

// Registers: PersistentKernelRegisters (launch.cuh), a persistent CTA alone on its SM.
template <typename Cell, typename T, typename Tile>
__global__ void __maxnreg__(PersistentKernelRegisters(Tile::kThreads))
    BackwardKernel(const BackwardArgs args) {
  using Layout = BackwardLayout<Cell::kGatesR, sizeof(T), Tile>;
  extern __shared__ __align__(128) unsigned char smem[];
  ClusterExchange<Tile> ex(args, 0, true, reinterpret_cast<float*>(smem + Layout::kRBytes));
  FmaBackward<Cell, T, Tile>(
      args, reinterpret_cast<T*>(smem),
      reinterpret_cast<float*>(smem + Layout::kRBytes + Layout::kPartBytes), ex);
}

// A group beyond a cluster: blocks of the launch's groups from group0 on (fma_exchange.cuh).
template <typename Cell, typename T, typename Tile>
__global__ void __maxnreg__(PersistentKernelRegisters(Tile::kThreads))
    BackwardGridKernel(const BackwardArgs args, const int64_t group0) {
  using Layout = BackwardGridLayout<Cell::kGatesR, sizeof(T), Tile>;
  extern __shared__ __align__(128) unsigned char smem[];
  GridExchange<Tile> ex(args, group0, true,
                        reinterpret_cast<float*>(smem + Layout::kRBytes + Layout::kGateBytes));
  FmaBackward<Cell, T, Tile>(args, reinterpret_cast<T*>(smem),
                             reinterpret_cast<float*>(smem + Layout::kRBytes), ex);
}

// The first kernel that takes the tiling's calls, in this order of preference: the tensor-core
// kernels the CMake options built, then the tiling's FMA kernel (params.h kFmaPath).
template <typename Cell, typename T, typename Tile>
constexpr KernelPath kBackwardPath =
    FLASHRNN_MMA_SPLIT_BACKWARD && kMmaSplitBackwardSupported<Cell, T, Tile>
        ? KernelPath::kMmaSplit
    : FLASHRNN_MMA_CLUSTER_BACKWARD && kMmaClusterBackwardSupported<Cell, T, Tile>
        ? KernelPath::kMmaCluster
    : FLASHRNN_MMA_BACKWARD && kMmaBackwardSupported<Cell, T, Tile> ? KernelPath::kMma
    : FLASHRNN_MMA_CLUSTER_BACKWARD && kMmaGroupBackwardSupported<Cell, T, Tile>
        ? KernelPath::kMmaGridGroup
        : kFmaPath<Tile>;

template <typename Cell, typename T, typename Tile>
KernelPath BackwardPath() {
  return kBackwardPath<Cell, T, Tile>;
}

template <typename Cell, typename T, typename Tile>
cudaError_t LaunchBackward(const BackwardArgs& args, cudaStream_t stream) {
  constexpr KernelPath path = kBackwardPath<Cell, T, Tile>;
  if constexpr (path == KernelPath::kMmaSplit) {
    return LaunchBackwardMmaSplit<Cell, T, Tile::kHeadSize>(args, stream);
  } else if constexpr (path == KernelPath::kMmaCluster) {
    return LaunchBackwardMmaCluster<Cell, T, Tile::kHeadSize>(args, stream);
  } else if constexpr (path == KernelPath::kMma) {
    return LaunchBackwardMma<Cell, T, Tile::kHeadSize>(args, stream);
  } else if constexpr (path == KernelPath::kMmaGridGroup) {
    return LaunchBackwardMmaGroup<Cell, T, Tile::kHeadSize>(args, stream);
  } else if constexpr (path == KernelPath::kNone) {
    return cudaErrorNotSupported;
  } else if constexpr (path == KernelPath::kFmaGridGroup) {
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
