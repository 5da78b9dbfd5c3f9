import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture
def tok():
    from lm.loading import tiny_tokenizer
    return tiny_tokenizer()


@pytest.fixture
def model(tok):
    from lm.loading import tiny_model
    return tiny_model(tok, seed=0).eval()
