// The per-element stages of a forward step that every forward kernel shares, whatever computes
// its recurrent matmul: the input pre-activations before it, and after it the pointwise cell
// step, the outputs, the residuals and the reset of the next step. An element is one hidden
// unit of one head for one batch row; its states live in the calling thread's registers. The
// per-row work of a step (which input it reads, whether it resets) is done once per row.
#pragma once

#include <cstdint>

#include "dtype.cuh"
#include "element.cuh"
#include "params.h"
#include "sequence.cuh"

namespace flashrnn {

// Where a batch row stands at one step, computed once per row and step and shared by the
// row's elements: the input the step reads as the row offset (b * steps + t) * nd of the
// [B, T, ..., N, D] layouts, and whether it reads one at all (step < the row's length).
struct RowStep {
  int64_t at;
  bool active;
};

__device__ __forceinline__ RowStep RowAt(const ForwardArgs& args, int64_t b, int64_t nd,
                                         int length, int step) {
  return {RowOffset(b, args.steps, nd, InputIndex(args.seq, step, length)), step < length};
}

// The reset flag of row b for the step after `step` (nonzero: it starts from the initial
// states), loaded a step ahead and only tested when used (a bool tested here would make the
// warp wait for the load at once). Padding rows have length 0: no read.
__device__ __forceinline__ uint32_t ResetFlagNext(const ForwardArgs& args, int64_t b,
                                                  int length, int step) {
  uint32_t flag = 0;
  if (args.seq.resets != nullptr && step + 1 < length) {
    flag = args.seq.resets[RowOffset(b, args.steps, 1, InputIndex(args.seq, step + 1, length))];
  }
  return flag;
}

// The biases of the element's unit.
template <typename Cell>
__device__ __forceinline__ void LoadBias(const ForwardArgs& args, const Element& e,
                                         float (&bias)[Cell::kGatesB]) {
#pragma unroll
  for (int g = 0; g < Cell::kGatesB; ++g) bias[g] = args.bias[g * e.nd + e.hd];
}

// The element's states before step 0 (zeros for padding rows).
template <typename Cell>
__device__ __forceinline__ void LoadStates(const ForwardArgs& args, const Element& e,
                                           float (&s)[Cell::kStates]) {
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    s[i] = e.b < args.batch ? args.states0[StateAt(e, args.batch, i)] : 0.0f;
  }
}

// The input pre-activations of the row's step as stored (zeros past the row's length). The
// kernels load them a step ahead and convert them (Preactivations) only after the next
// barrier and matmul: a conversion here would make the warp wait for the load before the
// barrier, a memory latency on every step (benchmarks/NOTES.md, loads a step ahead).
template <typename Cell, typename T>
__device__ __forceinline__ void LoadInputs(const ForwardArgs& args, const Element& e,
                                           const RowStep& row, T (&wx)[Cell::kGatesWx]) {
#pragma unroll
  for (int g = 0; g < Cell::kGatesWx; ++g) wx[g] = T{};  // all bits zero: +0.0, no conversion
  if (row.active) {
    const T* at = static_cast<const T*>(args.wx) + row.at * Cell::kGatesWx + e.hd;
#pragma unroll
    for (int g = 0; g < Cell::kGatesWx; ++g) wx[g] = at[g * e.nd];
  }
}

// pre = bias + the input pre-activations.
template <typename Cell, typename T>
__device__ __forceinline__ void Preactivations(const float (&bias)[Cell::kGatesB],
                                               const T (&wx)[Cell::kGatesWx],
                                               float (&pre)[Cell::kGatesB]) {
#pragma unroll
  for (int g = 0; g < Cell::kGatesB; ++g) pre[g] = bias[g];
#pragma unroll
  for (int g = 0; g < Cell::kGatesWx; ++g) pre[g + Cell::kWxGateOffset] += ToFloat(wx[g]);
}

// After the matmul: the cell step (none past the row's length). On return s holds the states
// after the step. Straight-line code: the step is computed for every element and selected, so
// that the elements of a thread interleave in one basic block.
template <typename Cell>
__device__ __forceinline__ void StepCell(const RowStep& row, float (&pre)[Cell::kGatesB],
                                         const float (&rh)[Cell::kGatesR],
                                         float (&s)[Cell::kStates]) {
  float stepped[Cell::kStates];
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) stepped[i] = s[i];
  Cell::Forward(pre, rh, stepped);
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) s[i] = row.active ? stepped[i] : s[i];
}

// The outputs of a step (s: the states after it) and, with kResiduals (a forward that is
// differentiated), the residuals, at the input the step read (zeros in the padding).
template <typename Cell, typename T, bool kResiduals>
__device__ __forceinline__ void StoreStep(const ForwardArgs& args, const Element& e,
                                          const RowStep& row, const float (&pre)[Cell::kGatesB],
                                          const float (&s)[Cell::kStates]) {
  if (e.b >= args.batch) return;
  const int64_t state_stride = StateStride(e, args.batch, args.steps);
  T* states_all = static_cast<T*>(args.states_all) + row.at + e.hd;
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    const float out = row.active ? s[i] : 0.0f;
    states_all[i * state_stride] = FromFloat<T>(out);
    if constexpr (kResiduals) args.states_f32[i * state_stride + row.at + e.hd] = out;
  }
  if constexpr (kResiduals) {
    if (row.active) {
      float* gate_cache = args.gate_cache + row.at * Cell::kGatesB + e.hd;
#pragma unroll
      for (int g = 0; g < Cell::kGatesB; ++g) gate_cache[g * e.nd] = pre[g];
    }
  }
}

// Both, for kernels that store as soon as the step is computed. The reset of the next step
// follows (ReloadAtReset or SelectAtReset); then s holds the states the next step starts from,
// s[0] the h its matmul reads.
template <typename Cell, typename T, bool kResiduals>
__device__ __forceinline__ void FinishStep(const ForwardArgs& args, const Element& e,
                                           const RowStep& row, float (&pre)[Cell::kGatesB],
                                           const float (&rh)[Cell::kGatesR],
                                           float (&s)[Cell::kStates]) {
  StepCell<Cell>(row, pre, rh, s);
  StoreStep<Cell, T, kResiduals>(args, e, row, pre, s);
}

// The reset of the next step from the initial states in global memory, for kernels whose
// registers are full (several elements per thread). Every lane of a warp calls this together
// (outside any divergent branch), so that the rare reset is a warp-uniform branch: a warp none
// of whose lanes resets skips the reloads; one that does waits for them before its next h
// goes out.
template <typename Cell>
__device__ __forceinline__ void ReloadAtReset(const ForwardArgs& args, const Element& e,
                                              bool reset_next, float (&s)[Cell::kStates]) {
  if (__any_sync(0xffffffffu, reset_next) && reset_next) {
#pragma unroll
    for (int i = 0; i < Cell::kStates; ++i) {
      s[i] = args.states0[StateAt(e, args.batch, i)];
    }
  }
}

// The reset of the next step from the initial states kept in registers (kernels with one
// element per thread): a select, no load on the step's critical path.
template <typename Cell>
__device__ __forceinline__ void SelectAtReset(bool reset_next,
                                              const float (&initial)[Cell::kStates],
                                              float (&s)[Cell::kStates]) {
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) s[i] = reset_next ? initial[i] : s[i];
}

// The states after the last step, where the row is real.
template <typename Cell, typename T>
__device__ __forceinline__ void StoreLast(const ForwardArgs& args, const Element& e,
                                          const float (&s)[Cell::kStates]) {
  if (e.b >= args.batch) return;
  T* last_states = static_cast<T*>(args.last_states);
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    last_states[StateAt(e, args.batch, i)] = FromFloat<T>(s[i]);
  }
}

}  // namespace flashrnn
