#!/usr/bin/env bash
# Device call 65: CUDA tests on the cleaned backward (direct dots only); then the bench with
# the rows forward reading float32 A (CAST_A=0, BT=32, pairs, 8 warps, 5 stages) against A cast
# to bf16 once per call (CAST_A=1, BT=16, pairs, 4 warps, 6 stages: call 62's best), alternating.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run65.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
CAST='{"row_affine_rows": {"CAST_A": 1, "BT": 16, "PAIRS": 1, "num_warps": 4, "num_stages": 6}}'
i=0
for v in cast f32 cast f32 cast f32; do
  i=$((i+1)); cfg='{}'; [ $v = cast ] && cfg=$CAST
  echo "== $v ($i)" | tee -a $L
  FLASHBONE_KERNEL_CONFIG="$cfg" timeout 150 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run65_${v}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
