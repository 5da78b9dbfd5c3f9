"""`python run.py chat`: talk to a model with the R1 system prompt.

    python run.py chat "What is 2 + 3 * 4?" --model PATH   one answer, then exit
    python run.py chat --model PATH                        a session: the conversation is kept

Tokens are printed as they are drawn (`lm.sampling.stream`). The reasoning inside <think> ... </think>
is shown dimmed on a terminal (`--think dim`, the default), as plain text (`show`), or not at all
(`hide`). In a session, Ctrl-C stops the answer being written (what was written stays in the
conversation); an empty line, end of input (Ctrl-D) or a Ctrl-C at the prompt ends the session.
Earlier answers go back to the model without their reasoning, as DeepSeek-R1's multi-turn use does.
"""
import sys
from dataclasses import dataclass

from common.config import arg
from lm import load_model
from lm.chat import SYSTEM_PROMPT, encode_prompt
from lm.sampling import stream
from rewards.verify import outside_reasoning

DIM, RESET = "\033[2m", "\033[0m"
TAGS = ("<think>", "</think>")


@dataclass
class ChatConfig:
    positional = "question"
    question: str = arg("", "the user's message (also the first positional argument); none: a session")
    model: str = arg("smollm2-135m", "built-in name, local checkpoint folder or hub id")
    max_new_tokens: int = arg(256, "token budget for each answer")
    temperature: float = arg(0.0, "0 is greedy; above 0 samples")
    top_p: float = arg(1.0, "nucleus sampling threshold")
    top_k: int = arg(0, "keep only the k most likely tokens (0: all)")
    think: str = arg("dim", "the reasoning between <think> tags: dim (on a terminal), show, or hide")
    system_prompt: str = arg(SYSTEM_PROMPT, "system message; empty for none")
    dtype: str = arg("auto", "auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16, float16")
    device: str = arg("auto", "auto, cpu, cuda, cuda:1, ...")
    seed: int = arg(0, "random seed for sampling")
    trust_remote_code: bool = arg(False, "allow model code from the hub (off unless you trust it)")

    def __post_init__(self):
        if self.think not in ("dim", "show", "hide"):
            raise ValueError(f"--think {self.think!r}: choose dim, show or hide")


class Printer:
    """Writes a growing answer as it grows, the reasoning dimmed or hidden. A tag split over two
    tokens ("<thi" + "nk>") is held back until it is whole."""

    def __init__(self, mode: str, out=None):
        out = out or sys.stdout  # looked up now: a notebook or a test may have replaced it
        self.mode = mode if mode != "dim" or out.isatty() else "show"
        self.out, self.shown, self.inside = out, 0, False

    def update(self, text: str, final: bool = False) -> None:
        hold = 0 if final else next((k for k in range(1, min(len(text), 8) + 1)  # what could begin a tag
                                     if any(tag.startswith(text[-k:]) for tag in TAGS)), 0)
        end = len(text) - hold
        while self.shown < end:
            nexts = [(text.find(tag, self.shown, end), tag) for tag in TAGS]
            at, tag = min(((i, t) for i, t in nexts if i >= 0), default=(end, ""))
            self._write(text[self.shown:at])
            if tag:
                self.inside = tag == "<think>"
                self._write(tag, is_tag=True)
            self.shown = at + len(tag)
        self.out.flush()

    def _write(self, piece: str, is_tag: bool = False) -> None:
        if self.mode == "hide" and (self.inside or is_tag):
            return
        dim = self.mode == "dim" and (self.inside or is_tag)
        self.out.write(f"{DIM}{piece}{RESET}" if dim and piece else piece)


def answer(model, tokenizer, messages: list[dict], config: ChatConfig, key: int) -> tuple[str, bool]:
    """Stream one answer to `messages`; (its text, whether it stopped at the token budget). Ctrl-C
    stops it where it is (KeyboardInterrupt is caught here)."""
    prompt = encode_prompt(tokenizer, messages)
    printer, ids, text, complete = Printer(config.think), [], "", False
    try:
        for token in stream(model, prompt, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, top_k=config.top_k, eos_token_id=tokenizer.eos_token_id, key=key):
            ids.append(token)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            printer.update(text)
        complete = True
    except KeyboardInterrupt:
        pass
    printer.update(text, final=True)
    budget = complete and len(ids) == config.max_new_tokens
    print("\n[stopped at the token budget]" if budget else "" if complete else " [stopped]")
    return text, budget


def main(config: ChatConfig) -> str:
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device,
                                  trust_remote_code=config.trust_remote_code)
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    if config.question:
        return answer(model, tokenizer, system + [{"role": "user", "content": config.question}], config, config.seed)[0]
    print(f"chatting with {config.model}: Ctrl-C stops an answer; an empty line, Ctrl-D or Ctrl-C here ends")
    messages, text = list(system), ""
    for turn in range(10 ** 9):
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not question:
            break
        messages.append({"role": "user", "content": question})
        text = answer(model, tokenizer, messages, config, config.seed + turn)[0]
        messages.append({"role": "assistant", "content": outside_reasoning(text).strip() or text})
    return text
