#!/usr/bin/env bash
# Device call 33: final code. CUDA tests, the main table (all methods), full LLaMA2-7B with
# gradient checkpointing for the padded variants.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run33.log
timeout 150 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee $L
timeout 200 python -m flashbone bench --steps 10 --json $OUT/run33_main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tail -14 | tee -a $L
timeout 220 python -m flashbone bench --layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 5 --warmup 2 \
  --methods floor,bone,bat-row,peft-miss --json $OUT/run33_llama7b.json 2>&1 | grep -v '^{' | tail -7 | tee -a $L
