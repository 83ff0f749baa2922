#!/usr/bin/env bash
# attnlab against the PyTorch peer (../shared/peers/torch_gpt.py under Debian's python3-torch with
# OpenBLAS), same model, shape, thread count and step definition, run one after the other.
# Prints each RESULT line and the throughput and peak-memory ratios.
#
#   bench/compare_torch.sh small     # L=4 C=256 H=4 V=512 B=8 T=128
#   bench/compare_torch.sh gpt2      # L=12 C=768 H=12 V=50257 B=4 T=64
#   bench/compare_torch.sh -- --L 2 --C 128 --NH 2 --V 256 --B 4 --T 64   (any shape)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers="${ATTNLAB_PEERS:-$root/../shared/peers}"
threads="${THREADS:-$(nproc)}"
steps="${STEPS:-10}"
case "${1:-small}" in
  small) shape=(--L 4 --C 256 --NH 4 --V 512 --B 8 --T 128) ;;
  gpt2) shape=(--L 12 --C 768 --NH 12 --V 50257 --B 4 --T 64) ;;
  --) shift; shape=("$@") ;;
  *) echo "usage: $0 small|gpt2|-- SHAPE..." >&2; exit 2 ;;
esac
bench="${ATTNLAB_BUILD_DIR:-$root/build}/bench/train_bench"
[[ -x "$bench" ]] || "$root/scripts/build.sh" train_bench

# Peak RSS of the peer, measured by the kernel for the whole process.
rss_of() { /usr/bin/time -f '%M' -o "$1" "${@:2}"; }
command -v /usr/bin/time > /dev/null || { apt-get install -y -qq time > /dev/null; }

ours=$(mktemp) theirs=$(mktemp) rss=$(mktemp)
trap 'rm -f "$ours" "$theirs" "$rss"' EXIT
OMP_NUM_THREADS="$threads" "$bench" "${shape[@]}" --steps "$steps" | tee "$ours" | grep -E '^(attnlab|RESULT)'
THREADS="$threads" rss_of "$rss" bash "$peers/run_torch.sh" torch_gpt.py "${shape[@]}" --steps "$steps" \
  | tee "$theirs" | grep -E '^(torch|RESULT)'
torch_rss_mb=$(awk '{printf "%.1f", $1 / 1024}' "$rss")
field() { grep '^RESULT' "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
our_ms=$(field "$ours" median_ms) their_ms=$(field "$theirs" median_ms) our_rss=$(field "$ours" peak_rss_mb)
awk -v a="$our_ms" -v b="$their_ms" -v r="$our_rss" -v t="$torch_rss_mb" -v n="$threads" 'BEGIN {
  printf "threads=%d  attnlab %.2f ms/step, torch %.2f ms/step: throughput ratio attnlab/torch = %.2f\n", n, a, b, b / a
  printf "peak RSS: attnlab %.1f MB, torch %.1f MB: ratio attnlab/torch = %.2f\n", r, t, r / t }'
