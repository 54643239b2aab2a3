#!/usr/bin/env bash
# Device call 24: why bat fails (full tracebacks), and bone's GPU time with padding on and off.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run24.log
timeout 120 python -m pytest -x -q -p no:cacheprovider tests/test_kernels.py -k "bat and not row and T1000" 2>&1 | grep -v Warn | tail -40 | tee $L
for pad in 1 0; do
  echo "== profile FLASHBONE_PADDED=$pad" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 120 python scripts/device_profile.py --methods bone --top 22 2>&1 | tail -26 | tee -a $L
done
