// The tensor-core forward kernel for heads that fit one CTA (bfloat16 / float16, head size
// 16..128): R lives in registers as mma.sync m16n8k16 A fragments for the whole sequence, so a
// step's matmul reads only h from shared memory. Built with the CMake option FLASHRNN_MMA_FORWARD
// (on by default; see benchmarks/NOTES.md, v2); other heads and float32 take the FMA kernel.
//
// Warp w of a CTA owns the units [16w, 16w + 16) of one head for every gate, so after the
// mma each lane holds all gates of its elements and runs their pointwise step in registers:
// lane l (group g = l / 4, thread t = l % 4) owns units 16w + g and 16w + g + 8 for batch rows
// 8n + 2t and 8n + 2t + 1 of every n-tile n (the m16n8 accumulator layout of the PTX ISA).
// h_prev is stored in shared memory as a sum of two values of the input dtype (hi + lo), and
// both go through the tensor cores, so that the matmul sees h to ~16 mantissa bits instead of
// the 8 of bfloat16: the result then matches the FMA kernel's float32 h to within the
// accuracy rule of DESIGN §4.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "dtype.cuh"
#include "forward_element.cuh"
#include "input_stage.cuh"
#include "launch.cuh"
#include "mma_operand.cuh"
#include "params.h"
#include "tiling.h"

namespace flashrnn {

// Which calls the tensor-core forward takes: 16-bit inputs, a head in one CTA, and R small
// enough to stay in registers (Gr x D x D / (2 D threads) values per thread).
template <typename T, typename Tile>
constexpr bool kMmaForwardSupported =
    (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) && Tile::kCluster == 1 &&
    Tile::kHeadSize % 16 == 0 && Tile::kHeadSize <= 128;

// Shared memory: h_prev as hi and lo parts, double-buffered, rows padded by 8 values so that
// the eight lane groups of a B-fragment load fall in distinct banks; then the input stages
// (input_stage.cuh).
template <typename Cell, typename T, int D>
struct MmaForwardLayout {
  using Inputs = InputStage<Cell, T, D, kMmaBatchTile, 2 * D>;
  static constexpr int kRowStride = D + 8;
  static constexpr int kBufferValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kHBytes = AlignUp(2 * 2 * std::size_t{kBufferValues} * sizeof(T));
  static constexpr std::size_t kBytes = kHBytes + Inputs::kBytes;
};

// kResiduals: also write the residuals of the backward (a forward that is differentiated).
// Registers: PersistentKernelRegisters (launch.cuh), a persistent CTA alone on its SM.
template <typename Cell, typename T, int D, bool kResiduals>
__global__ void __maxnreg__(PersistentKernelRegisters(2 * D))
    ForwardMmaKernel(const ForwardArgs args) {
  constexpr int BT = kMmaBatchTile;
  using Op = MmaOperand<T>;
  using Layout = MmaForwardLayout<Cell, T, D>;
  using Inputs = typename Layout::Inputs;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int KT = D / 16, E = 4;  // k-tiles, elements per lane
  constexpr int kStride = Layout::kRowStride;

  extern __shared__ __align__(128) unsigned char smem[];
  T* h_hi = reinterpret_cast<T*>(smem);              // [2][BT][kStride]
  T* h_lo = h_hi + 2 * Layout::kBufferValues;         // [2][BT][kStride]
  T* wx_stages = reinterpret_cast<T*>(smem + Layout::kHBytes);

  const int64_t N = args.heads, head = blockIdx.x;
  const int64_t b0 = int64_t{blockIdx.y} * BT;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, tig = lane % 4;
  const int unit0 = 16 * warp + group;  // this lane's first unit; the second is unit0 + 8

  // R[g, head, 16 warp + row, 16 kt + col] as A fragments for every k-tile.
  uint32_t a[Gr][KT][4];
  LoadRowFragments<T, D>(static_cast<const T*>(args.r), N, head, 0, 16 * warp, 0, lane, a);

  // Element e of this lane (accumulator register e): unit unit0 + 8 (e / 2), batch row
  // 2 tig + e % 2 (row slot e % 2). Biases are kept per unit, and lengths and the step's row
  // state per batch row (2 each), not per element.
  auto row_of = [&](int e) { return 2 * tig + e % 2; };
  const int64_t nd = N * D;
  const LaneRows rows = LaneBatchRows(args.seq, b0, lane, args.batch, args.steps);
  auto element = [&](int e) {
    return Element{rows.b[e % 2], head * D + unit0 + 8 * (e / 2), nd};
  };
  float bias[2][Gt];
  LoadBias<Cell>(args, element(0), bias[0]);
  LoadBias<Cell>(args, element(2), bias[1]);
  // The inputs of steps 0 and 1 are copied in while the states load.
  Inputs inputs(args, b0, head * D, nd);
  inputs.Issue(args, wx_stages, 0, 0);
  inputs.Issue(args, wx_stages, 1, 1);
  float s[E][S];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    LoadStates<Cell>(args, element(e), s[e]);
    const int at = row_of(e) * kStride + unit0 + 8 * (e / 2);
    Op::Split(s[e][0], h_hi[at], h_lo[at]);
  }
  Inputs::WaitAllButNewest();
  __syncthreads();

  // The row state and reset flags of a step are computed and loaded at the end of the step
  // before (of step 0, here); the flags are tested only at the end of their step.
  RowStep row[2];
  uint32_t reset_flag[2];
  auto load_step = [&](int step) {
#pragma unroll
    for (int slot = 0; slot < 2; ++slot) {
      row[slot] = RowAt(args, rows.b[slot], nd, rows.length[slot], step);
      reset_flag[slot] = ResetFlagNext(args, rows.b[slot], rows.length[slot], step);
    }
  };
  load_step(0);

  int stage = 0;  // the input stage of this step; step + 2 goes to the one read last step
  const int steps = static_cast<int>(args.steps);
  for (int step = 0; step < steps; ++step) {
    const int cur = step & 1, next = cur ^ 1;
    inputs.Issue(args, wx_stages, stage == 0 ? 2 : stage - 1, step + 2);
    float acc[Gr][4] = {};
    MmaHiLo<T, Gr, KT, kStride>(h_hi + cur * Layout::kBufferValues,
                                h_lo + cur * Layout::kBufferValues, 0, lane, a, acc);

    T* hi_next = h_hi + next * Layout::kBufferValues;
    T* lo_next = h_lo + next * Layout::kBufferValues;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      float rh[Gr];
#pragma unroll
      for (int g = 0; g < Gr; ++g) rh[g] = acc[g][e];
      T wx[Cell::kGatesWx];
      StagedInputs<Cell, T, Inputs>(wx_stages, stage, row_of(e), unit0 + 8 * (e / 2), wx);
      float pre[Gt];
      Preactivations<Cell, T>(bias[e / 2], wx, pre);
      FinishStep<Cell, T, kResiduals>(args, element(e), row[e % 2], pre, rh, s[e]);
      ReloadAtReset<Cell>(args, element(e), reset_flag[e % 2] != 0, s[e]);
      const int at = row_of(e) * kStride + unit0 + 8 * (e / 2);
      Op::Split(s[e][0], hi_next[at], lo_next[at]);
    }
    if (step + 1 < steps) load_step(step + 1);
    stage = stage == 2 ? 0 : stage + 1;
    // The inputs of the next step have landed (this thread's); the barrier publishes them.
    Inputs::WaitAllButNewest();
    __syncthreads();
  }

#pragma unroll
  for (int e = 0; e < E; ++e) StoreLast<Cell, T>(args, element(e), s[e]);
}

// Launches the tensor-core forward over every head and batch tile of its own size.
template <typename Cell, typename T, int D>
cudaError_t LaunchForwardMma(const ForwardArgs& args, cudaStream_t stream) {
  using Shape = Tiling<D, 1, kMmaBatchTile, 2 * D>;
  return LaunchOverHeadsAndBatchTiles<Shape>(args.gate_cache != nullptr
                                                 ? ForwardMmaKernel<Cell, T, D, true>
                                                 : ForwardMmaKernel<Cell, T, D, false>,
                                             args, MmaForwardLayout<Cell, T, D>::kBytes,
                                             stream);
}

}  // namespace flashrnn

