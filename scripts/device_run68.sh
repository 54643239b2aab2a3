#!/usr/bin/env bash
# Device call 68: final code of the fifth session (down_proj's product formed in the kernel). CUDA tests, the main table, then bat-row
# against the floor three more times (its spread across runs).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run68.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -12 | tee -a $L
timeout 240 python -m flashbone bench --steps 10 --json $OUT/run68_main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tail -14 | tee -a $L
for i in 1 2 3; do
  timeout 100 python -m flashbone bench --steps 10 --methods floor,bat-row --json $OUT/run68_batrow_$i.json 2>&1 | grep -v '^{' | tail -2 | tee -a $L
done
