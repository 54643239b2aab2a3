#!/usr/bin/env bash
# Device call 42: bone's padded backward ([h | ds] = dy W_ext, one add, dB in float32 by its GEMM:
# three launches instead of five) and leaner dispatch, against the previous code (ab/src, a copy
# of commit 86059d8), alternating in one call. CUDA tests first.
# (The "new" code of this call, the three-launch padded backward, was reverted after it: kernel notes section 10.)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run42.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
PYTHONPATH=$PWD/src timeout 150 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee -a $L
for code in new old; do
  src=$PWD/src; [ $code = old ] && src=$PWD/ab/src
  echo "== host $code" | tee -a $L
  PYTHONPATH=$src timeout 100 python scripts/host_fwd_bwd.py bone bat-row 2>&1 | tail -4 | tee -a $L
done
i=0
for code in new old new old; do
  i=$((i+1)); src=$PWD/src; [ $code = old ] && src=$PWD/ab/src
  echo "== main $code ($i)" | tee -a $L
  PYTHONPATH=$src timeout 120 python -m flashbone bench --steps 10 --methods floor,bone,bat-row,bone-mini --json $OUT/run42_main_${code}_$i.json 2>&1 | grep -v '^{' | tail -5 | tee -a $L
done
