"""On-policy distillation (`run.py distill --on-policy`): the student learns on its own samples.

    prompts of the task (the conversations without their answers)
      -> the student samples a completion for each (lm/sampling.py, keyed random numbers)
      -> student and teacher logits at every completion position                (M, V) each
      -> loss = the divergence over the vocabulary at each position (reverse KL by default), no
         cross-entropy term: GKD with lambda = 1 (Agarwal et al. 2024, arXiv 2306.13649), the
         on-policy distillation used for Qwen3's small models

Reverse KL on the student's own samples is mode seeking: the student is pushed off the tokens it
writes where the teacher would not, exactly where it goes wrong at test time; off-policy distillation
only ever sees the teacher's (or the dataset's) prefixes. `--off-policy-fraction f` makes a share f of
the micro-batches off-policy (the usual loss on the SFT data), chosen by a keyed draw per micro-batch.

Under torchrun each rank samples its own micro-batches' prompts; the normaliser (completion tokens of
the whole step) is all-reduced, as in the GRPO loop.
"""
from lm import sample
from lm.chat import encode_prompt
from lm.draw import mix32, prompt_keys, uniform
from sft.packing import IGNORE, Batch, Example, collate_padded
from tasks import stream_rows


def is_on_policy(seed: int, step: int, slot: int, off_policy_fraction: float) -> bool:
    """Whether micro-batch `slot` of `step` samples from the student (a keyed draw: the same on resume
    and on any number of processes)."""
    if off_policy_fraction <= 0:
        return True
    key = mix32(mix32(seed * 7919 + step) ^ (slot + 1))
    return uniform(key.view(1), 0).item() >= off_policy_fraction


def student_batch(policy, tokenizer, rows: list[dict], seed: int, step: int, slot: int, prompts_per_batch: int,
                  max_new_tokens: int, temperature: float) -> Batch:
    """The student's completions for micro-batch `slot`'s prompts (stream positions slot * n ..), as a
    Batch whose targets are the sampled tokens (the EOS too, where the completion ended)."""
    first = slot * prompts_per_batch
    conversations = stream_rows(rows, seed, first, prompts_per_batch)
    prompts = [encode_prompt(tokenizer, c["messages"][:-1]) for c in conversations]
    s = sample(policy, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               keys=prompt_keys(seed, step, range(first, first + prompts_per_batch)))
    examples = []
    for prompt, ids, mask in zip(prompts, s.completion_ids.tolist(), s.completion_mask.tolist()):
        completion = ids[:sum(mask)]
        examples.append(Example(prompt + completion, [IGNORE] * len(prompt) + completion))
    return collate_padded(examples, tokenizer.pad_token_id)
