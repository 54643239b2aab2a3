#!/usr/bin/env bash
# Device call 60: the bench, old code (b519828, ab/old) against the rows forward + one-wave
# accumulating backward (BT=64, 4 warps, 2 stages), alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run60.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
i=0
for v in new old new old new old; do
  i=$((i+1)); src=$PWD/src; [ $v = old ] && src=$PWD/ab/old/src
  echo "== $v ($i)" | tee -a $L
  PYTHONPATH=$src timeout 150 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run60_${v}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
