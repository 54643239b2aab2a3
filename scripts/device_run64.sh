#!/usr/bin/env bash
# Device call 64 (63 again, after the shared-memory fit): CUDA tests, then the bench: cd75142 (ab/mid) against the backward whose dots
# read loaded tiles directly (DIRECT=1, BT=64, 4 warps, 4 stages) and the rows forward with two
# blocks per step (BT=32, 8 warps, 5 stages), alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run64.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
i=0
for v in new mid new mid new mid; do
  i=$((i+1)); src=$PWD/src; [ $v = mid ] && src=$PWD/ab/mid/src
  echo "== $v ($i)" | tee -a $L
  PYTHONPATH=$src timeout 150 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run64_${v}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
