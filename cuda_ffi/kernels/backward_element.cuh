// The per-element stages of a backward step that every backward kernel shares, whatever
// computes its recurrent product: the residuals and output cotangents a step reads, and the
// cell's derivative with the sequence options around it. An element is one hidden unit of one
// head for one batch row; its state cotangents live in the calling thread's registers. Steps
// run in reverse reading order; "the step after" is the previous iteration.
#pragma once

#include <cstdint>

#include "dtype.cuh"
#include "element.cuh"
#include "params.h"
#include "sequence.cuh"

namespace flashrnn {

// Where a batch row stands at one step, computed once per row and step (a step ahead): the
// row offsets (b * steps + t) * nd of the input t the step read and of the one read before it,
// whether the step ran at all (step < length), whether it is the row's first, and its reset
// flag as loaded (nonzero: a reset before it), tested only when used so that the load's
// latency hides behind the barrier in between.
struct BackwardRowStep {
  int64_t at, at_prev;
  bool active, first;
  uint32_t reset_flag;

  __device__ bool resets() const { return active && reset_flag != 0; }
  // Whether the step's states came from the initial states.
  __device__ bool from_initial() const { return first || resets(); }
};

__device__ __forceinline__ BackwardRowStep BackwardRowAt(const BackwardArgs& args, int64_t b,
                                                         int64_t nd, int length, int step) {
  const int t = InputIndex(args.seq, step, length);
  const bool active = step < length;
  uint32_t flag = 0;
  if (active && args.seq.resets != nullptr) {
    flag = args.seq.resets[RowOffset(b, args.steps, 1, t)];
  }
  // The input read before t: t + 1 when reading in reverse.
  const int64_t at = RowOffset(b, args.steps, nd, t);
  return {at, args.seq.reverse ? at + nd : at - nd, active, step == 0, flag};
}

// The recurrent cotangent the options let through, from the full sum over R's rows: none
// when cut, clipped to [-clipval, clipval] with kClip. Not fminf/fmaxf: those would turn a NaN
// cotangent into a bound and hide it.
__device__ __forceinline__ float RecurrentCotangent(const BackwardArgs& args, float sum) {
  switch (args.recurrent_gradient) {
    case RecurrentGradient::kCut:
      return 0.0f;
    case RecurrentGradient::kClip:
      return sum < -args.clipval ? -args.clipval : sum > args.clipval ? args.clipval : sum;
    default:
      return sum;
  }
}

// What one step reads besides the recurrent cotangent, loaded a step ahead and used only after
// the barrier in between: the cotangent of its output states (as stored, converted at use),
// the states of the step before (not the initial states: BackwardStep loads those where the
// step starts from them, a row's first step or a reset, so that no load waits on the reset
// flag), its cached pre-activations. Zeros for a step that did not run.
template <typename Cell, typename T>
struct BackwardInputs {
  T d_out[Cell::kStates];
  float prev[Cell::kStates];
  float pre[Cell::kGatesB];
};

template <typename Cell, typename T>
__device__ __forceinline__ void LoadBackwardInputs(const BackwardArgs& args,
                                                   const Element& e,
                                                   const BackwardRowStep& row,
                                                   BackwardInputs<Cell, T>& in) {
  const bool real = row.active && e.b < args.batch;
  const int64_t state_stride = StateStride(e, args.batch, args.steps);
  const T* d_out = static_cast<const T*>(args.d_states_all) + e.hd + row.at;
  const float* prev = args.states_f32 + e.hd + row.at_prev;
  const float* pre = args.gate_cache + e.hd + row.at * Cell::kGatesB;
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    in.d_out[i] = T{};  // all bits zero: +0.0 without a conversion
    in.prev[i] = 0.0f;
    if (real) in.d_out[i] = d_out[i * state_stride];
    if (real && !row.first) in.prev[i] = prev[i * state_stride];
  }
#pragma unroll
  for (int g = 0; g < Cell::kGatesB; ++g) {
    in.pre[g] = 0.0f;
    if (real) in.pre[g] = pre[g * e.nd];
  }
}

// An element's row state and inputs of one step, for the kernels that run one element per
// thread and load a step's at the end of the step after it (in reading order), so that their
// latency hides behind the barriers and the product in between.
template <typename Cell, typename T>
struct BackwardElementStep {
  BackwardRowStep row;
  BackwardInputs<Cell, T> in;

  __device__ void Load(const BackwardArgs& args, const Element& e, int length, int step) {
    row = BackwardRowAt(args, e.b, e.nd, length, step);
    LoadBackwardInputs<Cell, T>(args, e, row, in);
  }
};

// How many steps ahead (in reading order) the split and cluster tensor-core backwards load a
// step's inputs (CMake FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD, off by default until measured): one,
// so that their latency hides behind the barriers and the product of one step; or two, into
// two register slots taken in turn, so that it hides behind a whole step as well.
inline constexpr int kBackwardInputsAhead = FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD ? 2 : 1;

// The inputs of the steps ahead: slot k holds those of a step s with (steps - 1 - s) % kAhead
// == k, loaded kAhead steps before their own.
template <typename Cell, typename T, int kAhead = kBackwardInputsAhead>
struct BackwardStepsAhead {
  BackwardElementStep<Cell, T> slot[kAhead];

  // The last kAhead steps', before the loop.
  __device__ __forceinline__ void Start(const BackwardArgs& args, const Element& e, int length) {
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      const int step = static_cast<int>(args.steps) - 1 - k;
      if (step >= 0) slot[k].Load(args, e, length, step);
    }
  }

  // Runs body(step, inputs) for step = steps - 1 down to 0, where inputs is the slot with the
  // step's (a compile-time index, so that the slots stay in registers). The body refills it
  // with Refill where the loads' issue costs the least.
  template <typename Body>
  __device__ __forceinline__ void ForEachStep(int steps, Body&& body) {
    for (int step = steps - 1; step >= 0; step -= kAhead) {
#pragma unroll
      for (int k = 0; k < kAhead; ++k) {
        if (step - k < 0) return;
        body(step - k, slot[k]);
      }
    }
  }

  // The inputs of step - kAhead into the slot that held step's, if there is such a step.
  __device__ __forceinline__ static void Refill(const BackwardArgs& args, const Element& e,
                                                int length, int step,
                                                BackwardElementStep<Cell, T>& inputs) {
    if (step >= kAhead) inputs.Load(args, e, length, step - kAhead);
  }
};

// The cotangents of an element's initial states, which a row's last step (step 0) and every
// reset add to. kInRegisters: accumulated in registers and written once by Finish, so that no
// global read-modify-write sits on a step's path (in front of a cluster barrier's release,
// which waits for it); else accumulated in d_states0 itself, for kernels without the registers
// to spare (the single-CTA tensor-core backward's four elements per lane).
template <int S, bool kInRegisters>
struct InitialCotangents {
  float d0[kInRegisters ? S : 1];

  __device__ void Start(const BackwardArgs& args, const Element& e, int i) {
    if constexpr (kInRegisters) {
      d0[i] = 0.0f;
    } else if (e.b < args.batch) {
      args.d_states0[StateAt(e, args.batch, i)] = 0.0f;
    }
  }
  __device__ void Add(const BackwardArgs& args, const Element& e, int i, float value) {
    if constexpr (kInRegisters) {
      d0[i] += value;
    } else {
      args.d_states0[StateAt(e, args.batch, i)] += value;
    }
  }
  // The last addition, for a real row (e.b < batch).
  __device__ void Finish(const BackwardArgs& args, const Element& e, int i, float value) const {
    float* at = args.d_states0 + StateAt(e, args.batch, i);
    if constexpr (kInRegisters) {
      *at = d0[i] + value;
    } else {
      *at += value;
    }
  }
};

// The state cotangents before step 0 (those of the last states) and the initial states' (zero).
template <typename Cell, typename T, bool kInRegisters>
__device__ __forceinline__ void StartCotangents(
    const BackwardArgs& args, const Element& e, float (&ds)[Cell::kStates],
    InitialCotangents<Cell::kStates, kInRegisters>& d0) {
  const T* d_last = static_cast<const T*>(args.d_last_states);
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) {
    ds[i] = e.b < args.batch ? ToFloat(d_last[StateAt(e, args.batch, i)]) : 0.0f;
    d0.Start(args, e, i);
  }
}

// One step of the element. dh_rec is the cotangent reaching the h this step produced through
// R @ h of the step after; it goes to the initial h instead when the step after reset
// (after_reset). ds: the state cotangents after the step on entry, before it on exit; d0: the
// initial states'. dg: the cotangent of every bias gate's pre-activation
// (zeros where the step did not run), for StoreGateCotangents. The cell derivative is computed
// for every element and selected, so that the elements of a thread interleave in one basic
// block. Returns the h the step started from (the h_prev of its R @ h_prev; 0 on a padding
// row), for a kernel that forms dR itself.
template <typename Cell, typename T, bool kInRegisters>
__device__ __forceinline__ float BackwardStep(const BackwardArgs& args, const Element& e,
                                             const BackwardRowStep& row,
                                             const BackwardInputs<Cell, T>& in, float dh_rec,
                                             bool after_reset, float (&ds)[Cell::kStates],
                                             InitialCotangents<Cell::kStates, kInRegisters>& d0,
                                             float (&dg)[Cell::kGatesB]) {
  constexpr int S = Cell::kStates, Gt = Cell::kGatesB;
#pragma unroll
  for (int g = 0; g < Gt; ++g) dg[g] = 0.0f;
  if (e.b >= args.batch) return 0.0f;
  if (after_reset) {
    d0.Add(args, e, 0, dh_rec);
  } else {
    ds[0] += dh_rec;
  }
  // The states the step started from: the initial ones at a row's first step or a reset (a
  // load on this step's path, but only there), else those loaded a step ahead.
  float prev[S];
#pragma unroll
  for (int i = 0; i < S; ++i) prev[i] = in.prev[i];
  if (row.from_initial()) {
#pragma unroll
    for (int i = 0; i < S; ++i) prev[i] = args.states0[StateAt(e, args.batch, i)];
  }
  float stepped[S], gates[Gt];
#pragma unroll
  for (int i = 0; i < S; ++i) stepped[i] = ds[i] + ToFloat(in.d_out[i]);
  Cell::Backward(in.pre, prev, stepped, gates);
#pragma unroll
  for (int i = 0; i < S; ++i) ds[i] = row.active ? stepped[i] : ds[i];
#pragma unroll
  for (int g = 0; g < Gt; ++g) dg[g] = row.active ? gates[g] : 0.0f;
  if (row.resets()) {
#pragma unroll
    for (int i = 0; i < S; ++i) {
      d0.Add(args, e, i, ds[i]);
      ds[i] = 0.0f;
    }
  }
  return prev[0];
}

// The gate cotangents of a step (BackwardStep's dg) into d_gates [B, T, Gt, N, D] with elements
// of type Out, at the step's input index: BackwardArgs::d_gates (float32), or d_gates_rounded (the
// call's dtype) for a kernel that forms the weight gradients from the float32 values itself.
// Apart from BackwardStep so that a kernel can place these stores where their latency is not
// waited for (after a cluster barrier's arrive).
template <typename Cell, typename Out>
__device__ __forceinline__ void StoreGateCotangents(const BackwardArgs& args, const Element& e,
                                                    const BackwardRowStep& row,
                                                    const float (&dg)[Cell::kGatesB],
                                                    Out* d_gates_out) {
  if (e.b >= args.batch) return;
  Out* d_gates = d_gates_out + row.at * Cell::kGatesB + e.hd;
#pragma unroll
  for (int g = 0; g < Cell::kGatesB; ++g) d_gates[g * e.nd] = FromFloat<Out>(dg[g]);
}

template <typename Cell>
__device__ __forceinline__ void StoreGateCotangents(const BackwardArgs& args, const Element& e,
                                                    const BackwardRowStep& row,
                                                    const float (&dg)[Cell::kGatesB]) {
  StoreGateCotangents<Cell>(args, e, row, dg, args.d_gates);
}

// After the last step (step 0): what it sent back through R reaches the initial h; the state
// cotangents go to the initial states.
template <typename Cell, bool kInRegisters>
__device__ __forceinline__ void FinishCotangents(
    const BackwardArgs& args, const Element& e, float dh_rec, const float (&ds)[Cell::kStates],
    const InitialCotangents<Cell::kStates, kInRegisters>& d0) {
  if (e.b >= args.batch) return;
#pragma unroll
  for (int i = 0; i < Cell::kStates; ++i) d0.Finish(args, e, i, ds[i] + (i == 0 ? dh_rec : 0.0f));
}

}  // namespace flashrnn
