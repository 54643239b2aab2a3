#!/usr/bin/env bash
# Device call 52: final code of the fourth session (sibling groups on). CUDA tests, main table,
# and LLaMA2-7B with gradient checkpointing for floor and bone.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run52.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)" | tee -a $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py tests/test_bench.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -12 | tee -a $L
timeout 240 python -m flashbone bench --steps 10 --json $OUT/run52_main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tail -14 | tee -a $L
timeout 200 python -m flashbone bench --layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 4 --warmup 2 \
  --methods floor,bone --json $OUT/run52_7b.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
