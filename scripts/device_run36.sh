#!/usr/bin/env bash
# Device call 36: the lean padded bone path (BonePaddedCuda: master B cast inside the copy into
# W_ext). CUDA tests, then bone unpadded / padded alternating at the main shape.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run36.log
timeout 150 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee $L
i=0
for pad in 1 bone,bat-row 1 bone,bat-row; do
  i=$((i+1))
  echo "== main FLASHBONE_PADDED=$pad ($i)" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 100 python -m flashbone bench --steps 10 --methods floor,bone,bone-mini --json $OUT/run36_main_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
