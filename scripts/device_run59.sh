#!/usr/bin/env bash
# Device call 59: CUDA tests with the rows forward and the one-wave backward (ACC=1), then the
# backward sweep: kernel alone, plain and accumulating, programs per SM fixed or fitted (0).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run59.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
timeout 200 python scripts/row_affine_rows.py --bwd 2>&1 | tee -a $L
