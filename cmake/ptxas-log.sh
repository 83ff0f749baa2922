#!/bin/sh
# Compiler launcher for nvcc: runs the compile, passes its diagnostics through, and writes
# ptxas's resource report (-Xptxas=-v) for this source to <log dir>/<source path, / as _>.log.
# tests/lint/ptxas_report_test reads those files.
log_dir="$1"; shift
out=$("$@" 2>&1); rc=$?
printf '%s\n' "$out" | grep -v -e '^ptxas info' -e '^ptxas *info' -e '^    ' >&2 || true
src=""
for a in "$@"; do case "$a" in *.cu) src="$a";; esac; done
if [ -n "$src" ]; then
  mkdir -p "$log_dir"
  name=$(printf '%s' "$src" | sed 's|^/||; s|/|_|g')
  { printf '### %s\n' "$src"; printf '%s\n' "$out" | grep -e 'ptxas' -e '^    '; } > "$log_dir/$name.log" || true
fi
exit $rc
