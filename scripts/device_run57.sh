#!/usr/bin/env bash
# Device call 57: bat-row's row-affine forward with whole rows per program (vsum stored once,
# no zeros, no atomics, no copy) and its backward adding into a sibling's dx. CUDA tests,
# the kernel sweep of scripts/row_affine_rows.py, then ncu on the row-affine kernels if it runs.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run57.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 200 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_padded.py tests/test_siblings.py 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -14 | tee -a $L
timeout 150 python scripts/row_affine_rows.py 2>&1 | tee -a $L
timeout 120 ncu --clock-control none -k regex:row_affine --launch-count 8 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  python scripts/row_affine_rows.py --ncu > $OUT/run57_ncu.txt 2>&1
echo "ncu rc=$?" | tee -a $L
grep -E "row_affine|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Theoretical Occ|Block Limit" $OUT/run57_ncu.txt | head -120 | tee -a $L
