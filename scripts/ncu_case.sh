#!/usr/bin/env bash
# Profile one kernel launch of benchmarks/profile_case.py with Nsight Compute, on the GPU
# machine, after the package is built and installed (scripts/gpu_check.sh does that):
#   scripts/ncu_case.sh NAME KERNEL_REGEX PROFILE_CASE_ARGS...
#   e.g. scripts/ncu_case.sh lstm64_fwd ForwardMma lstm:12x64 --steps 256
# writes $OUT/NAME_details.txt (every section of --set full, with the warp stall reasons) and
# $OUT/NAME_source.csv (per SASS instruction: executions and stall samples by reason).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/build/gpu_check_out}"
name="$1" kernel="$2"
shift 2
mkdir -p "$out"
cd /tmp  # the installed package, with its compiled module, not the checkout
# Under ncu every XLA autotuning launch is intercepted: with --grad the GEMM autotuner of the dR
# contraction ran for over 8 minutes before the backward kernel was reached. The profiled
# kernel needs no tuning.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
# --clock-control none: the clocks stay as the timing runs see them (device/METHOD.md).
ncu --set full --import-source yes --clock-control none -k "regex:$kernel" -c 1 -f \
  -o "/tmp/$name" python3 "$repo/benchmarks/profile_case.py" "$@" >/dev/null
ncu -i "/tmp/$name.ncu-rep" --page details >"$out/${name}_details.txt"
ncu -i "/tmp/$name.ncu-rep" --page source --print-source sass --csv >"$out/${name}_source.csv"
