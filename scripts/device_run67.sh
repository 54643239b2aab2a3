#!/usr/bin/env bash
# Device call 67: down_proj's input silu(gate) * up formed inside the row-affine backward
# (X_MUL=1) instead of recomputed into memory by replay: CUDA tests, the kernel times, then
# the bench with X_MUL=1 against X_MUL=0, alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run67.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
timeout 60 python scripts/row_affine_rows.py --product 2>&1 | tee -a $L
OFF='{"row_affine_bwd": {"X_MUL": 0}}'
i=0
for v in on off on off on off; do
  i=$((i+1)); cfg='{}'; [ $v = off ] && cfg=$OFF
  echo "== X_MUL $v ($i)" | tee -a $L
  FLASHBONE_KERNEL_CONFIG="$cfg" timeout 150 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run67_${v}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
