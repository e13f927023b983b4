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
    table["flashrnn_jax_backward_dr"] = Capsule(FlashrnnBackwardDr);
    return table;
  });
  m.def("compiled_grid", &flashrnn::CompiledGrid,
        "The compiled kernels: (function, dtype as BF16/F16/F32, head size, cluster, batch tile, "
        "threads, the forward's kernel, the backward's kernel), the kernels named fma, "
        "fma_grid_group, mma, mma_split or mma_cluster.");
  m.def(
      "build_options",
      []() {
        nb::dict options;
        options["forward"] = FLASHRNN_MMA_FORWARD != 0;
        options["backward"] = FLASHRNN_MMA_BACKWARD != 0;
        options["cluster_forward"] = FLASHRNN_MMA_CLUSTER_FORWARD != 0;
        options["cluster_backward"] = FLASHRNN_MMA_CLUSTER_BACKWARD != 0;
        options["split_forward"] = FLASHRNN_MMA_SPLIT_FORWARD != 0;
        options["split_backward"] = FLASHRNN_MMA_SPLIT_BACKWARD != 0;
        options["cluster_async_push"] = FLASHRNN_MMA_CLUSTER_ASYNC_PUSH != 0;
        options["backward_inputs_two_ahead"] = FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD != 0;
        options["rounded_operand"] = FLASHRNN_MMA_ROUNDED_OPERAND != 0;
        options["split_forward_gates"] = FLASHRNN_MMA_SPLIT_FORWARD_GATES != 0;
        options["split_backward_16"] = FLASHRNN_MMA_SPLIT_BACKWARD_16 != 0;
        options["split_backward_dr"] = FLASHRNN_MMA_SPLIT_BACKWARD_DR != 0;
        return options;
      },
      "Which of the kernels' CMake options (params.h) the build has on: the tensor-core "
      "forward and backward (FLASHRNN_MMA_FORWARD, FLASHRNN_MMA_BACKWARD), their cluster and "
      "split kinds (FLASHRNN_MMA_CLUSTER_*, FLASHRNN_MMA_SPLIT_*) and the experimental "
      "FLASHRNN_MMA_CLUSTER_ASYNC_PUSH, FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD, "
      "FLASHRNN_MMA_ROUNDED_OPERAND, FLASHRNN_MMA_SPLIT_FORWARD_GATES, "
      "FLASHRNN_MMA_SPLIT_BACKWARD_16 and FLASHRNN_MMA_SPLIT_BACKWARD_DR.");
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
