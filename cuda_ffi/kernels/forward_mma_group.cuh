// The tensor-core forward for 16-bit heads whose R no cluster holds: bfloat16 heads of 1024 to
// 2048, and the float16 LSTM, sLSTM and GRU at 2048, whose R slices the FMA group kernels cannot
// keep in shared memory alone; the hardware model gives these tilings
// (hardware.takes_tensor_core_group). Built with the CMake option FLASHRNN_MMA_CLUSTER_FORWARD;
// benchmarks/NOTES.md has its design and floor.
//
// A head's units are split over a group of C = D / 16 CTAs (64 to 128), one unit tile each,
// that exchange h through global memory and meet at a counter barrier, as the FMA group kernels
// do (fma_exchange.cuh, grid_sync.cuh). In a CTA the 16 warps split K in 16 parts: warp w
// multiplies inputs [w D / 16, (w + 1) D / 16) for every gate, so that a CTA's slice of R
// (16 units x Gr gates x D: 256 KB for the LSTM at 2048) is spread over the register files of
// its 512 threads and, where it does not fit (half of it for the LSTM), over shared memory read
// each step, as in the cluster kernels. h travels as hi + lo values of the input dtype
// (forward_mma.cuh says why). Per step each warp copies its own part of h (hi and lo, 8 batch
// rows) from L2 into shared memory by cp.async.cg, multiplies, and leaves its partial sums in
// that same part of shared memory, which no other warp reads; after a block barrier the 128
// threads of warps 0 to 3 each sum one element's 16 partials and run its cell step, as the
// cluster kernels' threads do, and write h into the exchange.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "async_copy.cuh"
#include "forward_element.cuh"
#include "grid_sync.cuh"
#include "grid_workspace.h"
#include "input_stage.cuh"
#include "launch.cuh"
#include "mma_cluster_shape.h"
#include "mma_operand.cuh"
#include "params.h"
#include "partial_sums.cuh"
#include "tiling.h"

namespace flashrnn {

// Which calls the tensor-core group forward takes: 16-bit inputs and the hardware model's
// tilings for it, groups of one unit tile and one mma batch tile per CTA and 512 threads (more
// threads than elements: tiling.h).
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaGroupForwardSupported =
    (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) &&
    IsGridGroup(Tile::kCluster) && Tile::kUnits == kMmaGroupUnits &&
    Tile::kBatchTile == kMmaBatchTile && Tile::kThreads == 32 * kMmaGroupWarps &&
    Tile::kThreadsBeyondElements;

// Shared memory: for each warp w (K part w), its part of h, hi then lo, [BT][kSliceStride] each
// (rows padded by 8 values: the 8 rows of a B-fragment load start 4 banks apart), which after
// the warp's matmul holds its partial sums [gate][accumulator register][lane] in float32; then
// the input stages of the CTA's 16 units (input_stage.cuh); then the R fragments that do not
// fit the registers, [warp][gate][k-tile][lane] uint4.
template <typename Cell, typename T, int D>
struct MmaGroupForwardLayout {
  static constexpr int kGroup = D / kMmaGroupUnits;  // CTAs per head
  static constexpr int kWarps = kMmaGroupWarps, kThreads = 32 * kWarps;
  static constexpr int kBatchTile = kMmaBatchTile;
  static constexpr int kSlice = D / kWarps;  // inputs per K part
  static constexpr int kKTilesPerWarp = kSlice / 16;
  static constexpr int kSliceStride = kSlice + 8;
  static constexpr int kPartValues = kBatchTile * kSliceStride;  // hi or lo of a warp's part
  static constexpr std::size_t kWarpBytes = 2 * std::size_t{kPartValues} * sizeof(T);
  static constexpr std::size_t kHBytes = AlignUp(kWarps * kWarpBytes);
  using Inputs = InputStage<Cell, T, kMmaGroupUnits, kBatchTile, kThreads>;
  static constexpr std::size_t kRSharedOffset = kHBytes + Inputs::kBytes;
  // Shared memory with `register_k_tiles` of a warp's k-tiles in registers.
  static constexpr std::size_t BytesWith(int register_k_tiles) {
    return kRSharedOffset + std::size_t{kThreads} * Cell::kGatesR *
                                (kKTilesPerWarp - register_k_tiles) * sizeof(uint4);
  }
  // The k-tiles in registers: as many as leave kMmaGroupForwardStepRegisters for the step
  // where shared memory holds the rest, else as many as leave kMmaStepRegisters (the LSTM and
  // sLSTM at 2048).
  static constexpr int kRoomyKTiles = std::min(
      kKTilesPerWarp,
      MmaFragmentRegisters(kThreads, kMmaGroupForwardStepRegisters) / (4 * Cell::kGatesR));
  static constexpr int kRegisterKTiles =
      BytesWith(kRoomyKTiles) <= kMaxSharedBytesPerBlock
          ? kRoomyKTiles
          : std::min(kKTilesPerWarp, MmaFragmentRegisters(kThreads) / (4 * Cell::kGatesR));
  static constexpr int kSharedKTiles = kKTilesPerWarp - kRegisterKTiles;
  static constexpr std::size_t kBytes = BytesWith(kRegisterKTiles);
  static_assert(kKTilesPerWarp * 16 == kSlice && kSlice * kWarps == D, "whole k-tiles per warp");
  static_assert(kGroup <= 128, "a group of at most 128 CTAs (tiling.h)");
  static_assert(std::size_t{Cell::kGatesR} * 4 * 32 * sizeof(float) <= kWarpBytes,
                "a warp's partial sums fit its part of h");
  static_assert(kWarpBytes % 16 == 0 && kSliceStride * sizeof(T) % 16 == 0,
                "16-byte cp.async copies of h");
  static_assert(kRegisterKTiles > 0, "a k-tile of R in registers at least");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
  // The exchange of a group: [2 buffers][hi, lo][BT][D] values of T, as many bytes as the FMA
  // group forward's [2][BT][D] floats (grid_workspace.h sizes it so).
  static_assert(2 * sizeof(T) == sizeof(float), "hi + lo of a 16-bit value in a float's room");
};

// Registers: PersistentKernelRegisters (launch.cuh), as the other persistent kernels. group0:
// the launch's first group (launch.cuh LaunchGridGroups).
template <typename Cell, typename T, int D, bool kResiduals>
__global__ void __maxnreg__(PersistentKernelRegisters(MmaGroupForwardLayout<Cell, T, D>::kThreads))
    ForwardMmaGroupKernel(const ForwardArgs args, const int64_t group0) {
  using Op = MmaOperand<T>;
  using Layout = MmaGroupForwardLayout<Cell, T, D>;
  using Inputs = typename Layout::Inputs;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int C = Layout::kGroup, BT = Layout::kBatchTile, U = kMmaGroupUnits;
  constexpr int KTP = Layout::kKTilesPerWarp, KR = Layout::kRegisterKTiles;
  constexpr int KS = Layout::kSharedKTiles, kSlice = Layout::kSlice;
  constexpr int kStride = Layout::kSliceStride;

  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto warp_part = [&](int w) { return smem + w * Layout::kWarpBytes; };
  T* h_hi = reinterpret_cast<T*>(warp_part(warp));  // this warp's [BT][kStride]
  T* h_lo = h_hi + Layout::kPartValues;
  T* wx_stages = reinterpret_cast<T*>(smem + Layout::kHBytes);
  uint4* r_shared = reinterpret_cast<uint4*>(smem + Layout::kRSharedOffset) +
                    warp * Gr * KS * 32;  // this warp's [Gr][KS][32]

  const GridGroupPlace<C, BT, D> place(args, group0, false);
  const int rank = place.rank;
  const int64_t N = args.heads, head = place.head, b0 = place.b0, nd = N * D;
  const int u0 = rank * U;
  GroupCounterBarrier barrier(place.counter, C);
  T* exchange = reinterpret_cast<T*>(place.exchange);
  auto exchange_at = [&](int buffer, int part, int row) {
    return exchange + ((buffer * 2 + part) * BT + row) * D;
  };

  // R[g, head, u0 + row, 16 (warp KTP + j) + col] as A fragments for every gate g and this
  // warp's k-tiles j: the first KR in registers, the other KS in shared memory.
  const T* R = static_cast<const T*>(args.r);
  uint32_t a[Gr][KR][4];
  LoadRowFragmentsSplit<T, D, Gr, KR, KS>(R, N, head, 0, u0, warp * KTP, lane, a, r_shared);

  // Warps 0 to 3 run the elements: thread j of them collects accumulator register
  // split = warp of lane position `lane`, i.e. unit group + 8 (split / 2) of this CTA and batch
  // row 2 tig + split % 2, as in the cluster kernels.
  const bool runs_element = warp < 4;
  const int split = warp % 4, group_row = lane / 4, tig = lane % 4;
  const int unit = group_row + 8 * (split / 2), batch_row = 2 * tig + split % 2;
  const Element el{b0 + batch_row, head * D + u0 + unit, nd};
  int length = 0;
  float bias[Gt], s[S], initial[S];
  if (runs_element) {
    length = RowLength(args.seq, el.b, args.batch, args.steps);
    LoadBias<Cell>(args, el, bias);
    LoadStates<Cell>(args, el, s);
#pragma unroll
    for (int i = 0; i < S; ++i) initial[i] = s[i];
  }
  // h into buffer `buffer` of the group's exchange, as hi and lo.
  auto publish_h = [&](int buffer, float h) {
    T hi, lo;
    Op::Split(h, hi, lo);
    exchange_at(buffer, 0, batch_row)[u0 + unit] = hi;
    if constexpr (kMmaLoPart) exchange_at(buffer, 1, batch_row)[u0 + unit] = lo;
  };
  // This warp's part of h in `buffer` from L2 into its shared memory: 2 x BT rows of kSlice
  // values (BT, hi alone, without kMmaLoPart), 16 bytes a copy, then the wait for every copy of
  // this thread (the input copies of earlier steps too, which have had a step to land) and the
  // warp's barrier.
  auto stage_h = [&](int buffer) {
    constexpr int kChunksPerRow = kSlice * static_cast<int>(sizeof(T)) / 16;
    constexpr int kChunks = (kMmaLoPart ? 2 : 1) * BT * kChunksPerRow;
    static_assert(kChunks % 32 == 0, "whole copies per lane");
#pragma unroll
    for (int k = 0; k < kChunks / 32; ++k) {
      const int chunk = lane + 32 * k, row = chunk / kChunksPerRow;  // row: part * BT + row
      const int col = chunk % kChunksPerRow * (16 / static_cast<int>(sizeof(T)));
      const T* from = exchange_at(buffer, 0, 0) + row * D + warp * kSlice + col;
      const uint32_t to =
          static_cast<uint32_t>(__cvta_generic_to_shared(h_hi + row * kStride + col));
      CopyAsync16(to, from);
    }
    WaitForCopies();
    __syncwarp();
  };
  static_assert(Layout::kPartValues == BT * kStride, "lo follows hi (stage_h's rows)");

  Inputs inputs(args, b0, head * D + u0, nd);
  inputs.Issue(args, wx_stages, 0, 0);
  inputs.Issue(args, wx_stages, 1, 1);
  if (runs_element) publish_h(0, s[0]);
  Inputs::WaitAllButNewest();
  barrier.Sync();

  // The row state and reset flag of a step, loaded at the end of the step before (of step 0,
  // here) and used only after the barrier and the next matmul.
  RowStep row;
  uint32_t reset_flag = 0;
  auto load_step = [&](int step) {
    row = RowAt(args, el.b, nd, length, step);
    reset_flag = ResetFlagNext(args, el.b, length, step);
  };
  if (runs_element) load_step(0);

  int stage = 0;  // the input stage of this step; step + 2 goes to the one read last step
  const int steps = static_cast<int>(args.steps);
  for (int step = 0; step < steps; ++step) {
    const int cur = step & 1;
    stage_h(cur);
    // Issued after stage_h's wait, which would otherwise wait for these copies from DRAM too.
    inputs.Issue(args, wx_stages, stage == 0 ? 2 : stage - 1, step + 2);
    float acc[Gr][4] = {};
    MmaHiLo<T, Gr, KR, kStride>(h_hi, h_lo, 0, lane, a, acc);
    if constexpr (KS > 0) {
      MmaHiLoSharedA<T, Gr, KS, kStride>(h_hi, h_lo, KR, lane, r_shared, acc);
    }
    // The warp's reads of its part of h are done (the barrier orders them before the writes):
    // its partial sums go there.
    __syncwarp();
    float* part = reinterpret_cast<float*>(h_hi);
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
#pragma unroll
      for (int c = 0; c < 4; ++c) part[(g * 4 + c) * 32 + lane] = acc[g][c];
    }
    __syncthreads();

    bool reset = false;
    float pre[Gt];
    if (runs_element) {
      float rh[Gr];
#pragma unroll
      for (int g = 0; g < Gr; ++g) {
        rh[g] = SumOf<Layout::kWarps>([&](int w) {
          return reinterpret_cast<const float*>(warp_part(w))[(g * 4 + split) * 32 + lane];
        });
      }
      T wx[Cell::kGatesWx];
      StagedInputs<Cell, T, Inputs>(wx_stages, stage, batch_row, unit, wx);
      Preactivations<Cell, T>(bias, wx, pre);
      StepCell<Cell>(row, pre, rh, s);
      reset = reset_flag != 0;
      publish_h(cur ^ 1, reset ? initial[0] : s[0]);
    }
    // The inputs of the next step landed before this step's were issued (stage_h waits for
    // every copy of this thread); the barrier publishes them.
    // Orders this step's h writes before the group's next reads, and every warp's reads of
    // the partial sums and of the input stage before the next step's writes. The step's
    // outputs and the next step's row state go between its halves (grid_sync.cuh).
    barrier.Arrive();
    if (runs_element) {
      StoreStep<Cell, T, kResiduals>(args, el, row, pre, s);
      SelectAtReset<Cell>(reset, initial, s);
      if (step + 1 < steps) load_step(step + 1);
    }
    stage = stage == 2 ? 0 : stage + 1;
    barrier.Wait();
  }

  if (runs_element) StoreLast<Cell, T>(args, el, s);
}

// Launches the tensor-core group forward over every (head, batch tile) group, in chunks of as
// many groups as the SMs hold (launch.cuh).
template <typename Cell, typename T, int D>
cudaError_t LaunchForwardMmaGroup(const ForwardArgs& args, cudaStream_t stream) {
  using Layout = MmaGroupForwardLayout<Cell, T, D>;
  using Shape = Tiling<D, Layout::kGroup, Layout::kBatchTile, Layout::kThreads>;
  return LaunchGridGroups<Shape>(args.gate_cache != nullptr
                                     ? ForwardMmaGroupKernel<Cell, T, D, true>
                                     : ForwardMmaGroupKernel<Cell, T, D, false>,
                                 args, Layout::kBytes, stream);
}

}  // namespace flashrnn
