"""Packed against padded SFT batches on the same examples: trained tokens per second and padding.

    .venv/bin/python bench/sft_packing.py [--examples 24] [--max-length 1024] [--batch 4]

Examples are built-in arithmetic conversations whose answers are stretched to 100-600 tokens.
Padded: `--batch` examples per row group, right-padded to the longest (the attention mask hides the
padding, but the matmuls still run over it). Packed: best-fit rows of `--max-length` tokens. Both do
one forward+backward per micro-batch over all the examples; the script prints time, trained tokens
per second, and the share of computed positions that were padding.
"""
import argparse
import random
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm import load_model  # noqa: E402
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


def run(model, batches) -> tuple[float, int, int]:
    start, trained, computed = time.perf_counter(), 0, 0
    for batch in batches:
        sft_loss(model, batch).backward()
        trained += batch.num_targets
        computed += batch.input_ids.numel()
    model.zero_grad()
    return time.perf_counter() - start, trained, computed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    model, tok = load_model(args.model, dtype="float32")
    model.train()
    examples, _ = tokenize(tok, stretched(args.examples, tok, 0), args.max_length)
    lengths = [len(e.input_ids) for e in examples]
    print(f"{len(examples)} examples, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f})")
    padded = [collate_padded(examples[i:i + args.batch], tok.pad_token_id) for i in range(0, len(examples), args.batch)]
    packed = [collate_rows([row], tok.pad_token_id) for row in pack(examples, args.max_length)]
    for name, batches in (("padded", padded), ("packed", packed)):
        seconds, trained, computed = run(model, batches)
        real = sum(lengths)
        print(f"{name:<7} {len(batches):3d} micro-batches  {seconds:7.1f} s  {trained / seconds:6.1f} trained tok/s  "
              f"{real / seconds:6.1f} input tok/s  padding {1 - real / computed:6.1%} of computed positions")


if __name__ == "__main__":
    main()
