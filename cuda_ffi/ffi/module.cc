// The nanobind module flashrnn_jax._cuda: a name -> FFI handler capsule table that
// flashrnn_jax/fused.py registers with jax.ffi.register_ffi_target(platform="CUDA").
#include <nanobind/nanobind.h>

#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

extern "C" XLA_FFI_Error* FlashrnnProbe(XLA_FFI_CallFrame* call_frame);

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
    table["flashrnn_jax_probe"] = Capsule(FlashrnnProbe);
    return table;
  });
}
