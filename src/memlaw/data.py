"""Memory items (prompt -> target), their loaders and generators, and answer-only batches.

A memory set is a list of :class:`MemoryItem`. Encoding turns it into token ids; only target
tokens are supervised, and their total count is the length ℓ.

>>> items = generate_phonebook(3, seed=0)
>>> items[0].prompt.endswith(":"), len(items[0].target)
(True, 10)
>>> from memlaw.models import load_model
>>> _, tokenizer = load_model("tiny")
>>> encoded = encode_items(items, tokenizer)
>>> target_length(encoded)
30
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memlaw.errors import MemlawError

IGNORE_INDEX = -100
DEFAULT_TEXT_PROMPT = "Recite the document word for word:\n"


@dataclass(frozen=True)
class MemoryItem:
    """One thing to memorize: the model must answer ``prompt`` with ``target`` verbatim.

    ``target_ids`` pins the exact target tokens (used by token-level generators, whose
    decoded text need not re-tokenize to the same ids).
    """

    prompt: str
    target: str
    target_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EncodedItem:
    """A memory item as token ids: ``prompt_ids`` are context, ``target_ids`` are supervised."""

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.target_ids


# --- loaders -------------------------------------------------------------------------------

# The published formats and ours: (prompt field, target field).
JSONL_FORMATS = {
    "memlaw": ("prompt", "target"),
    "phonebook": ("query", "target"),
    "long-context": ("question", "matching"),
}


def load_items(path: str | Path, *, text_prompt: str = DEFAULT_TEXT_PROMPT) -> list[MemoryItem]:
    """Read a memory set from a file.

    ``.jsonl`` / ``.json`` files hold one object per line in one of the formats of
    ``JSONL_FORMATS`` (ours: ``prompt``/``target``; PhoneBook: ``query``/``target``;
    Long-Context: ``question``/``matching``). Any other file is plain text, memorized as one
    long item answering ``text_prompt``.
    """
    path = Path(path)
    if not path.exists():
        raise MemlawError(f"data file '{path}' does not exist")
    if not path.is_file():
        raise MemlawError(f"data path '{path}' is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MemlawError(f"cannot read data file '{path}': {exc}") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        items = _parse_jsonl(text, path)
    else:
        items = [MemoryItem(text_prompt, text)] if text.strip() else []
    if not items:
        raise MemlawError(f"data file '{path}' holds no memory items")
    return items


def _parse_jsonl(text: str, path: Path) -> list[MemoryItem]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MemlawError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise MemlawError(
                f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
            )
        fields = next(
            (f for f in JSONL_FORMATS.values() if f[0] in record and f[1] in record), None
        )
        if fields is None:
            expected = " or ".join(f"{p}/{t}" for p, t in JSONL_FORMATS.values())
            raise MemlawError(f"{path}:{number}: missing fields: expected {expected}")
        prompt, target = record[fields[0]], record[fields[1]]
        if not isinstance(prompt, str) or not isinstance(target, str):
            raise MemlawError(f"{path}:{number}: fields {fields[0]}/{fields[1]} must be strings")
        if not target:
            raise MemlawError(f"{path}:{number}: empty target")
        items.append(MemoryItem(prompt, target))
    return items


def save_items(items: list[MemoryItem], path: str | Path) -> None:
    """Write items as memlaw JSONL (``prompt``/``target``), atomically."""
    from memlaw.atomic import atomic_write_text

    lines = [
        json.dumps({"prompt": i.prompt, "target": i.target}, ensure_ascii=False) for i in items
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


# --- generators ----------------------------------------------------------------------------

FIRST_NAMES = (
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy "
    "Matthew Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew "
    "Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Dorothy George Melissa Timothy "
    "Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia Jacob "
    "Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen Brenda Larry Pamela"
).split()
LAST_NAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
    "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook "
    "Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward "
    "Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez "
    "Castillo Sanders Patel Myers Long Ross Foster Jimenez Becerra Laramee Carrara Brashier"
).split()


def generate_phonebook(n: int, seed: int = 0) -> list[MemoryItem]:
    """``n`` entries ``"First Last:" -> 10-digit number`` with distinct names.

    >>> generate_phonebook(1, seed=3)[0].target.isdigit()
    True
    """
    capacity = len(FIRST_NAMES) * len(LAST_NAMES)
    if n <= 0:
        raise MemlawError(f"phonebook size must be positive, got {n}")
    if n > capacity:
        raise MemlawError(f"phonebook size {n} exceeds the {capacity} distinct names available")
    rng = random.Random(seed)
    names = rng.sample(range(capacity), n)
    items = []
    for index in names:
        first, last = FIRST_NAMES[index % len(FIRST_NAMES)], LAST_NAMES[index // len(FIRST_NAMES)]
        number = str(rng.randint(2, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(9))
        items.append(MemoryItem(f"{first} {last}:", number))
    return items


def ordinary_token_ids(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def generate_random_tokens(
    tokenizer, length: int, seed: int = 0, prompt: str = DEFAULT_TEXT_PROMPT
) -> list[MemoryItem]:
    """One item whose target is ``length`` tokens drawn uniformly from the ordinary vocabulary.

    The hardest memory set: no token can be predicted from language knowledge.
    """
    if length <= 0:
        raise MemlawError(f"length must be positive, got {length}")
    rng = random.Random(seed)
    vocabulary = ordinary_token_ids(tokenizer)
    ids = tuple(rng.choice(vocabulary) for _ in range(length))
    return [MemoryItem(prompt, tokenizer.decode(list(ids)), ids)]


SOURCE_TEXT = (
    "The lighthouse keeper wrote in his log every evening, whether or not anything had happened. "
    "Most entries were short: the direction of the wind, the colour of the sea, the number of "
    "ships that passed before dark. In the winter of the great storm he filled six pages in one "
    "night. He described how the lamp had flickered twice, how the door to the gallery had torn "
    "from its hinges, and how a fishing boat had appeared, vanished, and appeared again, closer "
    "each time, until its crew could be seen waving their arms against the spray. He had no "
    "radio and no telephone, only a signal flag, a bell, and the light itself. So he kept the "
    "light turning, and rang the bell every minute until dawn, when the boat came into the lee "
    "of the island and the sea let it go. The crew stayed with him for three days. They repaired "
    "the door, split firewood, and taught him a card game from their village, which he played "
    "alone for the rest of his life and never once won. Years later, when the lighthouse was "
    "automated and the keeper moved to the mainland, the log books were sent to a museum in the "
    "capital. Visitors rarely ask to see them. The archivist who catalogued them noted that the "
    "handwriting never changes, from the first page to the last, except on the night of the "
    "storm, when the letters lean forward as if the writer were walking into the wind. She kept "
    "one page on her desk for a month before returning it to its box: the morning after, when "
    "he wrote only that the sea was calm, that the sky was the colour of pewter, and that five "
    "men were asleep in the kitchen."
)


def generate_noisy_text(
    tokenizer,
    length: int,
    random_fraction: float,
    seed: int = 0,
    text: str = SOURCE_TEXT,
    prompt: str = DEFAULT_TEXT_PROMPT,
) -> list[MemoryItem]:
    """One item: the first ``length`` tokens of ``text`` with ``random_fraction`` of them
    replaced by random tokens (0.0 = natural text, 1.0 = all random)."""
    if not 0.0 <= random_fraction <= 1.0:
        raise MemlawError(f"random fraction must be within [0, 1], got {random_fraction}")
    if length <= 0:
        raise MemlawError(f"length must be positive, got {length}")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if length > len(ids):
        raise MemlawError(f"the source text has {len(ids)} tokens, fewer than length {length}")
    ids = list(ids[:length])
    rng = random.Random(seed)
    vocabulary = ordinary_token_ids(tokenizer)
    for position in rng.sample(range(length), round(random_fraction * length)):
        ids[position] = rng.choice(vocabulary)
    return [MemoryItem(prompt, tokenizer.decode(ids), tuple(ids))]


# --- encoding and batches ------------------------------------------------------------------


def generate_items(spec: str, tokenizer, seed: int = 0) -> list[MemoryItem]:
    """A generated memory set from its spec: ``phonebook:N``, ``random:LENGTH`` or
    ``noisy:LENGTH:FRACTION``.

    >>> len(generate_items("phonebook:3", None))
    3
    """
    kind, _, rest = spec.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "phonebook" and len(args) == 1:
            return generate_phonebook(int(args[0]), seed=seed)
        if kind == "random" and len(args) == 1:
            return generate_random_tokens(tokenizer, int(args[0]), seed=seed)
        if kind == "noisy" and len(args) == 2:
            return generate_noisy_text(tokenizer, int(args[0]), float(args[1]), seed=seed)
    except ValueError:
        pass
    raise MemlawError(
        f"bad --generate '{spec}': use phonebook:N, random:LENGTH or noisy:LENGTH:FRACTION"
    )


def encode_items(
    items: list[MemoryItem],
    tokenizer,
    *,
    chat_template: bool = False,
    length: int | None = None,
    max_context: int | None = None,
    separator: str = "",
) -> list[EncodedItem]:
    """Tokenize items: prompt and target separately, so the supervised span is exact.

    Prompt and target are joined as token ids, with nothing between them: a target
    ``"9100672710"`` after ``"Name:"`` is learned as ``"Name:9100672710"``. ``separator``
    (e.g. ``" "`` or ``"\\n"``) ends every prompt, for downstream prompts that put it there;
    it is context, never supervised. Recall works with the convention the items were
    trained with.

    ``chat_template`` wraps each prompt as a user turn of the tokenizer's chat template.
    ``length`` keeps the first ``length`` target tokens of the set (items in order, the last one
    truncated), as the Long-Context benchmark prescribes. ``max_context`` rejects items longer
    than the model's context.
    """
    if not items:
        raise MemlawError("the memory set is empty: give at least one item")
    encoded = []
    for number, item in enumerate(items, start=1):
        if chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise MemlawError("this tokenizer has no chat template: drop --chat-template")
            prompt_text = tokenizer.apply_chat_template(
                [{"role": "user", "content": item.prompt}],
                add_generation_prompt=True,
                tokenize=False,
            )
            prompt_ids = tokenizer(prompt_text + separator, add_special_tokens=False).input_ids
        else:
            prompt_ids = tokenizer(item.prompt + separator).input_ids
        if not prompt_ids:  # the first target token needs a context to be predicted from
            start = (
                tokenizer.bos_token_id
                if tokenizer.bos_token_id is not None
                else tokenizer.eos_token_id
            )
            prompt_ids = [start]
        target_ids = item.target_ids or tuple(
            tokenizer(item.target, add_special_tokens=False).input_ids
        )
        if not target_ids:
            raise MemlawError(f"item {number}: the target has no tokens")
        encoded.append(EncodedItem(tuple(prompt_ids), tuple(target_ids)))
    if length is not None:
        encoded = truncate_to_length(encoded, length)
    if max_context is not None:
        for number, item in enumerate(encoded, start=1):
            if len(item.input_ids) > max_context:
                raise MemlawError(
                    f"item {number}: prompt+target is {len(item.input_ids)} tokens, more than the "
                    f"model's context of {max_context}: shorten it or pass a smaller --length"
                )
    return encoded


def truncate_to_length(encoded: list[EncodedItem], length: int) -> list[EncodedItem]:
    """Keep the first ``length`` target tokens of the set."""
    if length <= 0:
        raise MemlawError(f"length must be positive, got {length}")
    total = target_length(encoded)
    if length > total:
        raise MemlawError(f"length {length} exceeds the {total} target tokens in the data")
    kept, remaining = [], length
    for item in encoded:
        if remaining <= 0:
            break
        kept.append(EncodedItem(item.prompt_ids, item.target_ids[:remaining]))
        remaining -= len(kept[-1].target_ids)
    return kept


def target_length(encoded: list[EncodedItem]) -> int:
    """ℓ: the number of supervised target tokens in the whole memory set."""
    return sum(len(item.target_ids) for item in encoded)


def ids_and_labels(entry: EncodedItem | Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """The token ids and labels of one batch row: an encoded item gets answer-only labels
    (``IGNORE_INDEX`` on the prompt); a row with ``input_ids`` and ``labels`` (a Trainer's
    features, a tokenized dataset) keeps its own.

    >>> ids_and_labels(EncodedItem((5, 6), (7,)))
    ([5, 6, 7], [-100, -100, 7])
    """
    if isinstance(entry, EncodedItem):
        return list(entry.input_ids), [IGNORE_INDEX] * len(entry.prompt_ids) + list(
            entry.target_ids
        )
    ids, labels = _as_ids(entry["input_ids"]), _as_ids(entry["labels"])
    if len(ids) != len(labels):
        raise MemlawError(f"input_ids and labels differ in length ({len(ids)} vs {len(labels)})")
    return ids, labels


def _as_ids(values) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else [int(v) for v in values]


def collate(
    batch: Sequence[EncodedItem] | Sequence[Mapping[str, Any]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded batch of encoded items or rows (see :func:`ids_and_labels`), with
    ``IGNORE_INDEX`` labels on padding.

    ``labels`` follow the Hugging Face convention: ``labels[t]`` is the token at ``t``, predicted
    from the logits at ``t - 1``.

    >>> batch = collate([EncodedItem((5, 6), (7,)), {"input_ids": [5, 8], "labels": [-100, 8]}], 0)
    >>> batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[-100, -100, 7], [-100, 8, -100]], [[1, 1, 1], [1, 1, 0]])
    """
    rows = [ids_and_labels(entry) for entry in batch]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, target) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(target, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
