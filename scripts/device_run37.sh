#!/usr/bin/env bash
# Device call 37: the lean padded bone path (BonePaddedCuda) against the addend path, alternating
# in one call, at the main shape and on full LLaMA2-7B with gradient checkpointing. (Call 36 got a
# machine whose floor took 82 to 88 ms and where every adapted method was host-bound.)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run37.log
nproc | tee $L; python -c "import os; print(os.getloadavg())" | tee -a $L
i=0
for pad in 1 bone,bat-row 1 bone,bat-row; do
  i=$((i+1))
  echo "== main FLASHBONE_PADDED=$pad ($i)" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 90 python -m flashbone bench --steps 10 --methods floor,bone --json $OUT/run37_main_$i.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
for pad in 1 bone,bat-row; do
  echo "== 7B FLASHBONE_PADDED=$pad" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 150 python -m flashbone bench --layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 4 --warmup 2 \
    --methods floor,bone --json $OUT/run37_7b_$pad.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
