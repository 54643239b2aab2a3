#!/usr/bin/env bash
# Device call 41: final code (bone, bat-row and bone-ab pad by default; kernels cast the float32 masters on load). CUDA tests, main table.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run41.log
timeout 150 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee $L
timeout 200 python -m flashbone bench --steps 10 --json $OUT/run41_main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tail -14 | tee -a $L
