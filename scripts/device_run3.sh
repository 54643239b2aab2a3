#!/usr/bin/env bash
# Device call 3 (final numbers, part a): CUDA tests, per-layer kernel bench, the main table
# (20 timed steps), bat/bat-row without input replay, and a per-kernel profile.
# Part b (PART=b): scaling sweeps and the full LLaMA2-7B shape with gradient checkpointing.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run3${PART:-a}.log
B="python -m flashbone bench"
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)"; } 2>&1 | tee $L
if [ "${PART:-a}" = a ]; then
  timeout 170 python -m pytest -q --tb=short -rf tests/test_kernels.py tests/test_bench.py -p no:cacheprovider 2>&1 | tail -30 | tee -a $L
  timeout 100 $B --kernels --json $OUT/kernels.json 2>&1 | grep -v Warning | tee -a $L
  timeout 240 $B --steps 20 --json $OUT/main.json --methods floor,bone,bone-mini,bat,bat-row,bat-hadamard,bone-ab,bone@torch,bone-mini@torch,bat@torch,bat-row@torch,bat-hadamard@torch,bone-ab@torch,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tee -a $L
  FLASHBONE_REPLAY=0 timeout 60 $B --steps 20 --methods floor,bat,bat-row,bone-ab --json $OUT/main_noreplay.json 2>&1 | grep -v '^{' | tee -a $L
  timeout 80 python scripts/device_profile.py --methods floor,bone,bat-row,bat --top 16 --out $OUT/profile.json 2>&1 | grep -v Warn | tee -a $L
else
  for sw in r tokens width; do
    timeout 120 $B --kernels --sweep $sw --variants bone,bat,bat-row,bone-ab --json $OUT/sweep_$sw.json 2>&1 | grep -v Warning | tee -a $L
  done
  timeout 280 $B --layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 5 --warmup 2 --json $OUT/llama7b.json --methods floor,bone,bat,bat-row,peft-lora,peft-miss,peft-lora-bf16,peft-miss-bf16,peft-bat-bf16 2>&1 | grep -v '^{' | tee -a $L
fi
