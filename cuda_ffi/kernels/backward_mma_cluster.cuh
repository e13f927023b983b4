// The tensor-core backward kernel for bfloat16 heads of 256, 512 and 768 split over a
// thread-block cluster of 8, 16 and 16 CTAs. Built with the CMake option
// FLASHRNN_MMA_CLUSTER_BACKWARD (ON by default; sm_90 or newer); benchmarks/NOTES.md (v2
// backward over clusters) has its design and measurements.
//
// CTA r owns the U = D / C units [U r, U r + U) of the head: it runs their pointwise derivative
// (one element per thread: U units x 8 batch rows) and so holds their gate cotangents
// dg[g, o, b]. The recurrent cotangent dh[u, b] = sum over g, o of R[g, o, u] dg[g, o, b] is
// split over K = (gate, unit o) by owner: CTA r contributes the part over its own units o, for
// every u of the head. That part is C x U / 16 products of M = 16 units u (a unit tile of
// another CTA, the "destination"), K = Gr x U, N = the batch tile of 8, spread evenly over the
// CTA's warps: at D = 256 warp w has both unit tiles of CTA w. A warp keeps the Rᵀ fragments
// of its products for the whole sequence, in registers as far as they fit and the rest in
// shared memory (the LSTM, sLSTM and GRU at D = 768), and stores each m16n8 accumulator into its
// destination CTA's shared memory (distributed shared memory, a float4 per lane), where each of
// the C partials has its own slot; a thread there sums its element's C partials at the start of
// the next step. The gate cotangents go through the tensor cores as bfloat16 hi + lo parts, as
// in backward_mma.cuh. One block barrier (dg complete) and one cluster barrier (partials
// complete) per step; the initial states' cotangents stay in registers until the end, so no
// global read-modify-write sits in front of the barrier at a reset.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "backward_element.cuh"
#include "cluster_sync.cuh"
#include "launch.cuh"
#include "mma_cluster_shape.h"
#include "mma_operand.cuh"
#include "params.h"
#include "partial_sums.cuh"
#include "tiling.h"

namespace flashrnn {

// Which calls the cluster tensor-core backward takes: bfloat16 (backward_mma.cuh says why not
// float16) and the head sizes of MmaClusterTakesHead (mma_cluster_shape.h), over the cluster
// forward's kMmaClusterSize CTAs.
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaClusterBackwardSupported =
    std::is_same_v<T, __nv_bfloat16> && MmaClusterTakesHead<Cell>(Tile::kHeadSize);

// Shared memory: this CTA's gate cotangents [batch row][gate * U + unit] as hi and lo parts
// (single-buffered: the cluster barrier orders a step's reads before the next step's writes),
// rows padded by 8 values (distinct banks for the B-fragment loads); then the partial
// recurrent cotangents [buffer][source CTA][element] in float32, double-buffered, the element
// index being the owner thread's (thread j = accumulator register j % 4 of lane j / 4 % 32 of
// unit tile j / 128); then the Rᵀ fragments that do not fit the registers. Each warp has
// kProductsPerWarp products (destination CTA, unit tile), numbered p = warp kProductsPerWarp + i
// (destination p / kUnitTiles, its unit tile p % kUnitTiles): the first kRegisterProducts with
// their fragments in registers, the other kSharedProducts as [warp][product][k-tile][lane]
// uint4.
template <int kGatesR, int D, int C>
struct MmaClusterBackwardLayout {
  static constexpr int kUnits = D / C, kUnitTiles = kUnits / 16, kKTiles = kGatesR * kUnits / 16;
  static constexpr int kThreads = kUnits * kMmaBatchTile;
  static constexpr int kProductsPerWarp = C * kUnitTiles / (kThreads / 32);
  static constexpr int kRegisterProducts =
      std::min(kProductsPerWarp, MmaFragmentRegisters(kThreads) / (4 * kKTiles));
  static constexpr int kSharedProducts = kProductsPerWarp - kRegisterProducts;
  static constexpr int kRowStride = kGatesR * kUnits + 8;
  static constexpr int kGateValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kGateBytes =
      AlignUp(2 * std::size_t{kGateValues} * sizeof(__nv_bfloat16));
  static constexpr int kPartValues = C * kThreads;  // per buffer
  static constexpr std::size_t kPartBytes = 2 * std::size_t{kPartValues} * sizeof(float);
  static constexpr std::size_t kRSharedOffset = kGateBytes + kPartBytes;
  static constexpr std::size_t kBytes =
      kRSharedOffset + std::size_t{kThreads} * kSharedProducts * kKTiles * sizeof(uint4);
  static_assert(kThreads / 32 * kProductsPerWarp == C * kUnitTiles,
                "the products spread evenly over the warps");
  static_assert(kRegisterProducts > 0, "a product's fragments in registers at least");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

// Registers: PersistentKernelRegisters (launch.cuh), as the other persistent kernels.
template <typename Cell, typename T, int D, int C>
__global__ void __maxnreg__(
    PersistentKernelRegisters(MmaClusterBackwardLayout<Cell::kGatesR, D, C>::kThreads))
    BackwardMmaClusterKernel(const BackwardArgs args) {
  using Op = MmaOperand<T>;
  using Group = CtaGroup<C>;
  using Layout = MmaClusterBackwardLayout<Cell::kGatesR, D, C>;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int U = Layout::kUnits, KT = Layout::kKTiles, P = Layout::kProductsPerWarp;
  constexpr int PR = Layout::kRegisterProducts, PS = Layout::kSharedProducts;
  constexpr int kStride = Layout::kRowStride;

  extern __shared__ __align__(128) unsigned char smem[];
  T* dg_hi = reinterpret_cast<T*>(smem);     // [BT][kStride]
  T* dg_lo = dg_hi + Layout::kGateValues;    // [BT][kStride]
  float* part = reinterpret_cast<float*>(smem + Layout::kGateBytes);  // [2][C][kThreads]

  const int rank = Group::Rank();
  const int64_t N = args.heads, head = blockIdx.x / C, nd = N * D;
  const int64_t b0 = int64_t{blockIdx.y} * kMmaBatchTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint4* r_shared = reinterpret_cast<uint4*>(smem + Layout::kRSharedOffset) +
                    warp * PS * KT * 32;  // this warp's [PS][KT][32]

  // Rᵀ as A fragments for this warp's products, over (gate, unit) of this CTA's own units: the
  // first PR in registers, the other PS in shared memory. Product i is unit tile `tile` of CTA
  // `to`.
  auto product = [&](int i, int& to, int& tile) {
    const int p = warp * P + i;
    to = p / Layout::kUnitTiles;
    tile = p % Layout::kUnitTiles;
  };
  const T* R = static_cast<const T*>(args.r);
  uint32_t a[PR][KT][4];
  LoadProductFragmentsSplit<T, D, U, PR, PS, KT>(
      R, N, head,
      [&](int i) {
        int to, tile;
        product(i, to, tile);
        return U * to + 16 * tile;
      },
      rank * U, lane, a, r_shared);

  // This thread's element, named by the accumulator it collects: register c = j % 4 of lane
  // l = j / 4 % 32 in unit tile mi = j / 128 is unit 16 mi + l / 4 + 8 (c / 2) of this CTA and
  // batch row 2 (l % 4) + c % 2.
  const int j = threadIdx.x, c = j % 4, l = j / 4 % 32, mi = j / 128;
  const int unit = 16 * mi + l / 4 + 8 * (c / 2), batch_row = 2 * (l % 4) + c % 2;
  const Element el{b0 + batch_row, head * D + rank * U + unit, nd};
  const int length = RowLength(args.seq, el.b, args.batch, args.steps);
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
      sum = SumOf<C>([&](int src) { return in[src * Layout::kThreads]; });
    }
    return RecurrentCotangent(args, sum);
  };

  // The row states and inputs of the steps ahead (of the last steps, here), loaded between the
  // halves of the cluster barrier in the loop; two steps ahead only up to 8 CTAs (D = 256): from
  // 16 on the R fragments leave no registers for a second slot (the LSTM at 768 spilled 170
  // bytes with one).
  using Ahead = BackwardStepsAhead<Cell, T, C <= 8 ? kBackwardInputsAhead : 1>;
  Ahead ahead;
  ahead.Start(args, el, length);
  // Every CTA of the cluster must be running (and part_first zeroed) before remote writes.
  Group::Sync();

  bool after_reset = false;
  const int steps = static_cast<int>(args.steps);
  ahead.ForEachStep(steps, [&](int step, BackwardElementStep<Cell, T>& inputs) {
    float dg[Gt];
    BackwardStep<Cell>(args, el, inputs.row, inputs.in, recurrent_cotangent((step + 1) & 1),
                       after_reset, ds, d0, dg);
    after_reset = inputs.row.resets();
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      const int at = batch_row * kStride + g * U + unit;
      Op::Split(dg[g], dg_hi[at], dg_lo[at]);
    }
    __syncthreads();

    // This CTA's part of dh for the unit tiles of this warp's products, into slot `rank` of
    // their CTAs.
    if (recurrent) {
      // The products share the B fragments (MmaHiLo's "gates" are the products here).
      float acc[PR][4] = {}, acc_shared[PS > 0 ? PS : 1][4] = {};
      MmaHiLo<T, PR, KT, kStride>(dg_hi, dg_lo, 0, lane, a, acc);
      if constexpr (PS > 0) {
        MmaHiLoSharedA<T, PS, KT, kStride>(dg_hi, dg_lo, 0, lane, r_shared, acc_shared);
      }
#pragma unroll
      for (int i = 0; i < P; ++i) {
        int to, tile;
        product(i, to, tile);
        const float(&sum)[4] = i < PR ? acc[i] : acc_shared[i - PR];
        float* out = Group::Map(part, to) + (step & 1) * Layout::kPartValues +
                     rank * Layout::kThreads;
        reinterpret_cast<float4*>(out)[tile * 32 + lane] =
            make_float4(sum[0], sum[1], sum[2], sum[3]);
      }
    }
    // Orders this step's partials before their reads in the next step, and this step's reads
    // of dg and of the partials before the next step's writes, in every CTA. The step's gate
    // cotangents and the next step's inputs go between its halves: the arrive is a release
    // that would wait for them (cluster_sync.cuh).
    Group::Arrive();
    StoreGateCotangents<Cell>(args, el, inputs.row, dg);
    Ahead::Refill(args, el, length, step, inputs);
    Group::Wait();
  });

  // What step 0 sent back (buffer 0) reaches the initial h.
  FinishCotangents<Cell>(args, el, recurrent_cotangent(0), ds, d0);
}

// Launches the cluster tensor-core backward over every head and batch tile of 8 rows.
template <typename Cell, typename T, int D>
cudaError_t LaunchBackwardMmaCluster(const BackwardArgs& args, cudaStream_t stream) {
  constexpr int C = kMmaClusterSize<D>;
  using Layout = MmaClusterBackwardLayout<Cell::kGatesR, D, C>;
  using Shape = Tiling<D, C, kMmaBatchTile, Layout::kThreads>;
  return LaunchOverHeadsAndBatchTiles<Shape>(BackwardMmaClusterKernel<Cell, T, D, C>, args,
                                             Layout::kBytes, stream);
}

}  // namespace flashrnn
