#!/usr/bin/env bash
# Device call 21: the padded weight W_ext = [W | X] (kernels/padded.py). CUDA tests first, then
# the main table's adapted methods with padding on and off, alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run21.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
python -c "import torch, triton, transformers, peft; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__)" | tee -a $L
timeout 240 python -m pytest -x -q -p no:cacheprovider tests/test_kernels.py tests/test_padded.py 2>&1 | tail -4 | tee -a $L
B="python -m flashbone bench"
M=floor,bone,bat-row,bone-ab,bone-mini
i=0
for pad in 1 0 1; do
  i=$((i+1))
  echo "== main FLASHBONE_PADDED=$pad ($i)" | tee -a $L
  FLASHBONE_PADDED=$pad timeout 100 $B --steps 10 --methods $M --json $OUT/run21_pad${pad}_$i.json 2>&1 | grep -v '^{' | tail -6 | tee -a $L
done
