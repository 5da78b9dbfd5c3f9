"""Child of bench/grpo_step.py, run in the TRL venv (bench/trl_env.py): TRL's GRPOTrainer on the
config of issue 5 (B prompts x G completions, every completion forced to the full budget with
min_new_tokens, beta 0.04, one update per batch), on the CPU in float32 or on a GPU (pure bfloat16, or float32 weights with bfloat16 autocast). Prints one JSON line: seconds per step and
the part of each step spent in `generate`."""
import argparse
import json
import random
import tempfile

import torch
from datasets import Dataset
from trl_common import Clock, now  # bench/, next to this script
from trl import GRPOConfig, GRPOTrainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True, help="JSON list of chat messages")
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", choices=("default", "on", "off"), default="default")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "bf16-mixed"), default="float32",
                        help="bf16-mixed: float32 weights with bfloat16 autocast (bf16=True), as ours on a GPU")
    args = parser.parse_args()
    B, G, T = args.prompts, args.group_size, args.new_tokens
    bf16 = args.dtype in ("bfloat16", "bf16-mixed")
    weights = torch.float32 if args.dtype == "bf16-mixed" else getattr(torch, args.dtype)
    kw = {} if args.gradient_checkpointing == "default" else {"gradient_checkpointing": args.gradient_checkpointing == "on"}
    config = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B * G, num_generations=G,
                        max_completion_length=T, beta=0.04, temperature=1.0, max_steps=args.steps, bf16=bf16,
                        fp16=False, use_cpu=args.device == "cpu", logging_steps=1, report_to="none",
                        save_strategy="no", disable_tqdm=True, generation_kwargs={"min_new_tokens": T},
                        model_init_kwargs={"dtype": weights, "attn_implementation": "sdpa"}, **kw)
    rng = random.Random(0)
    clock = Clock()
    data = Dataset.from_list([{"prompt": json.loads(args.prompt)}] * (B * args.steps))
    trainer = GRPOTrainer(model=args.model, reward_funcs=lambda completions, **_: [rng.random() for _ in completions],
                          args=config, train_dataset=data, callbacks=[clock])
    generating, generate = [], trainer.model.generate

    def timed_generate(*a, **k):
        start = now()
        out = generate(*a, **k)
        generating.append(now() - start)
        return out

    trainer.model.generate = timed_generate
    trainer.train()
    print(json.dumps({"seconds": clock.seconds, "generate": generating,
                      "gradient_checkpointing": trainer.args.gradient_checkpointing}))


if __name__ == "__main__":
    main()
