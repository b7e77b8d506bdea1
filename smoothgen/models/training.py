"""The training loop shared by SmoothGen's base models: schedule, AMP, EMA, resumable state.

A :class:`Task` supplies the model, the optimizer and ``loss(step, generator)``; :func:`fit` runs
``steps`` optimizer steps with

- learning rate ``lr_at(step)``: linear warm-up over ``warmup_steps``, then cosine decay from
  ``lr`` to ``min_lr_frac · lr`` at the last step (``min_lr_frac = 1`` keeps it constant);
- bf16 autocast on CUDA (fp32 on CPU), optional gradient-norm clipping;
- a ``tqdm`` progress bar; a non-finite loss stops the run with an error;
- a resumable training state every ``checkpoint_every`` steps and at the end (model, optimizer,
  task extras such as EMA weights, the training generator's state and torch's global RNG states),
  written atomically by :func:`smoothgen.models.checkpoints.save_training_state`;
- an optional wall-clock budget: the run stops (and saves its state) once it is exceeded.

Randomness: every random draw of a task (batch order aside, which comes from per-epoch seeded
permutations) goes through the passed ``torch.Generator``; dropout, which only knows torch's global
RNG, runs inside ``torch.random.fork_rng`` seeded by the run's seed (see :func:`seeded_global_rng`),
so training leaves the caller's global RNG state untouched.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from smoothgen.models.checkpoints import load_training_state, save_training_state
from smoothgen.runtime import make_generator

__all__ = ["EMA", "EpochSampler", "FitResult", "Task", "fit", "lr_at", "seeded_global_rng"]


def lr_at(step: int, params: dict[str, Any]) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_frac·lr``."""
    lr, warmup, total = params["lr"], params["warmup_steps"], params["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = params["min_lr_frac"]
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's global RNG (CPU and ``device``), seed it, restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class EpochSampler:
    """Batch indices without replacement: epoch ``e`` is a permutation drawn from seed ``seed·100003 + e``.

    ``indices(step)`` depends only on ``(n, batch_size, seed, step)``, so a resumed run sees the
    same batches. The last incomplete batch of each epoch is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}] (the number of training examples), got {batch_size}")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0)

    def indices(self, step: int) -> Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = make_generator(self.seed * 100003 + epoch, "cpu")
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).to(self.device)
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]


class EMA:
    """Exponential moving average of a model's floating-point state: ``s ← d·s + (1−d)·θ``,
    ``d = min(decay, (1 + k)/(10 + k))`` at update ``k`` (the usual warm-up of the decay)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.shadow = {k: v.detach().clone().float() for k, v in state.items()}
        self._sources = list(state.values())  # views of the live weights (updated in place by the optimizer)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the current weights; ``step`` is the 1-based number of optimizer steps so far."""
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.shadow.values()), [v.float() for v in self._sources], 1 - d)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({**model.state_dict(), **self.shadow})


class Task:
    """One model's training recipe; subclasses set ``name``, ``model``, ``optimizer`` and ``loss``."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: dict[str, Any]

    def loss(self, step: int, generator: torch.Generator) -> Tensor:
        """Scalar training loss of step ``step`` (random draws from ``generator`` only)."""
        raise NotImplementedError

    def after_step(self, done: int) -> None:
        """Hook after optimizer step number ``done`` (1-based), e.g. EMA update or validation."""

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Extra tensors (prefixed) and JSON fields saved with the training state."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def export_model(self) -> nn.Module:
        """The model whose weights are shipped (e.g. the EMA or best-validation weights)."""
        return self.model


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: steps done (in total), wall time (summed over resumed runs), early stop."""

    steps: int
    wall_time_s: float
    stopped_by_budget: bool
    resumed_from: int


def _state_tensors(task: Task, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    tensors = {f"model.{k}": v for k, v in task.model.state_dict().items()}
    tensors.update(task.extra_state()[0])
    tensors["rng.train"] = generator.get_state()
    tensors["rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _save(task: Task, stem: Path, generator: torch.Generator, device: torch.device, step: int, wall: float) -> None:
    tensors = _state_tensors(task, generator, device)
    save_training_state(stem, tensors, task.optimizer, {"step": step, "wall_time_s": wall, **task.extra_state()[1]})


def _restore(task: Task, stem: Path, generator: torch.Generator, device: torch.device) -> tuple[int, float]:
    saved = load_training_state(stem)
    if saved is None:
        return 0, 0.0
    tensors, optimizer_state, meta = saved
    task.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    task.optimizer.load_state_dict(optimizer_state)
    task.load_extra_state(tensors, meta)
    generator.set_state(tensors["rng.train"])
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return int(meta["step"]), float(meta["wall_time_s"])


def _step(task: Task, step: int, generator: torch.Generator, device: torch.device) -> Tensor:
    for group in task.optimizer.param_groups:
        group["lr"] = lr_at(step, task.params)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        loss = task.loss(step, generator)
    task.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if task.params.get("grad_clip"):
        nn.utils.clip_grad_norm_(task.model.parameters(), task.params["grad_clip"])
    task.optimizer.step()
    return loss.detach()


def fit(task: Task, out: Path, generator: torch.Generator, device: torch.device, resume: bool = True,
        time_budget_s: float | None = None) -> FitResult:
    """Train ``task`` for ``task.params["steps"]`` steps, resuming from ``out/<name>.state.*`` if present."""
    stem = out / f"{task.name}.state"
    start, wall = _restore(task, stem, generator, device) if resume else (0, 0.0)
    steps, every = task.params["steps"], task.params["checkpoint_every"]
    task.model.train()
    t0, done, stopped = time.monotonic(), start, False
    with tqdm(total=steps, initial=start, desc=task.name, mininterval=2.0) as bar:
        for step in range(start, steps):
            loss = _step(task, step, generator, device)
            done = step + 1
            task.after_step(done)
            bar.update(1)
            if done % 50 == 0 or done == steps:
                value = float(loss)
                if not math.isfinite(value):
                    raise RuntimeError(f"{task.name}: non-finite loss {value} at step {done}; lower lr or check the data")
                bar.set_postfix(loss=f"{value:.4f}")
            elapsed = wall + time.monotonic() - t0
            stopped = time_budget_s is not None and elapsed > time_budget_s and done < steps
            if done % every == 0 or done == steps or stopped:
                _save(task, stem, generator, device, done, elapsed)
            if stopped:
                break
    return FitResult(done, wall + time.monotonic() - t0, stopped, start)
