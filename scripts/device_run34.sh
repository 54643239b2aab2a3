#!/usr/bin/env bash
# Device call 34: padding off / on in one call, full LLaMA2-7B with gradient checkpointing and
# the main shape (call 33 ran both on a machine whose host was slower than in calls 23-31).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run34.log
B="python -m flashbone bench"
for pad in 0 1; do
  echo "== 7B FLASHBONE_PADDED=$pad" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 200 $B --layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 4 --warmup 2 \
    --methods floor,bone,bat-row --json $OUT/run34_7b_pad$pad.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
for pad in 0 1; do
  echo "== main FLASHBONE_PADDED=$pad" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 100 $B --steps 10 --methods floor,bone,bat-row --json $OUT/run34_main_pad$pad.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
