#!/usr/bin/env bash
# Device call 56: final code (row_affine_fwd loads A row-major and transposes it in registers).
# CUDA tests, the row-affine probe, and the main table.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run56.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -12 | tee -a $L
timeout 60 python scripts/row_affine_probe.py 2>&1 | tail -4 | tee -a $L
timeout 240 python -m flashbone bench --steps 10 --json $OUT/run56_main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tail -14 | tee -a $L
