"""Shared helpers of the benchmark scripts: models (shipped or random), timing, output.

Every script prints a small table and writes ``<results>/benchmarks/<name>.json`` through
:func:`smoothgen.results.write_json` (``<results>`` is ``$SMOOTHGEN_RESULTS`` or ``data/results``).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smoothgen.data import Vocabulary
from smoothgen.models.checkpoints import CheckpointError
from smoothgen.models.classifier import ClassifierConfig, CifarResNet, load_classifier
from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, DiffusionGenerator, load_diffusion
from smoothgen.models.lm import LMConfig, LMGenerator, build_lm, load_lm
from smoothgen.presets import get_train_preset
from smoothgen.results import git_commit, results_root, write_json


def machine() -> str:
    """CPU / GPU description and the threads torch uses."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), {gpu}")


def sync(device: str) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def tagged(name: str, device: str) -> str:
    """``name`` for CPU runs, ``name_cuda`` for GPU runs (both kept side by side)."""
    kind = torch.device(device).type
    return name if kind == "cpu" else f"{name}_{kind}"


def out_path(name: str) -> Path:
    return results_root() / "benchmarks" / f"{name}.json"


def write(name: str, payload: dict[str, Any]) -> Path:
    """Write the benchmark's JSON with machine, commit and date."""
    meta = {"machine": machine(), "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = write_json(out_path(name), {**meta, **payload})
    print(f"wrote {path}")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Plain fixed-width table of ``rows`` (floats to 4 significant digits)."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Wall seconds of one call (GPU work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# models: the shipped checkpoints when present, else random weights with the shipped architecture
# --------------------------------------------------------------------------------------------
def diffusion_model(steps: int, device: str = "cpu") -> tuple[DiffusionGenerator, str]:
    try:
        return load_diffusion(steps=steps, device=device), "shipped checkpoint diffusion_cifar10"
    except CheckpointError:
        p = get_train_preset("diffusion", "cpu")
        keys = ("block_out_channels", "layers_per_block", "mid_attention", "attention_head_dim", "norm_num_groups")
        model = ClassConditionalUNet(DiffusionConfig(**{k: p[k] for k in keys})).to(device)
        return DiffusionGenerator(model, steps=steps, guidance_scale=3.0), "random-init UNet, cpu-preset architecture"


def lm_model(steps: int, device: str = "cpu") -> tuple[LMGenerator, str]:
    try:
        return load_lm(steps=steps, device=device), "shipped checkpoint lm_ptb"
    except CheckpointError:
        p = get_train_preset("lm", "cpu")
        config = LMConfig(n_embd=p["n_embd"], n_layer=p["n_layer"], n_head=p["n_head"], n_positions=p["n_positions"])
        vocab = Vocabulary(("<eos>", "<unk>", *(f"w{i}" for i in range(config.vocab_size - 2))))
        return LMGenerator(build_lm(config).to(device).eval(), vocab, steps=steps), "random-init GPT-2, cpu-preset architecture"


def classifier_model(sigma: float = 0.25, device: str = "cpu") -> tuple[CifarResNet, str]:
    try:
        return load_classifier(sigma, device=device), f"shipped checkpoint classifier_cifar10_sigma{sigma:.2f}"
    except CheckpointError:
        widths = tuple(get_train_preset("classifier", "cpu")["widths"])
        return CifarResNet(ClassifierConfig(widths=widths)).to(device).eval(), "random-init CifarResNet, cpu-preset widths"
