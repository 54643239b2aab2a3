#!/usr/bin/env bash
# Device call 62: the rows forward with A cast to bf16 beforehand; the backward with every dot
# reading loaded tiles directly (DIRECT=1: h + g never formed) against the current form.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; L=$OUT/run62.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
timeout 300 python scripts/row_affine_rows.py 2>&1 | grep -v "rows BT=" | tee -a $L
