// The per-element stages of a forward step that every forward kernel shares, whatever computes
// its recurrent matmul: the input pre-activations before it, and after it the pointwise cell
// step, the outputs, the residuals and the reset of the next step. An element is one hidden
// unit of one head for one batch row; its states live in the calling thread's registers.
#pragma once

#include <cstdint>

#include "dtype.cuh"
#include "params.h"
#include "sequence.cuh"

namespace flashrnn {

// An element's place: batch row b (< B, or a padding row of the batch tile), column
// hd = head * D + unit of the [..., N, D] layouts (nd = N * D of them), and its row's length
// (RowLength). Kernels keep only the lengths in registers and rebuild the rest per step.
struct ForwardElement {
  int64_t b, hd, nd, length;
};

// The biases of the element's unit.
template <typename Cell>
__device__ __forceinline__ void LoadBias(const ForwardArgs& args, const ForwardElement& e,
                                         float (&bias)[Cell::kGatesB]) {
#pragma unroll
  for (int g = 0; g < Cell::kGatesB; ++g) bias[g] = args.bias[g * e.nd + e.hd];
}

// The element's states before step 0 (zeros for padding rows).
template <typename Cell>
__device__ __forceinline__ void LoadStates(const ForwardArgs& args, const ForwardElement& e,
                                           float (&s)[Cell::kStates]) {
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    s[i] = e.b < args.batch ? args.states0[(i * args.batch + e.b) * e.nd + e.hd] : 0.0f;
  }
}

// pre = bias + the input pre-activations that `step` reads (none past the row's length).
template <typename Cell, typename T>
__device__ __forceinline__ void LoadPreactivations(const ForwardArgs& args,
                                                   const ForwardElement& e, int64_t step,
                                                   const float (&bias)[Cell::kGatesB],
                                                   float (&pre)[Cell::kGatesB]) {
#pragma unroll
  for (int g = 0; g < Cell::kGatesB; ++g) pre[g] = bias[g];
  if (step < e.length) {
    const T* wx = static_cast<const T*>(args.wx);
    const int64_t t = InputIndex(args.seq, step, e.length);
#pragma unroll
    for (int g = 0; g < Cell::kGatesWx; ++g) {
      pre[g + Cell::kWxGateOffset] +=
          ToFloat(wx[((e.b * args.steps + t) * Cell::kGatesWx + g) * e.nd + e.hd]);
    }
  }
}

// Whether the step after `step` starts from the initial states (read before the matmul, so
// that the load's latency hides behind it).
__device__ __forceinline__ bool ResetsNext(const ForwardArgs& args, const ForwardElement& e,
                                           int64_t step) {
  return step + 1 < e.length &&
         ResetsBefore(args.seq, e.b, args.steps, InputIndex(args.seq, step + 1, e.length));
}

// After the matmul: the cell step (none past the row's length), the outputs and residuals at
// the input the step read (zeros in the padding), then the reset of the next step. On return
// s holds the states the next step starts from; s[0] is the h its matmul reads.
template <typename Cell, typename T>
__device__ __forceinline__ void FinishStep(const ForwardArgs& args, const ForwardElement& e,
                                           int64_t step, bool reset_next,
                                           float (&pre)[Cell::kGatesB],
                                           const float (&rh)[Cell::kGatesR],
                                           float (&s)[Cell::kStates]) {
  const bool active = step < e.length;
  if (active) Cell::Forward(pre, rh, s);
  if (e.b < args.batch) {
    const int64_t t = InputIndex(args.seq, step, e.length);
    T* states_all = static_cast<T*>(args.states_all);
#pragma unroll
    for (int i = 0; i < Cell::kStates; ++i) {
      const int64_t at = ((i * args.batch + e.b) * args.steps + t) * e.nd + e.hd;
      const float out = active ? s[i] : 0.0f;
      states_all[at] = FromFloat<T>(out);
      if (args.states_f32 != nullptr) args.states_f32[at] = out;
    }
    if (active && args.gate_cache != nullptr) {
#pragma unroll
      for (int g = 0; g < Cell::kGatesB; ++g) {
        args.gate_cache[((e.b * args.steps + t) * Cell::kGatesB + g) * e.nd + e.hd] = pre[g];
      }
    }
  }
  if (reset_next) {
#pragma unroll
    for (int i = 0; i < Cell::kStates; ++i) {
      s[i] = args.states0[(i * args.batch + e.b) * e.nd + e.hd];
    }
  }
}

// The states after the last step, where the row is real.
template <typename Cell, typename T>
__device__ __forceinline__ void StoreLast(const ForwardArgs& args, const ForwardElement& e,
                                          const float (&s)[Cell::kStates]) {
  if (e.b >= args.batch) return;
  T* last_states = static_cast<T*>(args.last_states);
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    last_states[(i * args.batch + e.b) * e.nd + e.hd] = FromFloat<T>(s[i]);
  }
}

}  // namespace flashrnn
