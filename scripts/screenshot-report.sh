#!/usr/bin/env bash
# Renders a report.html (attnlab report / attnlab ablate) to a PNG with headless Chromium, to check
# by eye that the page draws as intended. Installs Debian's chromium package when it is missing.
#
#   scripts/screenshot-report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
#
# WIDTH defaults to 1400; HEIGHT (the whole page is captured up to it) defaults to 3000.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
  exit 2
fi
report=$1
out=$2
width=${3:-1400}
height=${4:-3000}
if [[ ! -f "$report" ]]; then
  echo "$0: no such file: $report" >&2
  exit 2
fi

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then
    browser=$b
    break
  fi
done
if [[ -z "$browser" ]]; then
  echo "installing chromium (apt-get)..." >&2
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
  browser=chromium
fi

abs_report=$(realpath "$report")
abs_out=$(realpath -m "$out")
# A private profile directory: headless Chromium otherwise writes into $HOME.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --disable-gpu --no-sandbox --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$abs_out" --window-size="$width,$height" "file://$abs_report" 2>/dev/null
if [[ ! -s "$abs_out" ]]; then
  echo "$0: chromium wrote no screenshot to $abs_out" >&2
  exit 1
fi
echo "$abs_out"
