#!/usr/bin/env bash
# Device call 43: bone's backward forms on one projection (scripts/bwd_variants.py); then bone with
# dB computed right after ds (dy still in L2) and in float32 by its GEMM, against the previous
# code (ab/src = commit 86059d8), alternating in one call. CUDA tests first.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run43.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
PYTHONPATH=$PWD/src timeout 100 python scripts/bwd_variants.py 2>&1 | tail -6 | tee -a $L
PYTHONPATH=$PWD/src timeout 150 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee -a $L
i=0
for code in new old new old; do
  i=$((i+1)); src=$PWD/src; [ $code = old ] && src=$PWD/ab/src
  echo "== main $code ($i)" | tee -a $L
  PYTHONPATH=$src timeout 120 python -m flashbone bench --steps 10 --methods floor,bone,bone-mini --json $OUT/run43_main_${code}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
