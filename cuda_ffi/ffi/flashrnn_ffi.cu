// XLA FFI handlers of the fused forward and backward kernels. Each handler checks the shapes
// and dtypes it receives against the cell, picks the compiled instantiation for the call's
// (function, dtype, head size) from the table CMake generated, launches it on the call's stream
// and turns any CUDA error into an ffi::Error carrying the CUDA error text.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/elman_pointwise.cuh"
#include "kernels/grid_workspace.h"
#include "kernels/gru_pointwise.cuh"
#include "kernels/lstm_pointwise.cuh"
#include "kernels/params.h"
#include "ffi/flashrnn_ffi.h"
#include "kernels/slstm_pointwise.cuh"
#include "kernels/tiling.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace flashrnn {
namespace {

struct CompiledKernel {
  std::string_view function;
  ffi::DataType dtype;
  std::string_view dtype_name;
  int head_size, cluster, batch_tile, threads;
  int gates_wx, gates_r, gates_b, states;
  cudaError_t (*forward)(const ForwardArgs&, cudaStream_t);
  cudaError_t (*backward)(const BackwardArgs&, cudaStream_t);
  KernelPath (*forward_path)();
  KernelPath (*backward_path)();
};

#define FLASHRNN_KERNEL(function, Cell, dtype, CType, head_size, cluster, batch_tile, threads) \
  CompiledKernel{#function,                                                                   \
                 ffi::DataType::dtype,                                                        \
                 #dtype,                                                                      \
                 head_size,                                                                   \
                 cluster,                                                                     \
                 batch_tile,                                                                  \
                 threads,                                                                     \
                 Cell::kGatesWx,                                                              \
                 Cell::kGatesR,                                                               \
                 Cell::kGatesB,                                                               \
                 Cell::kStates,                                                               \
                 &LaunchForward<Cell, CType, Tiling<head_size, cluster, batch_tile, threads>>, \
                 &LaunchBackward<Cell, CType, Tiling<head_size, cluster, batch_tile, threads>>, \
                 &ForwardPath<Cell, CType, Tiling<head_size, cluster, batch_tile, threads>>,   \
                 &BackwardPath<Cell, CType, Tiling<head_size, cluster, batch_tile, threads>>},
constexpr CompiledKernel kCompiledKernels[] = {
#include "compiled_grid.inc"
};
#undef FLASHRNN_KERNEL

std::string ShapeString(ffi::AnyBuffer::Dimensions dims) {
  std::string out = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return out + ")";
}

// The compiled variant Python selected (flashrnn_jax.fused._select_tiling).
struct Variant {
  std::string_view function;
  int32_t cluster, batch_tile, threads;
};

// The call's kernel, or an error naming what is not compiled.
ffi::Error FindKernel(const Variant& v, ffi::DataType dtype, int64_t head_size,
                      const CompiledKernel** found) {
  for (const CompiledKernel& k : kCompiledKernels) {
    if (k.function == v.function && k.dtype == dtype && k.head_size == head_size &&
        k.cluster == v.cluster && k.batch_tile == v.batch_tile && k.threads == v.threads) {
      *found = &k;
      return ffi::Error::Success();
    }
  }
  return ffi::Error::InvalidArgument(
      "flashrnn_jax: no fused kernel compiled for function=" + std::string(v.function) +
      ", head size " + std::to_string(head_size) + ", this dtype and tiling (cluster " +
      std::to_string(v.cluster) + ", batch tile " + std::to_string(v.batch_tile) + ", " +
      std::to_string(v.threads) + " threads)");
}

ffi::Error CheckShape(std::string_view name, ffi::AnyBuffer::Dimensions dims,
                      std::initializer_list<int64_t> expected) {
  bool ok = dims.size() == expected.size();
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = dims[i] == expected.begin()[i];
  if (ok) return ffi::Error::Success();
  std::string want = "(";
  for (size_t i = 0; i < expected.size(); ++i) {
    want += (i ? ", " : "") + std::to_string(expected.begin()[i]);
  }
  return ffi::Error::InvalidArgument("flashrnn_jax: " + std::string(name) + " must have shape " +
                                     want + "), got " + ShapeString(dims));
}

ffi::Error CudaError(std::string_view what, cudaError_t err) {
  return ffi::Error::Internal("flashrnn_jax: " + std::string(what) +
                              " failed: " + cudaGetErrorName(err) + ": " +
                              cudaGetErrorString(err));
}

// Fills the outputs with NaN (all bits set is NaN in bf16, f16 and f32) so that tests see
// any element a kernel fails to write.
ffi::Error PoisonOutputs(cudaStream_t stream, std::initializer_list<ffi::AnyBuffer> outputs) {
  for (const ffi::AnyBuffer& out : outputs) {
    if (cudaError_t err = cudaMemsetAsync(out.untyped_data(), 0xFF, out.size_bytes(), stream);
        err != cudaSuccess) {
      return CudaError("poisoning an output", err);
    }
  }
  return ffi::Error::Success();
}

#define FLASHRNN_RETURN_IF_ERROR(expr)  \
  do {                                  \
    if (ffi::Error e = (expr); e.failure()) return e; \
  } while (0)

// The global memory a kernel's CTA groups exchange through when they are larger than a
// cluster (grid_workspace.h: for the groups the device holds at once), from XLA's scratch
// allocator; null when it needs none.
template <typename Args>
ffi::Error AllocateWorkspace(ffi::ScratchAllocator& scratch, const CompiledKernel& k,
                             bool backward, Args* args) {
  args->workspace = nullptr;
  args->workspace_groups = 0;
  if (!NeedsGridWorkspace((backward ? k.backward_path : k.forward_path)())) {
    return ffi::Error::Success();
  }
  int device = 0, sms = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) {
    return CudaError("cudaGetDevice", err);
  }
  if (cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      err != cudaSuccess) {
    return CudaError("reading the SM count", err);
  }
  const int64_t held = GridGroupsHeld(k.cluster, k.batch_tile, args->batch, args->heads, sms);
  const std::size_t bytes =
      GridWorkspaceBytes(backward, k.cluster, k.batch_tile, k.head_size, held);
  if (bytes == 0) return ffi::Error::Success();
  // XLA's FFI scratch allocations take an alignment of at most 16 bytes.
  std::optional<void*> allocated = scratch.Allocate(bytes, 16);
  if (!allocated.has_value()) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "flashrnn_jax: could not allocate the " + std::to_string(bytes) +
                          " bytes of scratch memory that the CTA groups of head size " +
                          std::to_string(k.head_size) + " exchange through");
  }
  args->workspace = *allocated;
  args->workspace_groups = held;
  return ffi::Error::Success();
}

// Shapes shared by forward and backward, read off R [Gr, N, D, D] and states0 [S, B, N, D].
struct Problem {
  const CompiledKernel* kernel;
  int64_t batch, heads, head_size;
};

ffi::Error ResolveProblem(const Variant& variant, ffi::AnyBuffer r, ffi::AnyBuffer states0,
                          Problem* problem) {
  const auto r_dims = r.dimensions();
  const auto s_dims = states0.dimensions();
  if (r_dims.size() != 4 || s_dims.size() != 4) {
    return ffi::Error::InvalidArgument("flashrnn_jax: R must have rank 4 and states0 rank 4, got " +
                                       ShapeString(r_dims) + " and " + ShapeString(s_dims));
  }
  const CompiledKernel* k = nullptr;
  FLASHRNN_RETURN_IF_ERROR(FindKernel(variant, r.element_type(), r_dims[3], &k));
  *problem = Problem{k, s_dims[1], r_dims[1], r_dims[3]};
  FLASHRNN_RETURN_IF_ERROR(CheckShape(
      "R", r_dims, {k->gates_r, problem->heads, problem->head_size, problem->head_size}));
  FLASHRNN_RETURN_IF_ERROR(CheckShape(
      "states0", s_dims, {k->states, problem->batch, problem->heads, problem->head_size}));
  if (states0.element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("flashrnn_jax: states0 must be float32");
  }
  return ffi::Error::Success();
}

// The sequence options as the kernels take them: seq_lengths int32 [B] (always passed; full
// lengths when the caller gave none) and resets bool [B, T], read only when has_resets.
ffi::Error ResolveSequence(const Problem& p, int64_t steps, ffi::AnyBuffer seq_lengths,
                           ffi::AnyBuffer resets, bool has_resets, bool reverse,
                           SequenceArgs* seq) {
  FLASHRNN_RETURN_IF_ERROR(CheckShape("seq_lengths", seq_lengths.dimensions(), {p.batch}));
  // The kernels count steps in int, up to step + 2 (kernels/sequence.cuh; flashrnn_jax.fused
  // refuses first).
  if (steps > std::numeric_limits<int32_t>::max() - 1) {
    return ffi::Error::InvalidArgument(
        "flashrnn_jax: the kernels run at most 2^31 - 2 steps, got T = " + std::to_string(steps));
  }
  if (seq_lengths.element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument("flashrnn_jax: seq_lengths must be int32");
  }
  if (has_resets) {
    FLASHRNN_RETURN_IF_ERROR(CheckShape("resets", resets.dimensions(), {p.batch, steps}));
    if (resets.element_type() != ffi::DataType::PRED) {
      return ffi::Error::InvalidArgument("flashrnn_jax: resets must be bool");
    }
  }
  seq->seq_lengths = static_cast<const int32_t*>(seq_lengths.untyped_data());
  seq->resets = has_resets ? static_cast<const bool*>(resets.untyped_data()) : nullptr;
  seq->reverse = reverse;
  return ffi::Error::Success();
}

ffi::Error Forward(cudaStream_t stream, ffi::ScratchAllocator& scratch, const Variant& variant,
                   ffi::AnyBuffer wx,
                   ffi::AnyBuffer r, ffi::AnyBuffer bias, ffi::AnyBuffer states0,
                   ffi::AnyBuffer seq_lengths, ffi::AnyBuffer resets, bool has_resets,
                   bool reverse, ffi::AnyBuffer states_all, ffi::AnyBuffer last_states,
                   ffi::AnyBuffer* gate_cache, ffi::AnyBuffer* states_f32, bool poison) {
  Problem p;
  FLASHRNN_RETURN_IF_ERROR(ResolveProblem(variant, r, states0, &p));
  const CompiledKernel& k = *p.kernel;
  const auto wx_dims = wx.dimensions();
  if (wx_dims.size() != 5) {
    return ffi::Error::InvalidArgument("flashrnn_jax: Wx must have rank 5, got " +
                                       ShapeString(wx_dims));
  }
  const int64_t steps = wx_dims[1];
  FLASHRNN_RETURN_IF_ERROR(
      CheckShape("Wx", wx_dims, {p.batch, steps, k.gates_wx, p.heads, p.head_size}));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("b", bias.dimensions(), {k.gates_b, p.heads, p.head_size}));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("states_all", states_all.dimensions(),
                                      {k.states, p.batch, steps, p.heads, p.head_size}));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("last_states", last_states.dimensions(),
                                      {k.states, p.batch, p.heads, p.head_size}));
  if (wx.element_type() != k.dtype || states_all.element_type() != k.dtype ||
      last_states.element_type() != k.dtype || bias.element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument(
        "flashrnn_jax: Wx, R, states_all and last_states must share one dtype and b must be "
        "float32");
  }
  if (gate_cache != nullptr) {
    FLASHRNN_RETURN_IF_ERROR(CheckShape("gate_cache", gate_cache->dimensions(),
                                        {p.batch, steps, k.gates_b, p.heads, p.head_size}));
    FLASHRNN_RETURN_IF_ERROR(CheckShape("states_f32", states_f32->dimensions(),
                                        {k.states, p.batch, steps, p.heads, p.head_size}));
  }
  ForwardArgs args;
  FLASHRNN_RETURN_IF_ERROR(
      ResolveSequence(p, steps, seq_lengths, resets, has_resets, reverse, &args.seq));
  args.wx = wx.untyped_data();
  args.r = r.untyped_data();
  args.bias = static_cast<const float*>(bias.untyped_data());
  args.states0 = static_cast<const float*>(states0.untyped_data());
  args.states_all = states_all.untyped_data();
  args.last_states = last_states.untyped_data();
  args.gate_cache = gate_cache ? static_cast<float*>(gate_cache->untyped_data()) : nullptr;
  args.states_f32 = states_f32 ? static_cast<float*>(states_f32->untyped_data()) : nullptr;
  args.batch = p.batch;
  args.steps = steps;
  args.heads = p.heads;
  FLASHRNN_RETURN_IF_ERROR(AllocateWorkspace(scratch, k, false, &args));
  if (poison) {
    FLASHRNN_RETURN_IF_ERROR(PoisonOutputs(stream, {states_all, last_states}));
    if (gate_cache != nullptr) {
      FLASHRNN_RETURN_IF_ERROR(PoisonOutputs(stream, {*gate_cache, *states_f32}));
    }
  }
  if (cudaError_t err = k.forward(args, stream); err != cudaSuccess) {
    return CudaError("fused forward kernel launch", err);
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer wx,
                       ffi::AnyBuffer r, ffi::AnyBuffer bias, ffi::AnyBuffer states0,
                       ffi::AnyBuffer seq_lengths, ffi::AnyBuffer resets,
                       ffi::Result<ffi::AnyBuffer> states_all,
                       ffi::Result<ffi::AnyBuffer> last_states, std::string_view function,
                       bool poison, int32_t cluster, int32_t batch_tile, int32_t threads,
                       bool has_resets, bool reverse) {
  return Forward(stream, scratch, {function, cluster, batch_tile, threads}, wx, r, bias, states0,
                 seq_lengths, resets, has_resets, reverse, *states_all, *last_states, nullptr,
                 nullptr, poison);
}

ffi::Error ForwardTrainImpl(cudaStream_t stream, ffi::ScratchAllocator scratch,
                            ffi::AnyBuffer wx, ffi::AnyBuffer r, ffi::AnyBuffer bias,
                            ffi::AnyBuffer states0,
                            ffi::AnyBuffer seq_lengths, ffi::AnyBuffer resets,
                            ffi::Result<ffi::AnyBuffer> states_all,
                            ffi::Result<ffi::AnyBuffer> last_states,
                            ffi::Result<ffi::AnyBuffer> gate_cache,
                            ffi::Result<ffi::AnyBuffer> states_f32, std::string_view function,
                            bool poison, int32_t cluster, int32_t batch_tile, int32_t threads,
                            bool has_resets, bool reverse) {
  ffi::AnyBuffer cache = *gate_cache, states = *states_f32;
  return Forward(stream, scratch, {function, cluster, batch_tile, threads}, wx, r, bias, states0,
                 seq_lengths, resets, has_resets, reverse, *states_all, *last_states, &cache,
                 &states, poison);
}

// The weight gradients' parts of flashrnn_jax_backward_dr (BackwardArgs): dR's [batch tiles,
// Gr, N, D, D] and db's [B, Gt, N, D], float32.
struct WeightGradientParts {
  ffi::AnyBuffer d_r, d_b;
};

// The backward of either target: weight_gradients null (flashrnn_jax_backward: the caller forms
// dR and db from d_gates, float32) or the parts of dR and db (flashrnn_jax_backward_dr, for the
// kernels that compute them; d_gates then in the call's dtype).
ffi::Error Backward(cudaStream_t stream, ffi::ScratchAllocator& scratch, ffi::AnyBuffer r,
                    ffi::AnyBuffer states0, ffi::AnyBuffer gate_cache, ffi::AnyBuffer states_f32,
                    ffi::AnyBuffer d_states_all, ffi::AnyBuffer d_last_states,
                    ffi::AnyBuffer seq_lengths, ffi::AnyBuffer resets, ffi::AnyBuffer d_gates,
                    ffi::AnyBuffer d_states0, const WeightGradientParts* weight_gradients,
                    std::string_view function, bool poison, int32_t cluster, int32_t batch_tile,
                    int32_t threads, bool has_resets, bool reverse, int32_t recurrent_gradient,
                    float clipval) {
  const Variant variant{function, cluster, batch_tile, threads};
  Problem p;
  FLASHRNN_RETURN_IF_ERROR(ResolveProblem(variant, r, states0, &p));
  const CompiledKernel& k = *p.kernel;
  const auto cache_dims = gate_cache.dimensions();
  if (cache_dims.size() != 5) {
    return ffi::Error::InvalidArgument("flashrnn_jax: gate_cache must have rank 5, got " +
                                       ShapeString(cache_dims));
  }
  const int64_t steps = cache_dims[1];
  const std::initializer_list<int64_t> all_states = {k.states, p.batch, steps, p.heads,
                                                     p.head_size};
  const std::initializer_list<int64_t> gates = {p.batch, steps, k.gates_b, p.heads, p.head_size};
  const std::initializer_list<int64_t> last = {k.states, p.batch, p.heads, p.head_size};
  FLASHRNN_RETURN_IF_ERROR(CheckShape("gate_cache", cache_dims, gates));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("states_f32", states_f32.dimensions(), all_states));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("d_states_all", d_states_all.dimensions(), all_states));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("d_last_states", d_last_states.dimensions(), last));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("d_gates", d_gates.dimensions(), gates));
  FLASHRNN_RETURN_IF_ERROR(CheckShape("d_states0", d_states0.dimensions(), last));
  std::vector<std::pair<const char*, ffi::AnyBuffer>> float32_buffers = {
      {"gate_cache", gate_cache}, {"states_f32", states_f32}, {"d_states0", d_states0}};
  if (weight_gradients != nullptr) {
    if (!BackwardComputesDr(k.backward_path())) {
      return ffi::Error::InvalidArgument(
          "flashrnn_jax: flashrnn_jax_backward_dr called for a backward kernel that leaves dR "
          "and db to the caller (" + std::string(KernelPathName(k.backward_path())) +
          "); call flashrnn_jax_backward");
    }
    const int64_t batch_tiles = (p.batch + kDrPartialBatchTile - 1) / kDrPartialBatchTile;
    FLASHRNN_RETURN_IF_ERROR(CheckShape(
        "d_r_partial", weight_gradients->d_r.dimensions(),
        {batch_tiles, k.gates_r, p.heads, p.head_size, p.head_size}));
    FLASHRNN_RETURN_IF_ERROR(CheckShape("d_b_partial", weight_gradients->d_b.dimensions(),
                                        {p.batch, k.gates_b, p.heads, p.head_size}));
    float32_buffers.push_back({"d_r_partial", weight_gradients->d_r});
    float32_buffers.push_back({"d_b_partial", weight_gradients->d_b});
    if (d_gates.element_type() != k.dtype) {
      return ffi::Error::InvalidArgument(
          "flashrnn_jax: d_gates of flashrnn_jax_backward_dr must have the dtype of R");
    }
  } else {
    float32_buffers.push_back({"d_gates", d_gates});
  }
  for (const auto& [name, buffer] : float32_buffers) {
    if (buffer.element_type() != ffi::DataType::F32) {
      return ffi::Error::InvalidArgument("flashrnn_jax: " + std::string(name) +
                                         " must be float32");
    }
  }
  if (d_states_all.element_type() != k.dtype || d_last_states.element_type() != k.dtype) {
    return ffi::Error::InvalidArgument(
        "flashrnn_jax: the state cotangents must have the dtype of R");
  }
  if (recurrent_gradient < 0 || recurrent_gradient > 2) {
    return ffi::Error::InvalidArgument(
        "flashrnn_jax: recurrent_gradient must be 0 (full), 1 (cut) or 2 (clip), got " +
        std::to_string(recurrent_gradient));
  }
  if (static_cast<RecurrentGradient>(recurrent_gradient) == RecurrentGradient::kClip &&
      !(clipval > 0.0f)) {
    return ffi::Error::InvalidArgument("flashrnn_jax: clipval must be > 0, got " +
                                       std::to_string(clipval));
  }
  BackwardArgs args;
  FLASHRNN_RETURN_IF_ERROR(
      ResolveSequence(p, steps, seq_lengths, resets, has_resets, reverse, &args.seq));
  args.recurrent_gradient = static_cast<RecurrentGradient>(recurrent_gradient);
  args.clipval = clipval;
  args.r = r.untyped_data();
  args.states0 = static_cast<const float*>(states0.untyped_data());
  args.gate_cache = static_cast<const float*>(gate_cache.untyped_data());
  args.states_f32 = static_cast<const float*>(states_f32.untyped_data());
  args.d_states_all = d_states_all.untyped_data();
  args.d_last_states = d_last_states.untyped_data();
  args.d_states0 = static_cast<float*>(d_states0.untyped_data());
  if (weight_gradients != nullptr) {
    args.d_gates = nullptr;
    args.d_gates_rounded = d_gates.untyped_data();
    args.d_r_partial = static_cast<float*>(weight_gradients->d_r.untyped_data());
    args.d_b_partial = static_cast<float*>(weight_gradients->d_b.untyped_data());
  } else {
    args.d_gates = static_cast<float*>(d_gates.untyped_data());
    args.d_gates_rounded = nullptr;
    args.d_r_partial = nullptr;
    args.d_b_partial = nullptr;
  }
  args.batch = p.batch;
  args.steps = steps;
  args.heads = p.heads;
  FLASHRNN_RETURN_IF_ERROR(AllocateWorkspace(scratch, k, true, &args));
  if (poison) {
    FLASHRNN_RETURN_IF_ERROR(PoisonOutputs(stream, {d_gates, d_states0}));
    if (weight_gradients != nullptr) {
      FLASHRNN_RETURN_IF_ERROR(
          PoisonOutputs(stream, {weight_gradients->d_r, weight_gradients->d_b}));
    }
  }
  if (cudaError_t err = k.backward(args, stream); err != cudaSuccess) {
    return CudaError("fused backward kernel launch", err);
  }
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer r,
                        ffi::AnyBuffer states0, ffi::AnyBuffer gate_cache,
                        ffi::AnyBuffer states_f32, ffi::AnyBuffer d_states_all,
                        ffi::AnyBuffer d_last_states, ffi::AnyBuffer seq_lengths,
                        ffi::AnyBuffer resets, ffi::Result<ffi::AnyBuffer> d_gates,
                        ffi::Result<ffi::AnyBuffer> d_states0, std::string_view function,
                        bool poison, int32_t cluster, int32_t batch_tile, int32_t threads,
                        bool has_resets, bool reverse, int32_t recurrent_gradient,
                        float clipval) {
  return Backward(stream, scratch, r, states0, gate_cache, states_f32, d_states_all,
                  d_last_states, seq_lengths, resets, *d_gates, *d_states0, nullptr, function,
                  poison, cluster, batch_tile, threads, has_resets, reverse, recurrent_gradient,
                  clipval);
}

ffi::Error BackwardDrImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer r,
                          ffi::AnyBuffer states0, ffi::AnyBuffer gate_cache,
                          ffi::AnyBuffer states_f32, ffi::AnyBuffer d_states_all,
                          ffi::AnyBuffer d_last_states, ffi::AnyBuffer seq_lengths,
                          ffi::AnyBuffer resets, ffi::Result<ffi::AnyBuffer> d_gates,
                          ffi::Result<ffi::AnyBuffer> d_states0,
                          ffi::Result<ffi::AnyBuffer> d_r_partial,
                          ffi::Result<ffi::AnyBuffer> d_b_partial, std::string_view function,
                          bool poison, int32_t cluster, int32_t batch_tile, int32_t threads,
                          bool has_resets, bool reverse, int32_t recurrent_gradient,
                          float clipval) {
  const WeightGradientParts parts{*d_r_partial, *d_b_partial};
  return Backward(stream, scratch, r, states0, gate_cache, states_f32, d_states_all,
                  d_last_states, seq_lengths, resets, *d_gates, *d_states0, &parts, function,
                  poison, cluster, batch_tile, threads, has_resets, reverse, recurrent_gradient,
                  clipval);
}

}  // namespace

std::vector<CompiledTiling> CompiledGrid() {
  std::vector<CompiledTiling> grid;
  for (const CompiledKernel& k : kCompiledKernels) {
    grid.emplace_back(std::string(k.function), std::string(k.dtype_name), k.head_size, k.cluster,
                      k.batch_tile, k.threads, KernelPathName(k.forward_path()),
                      KernelPathName(k.backward_path()));
  }
  return grid;
}

}  // namespace flashrnn

namespace {

// The bindings of the targets, each from the buffers its direction's targets share, then (after
// any output of their own) the attributes they share.
auto ForwardBuffers() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<cudaStream_t>>()
      .Ctx<ffi::ScratchAllocator>()
      .Arg<ffi::AnyBuffer>()  // Wx
      .Arg<ffi::AnyBuffer>()  // R
      .Arg<ffi::AnyBuffer>()  // b
      .Arg<ffi::AnyBuffer>()  // states0
      .Arg<ffi::AnyBuffer>()  // seq_lengths
      .Arg<ffi::AnyBuffer>()  // resets
      .Ret<ffi::AnyBuffer>()  // states_all
      .Ret<ffi::AnyBuffer>();  // last_states
}

// (Bindings are built from rvalues only: their move constructor is private.)
template <typename Binding>
auto WithForwardAttributes(Binding&& binding) {
  return std::move(binding)
      .template Attr<std::string_view>("function")
      .template Attr<bool>("poison_outputs")
      .template Attr<int32_t>("cluster")
      .template Attr<int32_t>("batch_tile")
      .template Attr<int32_t>("threads")
      .template Attr<bool>("has_resets")
      .template Attr<bool>("reverse");
}

auto BackwardBuffers() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<cudaStream_t>>()
      .Ctx<ffi::ScratchAllocator>()
      .Arg<ffi::AnyBuffer>()  // R
      .Arg<ffi::AnyBuffer>()  // states0
      .Arg<ffi::AnyBuffer>()  // gate_cache
      .Arg<ffi::AnyBuffer>()  // states_f32
      .Arg<ffi::AnyBuffer>()  // d_states_all
      .Arg<ffi::AnyBuffer>()  // d_last_states
      .Arg<ffi::AnyBuffer>()  // seq_lengths
      .Arg<ffi::AnyBuffer>()  // resets
      .Ret<ffi::AnyBuffer>()  // d_gates
      .Ret<ffi::AnyBuffer>();  // d_states0
}

// The forward's attributes and how much of the recurrent cotangent goes through.
template <typename Binding>
auto WithBackwardAttributes(Binding&& binding) {
  return WithForwardAttributes(std::move(binding))
      .template Attr<int32_t>("recurrent_gradient")
      .template Attr<float>("clipval");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashrnnForward, flashrnn::ForwardImpl,
                              WithForwardAttributes(ForwardBuffers()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashrnnForwardTrain, flashrnn::ForwardTrainImpl,
                              WithForwardAttributes(ForwardBuffers()
                                                        .Ret<ffi::AnyBuffer>()     // gate_cache
                                                        .Ret<ffi::AnyBuffer>()));  // states_f32

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashrnnBackward, flashrnn::BackwardImpl,
                              WithBackwardAttributes(BackwardBuffers()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashrnnBackwardDr, flashrnn::BackwardDrImpl,
                              WithBackwardAttributes(BackwardBuffers()
                                                         .Ret<ffi::AnyBuffer>()     // d_r_partial
                                                         .Ret<ffi::AnyBuffer>()));  // d_b_partial
