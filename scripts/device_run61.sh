#!/usr/bin/env bash
# Device call 61: the rows forward with two blocks per step (PAIRS) in the launch sweep; then
# where bat-row's remaining time goes (idle per phase, costliest kernels against the floor's).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run61.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python scripts/row_affine_rows.py --fwd 2>&1 | tee -a $L
timeout 200 python scripts/idle_phases.py --methods floor,bat-row --top 25 2>&1 | tee -a $L
