"""The published benchmark files load with our loaders (skipped where ../shared is absent)."""

import pytest

from memlaw.data import encode_items, load_items, target_length
from tests.conftest import SHARED_BENCHMARKS

needs_shared = pytest.mark.skipif(
    not SHARED_BENCHMARKS.is_dir(), reason="the shared benchmark folder is not beside this checkout"
)


@needs_shared
def test_phonebook_pb1000(tiny):
    _, tokenizer = tiny
    items = load_items(SHARED_BENCHMARKS / "phonebook" / "PB1000.jsonl")
    assert len(items) == 100
    assert items[0].prompt == "Jerry Becerra:" and items[0].target == "9100672710"
    assert target_length(encode_items(items, tokenizer)) == 1000  # one byte-token per digit


@needs_shared
def test_long_context_r100_truncates_to_length(tiny):
    _, tokenizer = tiny
    [item] = load_items(SHARED_BENCHMARKS / "long_context" / "r100.jsonl")
    assert item.prompt.startswith("Please output the content")
    encoded = encode_items([item], tokenizer, length=500)
    assert target_length(encoded) == 500
    full = encode_items([item], tokenizer)
    assert encoded[0].target_ids == full[0].target_ids[:500]
