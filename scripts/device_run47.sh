#!/usr/bin/env bash
# Device call 47: bone-mini with the padded weight (never measured on a normal machine) against
# the default (bone-mini unpadded), alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run47.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
i=0
for pad in 1 bone,bat-row,bone-ab,bone-mini 1 bone,bat-row,bone-ab,bone-mini; do
  i=$((i+1))
  echo "== FLASHBONE_PADDED=$pad ($i)" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 120 python -m flashbone bench --steps 10 --methods floor,bone-mini --json $OUT/run47_$i.json 2>&1 | grep -v '^{' | tail -2 | tee -a $L
done
