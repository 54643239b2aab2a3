#!/usr/bin/env bash
# Device call 46: commit 1fca0b2 (before bone-mini padded by default). CUDA tests, main table.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run46.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)" | tee -a $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -12 | tee -a $L
timeout 240 python -m flashbone bench --steps 10 --json $OUT/run46_main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tail -14 | tee -a $L
