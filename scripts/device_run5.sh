#!/usr/bin/env bash
# Device call 5: bat-row backward forms du = h + g in the kernel (no tile addend, no h = U - g
# cancellation). CUDA tests (tolerance 1e-2), per-layer check/timing of bat-row and bone-ab,
# and the main-table rows that changed, against the floor of the same run.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run5.log
B="python -m flashbone bench"
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  timeout 150 python -m pytest -q --tb=short -rf tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -8; } 2>&1 | tee $L
timeout 60 $B --kernels --variants bat-row,bone-ab --json $OUT/kernels.json 2>&1 | grep -v Warning | tee -a $L
timeout 150 $B --steps 20 --json $OUT/main.json --methods floor,bone,bat-row,bone-ab,bat 2>&1 | grep -v '^{' | tee -a $L
