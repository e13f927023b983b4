#!/usr/bin/env bash
# One call of the lent GPU machine: build the CUDA kernels, run the GPU tests (writing the
# summary JSON), run compute-sanitizer (memcheck, racecheck) on a small case of every kernel,
# and run the quick benchmark, printing its table last.
#   usage: scripts/gpu_check.sh   (logs and JSON go to $OUT, or build/gpu_check_out)
#   STEPS: the parts to run, of "build tests bench breakdown ab", default "build tests bench":
#     build  the default grid, in build/cmake (a second call on a warm machine rebuilds only
#            what changed); MMA_FORWARD=0 builds without the tensor-core forward,
#            MMA_BACKWARD=0 without the tensor-core backward, MMA_CLUSTER=0 without the
#            cluster tensor-core forward and backward (head sizes 256 to 2048), MMA_SPLIT=0
#            without the split tensor-core forward and backward (head sizes 16 to 64);
#            OPTIONS_ON names kernel options to turn on and OPTIONS_OFF options to turn off
#            (space-separated, of CMakeLists.txt's options but the six switches above, e.g.
#            FLASHRNN_MMA_CLUSTER_ASYNC_PUSH; the others keep CMakeLists.txt's defaults)
#     tests  the GPU tests and, beside them, the sanitizers (SANITIZE=0 leaves them out);
#            PYTEST_WORKERS sets the test processes, 12 by default; GPU_TESTS the test files,
#            all GPU tests by default; GPU_TEST_ARGS more pytest arguments (e.g. -k "lstm";
#            not -m, which the step sets to "gpu");
#            SANITIZER_TOOLS the sanitizer tools, "memcheck racecheck" by default, and
#            SANITIZE_HEAD_SIZES their head sizes (bf16 and f16), sanitize_case.py's by default
#     bench  the quick benchmark (BENCH_ARGS adds arguments, e.g. "--shapes 12x64")
#     breakdown  the kernels of a forward and a forward+backward by kind, from JAX's profiler
#            (benchmarks/kernel_breakdown.py; BREAKDOWN_ARGS, default the LSTM and sLSTM at
#            48x16, 12x64, 3x256 and 1x768), to $OUT/kernel_breakdown.json
#     ab     an A/B of kernel options in the same call: a narrow build with the options of
#            AB_OPTION on (FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD by default, or several,
#            space-separated) and those of AB_OFF off (e.g. AB_OPTION= AB_OFF=
#            FLASHRNN_MMA_ROUNDED_OPERAND, a default one's baseline) for the head sizes
#            AB_HEADS ("256 512 768"), bf16 and f16, in build/ab_<options joined by +>[_off_
#            <options>]; the quick benchmark at AB_SHAPES
#            ("3x256 1x512 1x768") on it, to compare with the bench step's rows of the same
#            shapes (BENCH_ARGS="--shapes ..."); then the GPU tests of those heads on it with
#            memcheck and racecheck of them beside (SANITIZE_AB=0 leaves them out);
#            AB_DTYPES narrows the build ("bf16;f16"), AB_TESTS=0 leaves out the tests,
#            AB_TEST_FILES names their files ("test_fused_gpu.py test_fused_options_gpu.py")
#            and AB_TEST_K adds tests by a pytest -k expression,
#            AB_BENCH_ARGS adds quick-bench arguments (e.g. "--no-scan --functions lstm");
#            AB_SOURCE builds another source tree instead of this checkout (an earlier
#            commit's, for a baseline in the same call: benchmarks/NOTES.md says how)
#   TEST_TIMEOUT_S, SANITIZER_TIMEOUT_S and BENCH_TIMEOUT_S bound one test, each sanitizer run
#   and each benchmark: 240, 300 and 300 s, so that a hung kernel cannot take the whole call.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/build/gpu_check_out}"
mkdir -p "$out"
steps=" ${STEPS:-build tests bench} "
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# XLA's GEMM autotuning, left out of the tests and the sanitizers: they check values, not
# speed (and the autotuner crashed compute-sanitizer once).
no_autotune="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
sanitizer_tools="${SANITIZER_TOOLS:-memcheck racecheck}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
cd "$repo"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')"
echo "== GPU: $gpu"
rc=0

on_off() { [ "$1" = 1 ] && echo ON || echo OFF; }

# option_defines ON_OPTIONS OFF_OPTIONS: pip's CMake definitions, in the array `defines`, of the
# CMake options named in ON_OPTIONS (ON) and OFF_OPTIONS (OFF), each space-separated, and of
# every other kernel option of the CMakeLists.txt of the tree built ($build_source) as it sets
# it by default: always explicit, since a build directory's cache would keep an earlier call's
# value otherwise. The kernel options are all its options but the switches of whole kernel
# families below, which the build step sets itself and an A/B build leaves at their defaults.
kernel_families="FLASHRNN_MMA_FORWARD FLASHRNN_MMA_BACKWARD FLASHRNN_MMA_CLUSTER_FORWARD"
kernel_families+=" FLASHRNN_MMA_CLUSTER_BACKWARD FLASHRNN_MMA_SPLIT_FORWARD"
kernel_families+=" FLASHRNN_MMA_SPLIT_BACKWARD"
option_defines() {
  local option value defaults
  defines=()
  for option in $1 $2; do
    [[ $option == FLASHRNN_* ]] || { echo "not a FLASHRNN_ CMake option: $option" >&2; exit 2; }
  done
  for option in $1; do defines+=(-Ccmake.define."$option"=ON); done
  for option in $2; do defines+=(-Ccmake.define."$option"=OFF); done
  defaults=$(python3 "$repo/benchmarks/sass_loop.py" --option-defaults "$build_source") ||
    { echo "cannot read the options of $build_source/CMakeLists.txt" >&2; exit 2; }
  while IFS='=' read -r option value; do
    [[ -z $option || " $kernel_families $1 $2 " == *" $option "* ]] && continue
    defines+=(-Ccmake.define."$option"="$value")
  done <<<"$defaults"
}

# build LOG BUILD_DIR [pip arguments...]: one pip build of the extension (of the source tree
# $build_source, this checkout by default), its log to LOG.
build_source=.
build() {
  local log="$1" build_dir="$2" start
  shift 2
  start=$(date +%s)
  if ! python3 -m pip install --no-build-isolation --no-deps -v "$build_source" \
      -Ccmake.define.FLASHRNN_CUDA=ON -Cbuild-dir="$build_dir" "$@" >"$log" 2>&1; then
    tail -60 "$log"
    return 1
  fi
  echo "built in $(( $(date +%s) - start )) s"
}

# gpu_tests SUMMARY LOG [pytest arguments...]: the GPU tests, from outside the checkout so that
# the installed package (with _cuda) is the one imported. Workers share the GPU: the run is
# bound by XLA compiles on the host, not by the GPU. The summary JSON is rewritten after every
# test, so a run cut short still says what passed.
gpu_tests() {
  local summary="$1" log="$2" timeout_args=()
  shift 2
  # pytest-timeout (in the device image) ends a hung test's worker instead of the whole call.
  python3 -c "import pytest_timeout" 2>/dev/null &&
    timeout_args=(--timeout "${TEST_TIMEOUT_S:-240}" --timeout-method thread)
  # One BLAS thread a worker: the float64 NumPy references of 12 workers, each with a BLAS
  # thread per core, would otherwise oversubscribe the 16 cores many times over.
  (cd /tmp && FLASHRNN_GPU_SUMMARY="$summary" XLA_FLAGS="$no_autotune" \
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    python3 -m pytest "$@" \
    --rootdir "$repo" -c "$repo/pyproject.toml" -p gpu_summary -p no:benchmark -m gpu -q \
    -n "${PYTEST_WORKERS:-12}" --maxfail=20 "${timeout_args[@]}" \
    --durations=5 2>&1 | tee "$log" | tail -25; exit "${PIPESTATUS[0]}")
}

# quick_bench JSON [arguments...]
quick_bench() {
  local json="$1"
  shift
  # BENCH_ARGS unquoted on purpose: split into its words.
  # shellcheck disable=SC2086
  (cd /tmp && timeout -k 10 "${BENCH_TIMEOUT_S:-300}" \
    python3 "$repo/benchmarks/quick_bench.py" --json "$json" "$@" ${BENCH_ARGS:-})
}

if [[ $steps == *" build "* ]]; then
  echo "== build"
  mma=$(on_off "${MMA_FORWARD:-1}") mma_backward=$(on_off "${MMA_BACKWARD:-1}")
  mma_cluster=$(on_off "${MMA_CLUSTER:-1}") mma_split=$(on_off "${MMA_SPLIT:-1}")
  option_defines "${OPTIONS_ON:-}" "${OPTIONS_OFF:-}"
  build "$out/build.log" "$repo/build/cmake" "${defines[@]}" \
    -Ccmake.define.FLASHRNN_MMA_FORWARD="$mma" \
    -Ccmake.define.FLASHRNN_MMA_BACKWARD="$mma_backward" \
    -Ccmake.define.FLASHRNN_MMA_CLUSTER_FORWARD="$mma_cluster" \
    -Ccmake.define.FLASHRNN_MMA_CLUSTER_BACKWARD="$mma_cluster" \
    -Ccmake.define.FLASHRNN_MMA_SPLIT_FORWARD="$mma_split" \
    -Ccmake.define.FLASHRNN_MMA_SPLIT_BACKWARD="$mma_split" || exit 1
  echo "(tensor-core forward: $mma, backward: $mma_backward, cluster forward and backward:" \
    "$mma_cluster, split forward and backward: $mma_split; options on: ${OPTIONS_ON:-none}," \
    "off: ${OPTIONS_OFF:-none}, the others as CMakeLists.txt sets them)"
fi

# sanitizers PREFIX [HEAD_SIZES]: memcheck and racecheck on scripts/sanitize_case.py (its
# heads, or HEAD_SIZES in bf16 and f16), in the background, logs to PREFIX_<tool>.log; they run
# beside the tests (they only check, timing does not matter to either). Each is bounded (exit
# 124 when cut). XLA's platform allocator gives every buffer, the FFI scratch of the grid
# kernels too, its own allocation, so that memcheck sees its bounds (the default allocator
# carves them out of one region).
declare -A sanitizer_pid sanitizer_started
sanitizers() {
  local prefix="$1" head_sizes="${2:-}" tool
  sanitizer_started[$prefix]=1
  for tool in $sanitizer_tools; do
    (cd /tmp && timeout -k 10 "${SANITIZER_TIMEOUT_S:-300}" env XLA_FLAGS="$no_autotune" \
      XLA_PYTHON_CLIENT_ALLOCATOR=platform SANITIZE_HEAD_SIZES="$head_sizes" \
      compute-sanitizer --tool "$tool" --kernel-name kns=flashrnn --error-exitcode 3 \
      python3 "$repo/scripts/sanitize_case.py") >"${prefix}_$tool.log" 2>&1 &
    sanitizer_pid[$prefix.$tool]=$!
  done
}

# sanitizer_results PREFIX: waits for the sanitizers (if `sanitizers PREFIX` started them) and
# prints their reports; fails when one was cut or reported an error.
sanitizer_results() {
  local prefix="$1" tool status failed=0
  [ -n "${sanitizer_started[$prefix]:-}" ] || return 0
  echo "== compute-sanitizer"
  for tool in $sanitizer_tools; do
    wait "${sanitizer_pid[$prefix.$tool]}"
    status=$?
    [ "$status" = 124 ] && echo "$tool: cut after ${SANITIZER_TIMEOUT_S:-300} s"
    [ "$status" != 0 ] && failed=1
    echo "$tool: $(grep -v SUMMARY "${prefix}_$tool.log" | grep -c -E 'hazard|Invalid|Error:')" \
      "reports; $(grep 'ERROR SUMMARY\|RACECHECK SUMMARY' "${prefix}_$tool.log")"
  done
  return "$failed"
}

if [[ $steps == *" tests "* ]]; then
  [ "${SANITIZE:-1}" = 1 ] && sanitizers "$out/sanitizer" "${SANITIZE_HEAD_SIZES:-}"

  echo "== GPU tests"
  # GPU_TESTS narrows the run (test files or node ids under tests/, space-separated).
  tests=()
  for t in ${GPU_TESTS:-test_fused_options_gpu.py test_fused_gpu.py test_sharding.py}; do
    tests+=("$repo/tests/$t")
  done
  # GPU_TEST_ARGS is split as the shell splits a command line: a quoted -k expression stays one.
  extra=()
  if [ -n "${GPU_TEST_ARGS:-}" ] && ! eval "extra=(${GPU_TEST_ARGS})"; then
    echo "GPU_TEST_ARGS cannot be split into arguments: ${GPU_TEST_ARGS}" >&2
    exit 2
  fi
  gpu_tests "$out/gpu_summary.json" "$out/pytest.log" "${tests[@]}" "${extra[@]}" || rc=1
  sanitizer_results "$out/sanitizer" || rc=1
fi

if [[ $steps == *" bench "* ]]; then
  echo "== quick benchmark"
  quick_bench "$out/quick_bench.json" || rc=1
fi

if [[ $steps == *" breakdown "* ]]; then
  echo "== kernel breakdown"
  # BREAKDOWN_ARGS unquoted on purpose: split into its words.
  # shellcheck disable=SC2086
  (cd /tmp && timeout -k 10 "${BENCH_TIMEOUT_S:-300}" \
    python3 "$repo/benchmarks/kernel_breakdown.py" --json "$out/kernel_breakdown.json" \
    ${BREAKDOWN_ARGS:-lstm:48x16 slstm:48x16 lstm:12x64 slstm:12x64 lstm:3x256 slstm:3x256 \
      lstm:1x768 slstm:1x768}) || rc=1
fi

if [[ $steps == *" ab "* ]]; then
  ab_option="${AB_OPTION-FLASHRNN_BACKWARD_INPUTS_TWO_AHEAD}" ab_off="${AB_OFF:-}"
  ab_heads="${AB_HEADS:-256 512 768}"
  echo "== A/B of on: ${ab_option:-none}, off: ${ab_off:-none}: build (head sizes $ab_heads)," \
    "benchmark, tests"
  # A build directory per option set: a later call with the same options rebuilds only what
  # changed.
  ab_dir="$repo/build/ab_${ab_option// /+}${ab_off:+_off_${ab_off// /+}}"
  ab_dir+="${AB_SOURCE:+_$(basename "$AB_SOURCE")}"
  build_source="${AB_SOURCE:-.}"
  option_defines "$ab_option" "$ab_off"
  rm -rf "$ab_dir/site"
  build "$out/build_ab.log" "$ab_dir/cmake" --target "$ab_dir/site" \
    "${defines[@]}" -Ccmake.define.FLASHRNN_HEAD_SIZES="${ab_heads// /;}" \
    -Ccmake.define.FLASHRNN_DTYPES="${AB_DTYPES:-bf16;f16}" || exit 1
  # The narrow build shadows the installed one for these runs only.
  export PYTHONPATH="$ab_dir/site${PYTHONPATH:+:$PYTHONPATH}"
  # The benchmark first, on a GPU that nothing else uses, and before the tests can take the
  # rest of a call.
  # shellcheck disable=SC2086
  BENCH_ARGS="${AB_BENCH_ARGS:-}" quick_bench "$out/quick_bench_ab.json" \
    --shapes ${AB_SHAPES:-3x256 1x512 1x768} --no-masks --no-contraction --no-groups || rc=1
  [ "${SANITIZE_AB:-1}" = 1 ] && sanitizers "$out/sanitizer_ab" "$ab_heads"
  # test_fused_gpu.py names a head D<size>, test_fused_options_gpu.py <dtype>-<size>-.
  # Only the dtypes the narrow build has (AB_DTYPES), by the names the test ids use.
  ab_dtype_names=""
  IFS=';' read -ra ab_dtypes <<< "${AB_DTYPES:-bf16;f16}"
  for t in "${ab_dtypes[@]}"; do
    case "$t" in bf16) t=bfloat16 ;; f16) t=float16 ;; f32) t=float32 ;; esac
    ab_dtype_names+="${ab_dtype_names:+ }$t"
  done
  ab_tests=""
  for d in $ab_heads; do
    for t in $ab_dtype_names; do
      ab_tests+="${ab_tests:+ or }D$d and $t or $t-$d-"
    done
  done
  ab_tests+="${AB_TEST_K:+ or $AB_TEST_K}"
  if [ "${AB_TESTS:-1}" = 1 ]; then
    ab_files=()
    for f in ${AB_TEST_FILES:-test_fused_gpu.py test_fused_options_gpu.py}; do
      ab_files+=("$repo/tests/$f")
    done
    gpu_tests "$out/gpu_summary_ab.json" "$out/pytest_ab.log" "${ab_files[@]}" -k "$ab_tests" \
      || rc=1
  fi
  sanitizer_results "$out/sanitizer_ab" || rc=1
fi

exit "$rc"
