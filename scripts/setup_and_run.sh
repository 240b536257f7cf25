#!/usr/bin/env bash
# One command: create .venv, install mpo (CPU torch first), then the main job on bundled data:
# tune MPO, train DMPO and its baselines, and compare every policy against Hold out of sample.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"   # CPU build; an unpinned torch pulls a CUDA build
python -m pip install --quiet -e ".[dev]"
# 1. Optuna: MPO's gamma_risk/gamma_trade on 2014-2016 (purged from 2019-2022); resumes if run.
mpo tune policies/mpo.toml --workers 2
# 2. DMPO and its baselines, trained on 2011 to 2018-09: skipped when a finished run is newer
#    than the spec, retrained (--force) when the spec changed, resumed if it was interrupted.
if [ ! -f runs/dmpo/results.json ]; then
  mpo train policies/dmpo.toml --run-dir runs/dmpo
elif [ policies/dmpo.toml -nt runs/dmpo/results.json ]; then
  mpo train policies/dmpo.toml --run-dir runs/dmpo --force
fi
# 3. Everything on 2019-2022 in cvxportfolio: one table and runs/<stamp>-.../report.html.
mpo compare policies/hold.toml policies/equal_weight.toml policies/spo.toml policies/mpo.toml policies/two_stage.toml policies/dmpo_qp.toml policies/dmpo_mpo.toml --tuned "$@"
