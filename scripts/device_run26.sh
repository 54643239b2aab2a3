#!/usr/bin/env bash
# Device call 26: CUDA tests (bone-ab no longer pads), then padding off and on at the main
# shape and at 16k tokens per step.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run26.log
B="python -m flashbone bench"
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee $L
for pad in 0 1; do
  echo "== main FLASHBONE_PADDED=$pad" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 100 $B --steps 10 --methods floor,bone,bat-row,bone-ab,bone-mini --json $OUT/run26_main_pad$pad.json 2>&1 | grep -v '^{' | tail -6 | tee -a $L
done
for pad in 0 1; do
  echo "== 16k tokens FLASHBONE_PADDED=$pad" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 120 $B --batch 16 --steps 6 --warmup 2 --methods floor,bone,bat-row --json $OUT/run26_16k_pad$pad.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
