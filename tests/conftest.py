import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def eager_compile_on_a_cpu(monkeypatch):
    """torch.compile runs the function as it is on a machine without a GPU: torchao's optimizer step
    (--optim, bfloat16 weights) compiles per parameter shape, minutes on a fresh 2-core machine; the
    arithmetic is the same. On a GPU compiling is what the CUDA tests check, so it stays."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: fn if fn is not None else (lambda f: f))


@pytest.fixture
def tok():
    from lm.loading import tiny_tokenizer
    return tiny_tokenizer()


@pytest.fixture
def model(tok):
    from lm.loading import tiny_model
    return tiny_model(tok, seed=0).eval()
