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
