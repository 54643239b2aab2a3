#!/usr/bin/env bash
# Device call 12 (session 2): the persistent TMA GEMM with the rank-r slab (kernels/tma_gemm.py):
# CUDA tests, per-shape GEMM bench against cuBLAS, then the main table rows with
# FLASHBONE_GEMM=cublas (default), triton and auto, each against its own floor.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run12.log
timeout 200 python -m pytest -q --tb=short -rf tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -6 | tee $L
timeout 150 python scripts/gemm_bench.py 2>&1 | grep -v Warn | tee -a $L
for mode in triton cublas; do
  echo "== FLASHBONE_GEMM=$mode" | tee -a $L
  FLASHBONE_GEMM=$mode timeout 100 python -m flashbone bench --steps 10 --json $OUT/main_$mode.json \
    --methods floor,bone,bat-row 2>&1 | grep -v '^{' | tail -5 | tee -a $L
done
