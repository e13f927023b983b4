// The tensor-core backward kernel for bfloat16 heads that fit one CTA (head size 32..128): Rᵀ
// lives in registers as mma.sync m16n8k16 A fragments for the whole sequence, and a step's
// recurrent product reads only the previous step's gate cotangents from shared memory.
// Built with the CMake option FLASHRNN_MMA_BACKWARD (ON by default; sm_80 or newer);
// benchmarks/NOTES.md (v2 backward) has its design and measurements.
//
// The recurrent cotangent of unit u, dh[u, b] = sum over gates g and units o of
// R[g, o, u] dg[g, o, b], is one matmul with M = the head's units, K = (gate, unit) pairs and
// N = the batch tile of 8 rows. Warp w owns the units [16w, 16w + 16), so after the mma lane l
// (group = l / 4, tig = l % 4) holds dh of units 16w + group (+8) for batch rows 2 tig (+1),
// the m16n8 accumulator layout, and runs the pointwise derivative of exactly those four
// elements. The gate cotangents go to shared memory as hi + lo bfloat16 pairs (bfloat16 has
// float32's range, so small cotangents do not flush, as they would in float16; float16 heads
// keep the FMA kernel), and both parts go through the tensor cores.
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
#include "tiling.h"

namespace flashrnn {

// Which calls the tensor-core backward takes: bfloat16 and a head of 32..128 in one CTA. A
// lane holds its Rᵀ fragments (Gr D / 4 registers) and its four elements' cotangents and
// prefetched inputs; at D=128 (ptxas -v, sm_90a) the LSTM uses 255 registers and the GRU 234
// without spilling, while the sLSTM spills 240 bytes (to L1) and still takes this kernel: it
// runs 6 x 128 (B=16, T=1024, H200) in 12.4 ms forward+backward, the FMA backward in 38.1
// (NOTES, loads a step ahead). At D = 16 the FMA kernel is faster (48 x 16 LSTM: 4.65 ms
// forward+backward against 5.38 with this one; NOTES, v2 backward): a step's product is then
// too small to repay the hi/lo split and the shared-memory round trip.
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaBackwardSupported =
    std::is_same_v<T, __nv_bfloat16> && Tile::kCluster == 1 && Tile::kHeadSize % 16 == 0 &&
    Tile::kHeadSize >= 32 && Tile::kHeadSize <= 128;

// Shared memory: the gate cotangents [batch row][gate * D + unit] as hi and lo parts,
// double-buffered, rows padded by 8 values so that the eight lane groups of a B-fragment load
// fall in distinct banks.
template <int kGatesR, int D>
struct MmaBackwardLayout {
  static constexpr int kRowStride = kGatesR * D + 8;
  static constexpr int kBufferValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kBytes =
      2 * 2 * std::size_t{kBufferValues} * sizeof(__nv_bfloat16);
};

// Registers: PersistentKernelRegisters (launch.cuh), as the other persistent kernels.
template <typename Cell, typename T, int D>
__global__ void __maxnreg__(PersistentKernelRegisters(2 * D))
    BackwardMmaKernel(const BackwardArgs args) {
  constexpr int BT = kMmaBatchTile;
  using Op = MmaOperand<T>;
  using Layout = MmaBackwardLayout<Cell::kGatesR, D>;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int KT = Gr * D / 16;  // k-tiles over (gate, unit)
  constexpr int E = 4, kStride = Layout::kRowStride;

  extern __shared__ __align__(128) unsigned char smem[];
  T* dg_hi = reinterpret_cast<T*>(smem);       // [2][BT][kStride]
  T* dg_lo = dg_hi + 2 * Layout::kBufferValues;  // [2][BT][kStride]

  const int64_t N = args.heads, head = blockIdx.x, nd = N * D;
  const int64_t b0 = int64_t{blockIdx.y} * BT;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, tig = lane % 4;
  const int unit0 = 16 * warp + group;  // this lane's first unit; the second is unit0 + 8

  // Rᵀ as A fragments for this warp's 16 units, over (gate, unit) of the whole head: one
  // "gate" of Gr D columns for MmaHiLo.
  uint32_t a[1][KT][4];
  LoadTransposedFragments<T, D, D>(static_cast<const T*>(args.r), N, head, 16 * warp, 0, 0,
                                   lane, a);

  // Element e of this lane: unit unit0 + 8 (e / 2), batch row 2 tig + e % 2 (row slot e % 2).
  const LaneRows rows = LaneBatchRows(args.seq, b0, lane, args.batch, args.steps);
  auto element = [&](int e) {
    return Element{rows.b[e % 2], head * D + unit0 + 8 * (e / 2), nd};
  };
  float ds[E][S];
  InitialCotangents<S, false> d0[E];
#pragma unroll
  for (int e = 0; e < E; ++e) StartCotangents<Cell, T>(args, element(e), ds[e], d0[e]);
  // The step T-1 reads the gate cotangents of a step T that does not exist: zeros.
  for (int idx = threadIdx.x; idx < 4 * Layout::kBufferValues; idx += blockDim.x) {
    dg_hi[idx] = T(0.0f);
  }
  __syncthreads();

  // dh of this lane's elements from the gate cotangents in `buffer` (none when cut).
  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  auto recurrent_product = [&](int buffer, float (&acc)[1][4]) {
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[0][r] = 0.0f;
    if (!recurrent) return;
    MmaHiLo<T, 1, KT, kStride>(dg_hi + buffer * Layout::kBufferValues,
                               dg_lo + buffer * Layout::kBufferValues, 0, lane, a, acc);
  };

  // The row state and inputs of a step are loaded at the end of the step after it (in reading
  // order; of the last step, here), so that their latency hides behind the barrier and the
  // next product.
  BackwardRowStep row[2];
  BackwardInputs<Cell, T> in[E];
  auto load_step = [&](int step) {
#pragma unroll
    for (int slot = 0; slot < 2; ++slot) {
      row[slot] = BackwardRowAt(args, rows.b[slot], nd, rows.length[slot], step);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) LoadBackwardInputs<Cell, T>(args, element(e), row[e % 2], in[e]);
  };
  const int steps = static_cast<int>(args.steps);
  if (steps > 0) load_step(steps - 1);

  bool after_reset[2] = {false, false};
  for (int step = steps - 1; step >= 0; --step) {
    float acc[1][4];
    recurrent_product((step + 1) & 1, acc);
    const int next = step & 1;
    T* hi_next = dg_hi + next * Layout::kBufferValues;
    T* lo_next = dg_lo + next * Layout::kBufferValues;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      float dg[Gt];
      BackwardStep<Cell>(args, element(e), row[e % 2], in[e],
                         RecurrentCotangent(args, acc[0][e]), after_reset[e % 2], ds[e], d0[e],
                         dg);
      StoreGateCotangents<Cell>(args, element(e), row[e % 2], dg);
#pragma unroll
      for (int g = 0; g < Gr; ++g) {
        const int at = (2 * tig + e % 2) * kStride + g * D + unit0 + 8 * (e / 2);
        Op::Split(dg[g], hi_next[at], lo_next[at]);
      }
    }
#pragma unroll
    for (int slot = 0; slot < 2; ++slot) after_reset[slot] = row[slot].resets();
    if (step > 0) load_step(step - 1);
    __syncthreads();
  }

  // What step 0 sent back (buffer 0) reaches the initial h.
  float acc[1][4];
  recurrent_product(0, acc);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    FinishCotangents<Cell>(args, element(e), RecurrentCotangent(args, acc[0][e]), ds[e], d0[e]);
  }
}

// Launches the tensor-core backward over every head and batch tile.
template <typename Cell, typename T, int D>
cudaError_t LaunchBackwardMma(const BackwardArgs& args, cudaStream_t stream) {
  using Shape = Tiling<D, 1, kMmaBatchTile, 2 * D>;
  return LaunchOverHeadsAndBatchTiles<Shape>(BackwardMmaKernel<Cell, T, D>, args,
                                             MmaBackwardLayout<Cell::kGatesR, D>::kBytes, stream);
}

}  // namespace flashrnn
