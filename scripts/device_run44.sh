#!/usr/bin/env bash
# Device call 44: where bone and bat-row wait (scripts/idle_phases.py: idle per phase from a
# CUDA-only profile, host time per phase); then the current code (dB in float32 by its GEMM, the
# original backward order, leaner layer dispatch) against ab/src (commit 86059d8), alternating.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run44.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
PYTHONPATH=$PWD/src timeout 150 python scripts/idle_phases.py --methods floor,bone,bat-row 2>&1 | grep -v Warn | tail -5 | tee -a $L
i=0
for code in new old new old; do
  i=$((i+1)); src=$PWD/src; [ $code = old ] && src=$PWD/ab/src
  echo "== main $code ($i)" | tee -a $L
  PYTHONPATH=$src timeout 120 python -m flashbone bench --steps 10 --methods floor,bone,bone-mini --json $OUT/run44_main_${code}_$i.json 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
