"""Checkpoints: safetensors weights + JSON model cards (sha256-verified), and resumable training state.

Layout of a checkpoint folder
-----------------------------
::

    <root>/<name>.safetensors   the weights (tensors only: never pickle)
    <root>/<name>.json          the model card: name, architecture, config, data, data_variant,
                                steps, wall_time_s, hardware, seed, git_commit, sha256, metrics, ...

``<root>`` is the ``root`` argument, else ``$SMOOTHGEN_CHECKPOINTS``, else
``<repo>/data/checkpoints`` (resolved relative to the package). Loading recomputes the sha256 of
the weights file and compares it with the card's ``sha256`` *before* reading any tensor; a missing
or mismatching file raises :class:`CheckpointError`, whose message says how to retrain it.

Training state (for resuming) lives in ``<out>/<name>.state.safetensors`` + ``.state.json``:
model, EMA and optimizer tensors flattened into one safetensors file, the step and the scalar
optimizer settings in the JSON. ``torch.load`` is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from smoothgen.results import atomic_write_bytes, git_commit, repo_root, write_json

__all__ = [
    "CARD_KEYS",
    "CheckpointError",
    "checkpoint_root",
    "hardware_description",
    "load_training_state",
    "load_weights",
    "read_card",
    "repo_commit",
    "save_checkpoint",
    "save_training_state",
    "sha256_file",
    "train_hint",
    "write_card",
]

CARD_KEYS = ("name", "architecture", "config", "data", "data_variant", "steps", "wall_time_s",
             "hardware", "seed", "git_commit", "metrics")
"""Keys every model card must carry (``sha256`` is added by :func:`save_checkpoint`)."""

_HINTS = {
    "diffusion": "python -m smoothgen.models.train diffusion --preset cpu",
    "lm": "python -m smoothgen.models.train lm --preset cpu",
    "classifier": "python -m smoothgen.models.train classifier --preset cpu",
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or fails its sha256 check."""


def checkpoint_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$SMOOTHGEN_CHECKPOINTS``, else ``<repo>/data/checkpoints``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("SMOOTHGEN_CHECKPOINTS")
    if env:
        return Path(env).expanduser()
    return repo_root() / "data" / "checkpoints"


def train_hint(name: str) -> str:
    """The command that (re)creates checkpoint ``name``."""
    kind = name.split("_", 1)[0]
    hint = _HINTS.get(kind, "python -m smoothgen.models.train {diffusion,lm,classifier} --preset cpu")
    if name.startswith("classifier_cifar10_sigma"):
        hint += f" --sigma {float(name.rsplit('sigma', 1)[1]):g}"
    for suffix in ("_noise", "_finetune"):
        if kind in ("diffusion", "lm") and name.endswith(suffix):
            hint += f" --init-from {name.removesuffix(suffix)}" + (" --cond-noise-rel R" if suffix == "_noise" else "")
            hint += " (recipe: the smoothgen.models.train docstring)"
    return hint


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def repo_commit() -> str:
    """``git rev-parse HEAD`` of the repository, or ``"uncommitted"`` when there is none."""
    commit = git_commit()
    return commit if len(commit) == 40 else "uncommitted"


def hardware_description(device: torch.device) -> str:
    """E.g. ``"NVIDIA H100 80GB HBM3 (CUDA 13.0), 16 CPU cores"`` or ``"CPU x86_64, 2 threads"``."""
    cores = os.cpu_count()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), {cores} CPU cores"
    return f"CPU {platform.machine()} ({cores} cores, torch using {torch.get_num_threads()} threads)"


def _dedupe_shared(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier key (tied weights); return ``(state, tied)``."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out, tied = {}, {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ident in seen:
            tied[key] = seen[ident]
        else:
            seen[ident] = key
            out[key] = value
    return out, tied


def _cpu_state(state: dict[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    cast = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        cast[key] = value.contiguous()
    return cast


def save_checkpoint(model: nn.Module, name: str, card: dict[str, Any], root: str | os.PathLike[str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``<root>/<name>.safetensors`` and its card ``<name>.json``, each atomically.

    Tied (storage-sharing) weights are stored once and listed in ``card["tied_weights"]``.
    ``dtype`` (e.g. ``torch.float16``) casts floating tensors for storage (``card["storage_dtype"]``);
    loading casts them back to float32. The card gains ``name``, ``file``, ``sha256`` (of the
    weights file) and ``storage_dtype``. The weights are written first, so a card never names a
    missing file; a crash in between leaves the old card, whose sha256 then fails loudly.

    Raises
    ------
    ValueError
        If ``name`` is not a plain file name or the card lacks a key of :data:`CARD_KEYS`.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
    missing = [k for k in CARD_KEYS if k not in {**card, "name": name}]
    if missing:
        raise ValueError(f"model card for {name!r} lacks {missing}; every card needs {list(CARD_KEYS)}")
    state, tied = _dedupe_shared(model.state_dict())
    state = _cpu_state(state, dtype)
    folder = checkpoint_root(root)
    weights = atomic_write_bytes(folder / f"{name}.safetensors", st_save(state, metadata={"name": name}))
    full = {**card, "name": name, "file": weights.name, "sha256": sha256_file(weights),
            "storage_dtype": str(dtype or torch.float32).removeprefix("torch."), "tied_weights": tied}
    weights.chmod(0o644)
    write_card(name, full, root)
    return weights


def write_card(name: str, card: dict[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """Write (replace) the card ``<root>/<name>.json`` atomically, world-readable."""
    path = write_json(checkpoint_root(root) / f"{name}.json", card)
    path.chmod(0o644)  # the atomic writer's temporary file is created 0600
    return path


def read_card(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The model card of checkpoint ``name`` (raises :class:`CheckpointError` if absent/unreadable)."""
    path = checkpoint_root(root) / f"{name}.json"
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint card {path}. Train it with `{train_hint(name)}` (writes to data/checkpoints/; "
            "pass --out DIR elsewhere), or point SMOOTHGEN_CHECKPOINTS / root= to a folder that holds it."
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read model card {path} ({err}); retrain with `{train_hint(name)}`") from err
    if not isinstance(card, dict) or not isinstance(card.get("sha256"), str):
        raise CheckpointError(f"model card {path} has no 'sha256'; retrain with `{train_hint(name)}`")
    return card


def load_weights(name: str, root: str | os.PathLike[str] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Verify and read checkpoint ``name``: ``(float32 state dict on CPU, card)``.

    The sha256 of ``<name>.safetensors`` is compared with the card's before the bytes are parsed.

    Raises
    ------
    CheckpointError
        Missing card or weights, or a sha256 mismatch (corrupted / replaced file).
    """
    card = read_card(name, root)
    path = checkpoint_root(root) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"missing weights {path} (its card exists). Retrain with `{train_hint(name)}`.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != card["sha256"]:
        raise CheckpointError(
            f"sha256 mismatch for {path}: card says {card['sha256']}, file is {actual}. The file is "
            f"corrupted or does not belong to this card; retrain with `{train_hint(name)}` or restore both files."
        )
    state = {k: v.float() if v.is_floating_point() else v for k, v in st_load(data).items()}
    for key, source in card.get("tied_weights", {}).items():
        state[key] = state[source]
    return state, card


# ----------------------------------------------------------------------------- training state


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, entries in opt_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _state_paths(stem: Path) -> tuple[Path, Path]:
    """``<stem>.safetensors`` and ``<stem>.json`` (appended, so ``name.state`` keeps its ``.state``)."""
    return stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.json"


def save_training_state(stem: Path, tensors: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                        meta: dict[str, Any]) -> None:
    """Write ``<stem>.safetensors`` (``tensors`` + flattened optimizer state) and ``<stem>.json``.

    The JSON (step, optimizer settings, ``meta``) is written last and carries the tensor file's
    sha256, so an interrupted save is detected by :func:`load_training_state`.
    """
    tensor_path, meta_path = _state_paths(stem)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    all_tensors = {**tensors, **opt_tensors}
    state, _ = _dedupe_shared(all_tensors)
    if len(state) != len(all_tensors):
        state = {k: v.clone() for k, v in all_tensors.items()}
    atomic_write_bytes(tensor_path, st_save(_cpu_state(state, None)))
    write_json(meta_path, {**meta, "optimizer": opt_meta, "sha256": sha256_file(tensor_path)})


def load_training_state(stem: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]] | None:
    """``(tensors, optimizer state dict, meta)`` of a saved training state, or ``None`` if there is none.

    Raises
    ------
    CheckpointError
        If the state files exist but do not match (interrupted or corrupted save): delete them
        (or pass ``--no-resume``) to start afresh.
    """
    tensor_path, meta_path = _state_paths(stem)
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not tensor_path.is_file() or sha256_file(tensor_path) != meta.get("sha256"):
        raise CheckpointError(f"training state {tensor_path} is missing or does not match {meta_path}; "
                              "delete both (or pass --no-resume) to train from scratch")
    tensors = st_load(tensor_path.read_bytes())
    optimizer = _unflatten_optimizer(tensors, meta.pop("optimizer"))
    return {k: v for k, v in tensors.items() if not k.startswith("optim.")}, optimizer, meta
