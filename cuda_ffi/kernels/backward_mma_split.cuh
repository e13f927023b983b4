// The split tensor-core backward for bfloat16 heads of 32 and 64 (CMake
// FLASHRNN_MMA_SPLIT_BACKWARD, on by default since its first GPU run; benchmarks/NOTES.md,
// split backward).
//
// The single-CTA tensor-core backward (backward_mma.cuh) gives warp w the units
// [16w, 16w + 16) over all of K, so a lane runs the pointwise derivative of four elements and
// a step is the dependent chain of one warp per unit tile (four warps at D = 64). Here K =
// (gate, unit o) is split in quarters as well, as the split forward splits it: warp (m, p) of
// 16 multiplies the Rᵀ rows of unit tile m over the k-tiles of quarter p, the four quarters'
// partial sums meet in shared memory, and each of the 512 threads sums those of one element
// (accumulator register p of its lane position in unit tile m) and runs its derivative: one
// element per thread and four warps per scheduler, at the price of the partials' round trip
// and a second block barrier per step. The gate cotangents go through the tensor cores as
// bfloat16 hi + lo parts (backward_mma.cuh says why not float16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "backward_element.cuh"
#include "launch.cuh"
#include "mma_operand.cuh"
#include "params.h"
#include "partial_sums.cuh"
#include "tiling.h"

namespace flashrnn {

// Which calls it takes: bfloat16 heads of 32 and 64 in one CTA whose k-tiles over (gate, unit)
// split in quarters (at 32 the LSTM and sLSTM, with 4 gates, not the GRU or Elman); with
// FLASHRNN_MMA_SPLIT_BACKWARD_16 (on by default, measured faster) the LSTM's and sLSTM's heads
// of 16 too, one k-tile a quarter, instead of the FMA backward (benchmarks/NOTES.md: the step
// model puts their step at ~0.65-0.72x of the FMA kernel's, with twice its CTAs).
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaSplitBackwardSupported =
    std::is_same_v<T, __nv_bfloat16> && Tile::kCluster == 1 &&
    ((FLASHRNN_MMA_SPLIT_BACKWARD_16 && Tile::kHeadSize == 16) || Tile::kHeadSize == 32 ||
     Tile::kHeadSize == 64) &&
    Cell::kGatesR * Tile::kHeadSize / 16 % 4 == 0;

// Shared memory: the gate cotangents [batch row][gate * D + unit] as hi and lo parts, rows
// padded by 8 values (distinct banks for the B-fragment loads); then the partial sums
// [quarter][unit tile][accumulator register][lane] in float32. Both single-buffered: a step
// writes its gate cotangents after the barrier that follows every warp's product of the
// previous ones, and its partials after the barrier that follows every read of the previous
// step's.
template <int kGatesR, int D>
struct MmaSplitBackwardLayout {
  static constexpr int kQuarters = 4, kUnitTiles = D / 16;
  static constexpr int kThreads = 32 * kUnitTiles * kQuarters;
  static constexpr int kRowStride = kGatesR * D + 8;
  static constexpr int kGateValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kGateBytes =
      AlignUp(2 * std::size_t{kGateValues} * sizeof(__nv_bfloat16));
  static constexpr int kPartValues = kQuarters * kUnitTiles * 4 * 32;
  static constexpr std::size_t kBytes = kGateBytes + std::size_t{kPartValues} * sizeof(float);
  static_assert(D * kMmaBatchTile == kThreads, "one element per thread");
  static_assert((kGatesR * D / 16) % kQuarters == 0, "whole k-tiles per quarter");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
};

// Registers: PersistentKernelRegisters (launch.cuh), as the other persistent kernels.
template <typename Cell, typename T, int D>
__global__ void __maxnreg__(
    PersistentKernelRegisters(MmaSplitBackwardLayout<Cell::kGatesR, D>::kThreads))
    BackwardMmaSplitKernel(const BackwardArgs args) {
  using Op = MmaOperand<T>;
  using Layout = MmaSplitBackwardLayout<Cell::kGatesR, D>;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int KP = Layout::kQuarters, MT = Layout::kUnitTiles;
  constexpr int KTP = Gr * D / 16 / KP;  // k-tiles over (gate, unit) per quarter
  constexpr int kStride = Layout::kRowStride;

  extern __shared__ __align__(128) unsigned char smem[];
  T* dg_hi = reinterpret_cast<T*>(smem);     // [BT][kStride]
  T* dg_lo = dg_hi + Layout::kGateValues;    // [BT][kStride]
  float* part = reinterpret_cast<float*>(smem + Layout::kGateBytes);  // [KP][MT][4][32]

  const int64_t N = args.heads, head = blockIdx.x, nd = N * D;
  const int64_t b0 = int64_t{blockIdx.y} * kMmaBatchTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mt = warp / KP, kp = warp % KP;

  // Rᵀ as A fragments: rows u of unit tile mt, the k-tiles of quarter kp over (gate, unit o).
  uint32_t a[1][KTP][4];
  LoadTransposedFragments<T, D, D>(static_cast<const T*>(args.r), N, head, 16 * mt, 0, kp * KTP,
                                   lane, a);

  // This thread's element: accumulator register kp of its lane position in unit tile mt, i.e.
  // unit 16 mt + lane / 4 + 8 (kp / 2), batch row 2 (lane % 4) + kp % 2.
  const int unit = 16 * mt + lane / 4 + 8 * (kp / 2), batch_row = 2 * (lane % 4) + kp % 2;
  const Element el{b0 + batch_row, head * D + unit, nd};
  const int length = RowLength(args.seq, el.b, args.batch, args.steps);
  float ds[S];
  InitialCotangents<S, true> d0;
  StartCotangents<Cell, T>(args, el, ds, d0);
  // The step T-1 reads the gate cotangents of a step T that does not exist: zeros.
  for (int idx = threadIdx.x; idx < 2 * Layout::kGateValues; idx += blockDim.x) {
    dg_hi[idx] = T(0.0f);
  }
  __syncthreads();

  // The cotangent reaching this element's h_prev through R @ h_prev, from the gate cotangents
  // in shared memory: each warp's quarter of the product, then the sum of this element's four
  // partials. Two block barriers: the partials are complete before they are summed, and every
  // warp has read the gate cotangents before they are overwritten.
  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  auto recurrent_cotangent = [&]() {
    float sum = 0.0f;
    if (recurrent) {
      float acc[1][4] = {};
      MmaHiLo<T, 1, KTP, kStride>(dg_hi, dg_lo, kp * KTP, lane, a, acc);
#pragma unroll
      for (int c = 0; c < 4; ++c) part[((kp * MT + mt) * 4 + c) * 32 + lane] = acc[0][c];
      __syncthreads();
      sum = SumOf<KP>([&](int q) { return part[((q * MT + mt) * 4 + kp) * 32 + lane]; });
    }
    return RecurrentCotangent(args, sum);
  };

  // The row states and inputs of the steps ahead (of the last steps, here).
  using Ahead = BackwardStepsAhead<Cell, T>;
  Ahead ahead;
  ahead.Start(args, el, length);

  bool after_reset = false;
  const int steps = static_cast<int>(args.steps);
  ahead.ForEachStep(steps, [&](int step, BackwardElementStep<Cell, T>& inputs) {
    const float dh_rec = recurrent_cotangent();
    float dg[Gt];
    BackwardStep<Cell>(args, el, inputs.row, inputs.in, dh_rec, after_reset, ds, d0, dg);
    after_reset = inputs.row.resets();
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      const int at = batch_row * kStride + g * D + unit;
      Op::Split(dg[g], dg_hi[at], dg_lo[at]);
    }
    StoreGateCotangents<Cell>(args, el, inputs.row, dg);
    Ahead::Refill(args, el, length, step, inputs);
    // Orders this step's gate cotangents before the next step's product, and this step's
    // reads of the partials before the next step's writes.
    __syncthreads();
  });

  // What step 0 sent back reaches the initial h.
  FinishCotangents<Cell>(args, el, recurrent_cotangent(), ds, d0);
}

// Launches the split backward over every head and batch tile of 8 rows.
template <typename Cell, typename T, int D>
cudaError_t LaunchBackwardMmaSplit(const BackwardArgs& args, cudaStream_t stream) {
  using Layout = MmaSplitBackwardLayout<Cell::kGatesR, D>;
  using Shape = Tiling<D, 1, kMmaBatchTile, Layout::kThreads>;
  return LaunchOverHeadsAndBatchTiles<Shape>(BackwardMmaSplitKernel<Cell, T, D>, args,
                                             Layout::kBytes, stream);
}

}  // namespace flashrnn
