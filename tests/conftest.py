"""Shared fixtures. Nothing here reaches the network: Hugging Face runs offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from memlaw.data import encode_items, generate_phonebook  # noqa: E402
from memlaw.models import load_model  # noqa: E402

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture
def tiny():
    """A fresh tiny model and its tokenizer (training wraps the model, so one per test)."""
    return load_model("tiny")


@pytest.fixture
def phonebook_items(tiny):
    _, tokenizer = tiny
    return encode_items(generate_phonebook(4, seed=1), tokenizer)
