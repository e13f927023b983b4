// What the nanobind module needs from the FFI handlers: their symbols and the compiled grid.
#pragma once

#include <string>
#include <tuple>
#include <vector>

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* FlashrnnForward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* FlashrnnForwardTrain(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* FlashrnnBackward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* FlashrnnBackwardDr(XLA_FFI_CallFrame* call_frame);
}

namespace flashrnn {

// (function, dtype name as XLA's: BF16, F16, F32, head size, cluster, batch tile, threads).
using CompiledTiling =
    std::tuple<std::string, std::string, int, int, int, int, std::string, std::string>;

// Every compiled kernel instantiation with its tiling and the kernels its forward and backward
// run (KernelPathName).
std::vector<CompiledTiling> CompiledGrid();

}  // namespace flashrnn
