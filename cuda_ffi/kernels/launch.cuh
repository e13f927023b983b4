// Launch of a persistent kernel over every head and batch tile: grid (heads * kCluster,
// batch tiles), thread-block clusters of kCluster CTAs along x, opt-in dynamic shared memory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

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

}  // namespace flashrnn
