// Elman pointwise step h = tanh(Wx + Rh + b) (DESIGN §3) and its derivative.
#pragma once

#include "pointwise_math.cuh"

namespace flashrnn {

struct ElmanCell {
  static constexpr int kGatesWx = 1;
  static constexpr int kGatesR = 1;
  static constexpr int kGatesB = 1;
  static constexpr int kStates = 1;
  static constexpr int kWxGateOffset = 0;

  __device__ static void Forward(float (&pre)[kGatesB], const float (&rh)[kGatesR],
                                 float (&s)[kStates]) {
    pre[0] += rh[0];
    s[0] = Tanh(pre[0]);
  }

  __device__ static void Backward(const float (&pre)[kGatesB], const float (&)[kStates],
                                  float (&ds)[kStates], float (&dg)[kGatesB]) {
    const float h = Tanh(pre[0]);
    dg[0] = ds[0] * (1.0f - h * h);
    ds[0] = 0.0f;
  }
};

}  // namespace flashrnn
