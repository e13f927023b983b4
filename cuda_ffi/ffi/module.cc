// The nanobind module flashrnn_jax._cuda: the FFI handler capsules that flashrnn_jax/fused.py
// registers with jax.ffi.register_ffi_target(platform="CUDA"), and the compiled grid.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

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
        "The compiled (function, dtype, head size) triples; dtypes as BF16, F16, F32.");
}
