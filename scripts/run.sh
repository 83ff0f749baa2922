#!/usr/bin/env bash
# The main job: install what attnlab needs, build it, train the default recipe and print a
# sample. Extra arguments go to `attnlab demo` (e.g. --train.steps=300).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" attnlab
cd "$root"
exec "${ATTNLAB_BUILD_DIR:-$root/build}/train/attnlab" demo recipes/demo.ini "$@"
