#!/usr/bin/env bash
# Data-parallel throughput on this machine's CPU cores: the same recipe and global batch trained
#   a) in one process with all cores as OpenMP threads (the baseline),
#   b) in one process with one thread,
#   c) by `mpirun -np N` ranks with one thread each, all-reduce overlapped with the backward,
#   d) the same without overlap (buckets all-reduced after the backward),
# and the tokens/s of each (result.json: global batch tokens over the summed step times, evals
# excluded) with its ratio to (a), plus the ranks' mean all-reduce wait after the backward.
#
#   bench/data_parallel.sh                 # austen_char.ini (4 layers, d_model 256, B16 T128), 60 steps
#   STEPS=30 RANKS=2 bench/data_parallel.sh recipes/tiny_debug.ini [--section.key=value ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
recipe="${1:-$root/recipes/austen_char.ini}"
shift || true
cores=$(nproc)
ranks="${RANKS:-$cores}"
steps="${STEPS:-60}"
attnlab="${ATTNLAB_BUILD_DIR:-$root/build}/train/attnlab"
[[ -x "$attnlab" ]] || "$root/scripts/build.sh" attnlab
command -v mpirun > /dev/null || { echo "data_parallel.sh: mpirun not found (scripts/install-deps.sh installs Open MPI)" >&2; exit 2; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--run.dir="$out" --data.corpus_dir="$root/corpora" --train.steps="$steps" --train.log_every=10
        --train.eval_every=100000 --train.eval_batches=2 --train.checkpoint_every=0 --optim.warmup=0 "$@")
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$ranks" -x OMP_NUM_THREADS=1)

extra=()  # the next run's own recipe overrides
run() {  # name, launcher...
  local name=$1; shift
  if ! "$@" "$attnlab" train "$recipe" "${common[@]}" "${extra[@]}" --run.name="$name" > "$out/$name.log" 2>&1; then
    echo "data_parallel.sh: run $name failed:" >&2
    tail -20 "$out/$name.log" >&2
    exit 1
  fi
}
tokens_per_s() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens_per_s'])" "$out/$1/result.json"; }
wait_ms() {
  python3 - "$out/$1/metrics.jsonl" <<'EOF'
import json, sys
w = [json.loads(l).get("allreduce_wait_ms") for l in open(sys.argv[1])]
w = [x for x in w if x is not None]
print(f"{sum(w) / len(w):.2f} ms" if w else "-")
EOF
}

echo "recipe $(basename "$recipe"), $steps steps, $cores cores, $ranks ranks; $(lscpu | sed -n 's/^Model name: *//p')"
run one_all env OMP_NUM_THREADS="$cores"
run one_1t env OMP_NUM_THREADS=1
run ranks_overlap "${mpi[@]}"
extra=(--dist.overlap=false)
run ranks_no_overlap "${mpi[@]}"
base=$(tokens_per_s one_all)
printf '%-44s %12s %8s %14s\n' "configuration" "tokens/s" "ratio" "all-reduce wait"
row() {  # name label
  local t; t=$(tokens_per_s "$1")
  printf '%-44s %12.0f %8.2f %14s\n' "$2" "$t" "$(python3 -c "print($t / $base)")" "$(wait_ms "$1")"
}
row one_all "1 process, $cores threads (baseline)"
row one_1t "1 process, 1 thread"
row ranks_overlap "$ranks ranks x 1 thread, overlapped all-reduce"
row ranks_no_overlap "$ranks ranks x 1 thread, all-reduce after backward"
