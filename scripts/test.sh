#!/usr/bin/env bash
# All tests: install what attnlab needs, build everything, run every test with ctest, then
# print the float64 gradcheck table of every registered op.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${ATTNLAB_BUILD_DIR:-$root/build}"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
rm -rf "$build/reports"
set +e
ctest --test-dir "$build" -j "$(nproc)" --output-on-failure 2>&1 | tee "$build/ctest.log"
status=${PIPESTATUS[0]}
set -e
echo
echo "float64 gradcheck of every registered op (central differences, atol 1e-6, rtol 1e-5):"
if compgen -G "$build/reports/gradcheck/*.txt" > /dev/null; then
  cat "$build"/reports/gradcheck/*.txt
else
  echo "  (no report: the gradcheck tests did not run)"
  status=1
fi
# ctest's own verdict last, where readers of the log look for it.
echo
grep -E '^[0-9]+% tests passed|^Total Test time' "$build/ctest.log" || true
exit $status
