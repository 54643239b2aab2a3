#!/usr/bin/env bash
# Device call 58: launch-parameter sweep of the row-affine rows forward and of the backward
# with and without in-kernel accumulation; then the bench, old code (b519828, ab/old) against
# the rows forward, alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run58.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python scripts/row_affine_rows.py 2>&1 | tee -a $L
i=0
for v in new old new old; do
  i=$((i+1)); src=$PWD/src; [ $v = old ] && src=$PWD/ab/old/src
  echo "== $v ($i)" | tee -a $L
  PYTHONPATH=$src timeout 150 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run58_${v}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
