// sLSTM pointwise step (DESIGN §3: exponential gating, stabiliser m, normaliser n) and its
// derivative with m treated as a constant, as in xLSTM. States h, c, n, m; gates i, f, z, o.
#pragma once

#include "pointwise_math.cuh"

namespace flashrnn {

struct SlstmCell {
  static constexpr int kGatesWx = 4;
  static constexpr int kGatesR = 4;
  static constexpr int kGatesB = 4;
  static constexpr int kStates = 4;
  static constexpr int kWxGateOffset = 0;
  static constexpr float kMaxLogF = 80.0f;

  struct Gates {
    float log_f_plus_m, m, i, f, z, o, n_raw;
    bool f_capped;
  };

  __device__ static Gates Activate(const float (&pre)[kGatesB], const float (&prev)[kStates]) {
    Gates a;
    a.log_f_plus_m = LogSigmoid(pre[1]) + prev[3];
    a.m = prev[2] == 0.0f ? pre[0] : fmaxf(pre[0], a.log_f_plus_m);
    // Exponents <= 0 but from zero states: i and f are within 1.2e-38 of e^x (ExpFlushed).
    a.i = ExpFlushed(pre[0] - a.m);
    // L - m <= 0 except from zero states (m = i), where a closed input gate makes it large: the
    // cap keeps f' finite (float32 exp overflows above ~88.7) so that f' * 0 stays 0. The same
    // cap as SLSTM_MAX_LOG_F in flashrnn_jax/cells.py.
    a.f_capped = a.log_f_plus_m - a.m > kMaxLogF;
    a.f = ExpFlushed(a.f_capped ? kMaxLogF : a.log_f_plus_m - a.m);
    a.z = Tanh(pre[2]);
    a.o = Sigmoid(pre[3]);
    a.n_raw = a.f * prev[2] + a.i;
    return a;
  }

  __device__ static void Forward(float (&pre)[kGatesB], const float (&rh)[kGatesR],
                                 float (&s)[kStates]) {
#pragma unroll
    for (int g = 0; g < 4; ++g) pre[g] += rh[g];
    const Gates a = Activate(pre, s);
    s[1] = a.f * s[1] + a.i * a.z;
    s[2] = fmaxf(a.n_raw, 1.0f);
    s[3] = a.m;
    s[0] = a.o * s[1] * Reciprocal(s[2]);
  }

  __device__ static void Backward(const float (&pre)[kGatesB], const float (&prev)[kStates],
                                  float (&ds)[kStates], float (&dg)[kGatesB]) {
    const Gates a = Activate(pre, prev);
    const float c = a.f * prev[1] + a.i * a.z;
    // max(n_raw, 1) passes the gradient to n_raw at the tie, as the scan backend does.
    const bool n_free = a.n_raw >= 1.0f;
    const float n = n_free ? a.n_raw : 1.0f, rn = Reciprocal(n);
    const float dc = ds[1] + ds[0] * a.o * rn;
    const float dn_raw = n_free ? ds[2] - ds[0] * a.o * c * rn * rn : 0.0f;
    const float df = dc * prev[1] + dn_raw * prev[2];
    const float di = dc * a.z + dn_raw;
    const float d_log_f_plus_m = a.f_capped ? 0.0f : df * a.f;
    dg[0] = di * a.i;
    dg[1] = d_log_f_plus_m * (1.0f - Sigmoid(pre[1]));
    dg[2] = dc * a.i * (1.0f - a.z * a.z);
    dg[3] = ds[0] * (c * rn) * a.o * (1.0f - a.o);
    ds[0] = 0.0f;
    ds[1] = dc * a.f;
    ds[2] = dn_raw * a.f;
    ds[3] = d_log_f_plus_m;
  }
};

}  // namespace flashrnn
