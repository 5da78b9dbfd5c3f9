"""Child of bench/sft_packing.py, run in the TRL venv (bench/trl_env.py): TRL's SFTTrainer on the
examples the parent wrote, one epoch, packed ("bfd", padding-free, sdpa), float32. Prints one JSON line:
seconds per optimizer step, input and trained (loss-bearing) tokens per step."""
import argparse
import json
import tempfile

import torch
from datasets import load_dataset
from trl_common import Clock  # bench/, next to this script
from trl import SFTConfig, SFTTrainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", choices=("default", "on", "off"), default="default")
    args = parser.parse_args()
    kw = {} if args.gradient_checkpointing == "default" else {"gradient_checkpointing": args.gradient_checkpointing == "on"}
    config = SFTConfig(output_dir=tempfile.mkdtemp(), max_length=args.max_length, packing=True, packing_strategy="bfd",
                       padding_free=True, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                       num_train_epochs=1, learning_rate=2e-5, bf16=False, fp16=False, use_cpu=True,
                       logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
                       model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"}, **kw)
    clock = Clock()
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=load_dataset("json", data_files=args.data)["train"],
                         callbacks=[clock])
    counts = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        counts.append((int(batch["input_ids"].numel()), int((batch["labels"] != -100).sum())))
        return batch

    trainer.data_collator = counting
    trainer.train()
    print(json.dumps({"seconds": clock.seconds, "tokens": [c[0] for c in counts[:len(clock.seconds)]],
                      "trained": [c[1] for c in counts[:len(clock.seconds)]],
                      "gradient_checkpointing": trainer.args.gradient_checkpointing}))


if __name__ == "__main__":
    main()
