#!/usr/bin/env bash
# Device call 40: the Triton kernels take the float32 master tensors and cast on load (no cast
# kernel, no cast node, gradients returned in float32). CUDA tests, then FLASHBONE_FUSED_CAST=0/1
# alternating for the variants it touches.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run40.log
timeout 150 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee $L
i=0
for fc in 0 1 0 1; do
  i=$((i+1))
  echo "== main FLASHBONE_FUSED_CAST=$fc ($i)" | tee -a $L
  FLASHBONE_FUSED_CAST=$fc timeout 100 python -m flashbone bench --steps 10 --methods floor,bat-row,bat,bone-ab --json $OUT/run40_main_$i.json 2>&1 | grep -v '^{' | tail -5 | tee -a $L
done
