// The tensor-core backward for the tilings of the tensor-core group forward
// (forward_mma_group.cuh) in bfloat16: heads of 1024 to 2048 over groups of D / 16 CTAs that
// exchange through global memory. Built with the CMake option
// FLASHRNN_MMA_CLUSTER_BACKWARD; benchmarks/NOTES.md has its design and floor.
//
// CTA r owns the 16 units [16 r, 16 r + 16) of the head: warps 0 to 3 run their pointwise
// derivative (one element per thread) and so hold their gate cotangents dg[g, o, b]. As in the
// cluster backward (backward_mma_cluster.cuh), CTA r contributes the part of the recurrent
// cotangent dh[u, b] = sum over g, o of R[g, o, u] dg[g, o, b] over its own units o, for every
// u of the head: C products of M = 16 units u (the unit tile of CTA `to`), K = Gr x 16, N = 8,
// spread over the 16 warps (C / 16 each), whose Rᵀ fragments stay in registers as far as they
// fit and in shared memory for the rest. Each product's m16n8 accumulator (a float4 per lane)
// goes into the exchange in global memory, in the block of its destination CTA, slot r; after
// the group's counter barrier, each of warps 0 to 3 copies the C slots of its 32 elements from
// L2 into shared memory (cp.async.cg) and each thread sums its element's C partials.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "async_copy.cuh"
#include "backward_element.cuh"
#include "grid_sync.cuh"
#include "grid_workspace.h"
#include "launch.cuh"
#include "mma_cluster_shape.h"
#include "mma_operand.cuh"
#include "params.h"
#include "tiling.h"

namespace flashrnn {

// Which calls the tensor-core group backward takes: bfloat16 (backward_mma.cuh says why not
// float16) on the tilings of the tensor-core group forward.
template <typename Cell, typename T, typename Tile>
constexpr bool kMmaGroupBackwardSupported =
    std::is_same_v<T, __nv_bfloat16> && IsGridGroup(Tile::kCluster) &&
    Tile::kUnits == kMmaGroupUnits && Tile::kBatchTile == kMmaBatchTile &&
    Tile::kThreads == 32 * kMmaGroupWarps && Tile::kThreadsBeyondElements;

// Shared memory: this CTA's gate cotangents [batch row][gate * 16 + unit] as hi and lo parts,
// rows padded by 8 values (distinct banks for the B-fragment loads); then the partials that
// warps 0 to 3 copy in, [warp][source CTA][32] floats (lane l of warp w reads element
// 32 w + l of every source); then the Rᵀ fragments that do not fit the registers: warp w has
// products (destination CTAs) w P + i, the first kRegisterProducts in registers, the other
// kSharedProducts as [warp][product][k-tile][lane] uint4.
template <int kGatesR, int D>
struct MmaGroupBackwardLayout {
  static constexpr int kUnits = kMmaGroupUnits, kGroup = D / kUnits;
  static constexpr int kKTiles = kGatesR * kUnits / 16;
  static constexpr int kWarps = kMmaGroupWarps, kThreads = 32 * kWarps;
  static constexpr int kElements = kUnits * kMmaBatchTile;  // one per thread of warps 0 to 3
  static constexpr int kProductsPerWarp = kGroup / kWarps;
  static constexpr int kRegisterProducts =
      std::min(kProductsPerWarp,
               MmaFragmentRegisters(kThreads, kMmaGroupBackwardStepRegisters) / (4 * kKTiles));
  static constexpr int kSharedProducts = kProductsPerWarp - kRegisterProducts;
  static constexpr int kRowStride = kGatesR * kUnits + 8;
  static constexpr int kGateValues = kMmaBatchTile * kRowStride;
  static constexpr std::size_t kGateBytes =
      AlignUp(2 * std::size_t{kGateValues} * sizeof(__nv_bfloat16));
  static constexpr std::size_t kPartBytes =
      std::size_t{kElements / 32} * kGroup * 32 * sizeof(float);
  static constexpr std::size_t kRSharedOffset = kGateBytes + kPartBytes;
  static constexpr std::size_t kBytes =
      kRSharedOffset + std::size_t{kThreads} * kSharedProducts * kKTiles * sizeof(uint4);
  static_assert(kProductsPerWarp * kWarps == kGroup, "the products spread evenly over the warps");
  static_assert(kElements == 128, "warps 0 to 3 hold the accumulators of an m16n8 tile");
  static_assert(kRegisterProducts > 0, "a product's fragments in registers at least");
  static_assert(kBytes <= kMaxSharedBytesPerBlock, "shared memory per block (sm_90 opt-in)");
  // The exchange of a group: [2 buffers][owner CTA][source CTA][element] floats, as many as
  // the FMA group backward's [2][C][BT][D] (grid_workspace.h sizes it so).
  static_assert(kGroup * kElements == kMmaBatchTile * D, "an owner's block per CTA");
};

// Registers: PersistentKernelRegisters (launch.cuh), as the other persistent kernels. group0:
// the launch's first group (launch.cuh LaunchGridGroups).
template <typename Cell, typename T, int D>
__global__ void __maxnreg__(
    PersistentKernelRegisters(MmaGroupBackwardLayout<Cell::kGatesR, D>::kThreads))
    BackwardMmaGroupKernel(const BackwardArgs args, const int64_t group0) {
  using Op = MmaOperand<T>;
  using Layout = MmaGroupBackwardLayout<Cell::kGatesR, D>;
  constexpr int Gr = Cell::kGatesR, Gt = Cell::kGatesB, S = Cell::kStates;
  constexpr int C = Layout::kGroup, U = Layout::kUnits, KT = Layout::kKTiles;
  constexpr int P = Layout::kProductsPerWarp, PR = Layout::kRegisterProducts;
  constexpr int PS = Layout::kSharedProducts, E = Layout::kElements;
  constexpr int kStride = Layout::kRowStride;

  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* dg_hi = reinterpret_cast<T*>(smem);   // [BT][kStride]
  T* dg_lo = dg_hi + Layout::kGateValues;  // [BT][kStride]
  float* received = reinterpret_cast<float*>(smem + Layout::kGateBytes) +
                    (warp % 4) * C * 32;  // this element warp's [source][32]
  uint4* r_shared = reinterpret_cast<uint4*>(smem + Layout::kRSharedOffset) +
                    warp * PS * KT * 32;  // this warp's [PS][KT][32]

  const GridGroupPlace<C, kMmaBatchTile, D> place(args, group0, true);
  const int rank = place.rank;
  const int64_t N = args.heads, head = place.head, b0 = place.b0, nd = N * D;
  GroupCounterBarrier barrier(place.counter, C);
  float* exchange = place.exchange;
  // The slot of source CTA `source` in the block of owner CTA `owner`, buffer `buffer`.
  auto slot = [&](int buffer, int owner, int source) {
    return exchange + ((int64_t{buffer} * C + owner) * C + source) * E;
  };

  // Rᵀ as A fragments for this warp's products, over (gate, unit) of this CTA's own units:
  // product i is the unit tile of CTA warp P + i. The first PR in registers, the other PS in
  // shared memory.
  const T* R = static_cast<const T*>(args.r);
  uint32_t a[PR][KT][4];
  LoadProductFragmentsSplit<T, D, U, PR, PS, KT>(
      R, N, head, [&](int i) { return U * (warp * P + i); }, rank * U, lane, a, r_shared);

  // Warps 0 to 3 run the elements: thread j collects accumulator register c = j % 4 of lane
  // l = j / 4, i.e. unit l / 4 + 8 (c / 2) of this CTA and batch row 2 (l % 4) + c % 2, as in
  // the cluster backward; element j of every source's slot is its partial.
  const bool runs_element = warp < 4;
  const int j = threadIdx.x % E, c = j % 4, l = j / 4;
  const int unit = l / 4 + 8 * (c / 2), batch_row = 2 * (l % 4) + c % 2;
  const Element el{b0 + batch_row, head * D + rank * U + unit, nd};
  int length = 0;
  float ds[S];
  InitialCotangents<S, true> d0;
  if (runs_element) {
    length = RowLength(args.seq, el.b, args.batch, args.steps);
    StartCotangents<Cell, T>(args, el, ds, d0);
  }

  const bool recurrent = args.recurrent_gradient != RecurrentGradient::kCut;
  // The cotangent reaching this element's h_prev through R @ h_prev: the sum of the C partials
  // sent to this CTA in `buffer` (an element warp's call: it copies its elements' slots from
  // L2, then sums).
  auto recurrent_cotangent = [&](int buffer) {
    float sum = 0.0f;
    if (recurrent) {
      constexpr int kChunks = C * 32 / 4;  // 16-byte copies of the warp's [source][32]
      static_assert(kChunks % 32 == 0, "whole copies per lane");
#pragma unroll 4
      for (int k = 0; k < kChunks / 32; ++k) {
        const int chunk = lane + 32 * k, source = chunk / 8, at = chunk % 8 * 4;
        const float* from = slot(buffer, rank, source) + warp * 32 + at;
        const uint32_t to =
            static_cast<uint32_t>(__cvta_generic_to_shared(received + source * 32 + at));
        CopyAsync16(to, from);
      }
      WaitForCopies();
      __syncwarp();
      float sums[4] = {};
#pragma unroll 8
      for (int source = 0; source < C; ++source) sums[source % 4] += received[source * 32 + lane];
      sum = (sums[0] + sums[1]) + (sums[2] + sums[3]);
      // The next call's copies overwrite what this one read.
      __syncwarp();
    }
    return RecurrentCotangent(args, sum);
  };

  // The row state and inputs of a step (of the last step, here), loaded between the halves of
  // the group barrier in the loop.
  BackwardElementStep<Cell, T> next;
  const int steps = static_cast<int>(args.steps);
  if (runs_element && steps > 0) next.Load(args, el, length, steps - 1);

  bool after_reset = false;
  for (int step = steps - 1; step >= 0; --step) {
    float dg[Gt];
    if (runs_element) {
      // Step T - 1 has no step T to receive from.
      const float dh_rec = step + 1 < steps ? recurrent_cotangent((step + 1) & 1) : 0.0f;
      BackwardStep<Cell>(args, el, next.row, next.in, dh_rec, after_reset, ds, d0, dg);
      after_reset = next.row.resets();
#pragma unroll
      for (int g = 0; g < Gr; ++g) {
        const int at = batch_row * kStride + g * U + unit;
        if (recurrent) Op::Split(dg[g], dg_hi[at], dg_lo[at]);
      }
    }

    // This CTA's part of dh for the unit tiles of this warp's products, into slot `rank` of
    // their CTAs' blocks. With the recurrent gradient cut nothing is exchanged, and no barrier
    // is needed (every CTA of the group skips them alike).
    if (recurrent) {
      __syncthreads();
      // The products share the B fragments, loaded once; each product's accumulator is stored
      // as soon as it is complete, so that only one is live (the warp has 8: 32 registers).
      HiLoFragments b[KT];
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) b[kt] = LoadHiLoFragments<T, kStride>(dg_hi, dg_lo, kt, lane);
#pragma unroll
      for (int i = 0; i < P; ++i) {
        float acc[4] = {};
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          if (i < PR) {
            // (The index is clamped for the branch the unrolled loop never takes.)
            MmaHiLoTile<T>(acc, a[i < PR ? i : 0][kt], b[kt]);
          } else {
            const uint4 v = r_shared[((i - PR) * KT + kt) * 32 + lane];
            const uint32_t shared_a[4] = {v.x, v.y, v.z, v.w};
            MmaHiLoTile<T>(acc, shared_a, b[kt]);
          }
        }
        reinterpret_cast<float4*>(slot(step & 1, warp * P + i, rank))[lane] =
            make_float4(acc[0], acc[1], acc[2], acc[3]);
      }
    }
    // Orders this step's partials before the group's reads of them in the next step, and this
    // step's reads of dg before the next step's writes. The step's gate cotangents and the next
    // step's inputs go between its halves (grid_sync.cuh).
    if (recurrent) barrier.Arrive();
    if (runs_element) {
      StoreGateCotangents<Cell>(args, el, next.row, dg);
      if (step > 0) next.Load(args, el, length, step - 1);
    }
    if (recurrent) barrier.Wait();
  }

  // What step 0 sent back (buffer 0) reaches the initial h.
  if (runs_element) {
    FinishCotangents<Cell>(args, el, args.steps > 0 ? recurrent_cotangent(0) : 0.0f, ds, d0);
  }
}

// Launches the tensor-core group backward over every (head, batch tile) group, in chunks of as
// many groups as the SMs hold (launch.cuh).
template <typename Cell, typename T, int D>
cudaError_t LaunchBackwardMmaGroup(const BackwardArgs& args, cudaStream_t stream) {
  using Layout = MmaGroupBackwardLayout<Cell::kGatesR, D>;
  using Shape = Tiling<D, Layout::kGroup, kMmaBatchTile, Layout::kThreads>;
  return LaunchGridGroups<Shape>(BackwardMmaGroupKernel<Cell, T, D>, args, Layout::kBytes,
                                 stream);
}

}  // namespace flashrnn
