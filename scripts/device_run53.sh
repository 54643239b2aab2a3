#!/usr/bin/env bash
# Device call 53: row-affine groups with one Triton pass over x per direction for up to three
# members (row_affine_fwd_group / row_affine_bwd_group, dx summed in registers), against the
# previous commit (ab/prev = 0514d15, one pass per member), alternating in one call. The fused
# passes measured slower and were not kept (kernel notes section 10); their code is not in the tree.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run53.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
PYTHONPATH=$PWD/src timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
i=0
for code in new prev new prev; do
  i=$((i+1)); src=$PWD/src; [ $code = prev ] && src=$PWD/ab/prev/src
  echo "== main $code ($i)" | tee -a $L
  PYTHONPATH=$src timeout 120 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run53_${code}_$i.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
