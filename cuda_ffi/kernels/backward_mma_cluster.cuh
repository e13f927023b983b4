// The tensor-core backward kernel for bfloat16 heads of 256 split over an 8-CTA thread-block
// cluster. Built with the CMake option FLASHRNN_MMA_CLUSTER_BACKWARD (ON by default; sm_90 or
// newer); benchmarks/NOTES.md (v2 backward over clusters) has its design and measurements.
//
// CTA r owns the units [32 r, 32 r + 32) of the head: it runs their pointwise derivative (one
// element per thread: 32 units x 8 batch rows = 256 threads) and so holds their gate
// cotangents dg[g, o, b]. The recurrent cotangent dh[u, b] = sum over g, o of R[g, o, u]
// dg[g, o, b] is split over K = (gate, unit o) by owner: CTA r contributes the part over its
// own units o, for every u of the head. Warp w of CTA r computes that part for the 32 units u
// of CTA w (M = 32, K = Gr x 32, N = the batch tile of 8) with its Rᵀ fragments in registers
// for the whole sequence, and stores the m16n8 accumulators into CTA w's shared memory
// (distributed shared memory, two float4 per lane), where each of the 8 partials has its own
// slot; a thread of CTA w sums its element's 8 partials at the start of the next step. The gate
// cotangents go through the tensor cores as bfloat16 hi + lo parts, as in backward_mma.cuh.
// One block barrier (dg complete) and one cluster barrier (partials complete) per step; the
// initial states' cotangents stay in registers until the end, so no global read-modify-write
// sits in front of the barrier at a reset.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "backward_element.cuh"
#include "cluster_sync.cuh"
#include "launch.cuh"
#include "mma_operand.cuh"
#include "params.h"
#include "tiling.h"

namespace flashrnn {

// Which calls the cluster tensor-core backward takes: bfloat16 (backward_mma.cuh says why not
// float16) and head size 256 (the single-CTA tensor-core backward covers up to 128).
template <typename T, typename Tile>
constexpr bool kMmaClusterBackwardSupported =
    std::is_same_v<T, __nv_bfloat16> && Tile::kHeadSize == 256;

// CTAs per head: 8, one per warp of a CTA, so that warp w's partial goes to CTA w.
template <int D>
constexpr int kMmaClusterBackwardSize = D / 32;

// Shared memory: this CTA's gate cotangents [batch row][gate * U + unit] as hi and lo parts
// (single-buffered: the cluster barrier orders a step's reads before the next step's writes),
// rows padded by 8 values (distinct banks for the B-fragment loads); then the partial
// recurrent cotangents [buffer][source CTA][element] in float32, double-buffered, the element
// index being the owner thread's (thread j = accumulator register j % 4 of lane j / 4 % 32 of
// unit tile j / 128).
template <int kGatesR, int D, int C>
struct MmaClusterBackwardLayout {
  static constexpr int kUnits = D / C;
  static constexpr int kThreads = kUnits * kMmaBatchTile;
  static constexpr int kRowStride = kGatesR * kUnits + 8;
  static constexpr int kGateValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kGateBytes =
      AlignUp(2 * std::size_t{kGateValues} * sizeof(__nv_bfloat16));
  static constexpr int kPartValues = C * kThreads;  // per buffer
  static constexpr std::size_t kBytes = kGateBytes + 2 * std::size_t{kPartValues} * sizeof(float);
  static_assert(kThreads == 32 * C, "one warp per CTA of the cluster");
  static_assert(kUnits == 32, "two unit tiles per warp, 128 elements per unit tile");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

// Launch bounds (threads, 1): as the other persistent kernels.
template <typename Cell, typename T, int D, int C>
__global__ void __launch_bounds__(MmaClusterBackwardLayout<Cell::kGatesR, D, C>::kThreads, 1)
    BackwardMmaClusterKernel(const BackwardArgs args) {
  using Op = MmaOperand<T>;
  using Group = CtaGroup<C>;
  using Layout = MmaClusterBackwardLayout<Cell::kGatesR, D, C>;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int U = Layout::kUnits, MT = U / 16, KT = Gr * U / 16;
  constexpr int kStride = Layout::kRowStride;

  extern __shared__ __align__(128) unsigned char smem[];
  T* dg_hi = reinterpret_cast<T*>(smem);     // [BT][kStride]
  T* dg_lo = dg_hi + Layout::kGateValues;    // [BT][kStride]
  float* part = reinterpret_cast<float*>(smem + Layout::kGateBytes);  // [2][C][kThreads]

  const int rank = Group::Rank();
  const int64_t N = args.heads, head = blockIdx.x / C, nd = N * D;
  const int64_t b0 = int64_t{blockIdx.y} * kMmaBatchTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // Rᵀ as A fragments for the 32 units of CTA `warp` (two unit tiles), over (gate, unit) of
  // this CTA's own units.
  uint32_t a[MT][KT][4];
  LoadTransposedFragments<T, D, U>(static_cast<const T*>(args.r), N, head, U * warp, rank * U,
                                   0, lane, a);

  // This thread's element, named by the accumulator it collects: register c = j % 4 of lane
  // l = j / 4 % 32 in unit tile mi = j / 128 is unit 16 mi + l / 4 + 8 (c / 2) of this CTA and
  // batch row 2 (l % 4) + c % 2.
  const int j = threadIdx.x, c = j % 4, l = j / 4 % 32, mi = j / 128;
  const int unit = 16 * mi + l / 4 + 8 * (c / 2), batch_row = 2 * (l % 4) + c % 2;
  const Element el{b0 + batch_row, head * D + rank * U + unit, nd};
  const int64_t length = RowLength(args.seq, el.b, args.batch, args.steps);
  float ds[S];
  InitialCotangents<S, true> d0;
  StartCotangents<Cell, T>(args, el, ds, d0);
  // The step T-1 reads the partials of a step T that does not exist: zeros.
  float* part_first = part + (args.steps & 1) * Layout::kPartValues;
  for (int idx = threadIdx.x; idx < Layout::kPartValues; idx += blockDim.x) part_first[idx] = 0.0f;

  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  // The cotangent reaching this element's h_prev through R @ h_prev: the sum of the partials
  // in `buffer` from every CTA of the cluster.
  auto recurrent_cotangent = [&](int buffer) {
    float sum = 0.0f;
    if (recurrent) {
      const float* in = part + buffer * Layout::kPartValues + j;
#pragma unroll
      for (int src = 0; src < C; ++src) sum += in[src * Layout::kThreads];
    }
    return RecurrentCotangent(args, sum);
  };

  // The row state and inputs of a step (of the last step, here), loaded between the halves of
  // the cluster barrier in the loop.
  BackwardElementStep<Cell, T> next;
  if (args.steps > 0) next.Load(args, el, length, args.steps - 1);
  // Every CTA of the cluster must be running (and part_first zeroed) before remote writes.
  Group::Sync();

  bool after_reset = false;
  for (int64_t step = args.steps - 1; step >= 0; --step) {
    float dg[Gt];
    BackwardStep<Cell>(args, el, next.row, next.in,
                       recurrent_cotangent(static_cast<int>((step + 1) & 1)), after_reset, ds, d0,
                       dg);
    after_reset = next.row.resets();
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      const int at = batch_row * kStride + g * U + unit;
      Op::Split(dg[g], dg_hi[at], dg_lo[at]);
    }
    __syncthreads();

    // This CTA's part of dh for the units of CTA `warp`, into that CTA's slot `rank`.
    if (recurrent) {
      // The two unit tiles share the B fragments (MmaHiLo's "gates" are the unit tiles here).
      float acc[MT][4] = {};
      MmaHiLo<T, MT, KT, kStride>(dg_hi, dg_lo, 0, lane, a, acc);
      float* out = Group::Map(part, warp) + (step & 1) * Layout::kPartValues +
                   rank * Layout::kThreads;
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        reinterpret_cast<float4*>(out)[t * 32 + lane] =
            make_float4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]);
      }
    }
    // Orders this step's partials before their reads in the next step, and this step's reads
    // of dg and of the partials before the next step's writes, in every CTA. The step's gate
    // cotangents and the next step's inputs go between its halves: the arrive is a release
    // that would wait for them (cluster_sync.cuh).
    Group::Arrive();
    StoreGateCotangents<Cell>(args, el, next.row, dg);
    if (step > 0) next.Load(args, el, length, step - 1);
    Group::Wait();
  }

  // What step 0 sent back (buffer 0) reaches the initial h.
  FinishCotangents<Cell>(args, el, recurrent_cotangent(0), ds, d0);
}

// Launches the cluster tensor-core backward over every head and batch tile of 8 rows.
template <typename Cell, typename T, int D>
cudaError_t LaunchBackwardMmaCluster(const BackwardArgs& args, cudaStream_t stream) {
  constexpr int C = kMmaClusterBackwardSize<D>;
  using Layout = MmaClusterBackwardLayout<Cell::kGatesR, D, C>;
  using Shape = Tiling<D, C, kMmaBatchTile, Layout::kThreads>;
  return LaunchOverHeadsAndBatchTiles<Shape>(BackwardMmaClusterKernel<Cell, T, D, C>, args,
                                             Layout::kBytes, stream);
}

}  // namespace flashrnn
