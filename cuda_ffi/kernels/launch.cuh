// Launch of a persistent kernel over every head and batch tile: grid (heads * kCluster,
// batch tiles), thread-block clusters of kCluster CTAs along x, opt-in dynamic shared memory;
// and of the grid kernels of groups larger than a cluster, cooperatively.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "grid_workspace.h"

namespace flashrnn {

// The registers a thread of a persistent kernel of `threads` threads may take: the SM's 64K
// over its threads (one CTA an SM), in ptxas's steps of 8, at most 255. The kernels give it as
// __maxnreg__ rather than __launch_bounds__(threads, 1), which caps them alike but under which
// ptxas left registers unused and recomputed thread-index addresses every step (the sLSTM's
// split backward at 64: 78 registers and 458 instructions a step, 343 under __maxnreg__;
// benchmarks/NOTES.md). Without either, ptxas held some kernels to 64 registers and spilled.
constexpr int PersistentKernelRegisters(int threads) {
  return std::min(255, 65536 / threads / 8 * 8);
}

template <typename Tile, typename Args>
cudaError_t LaunchOverHeadsAndBatchTiles(void (*kernel)(Args), const Args& args,
                                         std::size_t smem_bytes, cudaStream_t stream) {
  if (cudaError_t err = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
      err != cudaSuccess) {
    return err;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(args.heads * Tile::kCluster),
                        static_cast<unsigned>((args.batch + Tile::kBatchTile - 1) /
                                              Tile::kBatchTile));
  config.blockDim = dim3(Tile::kThreads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute cluster = {};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = Tile::kCluster;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  if constexpr (Tile::kCluster > 8) {
    if (cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
        err != cudaSuccess) {
      return err;
    }
  }
  config.attrs = &cluster;
  config.numAttrs = Tile::kCluster > 1 ? 1 : 0;
  if (cudaError_t err = cudaLaunchKernelEx(&config, kernel, args); err != cudaSuccess) {
    return err;
  }
  return cudaGetLastError();
}

// Launches a grid kernel (ForwardGridKernel, BackwardGridKernel) over every (head, batch tile)
// group of Tile::kCluster CTAs. Its barrier needs all CTAs of a group resident at once, so the
// groups go in chunks of args.workspace_groups (as many as the SMs hold: the FFI handler sized
// the workspace so), one launch each in stream order, each launched cooperatively: a launch that
// cannot be resident fails instead of deadlocking. The workspace's barrier counters are zeroed
// before each (grid_workspace.h).
template <typename Tile, typename Args>
cudaError_t LaunchGridGroups(void (*kernel)(Args, int64_t), const Args& args,
                             std::size_t smem_bytes, cudaStream_t stream) {
  constexpr int C = Tile::kCluster;
  if (cudaError_t err = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
      err != cudaSuccess) {
    return err;
  }
  const int64_t chunk = args.workspace_groups;
  const int64_t groups = GridGroups(Tile::kBatchTile, args.batch, args.heads);
  cudaLaunchAttribute cooperative = {};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  for (int64_t group0 = 0; group0 < groups; group0 += chunk) {
    if (cudaError_t err = cudaMemsetAsync(args.workspace, 0, GridCounterBytes(chunk), stream);
        err != cudaSuccess) {
      return err;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(std::min(chunk, groups - group0) * C));
    config.blockDim = dim3(Tile::kThreads);
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    config.attrs = &cooperative;
    config.numAttrs = 1;
    if (cudaError_t err = cudaLaunchKernelEx(&config, kernel, args, group0); err != cudaSuccess) {
      return err;
    }
  }
  return cudaGetLastError();
}

}  // namespace flashrnn
