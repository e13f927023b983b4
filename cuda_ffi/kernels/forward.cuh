// The fused forward kernel: one persistent launch runs all time steps for every head and
// batch tile. A CTA group (one CTA, or a thread-block cluster for large heads) owns one
// (head, batch tile); each CTA keeps its rows of R in shared memory for the whole sequence and
// its units' cell states and biases in registers, in float32. h_prev lives in shared memory
// (double-buffered; cluster members write their slice of h into each other's buffers), so a
// step costs one barrier and never round-trips h through global memory — except for heads
// whose R needs more CTAs than a cluster holds, whose groups exchange h through global memory
// (fma_exchange.cuh).
// Sequence options are masks in the pointwise stage: a row past its length keeps its states
// and writes zeros; a reset loads the initial states into the registers and h_prev before the
// step that reads the flagged input; reverse changes only the input index a step reads.
#pragma once

#include <cuda_runtime.h>

#include "block_copy.cuh"
#include "dtype.cuh"
#include "fma_exchange.cuh"
#include "forward_element.cuh"
#include "forward_mma.cuh"
#include "forward_mma_cluster.cuh"
#include "forward_mma_group.cuh"
#include "launch.cuh"
#include "layouts.h"
#include "params.h"
#include "sequence.cuh"
#include "tiling.h"

namespace flashrnn {

// The FMA forward of one CTA: its units' rows of R in shared memory, its elements' states and
// biases in registers, h_prev from its group through Exchange (fma_exchange.cuh); the kernels
// below differ only in the Exchange. kResiduals: also write the residuals of the backward (a
// forward that is differentiated).
template <typename Cell, typename T, typename Tile, bool kResiduals, typename Exchange>
__device__ __forceinline__ void FmaForward(const ForwardArgs& args, T* r_s, Exchange& ex) {
  constexpr int D = Tile::kHeadSize;
  constexpr int U = Tile::kUnits, P = Tile::kPerThread;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;

  const int steps = static_cast<int>(args.steps);
  const int64_t N = args.heads;
  const int64_t head = ex.head, b0 = ex.b0;
  const int u0 = ex.rank * U;
  const T* R = static_cast<const T*>(args.r);

  BlockCopy<8>(
      Gr * U * D,
      [&](int idx) {
        const int g = idx / (U * D), u = idx / D % U, k = idx % D;
        return R[((g * N + head) * D + u0 + u) * D + k];
      },
      [&](int idx, T value) {
        const int g = idx / (U * D), u = idx / D % U, k = idx % D;
        r_s[(g * D + k) * U + u] = value;
      });
  ex.BeforeFirstExchange();

  // Element p of this thread: unit u0 + u of the head, batch row b0 + row.
  auto element = [&](int p) {
    const int e = threadIdx.x + p * Tile::kThreads;
    return Element{b0 + e / U, head * D + u0 + e % U, N * D};
  };
  int length[P];
  float s[P][S];
  float bias[P][Gt];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = threadIdx.x + p * Tile::kThreads, u = e % U, row = e / U;
    length[p] = RowLength(args.seq, b0 + row, args.batch, steps);
    LoadBias<Cell>(args, element(p), bias[p]);
    LoadStates<Cell>(args, element(p), s[p]);
    ex.PublishH(0, row, u0 + u, s[p][0]);
  }
  ex.Sync();

  for (int step = 0; step < steps; ++step) {
    const float* h_cur = ex.H(step & 1);
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
        const float hk = h_cur[row * Exchange::kHStride + k];
#pragma unroll
        for (int g = 0; g < Gr; ++g) rh[g] += ToFloat(r_s[(g * D + k) * U + u]) * hk;
      }
      FinishStep<Cell, T, kResiduals>(args, el, at, pre, rh, s[p]);
      ReloadAtReset<Cell>(args, el, reset_next, s[p]);
      ex.PublishH((step + 1) & 1, row, u0 + u, s[p][0]);
    }
    ex.Sync();
  }

#pragma unroll
  for (int p = 0; p < P; ++p) StoreLast<Cell, T>(args, element(p), s[p]);
}

// Registers: PersistentKernelRegisters (launch.cuh), a persistent CTA alone on its SM.
template <typename Cell, typename T, typename Tile, bool kResiduals>
__global__ void __maxnreg__(PersistentKernelRegisters(Tile::kThreads))
    ForwardKernel(const ForwardArgs args) {
  using Layout = ForwardLayout<Cell::kGatesR, sizeof(T), Tile>;
  extern __shared__ __align__(128) unsigned char smem[];
  ClusterExchange<Tile> ex(args, 0, false, reinterpret_cast<float*>(smem + Layout::kRBytes));
  FmaForward<Cell, T, Tile, kResiduals>(args, reinterpret_cast<T*>(smem), ex);
}

// A group beyond a cluster: blocks of the launch's groups from group0 on (fma_exchange.cuh).
template <typename Cell, typename T, typename Tile, bool kResiduals>
__global__ void __maxnreg__(PersistentKernelRegisters(Tile::kThreads))
    ForwardGridKernel(const ForwardArgs args, const int64_t group0) {
  using Layout = ForwardGridLayout<Cell::kGatesR, sizeof(T), Tile>;
  extern __shared__ __align__(128) unsigned char smem[];
  GridExchange<Tile> ex(args, group0, false, reinterpret_cast<float*>(smem + Layout::kRBytes));
  FmaForward<Cell, T, Tile, kResiduals>(args, reinterpret_cast<T*>(smem), ex);
}

// The first kernel that takes the tiling's calls, in this order of preference: the tensor-core
// kernels the CMake options built, then the tiling's FMA kernel (params.h kFmaPath).
template <typename Cell, typename T, typename Tile>
constexpr KernelPath kForwardPath =
    FLASHRNN_MMA_SPLIT_FORWARD && kMmaSplitForwardSupported<Cell, T, Tile>
        ? KernelPath::kMmaSplit
    : FLASHRNN_MMA_FORWARD && kMmaForwardSupported<T, Tile> ? KernelPath::kMma
    : FLASHRNN_MMA_CLUSTER_FORWARD && kMmaClusterForwardSupported<Cell, T, Tile>
        ? KernelPath::kMmaCluster
    : FLASHRNN_MMA_CLUSTER_FORWARD && kMmaGroupForwardSupported<Cell, T, Tile>
        ? KernelPath::kMmaGridGroup
        : kFmaPath<Tile>;

template <typename Cell, typename T, typename Tile>
KernelPath ForwardPath() {
  return kForwardPath<Cell, T, Tile>;
}

template <typename Cell, typename T, typename Tile>
cudaError_t LaunchForward(const ForwardArgs& args, cudaStream_t stream) {
  constexpr KernelPath path = kForwardPath<Cell, T, Tile>;
  if constexpr (path == KernelPath::kMmaSplit) {
    return LaunchForwardMmaCluster<Cell, T, Tile::kHeadSize, 1>(args, stream);
  } else if constexpr (path == KernelPath::kMma) {
    return LaunchForwardMma<Cell, T, Tile::kHeadSize>(args, stream);
  } else if constexpr (path == KernelPath::kMmaCluster) {
    return LaunchForwardMmaCluster<Cell, T, Tile::kHeadSize, kMmaClusterSize<Tile::kHeadSize>>(
        args, stream);
  } else if constexpr (path == KernelPath::kMmaGridGroup) {
    return LaunchForwardMmaGroup<Cell, T, Tile::kHeadSize>(args, stream);
  } else if constexpr (path == KernelPath::kNone) {
    return cudaErrorNotSupported;
  } else if constexpr (path == KernelPath::kFmaGridGroup) {
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
