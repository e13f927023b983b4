// GRU pointwise step (DESIGN §3, reset after the recurrent matmul) and its derivative.
// Bias gates g, r, z, n; R gates g, r, z (bias gates 0..2); Wx gates r, z, n (bias gates 1..3).
#pragma once

#include "pointwise_math.cuh"

namespace flashrnn {

struct GruCell {
  static constexpr int kGatesWx = 3;
  static constexpr int kGatesR = 3;
  static constexpr int kGatesB = 4;
  static constexpr int kStates = 1;
  static constexpr int kWxGateOffset = 1;

  // Cached pre-activations: g~ = Rh_g + b_g, r~, z~, n~ = Wx_n + b_n + r * g~.
  __device__ static void Forward(float (&pre)[kGatesB], const float (&rh)[kGatesR],
                                 float (&s)[kStates]) {
    pre[0] += rh[0];
    pre[1] += rh[1];
    pre[2] += rh[2];
    const float r = Sigmoid(pre[1]), z = Sigmoid(pre[2]);
    pre[3] += r * pre[0];
    const float n = Tanh(pre[3]);
    s[0] = z * s[0] + (1.0f - z) * n;
  }

  __device__ static void Backward(const float (&pre)[kGatesB], const float (&prev)[kStates],
                                  float (&ds)[kStates], float (&dg)[kGatesB]) {
    const float r = Sigmoid(pre[1]), z = Sigmoid(pre[2]), n = Tanh(pre[3]);
    const float dh = ds[0];
    const float dn = dh * (1.0f - z) * (1.0f - n * n);
    dg[0] = dn * r;
    dg[1] = dn * pre[0] * r * (1.0f - r);
    dg[2] = dh * (prev[0] - n) * z * (1.0f - z);
    dg[3] = dn;
    ds[0] = dh * z;
  }
};

}  // namespace flashrnn
