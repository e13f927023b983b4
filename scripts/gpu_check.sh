#!/usr/bin/env bash
# One call of the lent GPU machine: build the CUDA kernels, run the GPU tests (writing the
# summary JSON), run compute-sanitizer (memcheck, racecheck) on a small case of every kernel,
# and run the quick benchmark, printing its table last.
#   usage: scripts/gpu_check.sh   (logs and JSON go to $OUT, or build/gpu_check_out;
#          SKIP_BENCH=1 leaves out the benchmark; MMA_FORWARD=0 builds without the
#          tensor-core forward, MMA_BACKWARD=0 without the tensor-core backward,
#          MMA_CLUSTER=0 without the cluster tensor-core forward and backward (head size 256);
#          MMA_SPLIT=1 with the experimental split tensor-core forward (head size 64);
#          PYTEST_WORKERS sets the test processes, 12 by default; GPU_TESTS the test files,
#          all GPU tests by default; TEST_TIMEOUT_S, SANITIZER_TIMEOUT_S and BENCH_TIMEOUT_S
#          bound one test, each sanitizer run and the benchmark: 240, 300 and 300 s)
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/build/gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# XLA's GEMM autotuner crashed compute-sanitizer once; the kernels under test need no tuning.
sanitizer_env="XLA_FLAGS=--xla_gpu_autotune_level=0"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
cd "$repo"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')"
echo "== GPU: $gpu"

echo "== build"
start=$(date +%s)
mma=ON
[ "${MMA_FORWARD:-1}" = 0 ] && mma=OFF
mma_backward=ON
[ "${MMA_BACKWARD:-1}" = 0 ] && mma_backward=OFF
mma_cluster=ON
[ "${MMA_CLUSTER:-1}" = 0 ] && mma_cluster=OFF
mma_split=OFF
[ "${MMA_SPLIT:-0}" = 1 ] && mma_split=ON
if ! python3 -m pip install --no-build-isolation --no-deps -v . \
    -Ccmake.define.FLASHRNN_CUDA=ON -Ccmake.define.FLASHRNN_MMA_FORWARD=$mma \
    -Ccmake.define.FLASHRNN_MMA_BACKWARD=$mma_backward \
    -Ccmake.define.FLASHRNN_MMA_CLUSTER_FORWARD=$mma_cluster \
    -Ccmake.define.FLASHRNN_MMA_CLUSTER_BACKWARD=$mma_cluster \
    -Ccmake.define.FLASHRNN_MMA_SPLIT_FORWARD=$mma_split \
    >"$out/build.log" 2>&1; then
  tail -60 "$out/build.log"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s (tensor-core forward: $mma, backward: $mma_backward," \
  "cluster forward and backward: $mma_cluster, split forward: $mma_split)"

# From outside the checkout, so that the installed package (with _cuda) is the one imported.
cd /tmp
# The sanitizers run beside the tests (they only check, timing does not matter to either).
# Each is bounded (exit 124 when cut): a kernel that hung under a tool must not take the
# whole call, and the benchmark after it, with it.
declare -A sanitizer_pid
for tool in memcheck racecheck; do
  timeout -k 10 "${SANITIZER_TIMEOUT_S:-300}" env "$sanitizer_env" compute-sanitizer \
    --tool "$tool" --kernel-name kns=flashrnn --error-exitcode 3 python3 "$repo/scripts/sanitize_case.py" >"$out/sanitizer_$tool.log" 2>&1 &
  sanitizer_pid[$tool]=$!
done

echo "== GPU tests"
# Workers share the GPU: the run is bound by XLA compiles on the host, not by the GPU. The
# summary JSON is rewritten after every test, so a run cut short still says what passed.
# GPU_TESTS narrows the run (test files or node ids under tests/, space-separated).
# pytest-timeout (in the device image) ends a hung test's worker instead of the whole call.
timeout_args=()
python3 -c "import pytest_timeout" 2>/dev/null &&
  timeout_args=(--timeout "${TEST_TIMEOUT_S:-240}" --timeout-method thread)
tests=()
for t in ${GPU_TESTS:-test_fused_options_gpu.py test_fused_gpu.py test_sharding.py}; do
  tests+=("$repo/tests/$t")
done
FLASHRNN_GPU_SUMMARY="$out/gpu_summary.json" python3 -m pytest "${tests[@]}" \
  --rootdir "$repo" -c "$repo/pyproject.toml" -p gpu_summary -p no:benchmark -m gpu -q \
  -n "${PYTEST_WORKERS:-12}" --maxfail=20 \
  "${timeout_args[@]}" \
  --durations=5 2>&1 | tee "$out/pytest.log" | tail -25
tests_rc=${PIPESTATUS[0]}

echo "== compute-sanitizer"
for tool in memcheck racecheck; do
  wait "${sanitizer_pid[$tool]}"
  [ $? = 124 ] && echo "$tool: cut after ${SANITIZER_TIMEOUT_S:-300} s"
  log="$out/sanitizer_$tool.log"
  echo "$tool: $(grep -v SUMMARY "$log" | grep -c -E 'hazard|Invalid|Error:') reports; $(grep 'ERROR SUMMARY\|RACECHECK SUMMARY' "$log")"
done

if [ "${SKIP_BENCH:-0}" = 1 ]; then
  exit "$tests_rc"
fi
echo "== quick benchmark"
timeout -k 10 "${BENCH_TIMEOUT_S:-300}" python3 "$repo/benchmarks/quick_bench.py" --json "$out/quick_bench.json"
exit "$tests_rc"
