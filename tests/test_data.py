import json

import pytest
import torch

from memlaw.data import (
    IGNORE_INDEX,
    MemoryItem,
    collate,
    encode_items,
    generate_noisy_text,
    generate_phonebook,
    generate_random_tokens,
    load_items,
    save_items,
    target_length,
    truncate_to_length,
)
from memlaw.errors import MemlawError


def test_phonebook_has_distinct_realistic_entries():
    items = generate_phonebook(200, seed=7)
    assert len({item.prompt for item in items}) == 200
    for item in items:
        first, last = item.prompt[:-1].split(" ")
        assert item.prompt.endswith(":") and first.istitle() and last.istitle()
        assert len(item.target) == 10 and item.target.isdigit() and item.target[0] != "0"
    assert generate_phonebook(200, seed=7) == items
    assert generate_phonebook(200, seed=8) != items


def test_random_tokens_pin_exact_ids(tiny):
    _, tokenizer = tiny
    [item] = generate_random_tokens(tokenizer, 50, seed=3)
    assert len(item.target_ids) == 50
    assert not set(item.target_ids) & set(tokenizer.all_special_ids)
    [encoded] = encode_items([item], tokenizer)
    assert encoded.target_ids == item.target_ids


def test_noisy_text_replaces_the_requested_fraction(tiny):
    _, tokenizer = tiny
    [clean] = generate_noisy_text(tokenizer, 200, 0.0)
    [noisy] = generate_noisy_text(tokenizer, 200, 0.25, seed=1)
    changed = sum(a != b for a, b in zip(clean.target_ids, noisy.target_ids, strict=False))
    assert len(noisy.target_ids) == 200
    assert 0 < changed <= 50  # 50 positions redrawn; a redraw can hit the same token
    with pytest.raises(MemlawError, match="fewer than length"):
        generate_noisy_text(tokenizer, 10**6, 0.5)


def test_encoding_supervises_targets_only_and_counts_length(tiny):
    _, tokenizer = tiny
    items = [MemoryItem("Ann Lee:", "123"), MemoryItem("Bo Kim:", "98765")]
    encoded = encode_items(items, tokenizer)
    assert target_length(encoded) == 8
    batch = collate(encoded, tokenizer.pad_token_id)
    labels = batch["labels"]
    assert (labels != IGNORE_INDEX).sum().item() == 8
    row = encoded[0]
    assert labels[0, : len(row.prompt_ids)].eq(IGNORE_INDEX).all()
    assert labels[0, len(row.prompt_ids) : len(row.input_ids)].tolist() == list(row.target_ids)
    assert batch["attention_mask"][0].sum().item() == len(row.input_ids)
    assert torch.equal(
        batch["input_ids"][1, : len(encoded[1].input_ids)], torch.tensor(encoded[1].input_ids)
    )


def test_chat_template_wraps_the_prompt(tiny):
    _, tokenizer = tiny
    plain = encode_items([MemoryItem("Ann Lee:", "123")], tokenizer)[0]
    chat = encode_items([MemoryItem("Ann Lee:", "123")], tokenizer, chat_template=True)[0]
    assert chat.target_ids == plain.target_ids
    assert "<|im_start|>assistant" in tokenizer.decode(list(chat.prompt_ids))


def test_length_truncation_keeps_the_first_target_tokens(tiny):
    _, tokenizer = tiny
    encoded = encode_items(generate_phonebook(3), tokenizer)
    cut = truncate_to_length(encoded, 25)
    assert target_length(cut) == 25 and len(cut) == 3
    assert cut[2].target_ids == encoded[2].target_ids[:5]
    with pytest.raises(MemlawError, match="exceeds"):
        truncate_to_length(encoded, 31)


def test_item_longer_than_context_is_rejected(tiny):
    _, tokenizer = tiny
    with pytest.raises(MemlawError, match="more than the model's context of 16"):
        encode_items([MemoryItem("a long prompt here", "0123456789")], tokenizer, max_context=16)


def test_loaders_read_all_three_jsonl_formats_and_text(tmp_path):
    rows = [
        {"prompt": "a:", "target": "1"},
        {"query": "b:", "target": "2", "id": 3},
        {"question": "c?", "matching": "three", "not_matching": ""},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_items(path) == [
        MemoryItem("a:", "1"),
        MemoryItem("b:", "2"),
        MemoryItem("c?", "three"),
    ]
    text = tmp_path / "doc.txt"
    text.write_text("It was a dark and stormy night.")
    [item] = load_items(text, text_prompt="Go:")
    assert item == MemoryItem("Go:", "It was a dark and stormy night.")


def test_save_items_round_trips(tmp_path):
    items = generate_phonebook(5)
    save_items(items, tmp_path / "pb.jsonl")
    assert load_items(tmp_path / "pb.jsonl") == items


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"prompt": "a", "target": "b"}\n{"prompt": "a", "target": \n',
            r"set.jsonl:2: malformed JSON",
        ),
        ('{"prompt": "a", "answer": "b"}\n', r"set.jsonl:1: missing fields"),
        ('["a", "b"]\n', r"set.jsonl:1: expected a JSON object"),
        ('{"prompt": "a", "target": 5}\n', r"must be strings"),
        ('{"prompt": "a", "target": ""}\n', r"empty target"),
        ("\n\n", r"holds no memory items"),
    ],
)
def test_bad_jsonl_is_named_precisely(tmp_path, content, message):
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    with pytest.raises(MemlawError, match=message):
        load_items(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MemlawError, match="does not exist"):
        load_items(tmp_path / "nope.jsonl")
    with pytest.raises(MemlawError, match="is not a file"):
        load_items(tmp_path)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(MemlawError, match="cannot read"):
        load_items(binary)


def test_empty_set_and_bad_generator_sizes(tiny):
    _, tokenizer = tiny
    with pytest.raises(MemlawError, match="empty"):
        encode_items([], tokenizer)
    with pytest.raises(MemlawError, match="positive"):
        generate_phonebook(0)
    with pytest.raises(MemlawError, match="positive"):
        generate_random_tokens(tokenizer, 0)
