#!/usr/bin/env bash
# The GPU check, one command for an H100/H200 machine (torch, nvcc and ninja installed, no network):
#   1. build the CUDA kernels for this GPU (TORCH_CUDA_ARCH_LIST from nvidia-smi, all cores)
#   1b. microbenchmarks of synchronisation and chain costs (benchmarks/microbench/sync_costs.cu)
#   2. tests/test_cuda.py
#   3. the GPU benchmark (benchmarks/benchmark.py --device cuda --quick)
#   3b. the benchmark again with TF32 allowed, float32 and float16
#   3c. the generation row (benchmarks/generation.py), default regime
#   4. compute-sanitizer memcheck and racecheck on benchmarks/gpu_sanitize.py (every regime, fwd + bwd;
#      the resident cluster kernels at the sizes that need them, both exchanges)
#   5. A/B of the opt-in paths, each beside the default regime: the SM-resident regimes (float32 TF32
#      off and on, float16 and bfloat16), their clusters' exchange on mbarriers
#      (FUSED_RNN_CUDA_CLUSTER_EXCHANGE), the half per-step GEMMs eager and replayed from their own
#      CUDA graph (FUSED_RNN_CUDA_GEMM_GRAPH), the GEMMs' TF32 rule (FUSED_RNN_CUDA_GEMM_TF32), the
#      tuned choice (FUSED_RNN_CUDA_REGIME=tuned), the generation row tuned and resident, eager
#      against graph-captured calls of the half GEMM regime
#   5a. the bfloat16 racecheck probe (benchmarks/racecheck_probe/)
#   5b. Nsight Compute on benchmarks/gpu_profile.py (throughput and stall reasons), when ncu is there
#   6. benchmarks/results/<gpu>-<date>.md and .json (versions, TF32, stage table, tests, sanitizer,
#      benchmark tables), copied with all logs to the folder given as the first argument.
# A failing or timed-out stage is recorded and the next one runs. Each stage has its own timeout,
# and all of them together stay inside GPU_CHECK_BUDGET_S (default 465 s, so the whole run is < 8 min).
#
#   benchmarks/gpu_check.sh [COPY_TO_DIR]        PYTHON=python3.12 to pick the interpreter
# COPY_TO_DIR also gets gpu_check.tar.gz, one archive of everything (the device tool returns few files).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the build is in place (build_ext --inplace), not installed
PY=${PYTHON:-$(command -v python || command -v python3)}
COPY_TO=${1:-}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-465}

GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
GPU=${GPU:-unknown-gpu}
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
SLUG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | sed -e 's/nvidia//' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')
STAMP=$(date -u +%Y%m%d-%H%M)
NAME="${SLUG}-${STAMP}"
RESULTS=benchmarks/results
WORK="$RESULTS/$NAME"
mkdir -p "$WORK"
: > "$WORK/stages.tsv"

if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"

# stage NAME LIMIT_S NOTE CMD...: runs CMD under timeout (capped by the remaining budget; the signal
# STAGE_SIGNAL, default TERM, then KILL 10 s later), logs to
# $WORK/NAME.log, appends "NAME<TAB>rc<TAB>seconds<TAB>note" to stages.tsv. Never stops the script.
stage() {
  local name=$1 limit=$2 note=$3
  shift 3
  local left=$((BUDGET - ($(date +%s) - START) - 10))
  if [ "$left" -lt 20 ]; then
    printf '%s\t-\t0\tskipped: time budget spent\n' "$name" >> "$WORK/stages.tsv"
    echo "== $name: skipped (time budget spent)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout -s "${STAGE_SIGNAL:-TERM}" -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local secs=$(($(date +%s) - t0))
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note="TIMED OUT after ${limit}s; $note"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$note" >> "$WORK/stages.tsv"
  echo "   rc=$rc in ${secs}s; last lines:"
  tail -n 3 "$WORK/$name.log" | sed 's/^/   | /'
  return 0
}

# 1. build for this GPU only, unless GPU_CHECK_PREBUILT names an extension built off the card for it
#    (same commit, the card's torch and Python, TORCH_CUDA_ARCH_LIST=9.0; benchmarks/README.md "GPU
#    check") that imports with CUDA: the device's minutes are then not spent compiling
if [ -n "${GPU_CHECK_PREBUILT:-}" ] && "$PY" -c "import sys, torch, fused_rnn
sys.exit(0 if torch.cuda.is_available() and fused_rnn.cuda_available() else 1)" > "$WORK/build.log" 2>&1; then
  printf 'build\t0\t0\tprebuilt, not compiled here: %s\n' "$GPU_CHECK_PREBUILT" >> "$WORK/stages.tsv"
  echo "== build: prebuilt ($GPU_CHECK_PREBUILT)"
else
  [ -n "${GPU_CHECK_PREBUILT:-}" ] && echo "== the prebuilt extension did not import with CUDA; building" && cat "$WORK/build.log"
  stage build 300 "TORCH_CUDA_ARCH_LIST=${CAP:-unset}, MAX_JOBS=$(nproc)" \
    env TORCH_CUDA_ARCH_LIST="${CAP:-9.0}" MAX_JOBS="$(nproc)" FUSED_RNN_CUDA=1 "$PY" setup.py build_ext --inplace
fi
stage import 60 "fused_rnn.cuda_available()" \
  "$PY" -c "import fused_rnn, torch; assert fused_rnn.cuda_available(), 'built without CUDA'; print(torch.cuda.get_device_name())"

# 1b. microbenchmarks of the step's building blocks (FFMA/tanhf/mma chains, __syncthreads, cluster
#     barrier and DSMEM exchange for clusters of 2..16, grid.sync): standalone, no torch
stage sync_costs 60 "benchmarks/microbench/sync_costs.cu" \
  bash -c "nvcc -std=c++17 -O3 -arch=sm_${CAP/./} benchmarks/microbench/sync_costs.cu -o '$WORK/sync_costs' \
           && '$WORK/sync_costs' | tee '$WORK/sync_costs.md'"

# 2. CUDA tests
#    The opt-in paths (pytest marker opt_in, tests/conftest.py: the resident regimes, the tuned
#    choice, the half per-step GEMMs, the GEMM TF32 rule) in a process of their own, after the rest:
#    a fault in a kernel that never ran before must not take the validated tests' CUDA context down.
#    At the limit pytest gets SIGINT, so that it still writes its junit report; where it cannot (a
#    kernel that never returns), gpu_report.py reads the outcomes and the running test from the log.
STAGE_SIGNAL=INT stage tests 170 "tests/test_cuda.py -m 'not opt_in'" \
  "$PY" -m pytest -v --tb=short -rfE -p no:cacheprovider tests/test_cuda.py -m "not opt_in" \
  --junitxml="$WORK/test_cuda.xml" -o junit_family=xunit1
STAGE_SIGNAL=INT stage tests_resident 150 "tests/test_cuda.py -m opt_in" \
  "$PY" -m pytest -v --tb=short -rfE -p no:cacheprovider tests/test_cuda.py -m opt_in \
  --junitxml="$WORK/test_cuda_resident.xml" -o junit_family=xunit1

# 3. benchmark (before the sanitizers, so that a slow sanitizer cannot cost the numbers)
stage bench 200 "benchmarks/benchmark.py --device cuda --quick" \
  "$PY" benchmarks/benchmark.py --device cuda --quick --out "$WORK/bench"

# 3b. float32 with TF32 allowed and float16 (cuDNN's own half type), key shapes
stage bench_tf32_fp16 90 "benchmarks/benchmark.py --device cuda --quick --dtype float32,float16 --tf32 on" \
  "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float32,float16 --tf32 on --out "$WORK/bench_tf32_fp16"

# 3c. the generation row: 256 successive T = 1 calls, B = 1, H = 256, eager and graph-captured
#     (the issue's row), in the default regime
stage "generation_auto_h256" 60 "benchmarks/generation.py --cuda-regime auto --hidden 256" \
  "$PY" benchmarks/generation.py --cuda-regime auto --hidden 256 --out "$WORK/generation_auto_h256.md"

# 4. compute-sanitizer on the recurrence kernels only (kernel-name filter; without it if unsupported)
SAN=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck; do
  if [ -z "$SAN" ]; then
    echo "compute-sanitizer not found (looked in PATH and \$CUDA_HOME/bin)" > "$WORK/$tool.log"
    printf '%s\t-\t0\tcompute-sanitizer not found\n' "$tool" >> "$WORK/stages.tsv"
    continue
  fi
  stage "$tool" 75 "kernel filter kns=recurrence_kernel, regimes auto grid step gemm" \
    "$SAN" --tool "$tool" --error-exitcode 3 --kernel-name kns=recurrence_kernel "$PY" benchmarks/gpu_sanitize.py \
    auto grid step gemm
  if grep -qi "unrecognized\|invalid option\|unknown option" "$WORK/$tool.log"; then
    stage "$tool" 90 "all kernels (the kernel-name filter was rejected)" \
      "$SAN" --tool "$tool" --error-exitcode 3 "$PY" benchmarks/gpu_sanitize.py auto grid step gemm
  fi
  #  the resident kernels (FFMA, TF32, float16, bfloat16) in one CTA, then in each cluster shape with
  #  both exchanges (gpu_sanitize.py cluster), in one process
  stage "${tool}_resident" 90 "kernel filter kns=resident_, regimes resident and cluster (every cluster shape, both exchanges)" \
    "$SAN" --tool "$tool" --error-exitcode 3 --kernel-name kns=resident_ "$PY" benchmarks/gpu_sanitize.py \
    resident cluster
done

#    memcheck, no kernel filter, on the paths new since the last run: packed input (the step table's
#    upload kernel, the device-built gather index) and the float16/bfloat16 per-step GEMMs (cuBLAS and
#    their pointwise kernels)
if [ -n "$SAN" ]; then
  stage memcheck_new_paths 60 "gemm regime, float16 and bfloat16, packed input, every kernel" \
    "$SAN" --tool memcheck --error-exitcode 3 "$PY" benchmarks/gpu_sanitize.py gemm float16 bfloat16
fi

# 5. A/B of the opt-in paths on this card, each beside the default regime (after the sanitizers: the
#    validated numbers and the validation come first when the budget runs short)
#    The SM-resident regime (opt-in until a run of this check passes its tests): the same float32
#     shapes forced to it and in the default regime (an A/B on this card), TF32 off, then on
RESIDENT_SHAPES="1,128,64,64 8,128,64,64 64,128,64,64 256,128,64,64 1,128,128,128 64,128,128,128
256,128,128,128 1,128,192,192 64,128,192,192 1,128,256,256 64,128,256,256 256,128,256,256 1,128,512,512
64,128,512,512 16,128,64,128,2,T"
for run in "resident off" "auto off" "resident on" "auto on"; do
  set -- $run
  stage "bench_resident_$1_tf32_$2" 60 "--cuda-regime $1 --tf32 $2, H <= 512 (TF32 on: the tensor-core kernel to 192)" \
    "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float32 --tf32 "$2" --cuda-regime "$1" \
    --shapes "$RESIDENT_SHAPES" --out "$WORK/bench_resident_$1_tf32_$2"
done
#     the float32 cluster shapes again with the exchange on mbarriers (st.async, no cluster barrier;
#     FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier) beside bench_resident_resident_tf32_{off,on}'s cluster
#     barrier: TF32 off the FFMA cluster kernel, on the TF32 tensor-core one
for tf32 in off on; do
  stage "bench_resident_mbarrier_tf32_$tf32" 45 "--cuda-regime resident --tf32 $tf32, exchange on mbarriers, H 256, 512" \
    env FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float32 \
    --tf32 "$tf32" --cuda-regime resident \
    --shapes "1,128,256,256 64,128,256,256 256,128,256,256 1,128,512,512 64,128,512,512" \
    --out "$WORK/bench_resident_mbarrier_tf32_$tf32"
done
#     float16 / bfloat16 on the tensor-core resident kernel (one CTA to H = 256, clusters to 1024)
#     against the default regime
RESIDENT_HALF_SHAPES="1,128,64,64 64,128,64,64 256,128,64,64 64,128,128,128 1,128,256,256 8,128,256,256
64,128,256,256 256,128,256,256 8,128,512,512 64,128,512,512 8,128,1024,1024 64,128,1024,1024"
for regime in resident auto; do
  stage "bench_resident_half_$regime" 60 "--cuda-regime $regime, float16 and bfloat16, H <= 1024 (clusters from 257)" \
    "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float16,bfloat16 --cuda-regime "$regime" \
    --shapes "$RESIDENT_HALF_SHAPES" --out "$WORK/bench_resident_half_$regime"
done
#     its cluster shapes with the exchange on mbarriers (two units a 32-bit word, st.async), beside
#     bench_resident_half_resident's cluster barrier
stage "bench_resident_half_mbarrier" 45 "--cuda-regime resident, exchange on mbarriers, float16 and bfloat16, H 512, 1024" \
  env FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier "$PY" benchmarks/benchmark.py --device cuda --quick \
  --dtype float16,bfloat16 --cuda-regime resident \
  --shapes "8,128,512,512 64,128,512,512 8,128,1024,1024 64,128,1024,1024" --out "$WORK/bench_resident_half_mbarrier"

#     float16 on the per-step GEMM path (opt-in) against the default regime, where the kernel loses
#     most; then the same shapes with the step loop replayed from a CUDA graph
#     (FUSED_RNN_CUDA_GEMM_GRAPH=reuse, opt-in): beside bench_half_gemm_gemm, what the host's per-step
#     work cost there. Runs: stage suffix, regime, FUSED_RNN_CUDA_GEMM_GRAPH
for run in "gemm gemm off" "auto auto off" "graph gemm reuse"; do
  set -- $run
  stage "bench_half_gemm_$1" 60 "--cuda-regime $2, FUSED_RNN_CUDA_GEMM_GRAPH=$3, float16, large H" \
    env FUSED_RNN_CUDA_GEMM_GRAPH="$3" "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float16 \
    --cuda-regime "$2" --shapes "8,128,512,512 64,128,512,512 8,128,1024,1024 64,128,1024,1024 64,128,2048,2048" \
    --out "$WORK/bench_half_gemm_$1"
done

#     float32 with PyTorch's default flags (cuDNN TF32 on, matmul off) where the per-step GEMM regime
#     runs: the stack's GEMMs in IEEE (FUSED_RNN_CUDA_GEMM_TF32=matmul) against TF32 under nn.RNN's
#     rule (rnn, opt-in), nn.RNN (cuDNN TF32) beside both
for rule in rnn matmul; do
  stage "bench_gemm_tf32_$rule" 50 "--tf32 default --gemm-tf32 $rule, float32, large H" \
    "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float32 --tf32 default --gemm-tf32 "$rule" \
    --shapes "8,128,1024,1024 64,128,1024,1024 256,128,1024,1024 64,128,2048,2048" \
    --out "$WORK/bench_gemm_tf32_$rule"
done

#     the tuned regime choice (opt-in) against the fixed rule, PyTorch's default TF32 flags, the quick
#     sweep's shapes in float32 and float16; the tuned run's table lists what each kind of call timed
for regime in tuned auto; do
  stage "bench_choice_$regime" 60 "--cuda-regime $regime --tf32 default, float32 and float16" \
    "$PY" benchmarks/benchmark.py --device cuda --quick --dtype float32,float16 --tf32 default \
    --cuda-regime "$regime" --out "$WORK/bench_choice_$regime"
done

#     the generation row in the tuned choice, and at H = 128 in the resident regime (which holds
#     H <= 192; the table has nn.RNN beside it)
for run in "tuned 256" "resident 128"; do
  set -- $run
  stage "generation_$1_h$2" 60 "benchmarks/generation.py --cuda-regime $1 --hidden $2" \
    "$PY" benchmarks/generation.py --cuda-regime "$1" --hidden "$2" --out "$WORK/generation_$1_h$2.md"
done

#     the per-step GEMM regime for float16 (opt-in), a few long calls eager against graph-captured:
#     the share of its time per step that is host work; then with the regime's own step-loop graph
#     (FUSED_RNN_CUDA_GEMM_GRAPH=reuse), whose eager column should come near the captured one, less
#     the staging copies. Runs: FUSED_RNN_CUDA_GEMM_GRAPH, limit, stage suffix
for run in "off 60" "reuse 45 _reuse"; do
  set -- $run
  stage "graph_vs_eager_half_gemm${3:-}" "$2" \
    "benchmarks/generation.py --seq-len 128 --dtype float16 --cuda-regime gemm, FUSED_RNN_CUDA_GEMM_GRAPH=$1" \
    env FUSED_RNN_CUDA_GEMM_GRAPH="$1" "$PY" benchmarks/generation.py --steps 4 --seq-len 128 --batch 64 \
    --hidden 2048 --dtype float16 --cuda-regime gemm --reps 10 --out "$WORK/generation_graph_vs_eager_half_gemm${3:-}.md"
done

# 5a. the bfloat16 racecheck question: racecheck per dtype and regime, and on a minimal standalone
#     program (benchmarks/racecheck_probe/), to tell a kernel bug from the tool's
if [ -n "$SAN" ]; then
  stage racecheck_probe 90 "benchmarks/racecheck_probe/racecheck_probe.py" \
    "$PY" benchmarks/racecheck_probe/racecheck_probe.py --sanitizer "$SAN" --out "$WORK/racecheck_probe.md"
fi

# 5b. Nsight Compute: throughput and stall reasons of the recurrence kernel at representative shapes
NCU=$(command -v ncu || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  stage ncu 90 "ncu on benchmarks/gpu_profile.py" \
    "$NCU" --clock-control none --kernel-name regex:'recurrence_kernel|resident_' --launch-count 9 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats \
    "$PY" benchmarks/gpu_profile.py
fi

# 6. results file, and a copy of everything
"$PY" benchmarks/gpu_report.py "$WORK" "$RESULTS/$NAME.md" "$RESULTS/$NAME.json"
if [ -n "$COPY_TO" ]; then
  mkdir -p "$COPY_TO"
  cp -r "$RESULTS/$NAME.md" "$RESULTS/$NAME.json" "$WORK" "$COPY_TO"/
  tar czf "$COPY_TO/gpu_check.tar.gz" "$RESULTS/$NAME.md" "$RESULTS/$NAME.json" "$WORK"
  echo "copied to $COPY_TO"
fi
echo "done in $(($(date +%s) - START))s: $RESULTS/$NAME.md"
