#!/usr/bin/env bash
# Installs what attnlab needs to build and test, from Debian's packages only.
# Idempotent: packages already present are skipped, and `apt-get update` runs at most once,
# only when something is missing. Run as root (or with sudo) on Debian 12.
set -euo pipefail

packages=(
  build-essential      # g++ 12, make
  cmake                # 3.25 or newer
  pkg-config
  libeigen3-dev        # CPU matmul (lib/)
  libboost-program-options-dev  # recipes and the CLI
  libboost-context-dev          # fibers of the simt emulator that runs CUDA kernels on the CPU
  libgtest-dev         # tests
  nlohmann-json3-dev   # safetensors headers, metrics
  zlib1g-dev           # corpus extraction
  libopenblas-openmp-dev  # large matmuls (OpenMP build: shares attnlab's threads)
  openmpi-bin          # mpirun: starts the ranks of a data-parallel run and the multi-rank tests
  libopenmpi-dev       # the MPI backend (train/distributed_mpi.cpp; ATTNLAB_MPI)
  openssh-client       # mpirun looks for ssh (its launcher for other nodes) even on one node
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
else
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The default corpus: Jane Austen's novels from r-cran-janeaustenr (downloaded, never installed).
"$(dirname "${BASH_SOURCE[0]}")/fetch-corpus.sh"
