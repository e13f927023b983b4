// LSTM pointwise step (DESIGN §3) and its derivative, per hidden unit, in float32.
// Gates i, f, z, o in every gate array; states h, c.
#pragma once

#include "pointwise_math.cuh"

namespace flashrnn {

struct LstmCell {
  static constexpr int kGatesWx = 4;
  static constexpr int kGatesR = 4;
  static constexpr int kGatesB = 4;
  static constexpr int kStates = 2;
  // Wx gate g adds to bias gate g + kWxGateOffset.
  static constexpr int kWxGateOffset = 0;

  // pre[g] holds Wx + b for every bias gate on entry; rh the recurrent matmul per R gate.
  // Updates the states and leaves in pre the pre-activations the backward needs.
  __device__ static void Forward(float (&pre)[kGatesB], const float (&rh)[kGatesR],
                                 float (&s)[kStates]) {
#pragma unroll
    for (int g = 0; g < 4; ++g) pre[g] += rh[g];
    const float i = Sigmoid(pre[0]), f = Sigmoid(pre[1]), z = Tanh(pre[2]),
                o = Sigmoid(pre[3]);
    s[1] = f * s[1] + i * z;
    s[0] = o * Tanh(s[1]);
  }

  // pre: the cached pre-activations; prev: the states before the step; ds: on entry the
  // total cotangent of the states after the step, on exit the cotangent of prev that does not
  // pass through R (the recurrent part is added by the kernel). dg: cotangent of each bias gate.
  __device__ static void Backward(const float (&pre)[kGatesB], const float (&prev)[kStates],
                                  float (&ds)[kStates], float (&dg)[kGatesB]) {
    const float i = Sigmoid(pre[0]), f = Sigmoid(pre[1]), z = Tanh(pre[2]),
                o = Sigmoid(pre[3]);
    const float c = f * prev[1] + i * z;
    const float tc = Tanh(c);
    const float dc = ds[1] + ds[0] * o * (1.0f - tc * tc);
    dg[0] = dc * z * i * (1.0f - i);
    dg[1] = dc * prev[1] * f * (1.0f - f);
    dg[2] = dc * i * (1.0f - z * z);
    dg[3] = ds[0] * tc * o * (1.0f - o);
    ds[0] = 0.0f;
    ds[1] = dc * f;
  }
};

}  // namespace flashrnn
