#!/usr/bin/env bash
# One command: create .venv, install mpo (CPU torch first), run the main comparison on bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"   # CPU build; an unpinned torch pulls a CUDA build
python -m pip install --quiet -e ".[dev]"
mpo compare policies/hold.toml policies/equal_weight.toml policies/spo.toml policies/mpo.toml "$@"
