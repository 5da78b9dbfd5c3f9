#!/usr/bin/env bash
# Issue 31's table: does a student learn more from the teacher's distributions than from its answers alone?
# Each student is trained three ways on the same rows and paired against its SFT-only twin:
#   twin        SFT on the rows (--alpha 0): the teacher's answers, or the worked solutions
#   kd          logit distillation on the same rows, the divergence (forward KL, reverse KL or JSD, T 1)
#               chosen first by 10-step runs: the lowest cross-entropy on the rows after 10 steps
#   on-policy   half the micro-batches the student's own samples scored by the teacher (reverse KL),
#               half the rows (the chosen divergence)
# then one evaluation of the three and the teacher: the pipeline's held-out set, 300 level-3 problems x 2
# samples at T=1, each paired with the twin (the first model). Two students:
#   base   the base built-in model (the teacher's size, none of its training), on the teacher's own best
#          right and well-formatted answers to 400 level-3 training prompts (2 at T=1); 60 steps an arm
#          (the same rows and tokens for twin and kd)
#   cut    the teacher's greedy 20 of 30 layers (chosen by the first run, reused by the others), on the
#          task's 3,000 worked solutions (at 24 minutes a student reads about 2,400 of them once, where the
#          ~140 answers would be read 16 times); 24 minutes an arm (--max-minutes)
# Run it with nothing else on the machine: the arms' budgets and times are wall-clock.
#   bash bench/distill_evidence.sh base|cut [TEACHER, default runs/demo/sft/checkpoint-80 (make demo's)]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STUDENT=${1:?usage: bash bench/distill_evidence.sh base|cut [TEACHER]}
TEACHER=${2:-runs/demo/sft/checkpoint-80}
OUT=${OUT:-runs/distill-evidence}/$STUDENT
case $STUDENT in base|cut) ;; *) echo "distill_evidence.sh: the student is base or cut, not '$STUDENT'" >&2; exit 2 ;; esac
[ -d "$TEACHER" ] || { echo "distill_evidence.sh: no teacher at $TEACHER (make demo trains one)" >&2; exit 2; }
mkdir -p "$OUT"
rm -f "$OUT/times.tsv"
COMMON="--teacher $TEACHER --max-length 512 --gradient-accumulation-steps 4 --learning-rate 1e-4 --lr-scheduler constant
        --warmup-ratio 0.02 --eval-every -1 --dtype float32 --seed 0 --overwrite"
case $STUDENT in
  base)
    [ -f "$OUT/answers/kept.jsonl" ] || "$PY" run.py sample --model "$TEACHER" --dataset arithmetic:3 --split train \
        --num-prompts 400 --num-samples 2 --temperature 1.0 --max-new-tokens 128 --batch-size 50 --keep best \
        --min-score 1.5 --reward-funcs accuracy,format --reward-weights 1,0.5 --dtype float32 --output-dir "$OUT/answers"
    ROWS="--dataset $OUT/answers/kept.jsonl"
    WHO="--student smollm2-135m"
    BUDGET="--max-steps 60 --save-every 60" ;;
  cut)
    ROWS="--dataset arithmetic --train-examples 3000"
    WHO="--student-from-teacher-layers greedy:20"
    BUDGET="--max-steps 1000 --max-minutes 24 --save-every 1000" ;;
esac
run() {  # name, flags...: one arm, its wall-clock seconds in $OUT/times.tsv
  local name=$1 start=$SECONDS; shift
  # shellcheck disable=SC2086
  "$PY" run.py distill $COMMON $ROWS $WHO "$@" --output-dir "$OUT/$name"
  printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$OUT/times.tsv"
}
KINDS="forward_kl reverse_kl jsd"
for kind in $KINDS; do
  run "pick-$kind" --alpha 1 --temperature 1 --kind "$kind" --max-steps 10 --save-every 10
  if [ "$STUDENT" = cut ] && [ "$kind" = forward_kl ]; then  # the first run chose the layers; the others reuse them
    WHO="--student-from-teacher-layers $("$PY" -c "import json; print(''.join(f'{i},' for i in json.load(open('$OUT/pick-forward_kl/student.json'))['layers']))")"
  fi                                                         # ("0,1,2,...," is a list)
done
# shellcheck disable=SC2086
KIND=$("$PY" - "$OUT" $KINDS <<'EOF'
import json, sys
ce = {k: [json.loads(l) for l in open(f"{sys.argv[1]}/pick-{k}/metrics.jsonl")][-1]["ce"] for k in sys.argv[2:]}
print(", ".join(f"{k} {v:.3f}" for k, v in ce.items()), file=sys.stderr)
print(min(ce, key=ce.get))
EOF
)
echo "cross-entropy on the rows after 10 steps (above): $KIND chosen" | tee "$OUT/kind.txt"
# shellcheck disable=SC2086
run twin --alpha 0 $BUDGET
# shellcheck disable=SC2086
run kd --alpha 1 --temperature 1 --kind "$KIND" $BUDGET
# shellcheck disable=SC2086
run on-policy --alpha 1 --temperature 1 --kind "$KIND" --on-policy --off-policy-fraction 0.5 --on-policy-prompts 4 \
    --on-policy-max-new-tokens 96 $BUDGET
last() { ls -d "$OUT/$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }
"$PY" - "$OUT" <<'EOF'
import json, sys
times = dict(line.split() for line in open(f"{sys.argv[1]}/times.tsv"))
for arm in ("twin", "kd", "on-policy"):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{arm}/metrics.jsonl") if '"step"' in l]
    print(f"{arm}: {rows[-1]['step']} steps, {sum(r['tokens'] for r in rows) / 1e3:.1f}k labelled tokens, "
          f"{int(times[arm]) / 60:.1f} min, last CE {rows[-1]['ce']:.3f}")
EOF
"$PY" run.py eval --model "$(last twin),$(last kd),$(last on-policy),$TEACHER" --dataset arithmetic:3 \
    --num-problems 300 --samples-per-problem 2 --temperature 1.0 --max-new-tokens 128 --batch-size 50 \
    --dtype float32 --output-dir "$OUT/eval"
