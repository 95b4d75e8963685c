#!/usr/bin/env bash
# The one script a GPU machine without network runs (docs: README, "GPU check"):
#   1. build and install the extension for the visible GPU,
#   2. the whole test suite on the GPU (CUDA and Triton backends),
#   3. compute-sanitizer memcheck over the CUDA op tests (racecheck over kernels using shared memory),
#   4. every benchmark,
# with results and logs under $PIPO_RESULTS_DIR/<device-name>/ (default benchmarks/results/) and a
# short summary table printed last. Budget: under 8 minutes on one H100.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS_ROOT="${PIPO_RESULTS_DIR:-benchmarks/results}"
# Test files whose CUDA tests run under memcheck, and those whose kernels use shared memory (racecheck).
MEMCHECK_TESTS="${MEMCHECK_TESTS:-tests/test_kv_cache.py tests/test_latent.py tests/test_sampling.py tests/test_attention.py tests/test_verify.py}"
RACECHECK_TESTS="${RACECHECK_TESTS:-tests/test_latent.py tests/test_attention.py tests/test_verify.py tests/test_sampling.py}"
BENCH_ARGS="${BENCH_ARGS:-}"
export PYTHONUNBUFFERED=1

summary=()
run_step() {  # run_step NAME TIMEOUT_S CMD...: logs to $DEST/NAME.log, records rc and seconds
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$DEST/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$DEST/$name.log"
  summary+=("$(printf '| %-28s | %4s | %5ss |' "$name" "$rc" "$((SECONDS - t0))")")
  return $rc
}

mkdir -p "$RESULTS_ROOT/.staging"
DEST="$RESULTS_ROOT/.staging"
run_step build 900 env MAX_JOBS="${MAX_JOBS:-16}" python3 -m pip install --no-build-isolation --no-deps -e . || {
  cat "$DEST/build.log" | tail -n 40
  exit 1
}
DEVICE=$(python3 -c "import torch; from benchmarks.common import device_name; print(device_name(torch.device('cuda')))")
DEST="$RESULTS_ROOT/$DEVICE"
mkdir -p "$DEST"
mv "$RESULTS_ROOT/.staging/build.log" "$DEST/" && rmdir "$RESULTS_ROOT/.staging"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -n 1
  git rev-parse HEAD 2>/dev/null
} >"$DEST/environment.txt" 2>&1

run_step tests 600 python3 -m pytest -q -ra --junitxml="$DEST/tests.xml"
for f in $MEMCHECK_TESTS; do
  run_step "memcheck-$(basename "$f" .py)" 600 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -x "$f" -k "cuda and not compile and not slow"
done
for f in $RACECHECK_TESTS; do
  run_step "racecheck-$(basename "$f" .py)" 600 \
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest -q -x "$f" -m "not slow" -k "cuda and not compile and not preserves"
done
for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  # shellcheck disable=SC2086
  run_step "$name" 900 python3 -m "benchmarks.$name" --device cuda --out "$DEST" $BENCH_ARGS
done
python3 -m benchmarks.summarize "$DEST"

echo
echo "Results and logs: $DEST"
echo "| step                         |   rc |  time |"
echo "|------------------------------|------|-------|"
printf '%s\n' "${summary[@]}"
