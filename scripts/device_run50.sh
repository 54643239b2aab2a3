#!/usr/bin/env bash
# Device call 50: sibling groups for bat-row and bone-ab too (RowAffineGroupCuda)
# against FLASHBONE_GROUPS=0, alternating in one call. CUDA tests first.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run50.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
i=0
for g in 1 0 1 0; do
  i=$((i+1))
  echo "== FLASHBONE_GROUPS=$g ($i)" | tee -a $L
  FLASHBONE_GROUPS=$g timeout 120 python -m flashbone bench --steps 10 --methods floor,bone,bat-row,bone-ab --json $OUT/run50_groups${g}_$i.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
