// The 16-bit tensor-core operands of the mma kernels: mma.sync m16n8k16 with float32
// accumulators, and a float32 value as the sum of two 16-bit values (hi + lo, ~16 mantissa
// bits), so that an operand computed in float32 (h in the forward, the gate cotangents in the
// backward) goes through the tensor cores at close to float32 accuracy; and the fragment
// loads and products the kernels share. Lane l is (group l / 4, tig l % 4), as in the PTX ISA's
// fragment layouts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "params.h"
#include "sequence.cuh"

namespace flashrnn {

// Whether the operand computed in float32 goes through the tensor cores as hi + lo (two mma
// per tile), or rounded to one 16-bit value (CMake FLASHRNN_MMA_ROUNDED_OPERAND, on by default
// since the GPU tests passed with it and the H100 measured it faster: benchmarks/NOTES.md):
// half the mma, half the B-fragment loads and, in the cluster forward, half the bytes of h
// exchanged. DESIGN §4's rule has room for it: in float64 simulations of the cells at bfloat16
// (benchmarks/precision_study.py) the rounded h and gate cotangents leave the outputs' and
// gradients' errors at 41-64% of the rule's bound, where the rounding of the 16-bit outputs
// themselves is most of the error.
inline constexpr bool kMmaLoPart = !FLASHRNN_MMA_ROUNDED_OPERAND;

// One warp-wide c += a * b of mma.sync m16n8k16 with 16-bit operands of PTX type `ab`.
#define FLASHRNN_MMA_M16N8K16(ab, c, a, b0, b1)                                          \
  asm("mma.sync.aligned.m16n8k16.row.col.f32." ab "." ab ".f32 "                        \
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                 \
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                   \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
struct MmaOperand;

template <>
struct MmaOperand<__nv_bfloat16> {
  // v = hi + lo to ~16 mantissa bits (bfloat16 has float32's range: nothing saturates). A v
  // that is infinite, or rounds to an infinite hi (|v| >= 3.3961775e38), keeps lo = 0 rather
  // than inf - inf, so that the product is infinite as in float32.
  __device__ static void Split(float v, __nv_bfloat16& hi, __nv_bfloat16& lo) {
    hi = __float2bfloat16_rn(v);
    if constexpr (!kMmaLoPart) return;  // lo is neither written nor read
    const float rest = v - __bfloat162float(hi);
    lo = __float2bfloat16_rn(isfinite(rest) ? rest : 0.0f);
  }
  // Two values in one 32-bit register, the lower index in the lower half.
  __device__ static uint32_t Pack(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return uint32_t{__bfloat16_as_ushort(lo)} | (uint32_t{__bfloat16_as_ushort(hi)} << 16);
  }
  __device__ static uint16_t Bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
  // c += a (16x16, row-major fragments) * b (16x8, column-major fragments), float32 c.
  __device__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    FLASHRNN_MMA_M16N8K16("bf16", c, a, b0, b1);
  }
  // c += a (16x8: register r holds row group (+8 for r = 1), columns 2 tig and 2 tig + 1) * b
  // (8x8: rows 2 tig and 2 tig + 1 of column group), float32 c: mma.sync m16n8k8.
  __device__ static void MmaK8(float (&c)[4], const uint32_t (&a)[2], uint32_t b) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
  }
};

template <>
struct MmaOperand<__half> {
  // v = hi + lo; both parts saturate at float16's largest finite value, so that a value beyond
  // its range gives a finite matmul, not inf - inf.
  __device__ static void Split(float v, __half& hi, __half& lo) {
    constexpr float kMax = 65504.0f;
    hi = __float2half_rn(fminf(fmaxf(v, -kMax), kMax));
    if constexpr (!kMmaLoPart) return;  // lo is neither written nor read
    lo = __float2half_rn(fminf(fmaxf(v - __half2float(hi), -kMax), kMax));
  }
  __device__ static uint32_t Pack(__half lo, __half hi) {
    return uint32_t{__half_as_ushort(lo)} | (uint32_t{__half_as_ushort(hi)} << 16);
  }
  __device__ static uint16_t Bits(__half v) { return __half_as_ushort(v); }
  __device__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    FLASHRNN_MMA_M16N8K16("f16", c, a, b0, b1);
  }
};

// The A fragments of rows [row0, row0 + 16) and k-tiles [kt0, kt0 + KTiles) of the D x D
// matrices of gates [g0, g0 + Gr) of head `head` in R [gates, N, D, D] (row-major: output row,
// input column): register r of k-tile j holds row group (+8 for odd r) and the column pair
// 2 tig (+8 for r >= 2).
template <typename T, int D, int Gr, int KTiles>
__device__ __forceinline__ void LoadRowFragments(const T* R, int64_t N, int64_t head, int g0,
                                                 int row0, int kt0, int lane,
                                                 uint32_t (&a)[Gr][KTiles][4]) {
  const int group = lane / 4, tig = lane % 4;
#pragma unroll
  for (int g = 0; g < Gr; ++g) {
#pragma unroll
    for (int j = 0; j < KTiles; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = row0 + group + 8 * (r % 2), col = 16 * (kt0 + j) + 2 * tig + 8 * (r / 2);
        const T* at = R + (((g0 + g) * N + head) * D + row) * D + col;
        a[g][j][r] = MmaOperand<T>::Pack(at[0], at[1]);
      }
    }
  }
}

// The same fragments for k-tiles [kt0, kt0 + KR + KS) split between the registers and shared
// memory: the first KR into `a`, the other KS into the warp's `shared` [Gr][KS][32] uint4 (each
// lane writes, and MmaHiLoSharedA later reads, only its own fragments there). The tensor-core
// kernels whose R slice is larger than a register file keep it so.
template <typename T, int D, int Gr, int KR, int KS>
__device__ __forceinline__ void LoadRowFragmentsSplit(const T* R, int64_t N, int64_t head,
                                                      int g0, int row0, int kt0, int lane,
                                                      uint32_t (&a)[Gr][KR][4], uint4* shared) {
  LoadRowFragments<T, D>(R, N, head, g0, row0, kt0, lane, a);
#pragma unroll 1
  for (int j = 0; j < KS; ++j) {
    uint32_t staged[Gr][1][4];
    LoadRowFragments<T, D>(R, N, head, g0, row0, kt0 + KR + j, lane, staged);
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      shared[(g * KS + j) * 32 + lane] =
          make_uint4(staged[g][0][0], staged[g][0][1], staged[g][0][2], staged[g][0][3]);
    }
  }
}

// The A fragments of Rᵀ for a backward's recurrent product dh[u, b] = sum over gates g and
// units o of R[g, head, o0 + o, u] dg[g, o, b]: rows u of MTiles unit tiles from row0, columns
// k = g kUnits + o over the kUnits units from o0 that the caller's gate cotangents cover, in
// the k-tiles [kt0, kt0 + KTiles). Register r of k-tile kt holds row group (+8 for odd r) of
// its tile and the column pair 2 tig (+8 for r >= 2), two consecutive o of one gate (kUnits is
// a multiple of 16).
template <typename T, int D, int kUnits>
__device__ __forceinline__ void LoadTransposedFragment(const T* R, int64_t N, int64_t head,
                                                       int row0, int o0, int kt, int lane,
                                                       uint32_t (&a)[4]) {
  static_assert(kUnits % 16 == 0, "a column pair stays within one gate");
  const int group = lane / 4, tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int u = row0 + group + 8 * (r % 2);
    const int k = 16 * kt + 2 * tig + 8 * (r / 2), g = k / kUnits;
    const int o = o0 + k % kUnits;
    const T* at = R + ((int64_t{g} * N + head) * D + o) * D + u;
    a[r] = MmaOperand<T>::Pack(at[0], at[D]);
  }
}

// The Rᵀ fragments of a backward warp's products i (unit tile from row0_of(i), all KT k-tiles
// over kUnits units from o0): the first PR products into `a`, the other PS into the warp's
// `shared` [PS][KT][32] uint4 (each lane writes, and MmaHiLoSharedA later reads, only its own
// fragments there).
template <typename T, int D, int kUnits, int PR, int PS, int KT, typename RowOf>
__device__ __forceinline__ void LoadProductFragmentsSplit(const T* R, int64_t N, int64_t head,
                                                          RowOf row0_of, int o0, int lane,
                                                          uint32_t (&a)[PR][KT][4],
                                                          uint4* shared) {
#pragma unroll
  for (int i = 0; i < PR; ++i) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      LoadTransposedFragment<T, D, kUnits>(R, N, head, row0_of(i), o0, kt, lane, a[i][kt]);
    }
  }
#pragma unroll 1
  for (int i = 0; i < PS; ++i) {
#pragma unroll 1
    for (int kt = 0; kt < KT; ++kt) {
      uint32_t staged[4];
      LoadTransposedFragment<T, D, kUnits>(R, N, head, row0_of(PR + i), o0, kt, lane, staged);
      shared[(i * KT + kt) * 32 + lane] = make_uint4(staged[0], staged[1], staged[2], staged[3]);
    }
  }
}

template <typename T, int D, int kUnits, int MTiles, int KTiles>
__device__ __forceinline__ void LoadTransposedFragments(const T* R, int64_t N, int64_t head,
                                                        int row0, int o0, int kt0, int lane,
                                                        uint32_t (&a)[MTiles][KTiles][4]) {
#pragma unroll
  for (int mi = 0; mi < MTiles; ++mi) {
#pragma unroll
    for (int kt = 0; kt < KTiles; ++kt) {
      LoadTransposedFragment<T, D, kUnits>(R, N, head, row0 + 16 * mi, o0, kt0 + kt, lane,
                                           a[mi][kt]);
    }
  }
}

// The B fragments (16 x 8) of k-tile kt of the shared-memory matrix [batch row][k] (row stride
// kStride values) kept as hi and lo parts: lane (group, tig) loads row group, k = 16 kt + 2 tig
// (+8), two values per register.
struct HiLoFragments {
  uint32_t hi0, hi1, lo0, lo1;
};

template <typename T, int kStride>
__device__ __forceinline__ HiLoFragments LoadHiLoFragments(const T* hi, const T* lo, int kt,
                                                           int lane) {
  const int at = (lane / 4) * kStride + 16 * kt + 2 * (lane % 4);
  if constexpr (!kMmaLoPart) {
    return {*reinterpret_cast<const uint32_t*>(hi + at),
            *reinterpret_cast<const uint32_t*>(hi + at + 8), 0, 0};
  }
  return {*reinterpret_cast<const uint32_t*>(hi + at),
          *reinterpret_cast<const uint32_t*>(hi + at + 8),
          *reinterpret_cast<const uint32_t*>(lo + at),
          *reinterpret_cast<const uint32_t*>(lo + at + 8)};
}

// acc += a B_hi + a B_lo (a B_hi alone without kMmaLoPart).
template <typename T>
__device__ __forceinline__ void MmaHiLoTile(float (&acc)[4], const uint32_t (&a)[4],
                                            const HiLoFragments& b) {
  MmaOperand<T>::Mma(acc, a, b.hi0, b.hi1);
  if constexpr (kMmaLoPart) MmaOperand<T>::Mma(acc, a, b.lo0, b.lo1);
}

// acc[g] += A[g] B over k-tiles [kt0, kt0 + KTiles), where B is the shared-memory matrix of
// LoadHiLoFragments, both parts multiplied, and A[g] k-tile j is a[g][j]. With one gate
// (Gr == 1) the k-tiles alternate between two accumulators, added at the end: in one, the
// product would be a dependent chain of 2 KTiles mma (~50 cycles each, benchmarks/NOTES.md,
// step model); with several gates their chains interleave.
template <typename T, int Gr, int KTiles, int kStride>
__device__ __forceinline__ void MmaHiLo(const T* hi, const T* lo, int kt0, int lane,
                                        const uint32_t (&a)[Gr][KTiles][4],
                                        float (&acc)[Gr][4]) {
  constexpr bool kTwoChains = Gr == 1 && KTiles > 1;
  float second[4] = {};
#pragma unroll
  for (int j = 0; j < KTiles; ++j) {
    const HiLoFragments b = LoadHiLoFragments<T, kStride>(hi, lo, kt0 + j, lane);
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      MmaHiLoTile<T>(kTwoChains && j % 2 == 1 ? second : acc[g], a[g][j], b);
    }
  }
  if constexpr (kTwoChains) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[0][c] += second[c];
  }
}

// The same with A in shared memory instead of registers: A[g] k-tile j is this lane's four
// registers at a_shared[(g KTiles + j) 32 + lane] (one conflict-free 16-byte load per lane).
template <typename T, int Gr, int KTiles, int kStride>
__device__ __forceinline__ void MmaHiLoSharedA(const T* hi, const T* lo, int kt0, int lane,
                                               const uint4* a_shared, float (&acc)[Gr][4]) {
#pragma unroll
  for (int j = 0; j < KTiles; ++j) {
    const HiLoFragments b = LoadHiLoFragments<T, kStride>(hi, lo, kt0 + j, lane);
#pragma unroll
    for (int g = 0; g < Gr; ++g) {
      const uint4 v = a_shared[(g * KTiles + j) * 32 + lane];
      const uint32_t a[4] = {v.x, v.y, v.z, v.w};
      MmaHiLoTile<T>(acc[g], a, b);
    }
  }
}

// Transposed 8 x 8 matrices of 16-bit values from shared memory (ldmatrix .trans): lane l
// gives the address of row l % 8 of matrix l / 8 (16 contiguous bytes) and receives, of each
// matrix i, the pair (rows 2 (l % 4) and 2 (l % 4) + 1, column l / 4) in register i: the
// layout of an mma.m16n8k8 fragment whose K runs down the stored rows.
__device__ __forceinline__ void LoadMatricesTransposed(const void* row, uint32_t (&r)[2]) {
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(at)
               : "memory");
}
__device__ __forceinline__ void LoadMatricesTransposed(const void* row, uint32_t (&r)[4]) {
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(at)
               : "memory");
}

// Batch rows per CTA of every tensor-core kernel: one n-tile of m16n8k16, so that a lane's
// four accumulator registers are its four elements. A step's latency is the pointwise
// instruction stream of a lane (one warp per scheduler at the usual grid sizes), so four
// elements per lane and twice the CTAs beat eight elements per lane (benchmarks/NOTES.md, v2).
constexpr int kMmaBatchTile = 8;

// The batch rows of a lane's m16n8 accumulator registers in a batch tile from row b0:
// 2 tig for registers 0 and 2, 2 tig + 1 for 1 and 3 (register e's row is rows[e % 2]), and
// their lengths (RowLength: 0 for padding rows).
struct LaneRows {
  int64_t b[2];
  int length[2];
};

__device__ __forceinline__ LaneRows LaneBatchRows(const SequenceArgs& seq, int64_t b0, int lane,
                                                  int64_t batch, int64_t steps) {
  LaneRows rows;
#pragma unroll
  for (int slot = 0; slot < 2; ++slot) {
    rows.b[slot] = b0 + 2 * (lane % 4) + slot;
    rows.length[slot] = RowLength(seq, rows.b[slot], batch, steps);
  }
  return rows;
}

}  // namespace flashrnn

#undef FLASHRNN_MMA_M16N8K16
