#!/usr/bin/env bash
# Device call 14 (session 2, final code): the main table, the full LLaMA2-7B shape with gradient
# checkpointing, and step-level scaling sweeps (tokens, r, width) of floor/bone/bat-row/bat.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run14.log
B="python -m flashbone bench"
M=floor,bone,bat-row,bat
timeout 150 $B --steps 10 --json $OUT/main.json \
  --methods floor,bone,bat-row,bat,bone-mini,bat-hadamard,bone-ab,peft-lora,peft-miss,peft-bat,full 2>&1 | grep -v '^{' | tee $L
timeout 150 $B --layers 32 --batch 8 --seq 512 --gradient-checkpointing --steps 5 --warmup 2 \
  --json $OUT/llama7b.json --methods floor,bone,bat,bat-row,peft-lora,peft-miss 2>&1 | grep -v '^{' | tee -a $L
run() { name=$1; shift; echo "== sweep $name" | tee -a $L
  timeout 45 $B --steps 6 --warmup 2 --methods $M --json $OUT/sweep_$name.json "$@" 2>&1 | grep -v '^{' | tail -5 | tee -a $L; }
run tokens2k --batch 2
run tokens8k --batch 8
run tokens16k --batch 16
run r16 --r 16
run r128 --r 128
run r256 --r 256
run width2048 --hidden 2048 --intermediate 5632 --heads 16
run width8192 --hidden 8192 --intermediate 22016 --heads 64
