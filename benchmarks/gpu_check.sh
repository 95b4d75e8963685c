#!/usr/bin/env bash
# The one script a GPU machine without network runs (docs: README, "GPU check"):
#   1. build and install the extension for the visible GPU,
#   2. at the same time: the test suite's GPU tests (CUDA and Triton backends, the engine's CUDA
#      and CUDA-graph tests), compute-sanitizer memcheck over the CUDA-backend op tests, and
#      racecheck over the kernels that use shared memory,
#   3. the end-to-end benchmark (Qwen3-4B-like random weights, CUDA graphs): first the TTFT
#      targets (batch 1 at prompts 4k, 16k, 1k, then batch 8 at 2k; AR and PIPO), then batch 1 at
#      prompts 128..16k, batch 8 and 32; then the prefill sweep of bench_attention (its target
#      shapes first) and every op benchmark,
# with results and logs under $PIPO_RESULTS_DIR/<device-name>/ (default benchmarks/results/local/,
# ignored by git: copy a run into benchmarks/results/<device-name>/ to publish it) and a short
# summary table printed last. environment.txt records the code mechanically: `git rev-parse HEAD`,
# `git describe --always --dirty` and a sha256 of the working tree (python -m benchmarks.common).
# Every step has a time limit (seconds, overridable below) so the whole check fits a 15-minute
# lease; a step stopped at its limit reports rc 124 and keeps its log.
#
#   STEPS="build tests memcheck racecheck e2e bench" (default: all), BENCH_ARGS="--quick",
#   BENCHES="kv_cache latent ..." (default: every op benchmark), TEST_WORKERS=6
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS_ROOT="${PIPO_RESULTS_DIR:-benchmarks/results/local}"
STEPS="${STEPS:-build tests memcheck racecheck e2e bench}"
OP_TESTS="tests/test_kv_cache.py tests/test_latent.py tests/test_pair_out.py tests/test_sampling.py tests/test_attention.py tests/test_verify.py"
MEMCHECK_TESTS="${MEMCHECK_TESTS:-$OP_TESTS}"
# The CUDA kernels with shared memory: latent norm pre-pass, attention, verify, sampling reductions.
RACECHECK_TESTS="${RACECHECK_TESTS:-tests/test_latent.py tests/test_attention.py tests/test_verify.py tests/test_sampling.py}"
BENCHES="${BENCHES:-$(cd benchmarks && ls bench_*.py | sed 's/^bench_//; s/\.py$//' | grep -v -e '^e2e$' -e '^spec$')}"
BENCH_ARGS="${BENCH_ARGS:-}"
LIMIT_BUILD="${LIMIT_BUILD:-300}" LIMIT_TESTS="${LIMIT_TESTS:-300}" LIMIT_SAN="${LIMIT_SAN:-300}"
LIMIT_BENCH="${LIMIT_BENCH:-120}" LIMIT_E2E="${LIMIT_E2E:-300}"
LIMIT_TTFT="${LIMIT_TTFT:-240}" LIMIT_PREFILL="${LIMIT_PREFILL:-180}"
E2E_NEW_TOKENS="${E2E_NEW_TOKENS:-32}"
export PYTHONUNBUFFERED=1
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

summary_file=$(mktemp)
run_step() {  # run_step NAME LIMIT_S CMD...: logs to $DEST/NAME.log, records rc and seconds
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  # SIGINT first so pytest still prints its summary and writes its junit XML.
  timeout -s INT -k 30 "$limit" "$@" >"$DEST/$name.log" 2>&1
  local rc=$?
  printf '| %-28s | %4s | %5ss |\n' "$name" "$rc" "$((SECONDS - t0))" >>"$summary_file"
  echo "-- $name rc=$rc ($((SECONDS - t0)) s): $(tail -n 1 "$DEST/$name.log")"
  return $rc
}

DEST=$(mktemp -d)
if has_step build; then
  run_step build "$LIMIT_BUILD" env MAX_JOBS="${MAX_JOBS:-16}" \
    python3 -m pip install --no-build-isolation --no-deps -e . || {
    tail -n 60 "$DEST/build.log"
    exit 1
  }
fi
DEVICE=$(python3 -c "import torch; from benchmarks.common import device_name; print(device_name(torch.device('cuda')))")
mkdir -p "$RESULTS_ROOT/$DEVICE"
mv "$DEST"/* "$RESULTS_ROOT/$DEVICE/" 2>/dev/null
DEST="$RESULTS_ROOT/$DEVICE"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -n 1
  python3 -m benchmarks.common  # git_commit, git_describe, tree_sha256 (also in every JSON)
  echo "STEPS=$STEPS BENCH_ARGS=$BENCH_ARGS"
} >"$DEST/environment.txt" 2>&1

# Correctness steps share the GPU (none of them times anything) and run side by side.
if has_step tests; then
  xdist=()
  python3 -c "import xdist" 2>/dev/null && xdist=(-n "${TEST_WORKERS:-6}")
  run_step tests "$LIMIT_TESTS" python3 -m pytest -q -ra "${xdist[@]}" -k cuda \
    --junitxml="$DEST/tests.xml" tests &
fi
# One sanitizer process per test file, side by side: each file gets the whole limit.
if has_step memcheck; then
  for f in $MEMCHECK_TESTS; do
    run_step "memcheck-$(basename "$f" .py)" "$LIMIT_SAN" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool memcheck --error-exitcode 1 \
      python3 -m pytest -q -x -ra "$f" -k "cuda and not triton and not compile and not graph" &
  done
fi
# Property-based fuzzing of the CUDA backend (tests/test_fuzz.py: views, bad index values with and
# without PIPO_VALIDATE, NaN / inf) under memcheck: every case raises cleanly or stays in bounds.
if has_step memcheck; then
  run_step memcheck-fuzz "$LIMIT_SAN" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    PIPO_FUZZ_BACKENDS="${FUZZ_BACKENDS:-cuda}" PIPO_FUZZ_EXAMPLES="${FUZZ_EXAMPLES:-0.5}" \
    compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
    python3 -m pytest -q -x -ra tests/test_fuzz.py -k test_fuzz &
fi
if has_step racecheck; then
  for f in $RACECHECK_TESTS; do
    run_step "racecheck-$(basename "$f" .py)" "$LIMIT_SAN" \
      compute-sanitizer --tool racecheck --error-exitcode 1 \
      python3 -m pytest -q -x -ra "$f" -m "not slow" \
      -k "cuda and not triton and not compile and not graph and not preserves" &
  done
fi
wait

if has_step e2e; then
  # The TTFT targets first (PIPO >= 2.3x AR at 4k, >= 2.64x at 16k): each configuration's JSON
  # is written as soon as it is measured (AR and PIPO interleaved), so a stop at the limit keeps
  # what finished.
  run_step e2e_ttft "$LIMIT_TTFT" python3 -m benchmarks.bench_e2e --device cuda --out "$DEST" \
    --configs 1x4096 1x16384 1x1024 8x2048 --modes ar pipo --interleave --new-tokens 8 \
    --repeats 2 --tag ttft
  # Then batch 1 over the prompt lengths (the TTFT / TPOT targets), then the batched rows, then
  # spec (with random weights it accepts nothing and runs eagerly: slow).
  run_step e2e_batch1 "$LIMIT_E2E" python3 -m benchmarks.bench_e2e --device cuda --out "$DEST" \
    --batch 1 --prompt-lens 4096 16384 1024 128 --modes ar pipo --new-tokens "$E2E_NEW_TOKENS" \
    --repeats 1 --tag b1
  # PIPO's published setting: presence penalty 1.5 (inside the CUDA graphs, seen bitmask on device)
  run_step e2e_penalty "$LIMIT_E2E" python3 -m benchmarks.bench_e2e --device cuda --out "$DEST" \
    --batch 1 8 --prompt-lens 1024 --modes ar pipo --new-tokens "$E2E_NEW_TOKENS" \
    --presence-penalty 1.5 --repeats 1 --tag penalty
  run_step e2e_batched "$LIMIT_E2E" python3 -m benchmarks.bench_e2e --device cuda --out "$DEST" \
    --batch 8 32 --prompt-lens 128 2048 --modes ar pipo --new-tokens "$E2E_NEW_TOKENS" \
    --repeats 1 --tag batched
  run_step e2e_spec "$LIMIT_E2E" python3 -m benchmarks.bench_e2e --device cuda --out "$DEST" \
    --batch 1 --prompt-lens 128 --new-tokens 16 --repeats 1 --tag spec
  # PIPO-4 (issue 18's GPU target: TPOT >= 3.0x AR, Qwen3-4B-like random weights, θ = -1, every
  # proposal committed: synthetic)
  run_step e2e_pipo4 "$LIMIT_E2E" python3 -m benchmarks.bench_e2e --device cuda --out "$DEST" \
    --batch 1 --prompt-lens 1024 128 --modes ar pipo --fold 4 --threshold -1 \
    --new-tokens "$E2E_NEW_TOKENS" --repeats 1 --tag pipo4
  # every drafter on the built-in models (mtp / medusa rounds in CUDA graphs), greedy only
  run_step spec_drafters "$LIMIT_BENCH" python3 -m benchmarks.bench_spec --device cuda \
    --out "$DEST" --quick --temperatures 0
fi
if has_step bench; then
  # The prefill sweep first (bf16 prefill vs SDPA flash and the matmul peak, trees vs
  # FlexAttention): its JSON is rewritten after every shape, target shapes first.
  run_step bench_attention_prefill "$LIMIT_PREFILL" python3 -m benchmarks.bench_attention \
    --prefill --device cuda --out "$DEST"
  for name in $BENCHES; do
    # shellcheck disable=SC2086
    run_step "bench_$name" "$LIMIT_BENCH" python3 -m "benchmarks.bench_$name" --device cuda \
      --out "$DEST" $BENCH_ARGS
  done
fi
python3 -m benchmarks.plots "$DEST" >/dev/null 2>&1
python3 -m benchmarks.summarize "$DEST" >/dev/null

echo
echo "Results and logs: $DEST"
echo "| step                         |   rc |  time |"
echo "|------------------------------|------|-------|"
cat "$summary_file"
