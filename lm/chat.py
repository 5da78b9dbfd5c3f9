"""Chat prompts: the R1 system prompt and the single rendering used for training and for sampling.

A training example and a sampled completion are laid out the same way:

    [ chat-template(system, user, add_generation_prompt=True) ][ completion tokens ][ EOS ]
      prompt ids (no loss)                                       completion ids (loss, EOS included)

The prompt and the completion are tokenised separately, exactly as they are when the sampler appends
generated tokens to a tokenised prompt, so SFT trains on the token sequences GRPO later samples.
"""

SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively.\n\n"
    "Format: <think> reasoning process here </think><answer> answer here </answer>"
)


def prompt_messages(problem: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": problem}]


def render_prompt(tokenizer, messages: list[dict] | str, system_prompt: str | None = SYSTEM_PROMPT) -> str:
    """The prompt text up to and including the assistant header. A str is a user question."""
    if isinstance(messages, str):
        messages = prompt_messages(messages, system_prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, messages: list[dict] | str, system_prompt: str | None = SYSTEM_PROMPT) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages, system_prompt), add_special_tokens=False).input_ids


def render_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) for a conversation whose last message is the assistant's answer.

    completion_ids end with the EOS token, which is trained so the model learns to stop.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    prompt_ids = encode_prompt(tokenizer, messages[:-1])
    completion_ids = tokenizer(messages[-1]["content"], add_special_tokens=False).input_ids
    return prompt_ids, completion_ids + [tokenizer.eos_token_id]
