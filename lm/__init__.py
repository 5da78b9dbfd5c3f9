"""The minimal model/tokenizer wrapper that grpo/, sft/ and distill/ share.

- `loading`: load a model and tokenizer by name (built-in, hub id, local folder, tiny test model).
- `chat`: the R1 system prompt and the one prompt rendering used for training and sampling.
- `sampling`: batched sampling with a KV cache (B prompts x G completions).
- `draw`: the top-k / top-p filter, keyed random numbers, and the draw of a token.
- `decode`: the lean decoding step the sampler uses for Llama-family models, with refreshable weights.
- `rollout`: the static decoding loop (eager on a CPU, CUDA graphs on a GPU).
- `precision`: float32 master weights and bfloat16 compute (what `--dtype` means).
- `logprobs`: per-token log-probs of given tokens, computed in chunks.
- `checkpoint`: atomic checkpoints that transformers loads, plus the training state.
- `sharding`: `--fsdp`, a model split over the torchrun processes (FSDP2).
"""
from common.optim import import_torchao_quietly

import_torchao_quietly()  # before transformers, which imports torchao where installed (and it logs lines)
from lm.chat import SYSTEM_PROMPT, render_prompt, render_conversation  # noqa: E402
from lm.loading import load_model, tiny_model, tiny_tokenizer  # noqa: E402
from lm.logprobs import token_logprobs  # noqa: E402
from lm.sampling import sample  # noqa: E402

__all__ = ["SYSTEM_PROMPT", "render_prompt", "render_conversation", "load_model", "tiny_model",
           "tiny_tokenizer", "token_logprobs", "sample"]
