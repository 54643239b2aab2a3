#!/usr/bin/env bash
# Device call 45: bone's B^T copies batched once per forward pass (padded.forward_pass), against
# the same code without it (ab/mid) and the previous commit (ab/src = 86059d8), alternating in one
# call. CUDA tests first (including 4 fused-AdamW steps on the padded kernels vs the PyTorch path).
# (The batched copy, "new" here, was not kept: it measured slower; kernel notes section 10 describes it.)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run45.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
PYTHONPATH=$PWD/src timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -12 | tee -a $L
i=0
for code in new mid old new mid old; do
  i=$((i+1)); src=$PWD/src; [ $code = old ] && src=$PWD/ab/src; [ $code = mid ] && src=$PWD/ab/mid/src
  echo "== main $code ($i)" | tee -a $L
  PYTHONPATH=$src timeout 120 python -m flashbone bench --steps 10 --methods floor,bone --json $OUT/run45_main_${code}_$i.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
