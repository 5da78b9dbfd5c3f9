"""`python run.py chat "What is 2 + 3 * 4?" --model PATH_OR_NAME`: one answer, with the R1 system prompt."""
from dataclasses import dataclass

import torch

from common.config import arg
from lm import load_model, sample
from lm.chat import SYSTEM_PROMPT, encode_prompt


@dataclass
class ChatConfig:
    positional = "question"
    question: str = arg("What is 2 + 3 * 4?", "the user's message (also the first positional argument)")
    model: str = arg("smollm2-135m", "built-in name, local checkpoint folder or hub id")
    max_new_tokens: int = arg(256, "token budget for the answer")
    temperature: float = arg(0.0, "0 is greedy; above 0 samples")
    top_p: float = arg(1.0, "nucleus sampling threshold")
    top_k: int = arg(0, "keep only the k most likely tokens (0: all)")
    system_prompt: str = arg(SYSTEM_PROMPT, "system message; empty for none")
    dtype: str = arg("auto", "auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16, float16")
    device: str = arg("auto", "auto, cpu, cuda, cuda:1, ...")
    seed: int = arg(0, "random seed for sampling")
    trust_remote_code: bool = arg(False, "allow model code from the hub (off unless you trust it)")


def main(config: ChatConfig) -> str:
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device,
                                  trust_remote_code=config.trust_remote_code)
    prompt = encode_prompt(tokenizer, config.question, config.system_prompt or None)
    generator = torch.Generator(device=model.device).manual_seed(config.seed)
    out = sample(model, [prompt], max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                 top_p=config.top_p, top_k=config.top_k, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, generator=generator)
    ids = out.completion_ids[0][out.completion_mask[0].bool()]
    answer = tokenizer.decode(ids, skip_special_tokens=True)
    print(answer + ("\n[stopped at the token budget]" if out.truncated[0] else ""))
    return answer
