// Scalar float32 functions shared by the cells' pointwise steps.
#pragma once

namespace flashrnn {

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

// log(sigmoid(x)) without overflow for large |x|: min(x, 0) - log1p(exp(-|x|)).
__device__ __forceinline__ float LogSigmoid(float x) {
  return fminf(x, 0.0f) - log1pf(__expf(-fabsf(x)));
}

}  // namespace flashrnn
