#!/usr/bin/env bash
# Device call 1: kernel correctness (pytest -m cuda), per-layer kernel bench (cuBLAS and Triton
# GEMM epilogues), the main training-step table, and a per-kernel profile. Logs under $OUT.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee $OUT/gpu.txt
python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)" | tee -a $OUT/gpu.txt
timeout 150 python -m pytest -q --tb=line -rf tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -40 | tee $OUT/pytest_kernels.log
timeout 120 python -m flashbone bench --kernels --json $OUT/kernels.json 2>&1 | tee $OUT/kernels.log
FLASHBONE_GEMM=triton timeout 90 python -m flashbone bench --kernels --variants bone,bat-row,bone-ab --json $OUT/kernels_triton.json 2>&1 | tail -16 | tee $OUT/kernels_triton.log
timeout 240 python -m flashbone bench --methods ${METHODS:-floor,bone,bone-mini,bat,bat-row,bat-hadamard,bone-ab,bone@torch,bat@torch,bat-row@torch,peft-lora,peft-miss,peft-bat,full} --json $OUT/main.json 2>&1 | grep -v '^{' | tee $OUT/main.log
timeout 90 python scripts/device_profile.py --methods floor,bone,bat-row,bat --out $OUT/profile.json 2>&1 | tee $OUT/profile.log
