#!/usr/bin/env bash
# Issue 18's distillation measurement: one student (2/3 of the teacher's layers) trained for the same
# wall-clock three ways: SFT only (--alpha 0), off-policy logit distillation, on-policy distillation;
# then greedy held-out accuracy, paired against the SFT-only twin.
#   bash bench/distill_evidence.sh TEACHER [MINUTES per run, default 8] [LAYERS, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TEACHER=${1:?teacher checkpoint}
MIN=${2:-8}
LAYERS=${3:-20}
OUT=runs/distill-evidence
mkdir -p "$OUT"
COMMON="--teacher $TEACHER --student-from-teacher-layers $LAYERS --train-examples 3000 --max-length 512
        --gradient-accumulation-steps 4 --max-steps 1000 --max-minutes $MIN --learning-rate 1e-4
        --lr-scheduler constant --warmup-ratio 0.02 --eval-every -1 --save-every 1000 --dtype float32 --overwrite"
# shellcheck disable=SC2086
"$PY" run.py distill $COMMON --alpha 0 --output-dir "$OUT/sft-only"
# shellcheck disable=SC2086
"$PY" run.py distill $COMMON --output-dir "$OUT/off-policy"
# shellcheck disable=SC2086
"$PY" run.py distill $COMMON --on-policy --on-policy-prompts 8 --output-dir "$OUT/on-policy"
last() { ls -d "$OUT/$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }
"$PY" run.py eval --model "$(last sft-only),$(last off-policy),$(last on-policy),$TEACHER" --num-problems 200 \
    --max-new-tokens 160 --batch-size 50 --dtype float32 --output-dir "$OUT/eval"
