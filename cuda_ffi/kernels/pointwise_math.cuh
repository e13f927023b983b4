// Scalar float32 functions shared by the cells' pointwise steps. They are on the critical path
// of every step (a step's latency is the instruction count of its pointwise stage, see
// benchmarks/NOTES.md), so they use the hardware exp2 and reciprocal instead of the libm
// functions, whose accurate-rounding slow paths cost branches and tens of instructions; the
// error stays within a few float32 ulps of the values that matter (|tanh| near 1, sigmoid),
// far inside DESIGN §4's rule.
#pragma once

namespace flashrnn {

// e^x as the hardware exp2 of x log2(e), with subnormal inputs and results flushed to zero.
// __expf is the same but keeps subnormals, at the price of three more instructions on the
// step's critical path (a range test and two scalings around MUFU.EX2; benchmarks/NOTES.md).
// The functions below only ever add a subnormal e^x to 1 or subtract it from 1, which rounds to
// 1 either way, so Sigmoid and Tanh return the same floats with it; LogSigmoid returns 0
// instead of a subnormal (below 1.2e-38 in magnitude) for 87.3 < |x| < 103.3.
__device__ __forceinline__ float ExpFlushed(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.44269504088896341f));
  return y;
}

// 1 / (1 + e^-x); __fdividef returns 0 when 1 + e^-x overflows, the correct limit.
__device__ __forceinline__ float Sigmoid(float x) {
  return __fdividef(1.0f, 1.0f + ExpFlushed(-x));
}

// tanh from t = e^(-2|x|): (1 - t) / (1 + t) with the sign of x. Near 0, where 1 - t cancels,
// the odd Taylor series to x^5 (error below 2e-10 relative at the switch).
__device__ __forceinline__ float Tanh(float x) {
  const float a = fabsf(x);
  const float t = ExpFlushed(-2.0f * a);
  const float x2 = x * x;
  const float series = x * fmaf(x2, fmaf(x2, 2.0f / 15.0f, -1.0f / 3.0f), 1.0f);
  const float ratio = copysignf(__fdividef(1.0f - t, 1.0f + t), x);
  return a < 0.0625f ? series : ratio;
}

// 1 / x by the hardware reciprocal (rcp.approx, within 1 ulp), for the sLSTM's normaliser
// n >= 1: an IEEE division costs a range check and a call of its slow path on the step's critical
// path. Not __fdividef, nor the .ftz variant: those return 0 for 2^126 < x < 2^128, where 1 / x is
// subnormal, and a caller's initial states may hold such an n.
__device__ __forceinline__ float Reciprocal(float x) {
  float y;
  asm("rcp.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// log2(x) by the hardware lg2 (lg2.approx: absolute error at most 2^-22 for x in [0.5, 2], the
// CUDA C++ Programming Guide's table of intrinsics).
__device__ __forceinline__ float Log2Approx(float x) {
  float y;
  asm("lg2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// log(sigmoid(x)) without overflow for large |x|: min(x, 0) - log(1 + t), t = e^-|x| in (0, 1].
// log(1 + t) as ln 2 lg2(1 + t) rather than libdevice's log1pf, whose branchy polynomial was the
// longest part of the sLSTM step's dependent chain (benchmarks/NOTES.md): its error, the lg2's
// 2^-22 ln 2 ~ 1.7e-7 plus 2^-24 from rounding 1 + t, is absolute, and log σ only ever enters
// L = log σ(f̃) + m, whose own rounding is of that size for |m| >= 1, and f' = e^(L - m), where
// an absolute error of L is f's relative error.
__device__ __forceinline__ float LogSigmoid(float x) {
  return fmaf(-0.6931471805599453f, Log2Approx(1.0f + ExpFlushed(-fabsf(x))), fminf(x, 0.0f));
}

}  // namespace flashrnn
