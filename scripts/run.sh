#!/usr/bin/env bash
# The main job: install what attnlab needs (and the Austen corpus), build it, train the default
# recipe (recipes/austen_char.ini, about 10 minutes on 2 cores) and print a sample. Extra
# arguments go to `attnlab train` (e.g. --train.steps=300, or --resume to continue a run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" attnlab
cd "$root"
recipe="${ATTNLAB_RECIPE:-recipes/austen_char.ini}"
# Run again, the main job continues its run (or, if it finished, samples it again) instead of
# refusing to overwrite the checkpoints.
run_name=$(sed -n 's/^name *= *\([^ #]*\).*/\1/p' "$recipe" | head -n 1)
if [[ -n "$run_name" && -e "runs/$run_name/checkpoints/latest" ]]; then set -- --resume "$@"; fi
exec "${ATTNLAB_BUILD_DIR:-$root/build}/train/attnlab" train "$recipe" "$@"
