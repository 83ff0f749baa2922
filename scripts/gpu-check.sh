#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (run it in one go when one is lent; about 5 minutes on one
# H100): builds attnlab with the nvcc kernels (ATTNLAB_CUDA=ON) in build-gpu/, runs every CUDA
# test against the real GPU (the *_gpu test binaries: each kernel against the CPU, forward and
# gradients), checks ptxas's resource report, runs a short training comparison CPU vs GPU on
# tiny_debug.ini and on a wider model, and prints a summary table. Logs go to build-gpu/gpu-check/.
#   ATTNLAB_SKIP_INSTALL=1   do not run scripts/install-deps.sh (machines without network)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${ATTNLAB_BUILD_DIR:-$root/build-gpu}"
logs="$build/gpu-check"
mkdir -p "$logs"
declare -a rows=()
verdict=0
row() { rows+=("$(printf '%-44s %-6s %s' "$1" "$2" "$3")"); [[ "$2" == PASS ]] || verdict=1; }

if [[ "${ATTNLAB_SKIP_INSTALL:-0}" != 1 ]]; then "$root/scripts/install-deps.sh" > "$logs/install.log" 2>&1; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$logs/gpu.txt" 2>&1 || true
echo "GPU: $(head -1 "$logs/gpu.txt")"

t0=$SECONDS
if cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DATTNLAB_CUDA=ON > "$logs/configure.log" 2>&1 &&
   cmake --build "$build" -j "$(nproc)" > "$logs/build.log" 2>&1; then
  row "build (ATTNLAB_CUDA=ON, sm_80 + sm_90)" PASS "$((SECONDS - t0)) s"
else
  row "build (ATTNLAB_CUDA=ON, sm_80 + sm_90)" FAIL "see $logs/build.log"
  tail -30 "$logs/build.log"
fi

run_ctest() {  # name regex
  local log="$logs/$1.log"
  ctest --test-dir "$build" -R "$2" -j 4 --output-on-failure > "$log" 2>&1
  local rc=$? summary
  summary=$(grep -E '^[0-9]+% tests passed' "$log" | tail -1)
  local skipped; skipped=$(grep -c 'Skipped' "$log" || true)
  if [[ $rc == 0 && $skipped == 0 ]]; then row "$1" PASS "$summary"
  else row "$1" FAIL "${summary:-no tests ran} ($skipped skipped; see $log)"; fi
}
run_ctest "kernel parity on the GPU" '\.gpu$'
# train/distributed.h's nccl backend on this GPU: a 1-rank NCCL group (no launcher) all-reduces
# sum/mean/min/max in f32 and f64, async, broadcasts, and refuses tensors off its device.
run_ctest "NCCL 1-GPU all-reduce self-test" '^Nccl.*\.gpu$'
run_ctest "ptxas report (spills, shared memory)" 'PtxasReport'
run_ctest "emulated kernels (all schedules)" 'CudaParity|simt'

compare() {  # name recipe args...
  local name=$1 log="$logs/compare-$1.log"; shift
  if (cd "$build" && "$build/train/attnlab" compare-devices "$@" --run.device=cuda --run.dir="$logs/runs") > "$log" 2>&1; then
    row "compare-devices $name" PASS "$(grep 'time per step' "$log" | sed 's/^ *//')"
  else
    row "compare-devices $name" FAIL "see $log"
  fi
  cat "$log"
}
compare tiny_debug "$root/recipes/tiny_debug.ini" --steps 3 --data.corpus_dir="$root/corpora"
compare austen_char "$root/recipes/austen_char.ini" --steps 3 --data.corpus_dir="$root/corpora"

echo
echo "attnlab GPU check ($(head -1 "$logs/gpu.txt"))"
printf '%-44s %-6s %s\n' "check" "result" "detail"
printf '%s\n' "${rows[@]}"
exit $verdict
