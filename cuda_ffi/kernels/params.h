// Host-visible interface of the fused kernels: argument structs, the tiling of an
// instantiation, and the launchers that the generated instantiation files define.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "grid_workspace.h"

// The CMake options of the tensor-core kernels, which CMakeLists.txt passes as 0 or 1: off
// where a compile of its own names none (tests/test_kernels_compile.py).
#ifndef FLASHRNN_MMA_FORWARD
#define FLASHRNN_MMA_FORWARD 0
#endif
#ifndef FLASHRNN_MMA_BACKWARD
#define FLASHRNN_MMA_BACKWARD 0
#endif
#ifndef FLASHRNN_MMA_SPLIT_FORWARD
#define FLASHRNN_MMA_SPLIT_FORWARD 0
#endif
#ifndef FLASHRNN_MMA_SPLIT_BACKWARD
#define FLASHRNN_MMA_SPLIT_BACKWARD 0
#endif
#ifndef FLASHRNN_MMA_CLUSTER_FORWARD
#define FLASHRNN_MMA_CLUSTER_FORWARD 0
#endif
#ifndef FLASHRNN_MMA_CLUSTER_BACKWARD
#define FLASHRNN_MMA_CLUSTER_BACKWARD 0
#endif
#ifndef FLASHRNN_MMA_CLUSTER_ASYNC_PUSH
#define FLASHRNN_MMA_CLUSTER_ASYNC_PUSH 0
#endif
#ifndef FLASHRNN_MMA_ROUNDED_OPERAND
#define FLASHRNN_MMA_ROUNDED_OPERAND 0
#endif
#ifndef FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD
#define FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD 0
#endif
#ifndef FLASHRNN_MMA_SPLIT_FORWARD_GATES
#define FLASHRNN_MMA_SPLIT_FORWARD_GATES 0
#endif
#ifndef FLASHRNN_MMA_SPLIT_BACKWARD_16
#define FLASHRNN_MMA_SPLIT_BACKWARD_16 0
#endif
#ifndef FLASHRNN_MMA_SPLIT_BACKWARD_DR
#define FLASHRNN_MMA_SPLIT_BACKWARD_DR 0
#endif

namespace flashrnn {

struct LstmCell;
struct GruCell;
struct SlstmCell;
struct ElmanCell;

// Layouts (row-major): wx [B, T, Gw, N, D]; r [Gr, N, D, D]; bias [Gt, N, D];
// states0 [S, B, N, D]; states_all [S, B, T, N, D]; last_states [S, B, N, D];
// gate_cache [B, T, Gt, N, D]; states_f32 [S, B, T, N, D]; seq_lengths [B]; resets [B, T].
// wx, r, states_all and last_states hold the call's dtype; everything else is float32.
// Every per-time array is in input time order, also when the rows are read in reverse.

// The sequence options shared by forward and backward (flashrnn_jax.flashrnn's semantics):
// row b runs seq_lengths[b] steps (step s reads input s, or seq_lengths[b] - 1 - s when
// reverse); before reading input t with resets[b, t] its states go back to states0.
struct SequenceArgs {
  const int32_t* seq_lengths;  // every row's length, each in 0..steps
  const bool* resets;          // null: no resets
  bool reverse;
};

// What reaches h_prev through R @ h_prev in the backward pass.
enum class RecurrentGradient : int32_t { kFull = 0, kCut = 1, kClip = 2 };

struct ForwardArgs {
  const void* wx;
  const void* r;
  const float* bias;
  const float* states0;
  void* states_all;
  void* last_states;
  float* gate_cache;  // null: forward only, no residuals written
  float* states_f32;  // null with gate_cache
  SequenceArgs seq;
  int64_t batch, steps, heads;
  // grid_workspace.h: for groups larger than a cluster (else null), holding workspace_groups.
  void* workspace;
  int64_t workspace_groups;
};

// d_states_all [S, B, T, N, D] and d_last_states [S, B, N, D] in the call's dtype; the rest
// float32. d_gates [B, T, Gt, N, D] receives the cotangent of every bias gate's
// pre-activation; d_states0 [S, B, N, D] that of the initial states.
struct BackwardArgs {
  const void* r;
  const float* states0;
  const float* gate_cache;
  const float* states_f32;
  const void* d_states_all;
  const void* d_last_states;
  float* d_gates;
  float* d_states0;
  // The weight gradients from the kernels that compute them (the split backward with
  // FLASHRNN_MMA_SPLIT_BACKWARD_DR, target flashrnn_jax_backward_dr); all null otherwise, when
  // they are left to the caller. d_r_partial [batch tiles of kDrPartialBatchTile rows, Gr, N, D,
  // D]: each batch tile's part of dR, summed over its rows and steps. d_b_partial [B, Gt, N, D]:
  // each batch row's part of db, d_gates summed over its steps. d_gates_rounded [B, T, Gt, N, D]
  // in the call's dtype, written instead of d_gates (null then): the caller then needs it only
  // for dWx, in that dtype.
  float* d_r_partial;
  float* d_b_partial;
  void* d_gates_rounded;
  SequenceArgs seq;
  RecurrentGradient recurrent_gradient;
  float clipval;  // with RecurrentGradient::kClip: the cotangent is clipped to [-clipval, clipval]
  int64_t batch, steps, heads;
  // grid_workspace.h: for groups larger than a cluster (else null), holding workspace_groups.
  void* workspace;
  int64_t workspace_groups;
};

// Tile is a Tiling<head size, cluster, batch tile, threads> (tiling.h).
template <typename Cell, typename T, typename Tile>
cudaError_t LaunchForward(const ForwardArgs& args, cudaStream_t stream);

template <typename Cell, typename T, typename Tile>
cudaError_t LaunchBackward(const BackwardArgs& args, cudaStream_t stream);

// Which kernel LaunchForward and LaunchBackward run for a compiled tiling: the tiling's own FMA
// kernel on one CTA or a cluster, or on a group beyond a cluster, or a tensor-core kernel the
// CMake options built that takes the call (the group kernels need the workspace of
// grid_workspace.h); kNone where no kernel built can run the tiling (a tiling that only the
// tensor-core group kernels hold, in a direction or dtype they do not take or with their CMake
// option off: the launcher returns cudaErrorNotSupported and flashrnn_jax.fused says why
// before any call).
enum class KernelPath { kFma, kFmaGridGroup, kMma, kMmaSplit, kMmaCluster, kMmaGridGroup, kNone };

// The path of a tiling that no tensor-core kernel takes: its FMA kernel on one CTA or a
// cluster, or on a group beyond a cluster; none for a tiling of the tensor-core group kernels
// (tiling.h kThreadsBeyondElements), which no FMA kernel runs.
template <typename Tile>
constexpr KernelPath kFmaPath = !IsGridGroup(Tile::kCluster) ? KernelPath::kFma
                                : Tile::kThreadsBeyondElements ? KernelPath::kNone
                                                               : KernelPath::kFmaGridGroup;

// Whether a kernel path exchanges through the global workspace of grid_workspace.h.
constexpr bool NeedsGridWorkspace(KernelPath path) {
  return path == KernelPath::kFmaGridGroup || path == KernelPath::kMmaGridGroup;
}

inline const char* KernelPathName(KernelPath path) {
  switch (path) {
    case KernelPath::kFma: return "fma";
    case KernelPath::kFmaGridGroup: return "fma_grid_group";
    case KernelPath::kMma: return "mma";
    case KernelPath::kMmaSplit: return "mma_split";
    case KernelPath::kMmaCluster: return "mma_cluster";
    case KernelPath::kMmaGridGroup: return "mma_grid_group";
    case KernelPath::kNone: return "none";
  }
  return "unknown";
}

// Whether the backward of a kernel path computes the weight gradients dR and db itself
// (BackwardArgs::d_r_partial, d_b_partial and d_gates_rounded, the FFI target
// flashrnn_jax_backward_dr): the split tensor-core backward built with
// FLASHRNN_MMA_SPLIT_BACKWARD_DR.
constexpr bool BackwardComputesDr(KernelPath path) {
  return FLASHRNN_MMA_SPLIT_BACKWARD_DR && path == KernelPath::kMmaSplit;
}
// The batch rows of each part of d_r_partial: a CTA of the split backward (kMmaBatchTile),
// whatever batch tile the tiling names.
inline constexpr int kDrPartialBatchTile = 8;

template <typename Cell, typename T, typename Tile>
KernelPath ForwardPath();

template <typename Cell, typename T, typename Tile>
KernelPath BackwardPath();

}  // namespace flashrnn
