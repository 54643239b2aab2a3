#!/usr/bin/env bash
# Device call 8 (session 2): row-parallel block sum, fused RMSNorm replay, launch-parameter
# sweep (scripts/tune_kernels.py), CUDA tests, and the main-table rows on the new code.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run8.log
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)"
  timeout 150 python -m pytest -q --tb=short -rf tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -12; } 2>&1 | tee $L
timeout 280 python scripts/tune_kernels.py --json $OUT/tune.json 2>&1 | grep -v Warning | tee -a $L
timeout 140 python -m flashbone bench --steps 10 --json $OUT/main.json --methods floor,bone,bat-row 2>&1 | tee -a $L
