// The tensor-core forward kernel for heads split over a thread-block cluster (bfloat16 /
// float16, head sizes 256, 512 and 768, and the Elman's 1024). Built with the CMake option
// FLASHRNN_MMA_CLUSTER_FORWARD (ON by default; sm_90 or newer); benchmarks/NOTES.md has its
// design and measurements. With a "cluster" of one CTA it is also the split forward for heads of
// 16, 32 and 64 (FLASHRNN_MMA_SPLIT_FORWARD, below).
//
// A head's units are split over the C CTAs of a cluster (U = D / C each). Within a CTA four
// warps share each unit tile [16m, 16m + 16) of the CTA's units, one per accumulator register
// of a lane position: warp (m, s) multiplies the part s % P of the head's inputs (K split in
// P = 4 parts where the head has 4 k-tiles or more) for the gate group s / P (the gates split
// in 4 / P groups where it has fewer: 2 at D = 32, 4 at D = 16), so that its R fragments
// (Gr x D/64 k-tiles, 64 registers per lane for the LSTM at D = 256) stay on chip for the whole
// sequence: in registers, and where they do not fit (LSTM, sLSTM and GRU at D = 768) partly in
// shared memory, read each step. The partial sums meet in shared memory, where each thread
// picks up the sums of one element (accumulator register s of its lane position) and runs its
// cell step: one element per thread. h goes, as hi + lo values of the input dtype
// (forward_mma.cuh says why; hi alone with FLASHRNN_MMA_ROUNDED_OPERAND), into the h buffer of
// every CTA of the cluster (distributed shared memory, kStagedBroadcast says how),
// double-buffered; per step one block barrier (two with the staged push) and one cluster
// barrier (none with kAsyncPush).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cluster_sync.cuh"
#include "forward_element.cuh"
#include "input_stage.cuh"
#include "launch.cuh"
#include "mma_cluster_shape.h"
#include "mma_operand.cuh"
#include "params.h"
#include "partial_sums.cuh"
#include "tiling.h"

namespace flashrnn {

// Which calls the cluster tensor-core forward takes: 16-bit inputs and the head sizes of
// MmaClusterTakesHead (mma_cluster_shape.h).
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaClusterForwardSupported =
    (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) &&
    MmaClusterTakesHead<Cell>(Tile::kHeadSize);

// The gate groups of the four warps of a unit tile (below): K splits into min(4, D / 16) parts
// (its k-tiles), and the gates into as many groups as that leaves warps. With
// FLASHRNN_MMA_SPLIT_FORWARD_GATES (on by default, measured faster) a head of 64 with four R
// gates (LSTM, sLSTM) splits the gates instead, one a warp over all four k-tiles: no partial
// sums between the warps (a step's shared-memory traffic 72 -> 48 KB, 12 fewer stores a warp),
// at the price of a dependent chain of 8 mma instead of 2 and the B fragments of all of K
// (benchmarks/NOTES.md: the step model puts it at 0.93x, 0.82x with the rounded operand).
constexpr int MmaForwardGateGroups(int head_size, int gates_r) {
  if (head_size / 16 < 4) return 4 / (head_size / 16);
  return FLASHRNN_MMA_SPLIT_FORWARD_GATES && head_size == 64 && gates_r % 4 == 0 ? 4 : 1;
}

// The split forward (CMake FLASHRNN_MMA_SPLIT_FORWARD, on by default since its first GPU run:
// 48 x 16 LSTM forward 2.11 -> 0.75 ms, benchmarks/NOTES.md): a head of 16, 32 or 64 on one
// CTA of this kernel's layout instead of the single-CTA tensor-core forward. There a step is
// the dependent chain of one warp per unit tile through four elements per lane (~610
// instructions at D = 64, benchmarks/NOTES.md);
// here four warps per unit tile run one element per thread (~290 instructions per warp at
// D = 64, 80 registers), at the price of the partial sums' round trip through shared memory
// and a second block barrier per step. Heads of 16 and 32 split the gates, so only cells whose
// gate count the groups divide (LSTM and sLSTM: 4) take it there.
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaSplitForwardSupported =
    (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) && Tile::kCluster == 1 &&
    (Tile::kHeadSize == 16 || Tile::kHeadSize == 32 || Tile::kHeadSize == 64) &&
    Cell::kGatesR % MmaForwardGateGroups(Tile::kHeadSize, Cell::kGatesR) == 0;

// How a CTA learns that the step's h has arrived (CMake FLASHRNN_MMA_CLUSTER_ASYNC_PUSH, on by
// default since measured). Off: a cluster barrier per step, whose arrive is a release
// that waits for the thread's remote stores of h to complete (the 1 x 768 profile's hottest
// instruction, 14% of the stall samples: benchmarks/NOTES.md). On, for clusters of 8 and 16
// CTAs, with the staged push (below): each 16-byte piece is an asynchronous remote store that
// completes its bytes on the destination's arrival barrier for that h buffer
// (cluster_sync.cuh), and a CTA waits only on its own barrier for the (C - 1) slices of the
// step. No cluster barrier in the steps: a CTA's h buffer is written again two steps later only
// by CTAs that have received the h this CTA pushes after its last read of that buffer, and the
// partial sums and input stages are ordered by the step's block barriers.
template <int C>
constexpr bool kAsyncPush = FLASHRNN_MMA_CLUSTER_ASYNC_PUSH && C >= 8;

// How h reaches the CTAs of the cluster. Up to 8 CTAs (the D = 256 kernel, measured so) each
// thread stores its h, hi and lo, into every CTA: 2 C two-byte remote stores a step. From 16 CTAs
// on (D = 512 to 1024: 32 such stores a thread and step, ~24 KB arriving at each SM at 768), and
// with kAsyncPush (whose asynchronous stores carry 4 bytes at least), a CTA writes its slice into
// its own next buffer, meets at a block barrier, and pushes the slice to the other CTAs in
// 16-byte pieces (about 4 loads and 4 remote stores a thread at 16 CTAs), so that the cluster's
// network carries whole rows of the slice rather than the 16-byte segments that a warp's 2-byte
// stores gather into; at the cost of the block barrier (benchmarks/NOTES.md).
template <int C>
constexpr bool kStagedBroadcast = C >= 16 || kAsyncPush<C>;

// Shared memory: h of the whole head as hi and lo parts (lo unused without kMmaLoPart),
// double-buffered, rows padded by 8 values (distinct banks for the B-fragment loads); then the
// partial sums [K part][unit tile][gate][accumulator register][lane] in float32; then the input
// stages of the CTA's units (input_stage.cuh); then the R fragments that do not fit the
// registers; then, with kAsyncPush, the arrival barriers of the two h buffers. Four warps per
// unit tile: K in kKParts parts times the gates in kGateGroups groups; each warp
// keeps its first kRegisterKTiles k-tiles of R in registers and the other kSharedKTiles as
// [warp][gate][k-tile][lane] uint4 (a warp's loads of one fragment are 512 contiguous bytes).
// Only the LSTM, sLSTM and GRU at D = 768 need the shared part (48 units x Gr gates x 768
// inputs: 295 KB for the LSTM, more than the 256 KB register file).
template <typename Cell, typename T, int D, int C>
struct MmaClusterForwardLayout {
  static constexpr int kBatchTile = kMmaBatchTile, kWarpsPerUnitTile = 4;
  static constexpr int kGateGroups = MmaForwardGateGroups(D, Cell::kGatesR);
  static constexpr int kKParts = kWarpsPerUnitTile / kGateGroups;
  static constexpr int kUnitTiles = D / C / 16;
  static constexpr int kThreads = 32 * kUnitTiles * kWarpsPerUnitTile;
  static constexpr int kGatesPerWarp = Cell::kGatesR / kGateGroups;
  static constexpr int kKTilesPerWarp = D / 16 / kKParts;
  static constexpr int kRegisterKTiles =
      std::min(kKTilesPerWarp, MmaFragmentRegisters(kThreads) / (4 * kGatesPerWarp));
  static constexpr int kSharedKTiles = kKTilesPerWarp - kRegisterKTiles;
  using Inputs = InputStage<Cell, T, D / C, kBatchTile, kThreads>;
  static constexpr int kRowStride = D + 8;
  static constexpr int kBufferValues = kBatchTile * kRowStride;
  static constexpr std::size_t kHBytes = AlignUp(2 * 2 * std::size_t{kBufferValues} * sizeof(T));
  static constexpr std::size_t kPartBytes =
      AlignUp(std::size_t{kKParts} * kUnitTiles * Cell::kGatesR * 4 * 32 * sizeof(float));
  static constexpr std::size_t kRSharedBytes =
      std::size_t{kThreads} * kGatesPerWarp * kSharedKTiles * sizeof(uint4);
  static constexpr std::size_t kRSharedOffset = kHBytes + kPartBytes + Inputs::kBytes;
  static constexpr std::size_t kArrivalsOffset = kRSharedOffset + kRSharedBytes;
  static constexpr std::size_t kBytes =
      kArrivalsOffset + (kAsyncPush<C> ? 2 * sizeof(uint64_t) : 0);
  // The parts of h exchanged: hi and lo, or hi alone (kMmaLoPart); the bytes of h a CTA
  // receives a step: the other CTAs' slices of them.
  static constexpr int kParts = kMmaLoPart ? 2 : 1;
  static constexpr uint32_t kArrivingBytes =
      (C - 1) * kParts * kBatchTile * (D / C) * sizeof(T);
  static_assert(kArrivalsOffset % alignof(uint64_t) == 0, "mbarriers on 8 bytes");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
  static_assert(D / C * kBatchTile == kThreads, "one element per thread");
  static_assert((D / 16) % kKParts == 0 && Cell::kGatesR % kGateGroups == 0,
                "whole k-tiles per K part and whole gates per gate group");
  static_assert(kRegisterKTiles > 0, "a k-tile of R in registers at least");
  static_assert(kRowStride * sizeof(T) % 16 == 0 && D / C * sizeof(T) % 16 == 0,
                "rows and CTA slices of h in whole 16-byte chunks (kStagedBroadcast)");
};

// Registers: PersistentKernelRegisters (launch.cuh), as the other persistent kernels.
template <typename Cell, typename T, int D, int C, bool kResiduals>
__global__ void __maxnreg__(
    PersistentKernelRegisters(MmaClusterForwardLayout<Cell, T, D, C>::kThreads))
    ForwardMmaClusterKernel(const ForwardArgs args) {
  using Op = MmaOperand<T>;
  using Group = CtaGroup<C>;
  using Layout = MmaClusterForwardLayout<Cell, T, D, C>;
  using Inputs = typename Layout::Inputs;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int BT = Layout::kBatchTile, KP = Layout::kKParts, MT = Layout::kUnitTiles;
  constexpr int GW = Layout::kGatesPerWarp;
  constexpr int U = D / C, KTP = Layout::kKTilesPerWarp;  // units per CTA, k-tiles per K part
  constexpr int KR = Layout::kRegisterKTiles, KS = Layout::kSharedKTiles;
  constexpr int kStride = Layout::kRowStride;
  static_assert(U % 16 == 0, "whole unit tiles");

  extern __shared__ __align__(128) unsigned char smem[];
  T* h_hi = reinterpret_cast<T*>(smem);          // [2][BT][kStride]
  T* h_lo = h_hi + 2 * Layout::kBufferValues;      // [2][BT][kStride]
  float* part = reinterpret_cast<float*>(smem + Layout::kHBytes);  // [KP][MT][Gr][4][32]
  T* wx_stages = reinterpret_cast<T*>(smem + Layout::kHBytes + Layout::kPartBytes);
  uint4* r_shared = reinterpret_cast<uint4*>(smem + Layout::kRSharedOffset) +
                    (threadIdx.x / 32) * GW * KS * 32;  // this warp's [GW][KS][32]
  // With kAsyncPush: the arrival barrier of each h buffer.
  uint64_t* arrivals = reinterpret_cast<uint64_t*>(smem + Layout::kArrivalsOffset);

  const int rank = Group::Rank();
  const int64_t N = args.heads, head = blockIdx.x / C, nd = N * D;
  const int64_t b0 = int64_t{blockIdx.y} * BT;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, tig = lane % 4;
  // Unit tile, and the accumulator register whose element this thread runs, which names the
  // warp's gate group and K part.
  const int mt = warp / Layout::kWarpsPerUnitTile, split = warp % Layout::kWarpsPerUnitTile;
  const int gq = split / KP, kp = split % KP;
  const int u0 = rank * U;  // this CTA's first unit of the head

  // R[gq GW + g, head, u0 + 16 mt + row, 16 (kp KTP + j) + col] as A fragments for this
  // warp's gates g and k-tiles j: the first KR in registers, the other KS in shared memory.
  const T* R = static_cast<const T*>(args.r);
  uint32_t a[GW][KR][4];
  LoadRowFragmentsSplit<T, D, GW, KR, KS>(R, N, head, gq * GW, u0 + 16 * mt, kp * KTP, lane, a,
                                          r_shared);

  // This thread's element: accumulator register `split` of its lane position in the unit tile
  // mt, i.e. unit 16 mt + group + 8 (split / 2) of this CTA, batch row 2 tig + split % 2.
  const int unit = 16 * mt + group + 8 * (split / 2), batch_row = 2 * tig + split % 2;
  const Element el{b0 + batch_row, head * D + u0 + unit, nd};
  const int length = RowLength(args.seq, el.b, args.batch, args.steps);
  float bias[Gt], s[S];
  LoadBias<Cell>(args, el, bias);
  LoadStates<Cell>(args, el, s);
  // The states a reset goes back to, in registers (one element per thread leaves room).
  float initial[S];
#pragma unroll
  for (int i = 0; i < S; ++i) initial[i] = s[i];
  const int h_at = batch_row * kStride + u0 + unit;
  // h into buffer `buffer` of every CTA of the cluster (kStagedBroadcast says how; `async`:
  // the staged pieces as asynchronous stores onto the destination's arrival barrier of that
  // buffer). Called by every thread of the CTA alike.
  auto broadcast_h = [&](int buffer, float h, bool async) {
    T hi, lo;
    Op::Split(h, hi, lo);
    if constexpr (kStagedBroadcast<C>) {
      const int at = buffer * Layout::kBufferValues + h_at;
      h_hi[at] = hi;
      if constexpr (kMmaLoPart) h_lo[at] = lo;
      __syncthreads();
      // The slice in 16-byte chunks (hi then lo, row by row, 8 units a chunk), each to the other
      // C - 1 CTAs, at the same offset there.
      constexpr int kUnitsPerChunk = 16 / static_cast<int>(sizeof(T));
      constexpr int kChunksPerRow = U / kUnitsPerChunk;
      constexpr int kChunks = Layout::kParts * BT * kChunksPerRow;
      constexpr int kPushes = (C - 1) * kChunks;
      static_assert(!kAsyncPush<C> || kPushes * 16 == Layout::kArrivingBytes,
                    "the arrival barrier expects the bytes pushed");
#pragma unroll
      for (int k = 0; k < (kPushes + Layout::kThreads - 1) / Layout::kThreads; ++k) {
        const int idx = static_cast<int>(threadIdx.x) + k * Layout::kThreads;
        if (kPushes % Layout::kThreads == 0 || idx < kPushes) {
          const int to = (rank + 1 + idx / kChunks) % C, chunk = idx % kChunks;
          const int row = chunk / kChunksPerRow % BT;
          const T* local = (chunk < BT * kChunksPerRow ? h_hi : h_lo) +
                           buffer * Layout::kBufferValues + row * kStride + u0 +
                           chunk % kChunksPerRow * kUnitsPerChunk;
          const uint4 piece = *reinterpret_cast<const uint4*>(local);
          if constexpr (kAsyncPush<C>) {
            if (async) {
              Group::StoreV4Async(Group::MapAddress(local, to), piece,
                                  Group::MapAddress(&arrivals[buffer], to));
              continue;
            }
          }
          Group::StoreV4(Group::MapAddress(local, to), piece);
        }
      }
    } else {
      // h_lo lies kLoBytes after h_hi in every CTA.
      constexpr uint32_t kLoBytes = 2 * Layout::kBufferValues * sizeof(T);
      const uint32_t at = (buffer * Layout::kBufferValues + h_at) * sizeof(T);
#pragma unroll
      for (int r = 0; r < C; ++r) {
        const uint32_t remote = Group::MapAddress(h_hi, r) + at;
        Group::StoreU16(remote, Op::Bits(hi));
        if constexpr (kMmaLoPart) Group::StoreU16(remote + kLoBytes, Op::Bits(lo));
      }
    }
  };
  // The inputs of steps 0 and 1 are copied in while the cluster starts.
  Inputs inputs(args, b0, head * D + u0, nd);
  inputs.Issue(args, wx_stages, 0, 0);
  inputs.Issue(args, wx_stages, 1, 1);
  if constexpr (kAsyncPush<C>) {
    if (threadIdx.x == 0) {
      Group::InitArrivals(&arrivals[0]);
      Group::InitArrivals(&arrivals[1]);
      Group::FenceArrivalsInit();
    }
  }
  // Every CTA of the cluster must be running (and with kAsyncPush have its arrival barriers
  // initialised) before its shared memory is written remotely. The initial h goes with plain
  // stores and the cluster barrier.
  Group::Sync();
  broadcast_h(0, s[0], false);
  Inputs::WaitAllButNewest();
  Group::Sync();

  // The row state and reset flag of a step are computed and loaded at the end of the step
  // before (of step 0, here) and used only after the barriers and the next matmul.
  RowStep row;
  uint32_t reset_flag;
  auto load_step = [&](int step) {
    row = RowAt(args, el.b, nd, length, step);
    reset_flag = ResetFlagNext(args, el.b, length, step);
  };
  load_step(0);

  int stage = 0;  // the input stage of this step; step + 2 goes to the one read last step
  const int steps = static_cast<int>(args.steps);
  for (int step = 0; step < steps; ++step) {
    const int cur = step & 1;
    inputs.Issue(args, wx_stages, stage == 0 ? 2 : stage - 1, step + 2);
    float acc[GW][4] = {};
    const T* step_hi = h_hi + cur * Layout::kBufferValues;
    const T* step_lo = h_lo + cur * Layout::kBufferValues;
    MmaHiLo<T, GW, KR, kStride>(step_hi, step_lo, kp * KTP, lane, a, acc);
    if constexpr (KS > 0) {
      MmaHiLoSharedA<T, GW, KS, kStride>(step_hi, step_lo, kp * KTP + KR, lane, r_shared, acc);
    }
#pragma unroll
    for (int g = 0; g < GW; ++g) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        part[(((kp * MT + mt) * Gr + gq * GW + g) * 4 + c) * 32 + lane] = acc[g][c];
      }
    }
    __syncthreads();

    float rh[Gr];
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      rh[g] = SumOf<KP>([&](int q) {
        return part[(((q * MT + mt) * Gr + g) * 4 + split) * 32 + lane];
      });
    }
    T wx[Cell::kGatesWx];
    StagedInputs<Cell, T, Inputs>(wx_stages, stage, batch_row, unit, wx);
    float pre[Gt];
    Preactivations<Cell, T>(bias, wx, pre);
    StepCell<Cell>(row, pre, rh, s);
    const bool reset = reset_flag != 0;
    if constexpr (kAsyncPush<C>) {
      // The phase of buffer cur ^ 1 that this step's h completes (its last phase, two steps
      // ago, completed before this thread went on from it).
      if (threadIdx.x == 0) Group::ExpectBytes(&arrivals[cur ^ 1], Layout::kArrivingBytes);
    }
    broadcast_h(cur ^ 1, reset ? initial[0] : s[0], true);
    // The inputs of the next step have landed (this thread's); the barrier (with kAsyncPush the
    // next step's block barrier before the inputs are read) publishes them.
    Inputs::WaitAllButNewest();
    // Without kAsyncPush, the cluster barrier orders this step's h writes before the next
    // step's reads in every CTA, this step's reads of h, of the partial sums and of the input
    // stage before the next step's writes; the step's outputs and the next step's row state go
    // between its halves (cluster_sync.cuh says why). With it, the arrival barrier of the
    // buffer this step's h lands in: h of step t takes buffer (t + 1) & 1 to phase t / 2.
    if constexpr (!kAsyncPush<C>) Group::Arrive();
    StoreStep<Cell, T, kResiduals>(args, el, row, pre, s);
    SelectAtReset<Cell>(reset, initial, s);
    if (step + 1 < steps) load_step(step + 1);
    stage = stage == 2 ? 0 : stage + 1;
    if constexpr (kAsyncPush<C>) {
      Group::WaitArrivals(&arrivals[cur ^ 1], static_cast<uint32_t>(step >> 1) & 1u);
    } else {
      Group::Wait();
    }
  }

  StoreLast<Cell, T>(args, el, s);
  if constexpr (kAsyncPush<C>) {
    // No CTA leaves while another may still be storing into it.
    Group::Sync();
  }
}

// Launches the cluster tensor-core forward over every head and batch tile of 8 rows, with C
// CTAs per head.
template <typename Cell, typename T, int D, int C>
cudaError_t LaunchForwardMmaCluster(const ForwardArgs& args, cudaStream_t stream) {
  using Layout = MmaClusterForwardLayout<Cell, T, D, C>;
  using Shape = Tiling<D, C, Layout::kBatchTile, Layout::kThreads>;
  return LaunchOverHeadsAndBatchTiles<Shape>(args.gate_cache != nullptr
                                                 ? ForwardMmaClusterKernel<Cell, T, D, C, true>
                                                 : ForwardMmaClusterKernel<Cell, T, D, C, false>,
                                             args, Layout::kBytes, stream);
}

}  // namespace flashrnn
