#!/usr/bin/env bash
# Device call 11 (session 2): cuBLAS for the skinny GEMMs (x P, s B, dy B^T, dy P), fused
# RMSNorm replay, weight_grad with 8 warps. CUDA tests, the full main table, profiles.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run11.log
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  timeout 150 python -m pytest -q --tb=short -rf tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -8; } 2>&1 | tee $L
timeout 300 python -m flashbone bench --steps 10 --json $OUT/main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,full 2>&1 | tee -a $L
timeout 90 python scripts/device_profile.py --methods floor,bone,bat-row --top 22 --out $OUT/profile.json 2>&1 | grep -v Warn | tee -a $L
