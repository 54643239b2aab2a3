#!/usr/bin/env bash
# Device call 31: host time per projection after skipping no-op casts, and the main table twice.
export PYTHONPATH=$PWD/src:$PWD/scripts PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run31.log
timeout 100 python scripts/host_breakdown.py 2>&1 | grep -E "^(bone|bat-row) " | tee $L
for i in 1 2; do
  echo "== main ($i)" | tee -a $L
  timeout 120 python -m flashbone bench --steps 10 --methods floor,bone,bat-row,bone-mini --json $OUT/run31_main_$i.json 2>&1 | grep -v '^{' | tail -5 | tee -a $L
done
