#!/usr/bin/env bash
# Fetches attnlab's default corpus, Jane Austen's six novels, from Debian's r-cran-janeaustenr
# package into corpora/janeaustenr/ at the repository root (../shared/specs/data_sources.md).
# The package is downloaded and unpacked, never installed (installing would pull in R).
# Idempotent: does nothing when the database is already there. `apt-get update` runs only when
# the download fails (e.g. empty package lists on a fresh machine).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/corpora/janeaustenr"
rdb="$dest/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
rdx="$dest/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"

if [[ -s "$rdb" && -s "$rdx" ]]; then
  echo "fetch-corpus: $dest already present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt (as root) downloads as the _apt user, which must be able to write here.
chmod 0755 "$tmp"

cd "$tmp"
if ! apt-get download -q r-cran-janeaustenr > download.log 2>&1; then
  echo "fetch-corpus: download failed; running apt-get update and retrying"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  if ! apt-get download -q r-cran-janeaustenr > download.log 2>&1; then
    cat download.log >&2
    echo "fetch-corpus: could not download the Debian package r-cran-janeaustenr" >&2
    exit 1
  fi
fi

debs=("$tmp"/r-cran-janeaustenr_*.deb)
if [[ ! -f "${debs[0]}" ]]; then
  echo "fetch-corpus: apt-get download produced no r-cran-janeaustenr .deb" >&2
  exit 1
fi

# Unpack beside the destination, then move into place, so an interrupted run leaves nothing
# half-written that a later run would mistake for a complete corpus.
mkdir -p "$root/corpora"
staging="$root/corpora/.janeaustenr.tmp.$$"
rm -rf "$staging"
dpkg-deb -x "${debs[0]}" "$staging"
if [[ ! -s "$staging/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" ]]; then
  rm -rf "$staging"
  echo "fetch-corpus: the package has no usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" >&2
  exit 1
fi
rm -rf "$dest"
mv "$staging" "$dest"
echo "fetch-corpus: unpacked $(basename "${debs[0]}") into $dest"
