#!/usr/bin/env bash
# Device call 54: re-tune the row-affine passes now that they load float32 masters (call 40)
# (scripts/tune_kernels.py --only row_affine_fwd,row_affine_bwd; the pick weights a LLaMA layer's
# calls: six at the hidden width, one at the MLP width), then bench the picked launch parameters
# (FLASHBONE_KERNEL_CONFIG) against the defaults, alternating in one call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run54.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 300 python scripts/tune_kernels.py --only row_affine_fwd,row_affine_bwd --json $OUT/run54_sweep.json 2>&1 | grep -v "^   " | tail -6 | tee -a $L
CFG=$(python scripts/pick_config.py $OUT/run54_sweep.json --weights 4096x4096=6,4096x11008=1)
echo "picked: $CFG" | tee -a $L
i=0
for c in tuned default tuned default; do
  i=$((i+1))
  echo "== $c ($i)" | tee -a $L
  if [ $c = tuned ]; then export FLASHBONE_KERNEL_CONFIG="$CFG"; else unset FLASHBONE_KERNEL_CONFIG; fi
  timeout 120 python -m flashbone bench --steps 10 --methods floor,bat-row,bone-ab --json $OUT/run54_${c}_$i.json 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
