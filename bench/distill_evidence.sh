#!/usr/bin/env bash
# Issue 18's distillation measurement: one student (20 of the teacher's 30 layers, chosen greedily by the
# first run and reused by the others) trained for the same wall-clock three ways: off-policy logit
# distillation (forward KL, T 1, no cross-entropy), SFT only (--alpha 0, the twin), on-policy
# distillation (half the micro-batches the student's own samples, reverse KL); then held-out level 3,
# 200 problems x 2 samples at T=1, each paired against the SFT-only twin, the teacher alongside.
#   bash bench/distill_evidence.sh TEACHER [MINUTES per run, default 6] [LAYERS, default greedy:20]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TEACHER=${1:?teacher checkpoint}
MIN=${2:-6}
LAYERS=${3:-greedy:20}
OUT=runs/distill-evidence
mkdir -p "$OUT"
COMMON="--teacher $TEACHER --train-examples 3000 --max-length 512 --gradient-accumulation-steps 4 --max-steps 1000
        --max-minutes $MIN --learning-rate 1e-4 --lr-scheduler constant --warmup-ratio 0.02 --eval-every -1
        --save-every 1000 --dtype float32 --overwrite"
# shellcheck disable=SC2086
"$PY" run.py distill $COMMON --student-from-teacher-layers "$LAYERS" --alpha 1 --temperature 1 --output-dir "$OUT/kd"
KEPT=$("$PY" -c "import json; print(''.join(f'{i},' for i in json.load(open('$OUT/kd/student.json'))['layers']))")
# shellcheck disable=SC2086
"$PY" run.py distill $COMMON --student-from-teacher-layers "$KEPT" --alpha 0 --output-dir "$OUT/sft-only"
# shellcheck disable=SC2086
"$PY" run.py distill $COMMON --student-from-teacher-layers "$KEPT" --alpha 1 --temperature 1 --on-policy \
    --off-policy-fraction 0.5 --on-policy-prompts 4 --on-policy-max-new-tokens 96 --output-dir "$OUT/on-policy"
last() { ls -d "$OUT/$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }
"$PY" run.py eval --model "$(last sft-only),$(last kd),$(last on-policy),$TEACHER" --dataset arithmetic:3 \
    --num-problems 200 --samples-per-problem 2 --temperature 1.0 --max-new-tokens 128 --batch-size 50 \
    --dtype float32 --output-dir "$OUT/eval"
