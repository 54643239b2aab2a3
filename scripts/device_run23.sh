#!/usr/bin/env bash
# Device call 23: padded weight, second version (bone: forward only, one-pass [x | xP];
# row-affine: constant spare columns written once). SDPA check, per-projection pieces, CUDA
# tests, then the adapted methods with padding on and off, alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run23.log
python scripts/_dbg_llama.py 2>&1 | grep -v Warn | cut -c1-300 | tee $L
python scripts/padded_bench.py 2>&1 | tee -a $L
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_padded.py 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -12 | tee -a $L
B="python -m flashbone bench"
M=floor,bone,bat-row,bone-ab,bone-mini
i=0
for pad in 1 0 1; do
  i=$((i+1))
  echo "== main FLASHBONE_PADDED=$pad ($i)" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 100 $B --steps 10 --methods $M --json $OUT/run23_pad${pad}_$i.json 2>&1 | grep -v '^{' | tail -6 | tee -a $L
done
