#!/usr/bin/env bash
# Issue 16's measurement: from the 80-step cold-start model, GRPO on a mix of level-3 and 4-operand
# problems with uniform prompts, --dynamic-sampling and --curriculum pass-rate, at equal wall-clock;
# then the share of groups with signal per step and held-out paired differences on both kinds.
#   bash bench/signal_evidence.sh [MINUTES per GRPO run, default 8]   (runs/evidence16/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MIN=${1:-8}
OUT=runs/evidence16
mkdir -p "$OUT"
SFT=$OUT/sft/checkpoint-80
[ -f "$SFT/training_state.pt" ] || "$PY" run.py sft --train-examples 3000 --max-length 512 --gradient-accumulation-steps 4 \
    --max-steps 80 --learning-rate 1e-4 --warmup-ratio 0.1 --eval-every -1 --save-every 40 --dtype float32 \
    --output-dir "$OUT/sft" --overwrite
COMMON="--model $SFT --dataset arithmetic:3+3x4 --group-size 8 --prompts-per-step 8 --max-completion-length 128
        --temperature 1.0 --learning-rate 2e-5 --reward-funcs accuracy,format --reward-weights 1,0.5 --max-steps 500
        --max-minutes $MIN --save-every 5 --eval-every -1 --dtype float32 --overwrite"
for kind in uniform dynamic curriculum; do
    case $kind in uniform) extra="";; dynamic) extra="--dynamic-sampling";; curriculum) extra="--curriculum pass-rate";; esac
    # shellcheck disable=SC2086
    "$PY" run.py grpo $COMMON $extra --output-dir "$OUT/$kind"
done
last() { ls -d "$OUT/$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }
MODELS="$SFT,$(last uniform),$(last dynamic),$(last curriculum)"
for data in arithmetic:3 arithmetic:3x4; do
    "$PY" run.py eval --model "$MODELS" --dataset "$data" --num-problems 200 --samples-per-problem 4 --temperature 1.0 \
        --max-new-tokens 128 --batch-size 50 --dtype float32 --output-dir "$OUT/eval-${data#arithmetic:}"
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for kind in ("uniform", "dynamic", "curriculum"):
    m = [json.loads(l) for l in (out / kind / "metrics.jsonl").read_text().splitlines()]
    print(f"{kind:<11} steps {len(m):3d}  signal_frac {sum(r['signal_frac'] for r in m) / len(m):.3f}  "
          f"trained_frac {sum(r['trained_frac'] for r in m) / len(m):.3f}  "
          f"groups sampled {sum(8 * r['sampling_rounds'] for r in m)}  minutes {sum(r['time_step'] for r in m) / 60:.1f}")
PYEOF
