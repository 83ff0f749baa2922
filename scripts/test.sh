#!/usr/bin/env bash
# All tests: install what attnlab needs, build everything, run every test with ctest, run the
# CUDA emulator's own tests under ASan and TSan, then print the float64 gradcheck table of every
# registered op.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${ATTNLAB_BUILD_DIR:-$root/build}"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
rm -rf "$build/reports"
set +e
ctest --test-dir "$build" -j "$(nproc)" --output-on-failure 2>&1 | tee "$build/ctest.log"
status=${PIPESTATUS[0]}

# The emulator's own tests again under AddressSanitizer and ThreadSanitizer (where the CUDA
# backend is built): planted shared-memory overflows and barrier races must be reported by the
# sanitizers too, and the emulator itself must be clean under both (about 2 minutes).
if [[ -x "$build/tests/simt/simt_test" ]]; then
  for san in address thread; do
    sbuild="$build-simt-$san"
    if cmake -S "$root" -B "$sbuild" -DCMAKE_BUILD_TYPE=Release -DATTNLAB_SIMT_SANITIZE=$san \
         > "$sbuild.configure.log" 2>&1 &&
       cmake --build "$sbuild" -j "$(nproc)" --target simt_test > "$sbuild.build.log" 2>&1; then
      for schedule in inorder warp_ahead; do
        if ATTNLAB_SIMT_SCHEDULE=$schedule "$sbuild/tests/simt/simt_test" > "$sbuild.$schedule.log" 2>&1; then
          echo "simt_test under $san sanitizer, $schedule schedule: passed"
        else
          echo "simt_test under $san sanitizer, $schedule schedule: FAILED"
          tail -30 "$sbuild.$schedule.log"
          status=1
        fi
      done
    else
      echo "simt_test under $san sanitizer: build FAILED (see $sbuild.build.log)"
      tail -30 "$sbuild.build.log" "$sbuild.configure.log"
      status=1
    fi
  done
fi
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
