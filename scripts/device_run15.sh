#!/usr/bin/env bash
# Device call 15: isolate two changes measured in call 14 against their previous settings, each
# pair in one process order: weight_grad launch (8 warps/2 stages vs 4/3) and the fused RMSNorm
# replay for bat on the 7B checkpointed shape; row_affine_bwd programs per SM (2 vs 4) in the
# main table.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run15.log
B="python -m flashbone bench"
G="--layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 4 --warmup 2"
for cfg in '{}' '{"weight_grad": {"num_warps": 4, "num_stages": 3}}'; do
  echo "== 7B bat KERNEL_CONFIG=$cfg" | tee -a $L
  FLASHBONE_KERNEL_CONFIG="$cfg" timeout 60 $B $G --methods floor,bat 2>&1 | grep -v '^{' | tail -3 | tee -a $L
done
echo "== 7B bat FLASHBONE_REPLAY_FUSED=0" | tee -a $L
FLASHBONE_REPLAY_FUSED=0 timeout 60 $B $G --methods floor,bat 2>&1 | grep -v '^{' | tail -3 | tee -a $L
for cfg in '{"row_affine_bwd": {"PER_SM": 2}}' '{"row_affine_bwd": {"PER_SM": 4}}' '{"row_affine_bwd": {"PER_SM": 2}}'; do
  echo "== main KERNEL_CONFIG=$cfg" | tee -a $L
  FLASHBONE_KERNEL_CONFIG="$cfg" timeout 60 $B --steps 10 --methods floor,bat-row,bone-ab 2>&1 | grep -v '^{' | tail -4 | tee -a $L
done
