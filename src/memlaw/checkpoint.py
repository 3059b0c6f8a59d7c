"""Checkpoints inside a run: everything a training run needs to continue exactly where it was
stopped, so a run of hours survives a killed process (a sweep point, a session's end).

A checkpoint is a folder written atomically at an epoch's end: the LoRA weights, AdamW's
moments and the sliding window's state in ``tensors.safetensors``; the step log, the
optimizer's settings, the annealing schedule and the certificates in ``state.json``. Nothing
is pickled. A checkpoint belongs to one run: its fingerprint hashes the training config, the
adapter's spec and the memory set, and a folder holding another run's checkpoint is refused.

>>> import tempfile, torch
>>> folder = Path(tempfile.mkdtemp()) / "run"
>>> weights = [torch.ones(2, 2)]
>>> optimizer = torch.optim.AdamW(weights, lr=0.1)
>>> state = RunState(weights, weights, optimizer.state_dict(), None, [], [False], {}, [], 1.5)
>>> save_state(folder, "abc", state)
>>> load_state(folder, "abc").seconds, load_state(folder / "none", "abc")
(1.5, None)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from memlaw.atomic import atomic_write_dir, atomic_write_json
from memlaw.errors import MemlawError

FORMAT = "memlaw.checkpoint/1"
# Training settings added after checkpoints existed, at the value that leaves a run as it was:
# left out of the fingerprint there, so an older run's checkpoint still continues.
LATER_DEFAULTS = {"lr_warmup_steps": 0}
# The safetensors metadata key that carries state.json inside a checkpoint blob.
_STATE_METADATA = "memlaw_state"


@dataclass
class RunState:
    """A run's state at an epoch's end.

    ``params`` and ``last_good`` (the weights before the latest update, the non-finite
    guard's fallback) in the optimizer's order; ``optimizer`` and ``scheduler`` (None: a
    constant rate) as their ``state_dict()``; ``log`` the step log as dicts; ``certified`` the
    per-item certificates; ``window`` the sliding window's tensors by name; ``seconds`` the
    training time so far.
    """

    params: list[torch.Tensor]
    last_good: list[torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    log: list[dict[str, Any]]
    certified: list[bool]
    window: dict[str, torch.Tensor]
    token_probabilities: list[Any]
    seconds: float


def run_fingerprint(config: Any, lora: Any, encoded: list[Any], model: Any = None) -> str:
    """A hash of what makes two runs the same run: config, adapter spec, memory set and the
    base model's configuration (not its path: the same model may sit elsewhere)."""
    digest = hashlib.sha256()
    base = {} if model is None else model.config.to_dict()
    base.pop("_name_or_path", None)
    settings = {k: v for k, v in asdict(config).items() if LATER_DEFAULTS.get(k, object()) != v}
    record = [settings, asdict(lora), base]
    digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    for item in encoded:
        digest.update(json.dumps([list(item.input_ids), list(item.target_ids)]).encode())
    return digest.hexdigest()


def save_state(folder: str | Path, fingerprint: str, state: RunState) -> None:
    """Write (or replace) the checkpoint in ``folder`` atomically."""
    # copies: safetensors refuses tensors that share memory (the weights and their fallback)
    tensors = {f"param.{i}": _copy(p) for i, p in enumerate(state.params)}
    tensors |= {f"last_good.{i}": _copy(p) for i, p in enumerate(state.last_good)}
    tensors |= {f"window.{name}": _copy(t) for name, t in state.window.items()}
    moments: dict[str, dict[str, Any]] = {}
    for index, values in state.optimizer["state"].items():
        moments[str(index)] = {}
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = _copy(value)
            else:
                moments[str(index)][name] = value
    record = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "param_groups": state.optimizer["param_groups"],
        "moments": moments,
        "scheduler": state.scheduler,
        "log": state.log,
        "certified": state.certified,
        "token_probabilities": state.token_probabilities,
        "seconds": state.seconds,
    }

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / "tensors.safetensors"))
        atomic_write_json(staging / "state.json", record)

    atomic_write_dir(folder, fill, overwrite=True)


def saved_epochs(folder: str | Path) -> int:
    """The epochs the checkpoint in ``folder`` holds (0 where there is none or it cannot be
    read), from its step log alone: for progress and estimates, not for continuing.

    >>> saved_epochs("no-such-folder")
    0
    """
    try:
        log = json.loads((Path(folder) / "state.json").read_text())["log"]
        return int(log[-1]["epoch"]) if log else 0
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return 0


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


def load_state(folder: str | Path, fingerprint: str, device: Any = "cpu") -> RunState | None:
    """The checkpoint in ``folder`` (None when there is none); a checkpoint of another run, or
    one that cannot be read, is refused."""
    folder = Path(folder)
    if not (folder / "state.json").exists():
        return None
    try:
        record = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"), device=str(device))
    except (OSError, ValueError, SafetensorError) as error:
        raise MemlawError(
            f"the checkpoint in {folder} cannot be read ({error}): remove the folder to start "
            "the run afresh"
        ) from None
    if record.get("format") != FORMAT or record.get("fingerprint") != fingerprint:
        raise MemlawError(
            f"the checkpoint in {folder} belongs to another run (other settings or data): "
            "remove the folder, or checkpoint this run elsewhere"
        )

    def numbered(prefix: str) -> list[torch.Tensor]:
        count = sum(1 for key in tensors if key.startswith(prefix))
        return [tensors[f"{prefix}{i}"] for i in range(count)]

    optimizer_state: dict[int, dict[str, Any]] = {}
    for index, values in record["moments"].items():
        optimizer_state[int(index)] = dict(values)
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    return RunState(
        params=numbered("param."),
        last_good=numbered("last_good."),
        optimizer={"state": optimizer_state, "param_groups": record["param_groups"]},
        scheduler=record["scheduler"],
        log=record["log"],
        certified=record["certified"],
        window={
            key.split(".", 1)[1]: value
            for key, value in tensors.items()
            if key.startswith("window.")
        },
        token_probabilities=record["token_probabilities"],
        seconds=float(record["seconds"]),
    )


def restamp(folder: str | Path, old: str, new: str) -> int:
    """Re-stamp the checkpoint in ``folder`` from fingerprint ``old`` to ``new`` (a caller that
    has shown both are one run, as :func:`memlaw.train.extend_checkpoint` does); a checkpoint
    without ``old`` is refused. Returns the checkpoint's epoch."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise MemlawError(f"no readable checkpoint in {folder} ({error})") from None
    if record.get("format") != FORMAT or record.get("fingerprint") != old:
        raise MemlawError(f"the checkpoint in {folder} belongs to another run (settings or data)")
    record["fingerprint"] = new
    atomic_write_json(folder / "state.json", record)
    return record["log"][-1]["epoch"] if record["log"] else 0


def state_blob(folder: str | Path) -> bytes:
    """The checkpoint in ``folder`` as one compressed blob (its tensors, with ``state.json`` in
    the safetensors metadata): one value to keep in a database row."""
    import zlib

    from safetensors.torch import save

    folder = Path(folder)
    tensors = load_file(str(folder / "tensors.safetensors"))
    state = (folder / "state.json").read_text()
    return zlib.compress(save(tensors, metadata={_STATE_METADATA: state}))


def write_state_blob(blob: bytes, folder: str | Path) -> None:
    """Write a :func:`state_blob` back as a checkpoint folder, atomically (replacing one)."""
    import zlib

    from safetensors import safe_open

    def fill(staging: Path) -> None:
        weights = staging / "tensors.safetensors"
        try:
            weights.write_bytes(zlib.decompress(blob))
            with safe_open(str(weights), framework="pt") as opened:
                state = (opened.metadata() or {})[_STATE_METADATA]
        except (zlib.error, SafetensorError, KeyError) as error:
            raise MemlawError(f"a stored checkpoint is not a memlaw state blob ({error})") from None
        (staging / "state.json").write_text(state)

    atomic_write_dir(folder, fill, overwrite=True)
