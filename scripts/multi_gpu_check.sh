#!/usr/bin/env bash
# One call of a lent machine with several GPUs (issue 8): build the CUDA kernels and run the
# sharded GPU tests over all the GPUs (scripts/gpu_check.sh with GPU_TESTS=test_sharding.py and
# no quick benchmark; its compute-sanitizer runs come along), then the weak-scaling benchmark
# benchmarks/scaling.py over 1, 2, 4, ... GPUs with --check, printing its table last.
#   usage: scripts/multi_gpu_check.sh   (logs and JSON go to $OUT, or build/multi_gpu_check_out;
#          SCALING_ARGS adds arguments to scaling.py, e.g. SCALING_ARGS="--functions lstm slstm";
#          PYTEST_WORKERS sets the test processes, 2 by default; gpu_check.sh's build options,
#          MMA_FORWARD=0 and the others, apply)
set -uo pipefail
# NVLink multicast (NVLS) stays off in every library that could use it: NCCL (XLA's
# collectives run on it), PyTorch and NVSHMEM. On the lent hosts a program that uses it can put
# the host's GPUs, which others share, out of service for a day or more. Exported, so that every
# process started below inherits them.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# As gpu_check.sh sets it for the one-GPU benchmarks, so that the numbers compare.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/build/multi_gpu_check_out}"
mkdir -p "$out"
echo "== $(nvidia-smi -L | wc -l) GPUs"

# test_sharding.py's GPU tests split one call over every GPU JAX sees, by batch and by heads,
# and compare it with one GPU.
OUT="$out" STEPS="build tests" GPU_TESTS="test_sharding.py" PYTEST_WORKERS="${PYTEST_WORKERS:-2}" \
  "$repo/scripts/gpu_check.sh"
check_rc=$?

echo "== weak scaling"
# From outside the checkout, so that the installed package (with _cuda) is the one imported.
cd /tmp
# SCALING_ARGS unquoted on purpose: split into its words.
# shellcheck disable=SC2086
python3 "$repo/benchmarks/scaling.py" --check --out "$out" ${SCALING_ARGS:-}
scaling_rc=$?
[ "$check_rc" -ne 0 ] && exit "$check_rc"
exit "$scaling_rc"
