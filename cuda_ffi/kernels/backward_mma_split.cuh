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

// dR inside the kernel (CMake FLASHRNN_MMA_SPLIT_BACKWARD_DR, on by default since measured:
// forward+backward 0.2-0.7 ms faster at 16 to 64, benchmarks/NOTES.md): dR[g, o, i] += sum over
// the tile's batch rows of dg[g, o] h_prev[i], one mma.m16n8k8 per 16 (gate, unit) rows and 8
// inputs with the batch rows as K:
// the gate cotangents' hi part where the recurrent product reads them (bfloat16, dg rounded)
// and a bfloat16 copy of h_prev, both [batch row][column] in shared memory and transposed into
// fragments by ldmatrix. Warp w accumulates the (gate, unit) tiles w, w + W, ... over all D
// inputs in registers and writes them once, as its batch tile's part of dR
// (BackwardArgs::d_r_partial; XLA sums the tiles). The products of a step are issued in the next
// step's cell derivative, off its dependent chain. Within DESIGN §4's rule (the operands rounded
// to bfloat16, float32 sums): benchmarks/precision_study.py --rounded-dr. db the same way, in
// float32 registers (each thread its row's, d_b_partial), so that the gate cotangents leave
// only as dWx needs them, in bfloat16 (d_gates_rounded): no float32 pass over them in XLA.
inline constexpr bool kMmaSplitBackwardDr = BackwardComputesDr(KernelPath::kMmaSplit);

// Shared memory: the gate cotangents [batch row][gate * D + unit] as hi and lo parts, rows
// padded by 8 values (distinct banks for the B-fragment loads); then the partial sums
// [quarter][unit tile][accumulator register][lane] in float32; then, with dR, h_prev. All
// single-buffered: a step writes its gate cotangents (and h_prev) after the barrier that follows
// every warp's product of the previous ones (and dR's loads of them), and its partials after the
// barrier that follows every read of the previous step's.
template <int kGatesR, int D>
struct MmaSplitBackwardLayout {
  static constexpr int kQuarters = 4, kUnitTiles = D / 16;
  static constexpr int kThreads = 32 * kUnitTiles * kQuarters;
  static constexpr int kRowStride = kGatesR * D + 8;
  static constexpr int kGateValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kGateBytes =
      AlignUp(2 * std::size_t{kGateValues} * sizeof(__nv_bfloat16));
  static constexpr int kPartValues = kQuarters * kUnitTiles * 4 * 32;
  static constexpr std::size_t kPartBytes = AlignUp(std::size_t{kPartValues} * sizeof(float));
  // dR: its (gate, unit) rows in m-tiles of 16 over the kWarps warps, its inputs in n-tiles of
  // 8; the step's h_prev [batch row][unit] in bfloat16, rows padded by 8 values (distinct banks
  // for ldmatrix).
  static constexpr int kWarps = kThreads / 32, kDrMTiles = kGatesR * D / 16;
  static constexpr int kDrMTilesPerWarp = (kDrMTiles + kWarps - 1) / kWarps, kDrNTiles = D / 8;
  static constexpr int kDrHStride = D + 8, kDrHValues = kMmaBatchTile * kDrHStride;
  static constexpr std::size_t kBytes =
      kGateBytes + kPartBytes +
      (kMmaSplitBackwardDr ? std::size_t{kDrHValues} * sizeof(__nv_bfloat16) : 0);
  static_assert(D * kMmaBatchTile == kThreads, "one element per thread");
  static_assert((kGatesR * D / 16) % kQuarters == 0, "whole k-tiles per quarter");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
  static_assert(kMmaBatchTile == 8 && kDrPartialBatchTile == kMmaBatchTile,
                "dR's K is the batch tile (mma.m16n8k8), a part of d_r_partial's rows");
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
  // With dR: [BT][kDrHStride].
  T* h_prev_copy = reinterpret_cast<T*>(smem + Layout::kGateBytes + Layout::kPartBytes);

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
  // The step T-1 reads the gate cotangents of a step T that does not exist: zeros (and the dR
  // products of the first iteration multiply zero copies).
  for (int idx = threadIdx.x; idx < 2 * Layout::kGateValues; idx += blockDim.x) {
    dg_hi[idx] = T(0.0f);
  }
  if constexpr (kMmaSplitBackwardDr) {
    for (int idx = threadIdx.x; idx < Layout::kDrHValues; idx += blockDim.x) {
      h_prev_copy[idx] = T(0.0f);
    }
  }
  __syncthreads();

  // dR: this warp's accumulators. A step's products read its gate cotangents where the
  // recurrent product reads them (dg_hi: bfloat16, the hi part), transposed by ldmatrix, and its
  // h_prev from the copy, each loaded before the partial sums' barrier (their latency passes in
  // its wait) and multiplied after it, off the dependent chain of the cell derivative.
  constexpr bool dr = kMmaSplitBackwardDr;
  constexpr int DM = dr ? Layout::kDrMTilesPerWarp : 1;
  constexpr int DN = dr ? Layout::kDrNTiles : 2;
  // Whether this warp's j-th m-tile exists (the GRU's and Elman's rows leave warps without).
  auto has_m_tile = [&](int j) {
    return Layout::kDrMTiles % Layout::kWarps == 0 ||
           warp + j * Layout::kWarps < Layout::kDrMTiles;
  };
  static_assert(DN % 4 == 0 || DN == 2, "h_prev's n-tiles by four (or two) matrices a load");
  constexpr int kNPerLoad = DN % 4 == 0 ? 4 : 2;
  float dr_acc[DM][DN][4] = {};
  float db[dr ? Gt : 1] = {};
  // The rows whose addresses this lane gives ldmatrix: A, batch row lane % 8 at the (gate,
  // unit) columns 16 m_tile + 8 (lane / 8 % 2); B, batch row lane % 8 at the inputs
  // 8 (lane / 8) of each load's n-tiles.
  const T* dg_rows = dg_hi + lane % 8 * kStride + 16 * warp + 8 * (lane / 8 % 2);
  const T* h_rows = h_prev_copy + lane % 8 * Layout::kDrHStride + 8 * (lane / 8 % kNPerLoad);
  T* my_h_prev_copy = h_prev_copy + batch_row * Layout::kDrHStride + unit;
  struct DrFragments {
    uint32_t a[DM][2], b[DN / kNPerLoad][kNPerLoad];
  };
  auto load_dr = [&]() {
    DrFragments f{};
    if constexpr (dr) {
#pragma unroll
      for (int j = 0; j < DM; ++j) {
        if (!has_m_tile(j)) break;
        LoadMatricesTransposed(dg_rows + 16 * j * Layout::kWarps, f.a[j]);
      }
      if (!has_m_tile(0)) return f;  // no h_prev either
#pragma unroll
      for (int q = 0; q < DN / kNPerLoad; ++q) {
        LoadMatricesTransposed(h_rows + 8 * kNPerLoad * q, f.b[q]);
      }
    }
    return f;
  };
  auto accumulate_dr = [&](const DrFragments& f) {
    if constexpr (dr) {
#pragma unroll
      for (int j = 0; j < DM; ++j) {
        if (!has_m_tile(j)) break;
#pragma unroll
        for (int n = 0; n < DN; ++n) {
          Op::MmaK8(dr_acc[j][n], f.a[j], f.b[n / kNPerLoad][n % kNPerLoad]);
        }
      }
    }
  };

  // The cotangent reaching this element's h_prev through R @ h_prev, from the gate cotangents
  // in shared memory: each warp's quarter of the product, then the sum of this element's four
  // partials. Two block barriers: the partials are complete before they are summed, and every
  // warp has read the gate cotangents before they are overwritten.
  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  auto recurrent_cotangent = [&](auto&& before_barrier) {
    if (recurrent) {
      float acc[1][4] = {};
      MmaHiLo<T, 1, KTP, kStride>(dg_hi, dg_lo, kp * KTP, lane, a, acc);
#pragma unroll
      for (int c = 0; c < 4; ++c) part[((kp * MT + mt) * 4 + c) * 32 + lane] = acc[0][c];
    }
    before_barrier();
    // With the recurrent cotangent cut there are no partial sums, but dR's loads (above) still
    // need the barrier before the step's writes of what they read.
    if (recurrent || dr) __syncthreads();
    float sum = 0.0f;
    if (recurrent) {
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
    // The step after's dR products (its gate cotangents and h_prev were ordered by the barrier
    // that ended it; this step's overwrite them after the partial sums' barrier).
    DrFragments dr_fragments;
    const float dh_rec = recurrent_cotangent([&] { dr_fragments = load_dr(); });
    accumulate_dr(dr_fragments);
    float dg[Gt];
    const float h_prev =
        BackwardStep<Cell>(args, el, inputs.row, inputs.in, dh_rec, after_reset, ds, d0, dg);
    after_reset = inputs.row.resets();
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      const int at = batch_row * kStride + g * D + unit;
      Op::Split(dg[g], dg_hi[at], dg_lo[at]);
    }
    if constexpr (dr) {
      *my_h_prev_copy = T(h_prev);
#pragma unroll
      for (int g = 0; g < Gt; ++g) db[g] += dg[g];
    }
    if (dr && args.d_gates_rounded != nullptr) {
      StoreGateCotangents<Cell>(args, el, inputs.row, dg, static_cast<T*>(args.d_gates_rounded));
    } else {
      StoreGateCotangents<Cell>(args, el, inputs.row, dg);
    }
    Ahead::Refill(args, el, length, step, inputs);
    // Orders this step's gate cotangents before the next step's product, and this step's
    // reads of the partials before the next step's writes.
    __syncthreads();
  });

  // What step 0 sent back reaches the initial h; step 0's dR products; this thread's row's part
  // of db and this batch tile's part of dR out: C register r of a tile holds row group (+8 for
  // r >= 2), input 2 tig + r % 2.
  DrFragments dr_fragments;
  const float dh_rec = recurrent_cotangent([&] { dr_fragments = load_dr(); });
  FinishCotangents<Cell>(args, el, dh_rec, ds, d0);
  accumulate_dr(dr_fragments);
  if constexpr (dr) {
    if (args.d_b_partial != nullptr && el.b < args.batch) {
#pragma unroll
      for (int g = 0; g < Gt; ++g) args.d_b_partial[(el.b * Gt + g) * nd + el.hd] = db[g];
    }
    if (args.d_r_partial != nullptr) {
      const int group = lane / 4, tig = lane % 4;
#pragma unroll
      for (int j = 0; j < DM; ++j) {
        if (!has_m_tile(j)) break;
        const int m_tile = warp + j * Layout::kWarps;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = 16 * m_tile + group + 8 * half, g = row / D, o = row % D;
          float* out = args.d_r_partial +
                       (((int64_t{blockIdx.y} * Gr + g) * N + head) * D + o) * D + 2 * tig;
#pragma unroll
          for (int n = 0; n < DN; ++n) {
            *reinterpret_cast<float2*>(out + 8 * n) =
                make_float2(dr_acc[j][n][2 * half], dr_acc[j][n][2 * half + 1]);
          }
        }
      }
    }
  }
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
