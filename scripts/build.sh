#!/usr/bin/env bash
# Configures and builds attnlab in build/ (Release, all cores). Extra arguments are build
# targets (default: everything). Used by run.sh and test.sh; safe to rerun (incremental).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${ATTNLAB_BUILD_DIR:-$root/build}"
jobs=$(nproc)

mkdir -p "$build"
# ATTNLAB_OPS_ONLY= undoes a development subset a previous configure may have set.
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DATTNLAB_OPS_ONLY= > "$build/configure.log" 2>&1 || {
  cat "$build/configure.log" >&2
  exit 1
}
if (($# == 0)); then
  cmake --build "$build" -j "$jobs"
else
  cmake --build "$build" -j "$jobs" --target "$@"
fi
