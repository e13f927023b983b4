// The nanobind module flashrnn_jax._cuda: the FFI handler capsules that flashrnn_jax/fused.py
// registers with jax.ffi.register_ffi_target(platform="CUDA"), and the compiled grid.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "ffi/flashrnn_ffi.h"

namespace nb = nanobind;

namespace {

template <typename Handler>
nb::capsule Capsule(Handler* handler) {
  return nb::capsule(reinterpret_cast<void*>(handler));
}

}  // namespace

NB_MODULE(_cuda, m) {
  m.doc() = "XLA FFI handlers of flashrnn_jax's fused CUDA kernels";
  m.def("registrations", []() {
    nb::dict table;
    table["flashrnn_jax_forward"] = Capsule(FlashrnnForward);
    table["flashrnn_jax_forward_train"] = Capsule(FlashrnnForwardTrain);
    table["flashrnn_jax_backward"] = Capsule(FlashrnnBackward);
    return table;
  });
  m.def("compiled_grid", &flashrnn::CompiledGrid,
        "The compiled kernels: (function, dtype as BF16/F16/F32, head size, cluster, batch tile, "
        "threads, the forward's kernel, the backward's kernel), the kernels named fma, "
        "fma_grid_group, mma, mma_split or mma_cluster.");
  m.def(
      "mma_forward", []() { return FLASHRNN_MMA_FORWARD != 0; },
      "Whether the tensor-core forward (CMake FLASHRNN_MMA_FORWARD) is built.");
  m.def(
      "mma_backward", []() { return FLASHRNN_MMA_BACKWARD != 0; },
      "Whether the tensor-core backward (CMake FLASHRNN_MMA_BACKWARD) is built.");
  m.def(
      "mma_cluster_forward", []() { return FLASHRNN_MMA_CLUSTER_FORWARD != 0; },
      "Whether the cluster tensor-core forward (CMake FLASHRNN_MMA_CLUSTER_FORWARD) "
      "is built.");
  m.def(
      "mma_cluster_backward", []() { return FLASHRNN_MMA_CLUSTER_BACKWARD != 0; },
      "Whether the cluster tensor-core backward (CMake FLASHRNN_MMA_CLUSTER_BACKWARD) "
      "is built.");
  m.def(
      "mma_split_forward", []() { return FLASHRNN_MMA_SPLIT_FORWARD != 0; },
      "Whether the split tensor-core forward for heads of 16 to 64 (CMake "
      "FLASHRNN_MMA_SPLIT_FORWARD) is built.");
  m.def(
      "mma_split_backward", []() { return FLASHRNN_MMA_SPLIT_BACKWARD != 0; },
      "Whether the split tensor-core backward for heads of 32 and 64 (CMake "
      "FLASHRNN_MMA_SPLIT_BACKWARD) is built.");
  m.def(
      "mma_cluster_async_push", []() { return FLASHRNN_MMA_CLUSTER_ASYNC_PUSH != 0; },
      "Whether the 8- and 16-CTA cluster forwards push h asynchronously onto arrival barriers (CMake "
      "FLASHRNN_MMA_CLUSTER_ASYNC_PUSH).");
  m.def(
      "mma_rounded_operand", []() { return FLASHRNN_MMA_ROUNDED_OPERAND != 0; },
      "Whether the tensor-core kernels multiply R by h and the gate cotangents rounded to the "
      "input dtype instead of as hi + lo parts (CMake FLASHRNN_MMA_ROUNDED_OPERAND).");
  m.def(
      "backward_inputs_two_ahead", []() { return FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD != 0; },
      "Whether the split and cluster tensor-core backwards load a step's inputs two steps ahead "
      "(CMake FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD).");
  m.def(
      "device_properties",
      [](int device) {
        cudaDeviceProp prop;
        if (cudaError_t err = cudaGetDeviceProperties(&prop, device); err != cudaSuccess) {
          throw std::runtime_error(std::string("cudaGetDeviceProperties failed: ") +
                                   cudaGetErrorString(err));
        }
        nb::dict out;
        out["name"] = std::string(prop.name);
        out["compute_capability"] = nb::make_tuple(prop.major, prop.minor);
        out["sm_count"] = prop.multiProcessorCount;
        out["registers_per_sm"] = prop.regsPerMultiprocessor;
        out["registers_per_block"] = prop.regsPerBlock;
        out["shared_memory_per_block_optin"] = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
        out["shared_memory_per_sm"] = static_cast<int64_t>(prop.sharedMemPerMultiprocessor);
        out["max_threads_per_block"] = prop.maxThreadsPerBlock;
        return out;
      },
      nb::arg("device") = 0, "The CUDA device's limits that the kernels' tiling depends on.");
}
