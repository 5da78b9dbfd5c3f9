"""SFT speed: packed against padded batches, and against TRL's SFTTrainer, on the same examples.

    .venv/bin/python bench/sft_packing.py [--examples 12] [--max-length 1024] [--batch 2] [--no-trl]

Examples are built-in arithmetic conversations whose answers are stretched to 100-600 tokens.
Every configuration makes one pass over all of them with full training steps (forward, backward,
gradient clipping, AdamW), float32, and prints seconds per step, input and trained (loss-bearing)
tokens per second, and the share of computed positions that were padding:
- ours, padded: `--batch * 2` examples per step, right-padded to the longest (the attention mask hides
  the padding, but the matmuls still run over it);
- ours, packed: `--batch` best-fit rows of `--max-length` tokens per step;
- TRL 1.16 SFTTrainer, packing "bfd", padding-free, sdpa, `--batch` rows per step, once with its
  defaults (gradient checkpointing on) and once with gradient checkpointing off. TRL runs in its own
  virtual environment (.venv-trl, created on first use by bench/trl_env.py).
"""
import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trl_env import run_child  # noqa: E402
from lm import load_model  # noqa: E402
from lm.loading import BUILTIN, builtin_model_dir  # noqa: E402
from sft.loss import sft_loss  # noqa: E402
from sft.packing import collate_padded, collate_rows, pack, tokenize  # noqa: E402
from tasks import load_conversations  # noqa: E402


def stretched(n: int, tokenizer, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for row in load_conversations("arithmetic", limit=n, seed=seed):
        messages = [dict(m) for m in row["messages"]]
        target = rng.randint(100, 600)
        base = len(tokenizer(messages[-1]["content"]).input_ids)
        filler = " Let me double check this step." * max(0, (target - base) // 7)
        messages[-1]["content"] = messages[-1]["content"].replace("</think>", filler + "\n</think>")
        out.append(messages)
    return out


def train_pass(model, steps) -> dict:
    """One full training step per (Batch, its number of real tokens); totals of time and tokens."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    seconds, tokens, trained, computed = [], 0, 0, 0
    for batch, real in steps:
        start = time.perf_counter()
        sft_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        tokens, trained, computed = tokens + real, trained + batch.num_targets, computed + batch.input_ids.numel()
    return {"seconds": seconds, "tokens": tokens, "trained": trained, "computed": computed}


def trained_rate(r: dict) -> float:
    return r["trained"] / sum(r["seconds"])


def padding_share(r: dict) -> float:
    return 1 - r["tokens"] / r["computed"]


def line(name: str, r: dict) -> str:
    total = sum(r["seconds"])
    return (f"{name:<34} {len(r['seconds']):2d} steps {total / len(r['seconds']):6.1f} s/step  "
            f"{r['tokens'] / total:6.1f} input tok/s  {trained_rate(r):6.1f} trained tok/s  "
            f"padding {padding_share(r):5.1%}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=BUILTIN)
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2, help="packed rows per step (padded: twice as many examples)")
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(args.model, dtype="float32")
    model.train()
    conversations = stretched(args.examples, tok, 0)
    examples, _ = tokenize(tok, conversations, args.max_length)
    lengths = [len(e.input_ids) for e in examples]
    print(f"{len(examples)} examples, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), "
          f"{torch.get_num_threads()} threads")
    per = 2 * args.batch
    padded = [(collate_padded(examples[i:i + per], tok.pad_token_id), sum(lengths[i:i + per]))
              for i in range(0, len(examples), per)]
    rows = pack(examples, args.max_length)
    packed = [(collate_rows(rows[i:i + args.batch]),
               sum(len(e.input_ids) for row in rows[i:i + args.batch] for e in row))
              for i in range(0, len(rows), args.batch)]
    results = {}
    for name, steps in (("ours, padded", padded), ("ours, packed", packed)):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        results[name] = train_pass(model, steps)
        model.load_state_dict(state)
        print(line(name, results[name]), flush=True)
    if args.trl:
        path = builtin_model_dir() if args.model == BUILTIN else args.model
        data = Path(tempfile.mkdtemp()) / "sft.jsonl"
        with data.open("w") as f:
            for messages in conversations:
                f.write(json.dumps({"prompt": messages[:-1], "completion": messages[-1:]}) + "\n")
        for gc in ("default", "off"):
            out = json.loads(run_child("trl_sft.py", "--model", str(path), "--data", str(data), "--max-length",
                                       str(args.max_length), "--batch", str(args.batch),
                                       "--gradient-checkpointing", gc).strip().splitlines()[-1])
            r = {"seconds": out["seconds"], "tokens": sum(out["tokens"]), "trained": sum(out["trained"]),
                 "computed": sum(out["tokens"])}
            name = f"TRL SFTTrainer, grad ckpt {'on' if out['gradient_checkpointing'] else 'off'}"
            results[name] = r
            print(line(name, r), flush=True)
    ours, padded = results["ours, packed"], results["ours, padded"]
    print(f"packed vs padded: {trained_rate(ours) / trained_rate(padded):.2f}x trained tok/s "
          f"(padding share of the padded path {padding_share(padded):.1%})")
    for name, r in results.items():
        if name.startswith("TRL"):
            print(f"ours packed vs {name}: {trained_rate(ours) / trained_rate(r):.2f}x trained tok/s")


if __name__ == "__main__":
    main()
