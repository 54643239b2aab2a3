#!/usr/bin/env bash
# Device call 2: CUDA tests, per-layer kernel bench in the three GEMM modes, the main table
# (with and without input replay), and a per-kernel profile. All text goes to $OUT/run2.log.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run2.log
B="python -m flashbone bench"
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)"
  timeout 170 python -m pytest -q --tb=short -rf tests/test_kernels.py tests/test_bench.py -p no:cacheprovider 2>&1 | tail -40
} 2>&1 | tee $L
for mode in cublas triton auto; do
  FLASHBONE_GEMM=$mode timeout 100 $B --kernels ${KV:+--variants $KV} --json $OUT/kernels_$mode.json 2>&1 | grep -v Warning | tee -a $L
done
timeout 200 $B --methods floor,bone,bone-mini,bat,bat-row,bat-hadamard,bone-ab,bone@torch,bat@torch,bat-row@torch,peft-lora,peft-miss,peft-bat,full --json $OUT/main.json 2>&1 | grep -v '^{' | tee -a $L
FLASHBONE_REPLAY=0 timeout 60 $B --methods floor,bat,bat-row --json $OUT/main_noreplay.json 2>&1 | grep -v '^{' | tee -a $L
timeout 80 python scripts/device_profile.py --methods floor,bone,bat-row,bat --top 22 --out $OUT/profile.json 2>&1 | grep -v Warn | tee -a $L
