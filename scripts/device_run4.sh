#!/usr/bin/env bash
# Device call 4: rank-r as two well-parallel kernels (K-split reduce + 2-D expand). CUDA tests,
# the main table again (all our variants, the floor, PEFT LoRA/MiSS, full) and a profile of
# bone and bone-ab (bone-ab was an outlier in call 3: 135 ms against 93 ms in call 2).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run4.log
B="python -m flashbone bench"
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  timeout 150 python -m pytest -q --tb=short -rf tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -15; } 2>&1 | tee $L
timeout 200 $B --steps 20 --json $OUT/main.json --methods floor,bone,bone-mini,bat,bat-row,bat-hadamard,bone-ab,bone-ab,peft-lora,peft-miss,full 2>&1 | grep -v '^{' | tee -a $L
timeout 70 python scripts/device_profile.py --methods bone,bone-ab --top 14 --out $OUT/profile.json 2>&1 | grep -v Warn | tee -a $L
