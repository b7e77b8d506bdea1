"""Train (and evaluate) SmoothGen's base models, writing checkpoints with model cards.

Usage::

    python -m smoothgen.models.train {diffusion,lm,classifier} --preset {smoke,cpu,gpu}
        [--sigma 0.25] [--steps N] [--batch-size B] [--set KEY=JSON ...] [--out DIR]
        [--device cpu|cuda] [--seed 0] [--time-budget SECONDS] [--no-resume]
        [--skip-eval | --eval-only] [--evaluator-root DIR] [--data-root DIR] [--note TEXT]
        [--init-from NAME] [--cond-noise-rel R]

(also ``smoothgen train ...``). Parameters come from :data:`smoothgen.presets.TRAIN_PRESETS`;
``--steps``, ``--batch-size`` and ``--set`` override them, and the card records preset and
overrides. ``--out`` defaults to the checkpoint root (``$SMOOTHGEN_CHECKPOINTS`` or
``<repo>/data/checkpoints``). An interrupted run resumes from ``<out>/<name>.state.*``.

Card metrics (:mod:`smoothgen.models.evaluation`) are computed on the *saved* weights after
training, or alone with ``--eval-only``. The diffusion metrics need the clean evaluator checkpoint
(``--evaluator-root``, else ``--out``, else the default root).

Noise-trained generators (condition noise)
------------------------------------------
The analogue of Cohen et al.'s Gaussian data augmentation, applied to the *condition embedding*
that SmoothGen noises (preset keys ``cond_noise_rel``, ``init_from``, ``freeze_cond_embedding``;
``--cond-noise-rel R`` / ``--init-from NAME`` are shortcuts for ``--set``):

- where: diffusion: the class-table row fed to the UNet, ``u_y + σ_i ξ`` with ``ξ ~ N(0, I_E)``,
  for the non-dropped conditions only (the null row of classifier-free guidance stays clean, as
  at sampling time); LM: every input token embedding (``wte`` row) of the training window,
  ``wte[x_t] + σ_i ξ_t``, before the model adds its position embeddings (untouched); targets
  unchanged. ``ξ`` is drawn from the run's training generator, so a resumed run is exact.
- how much: ``σ_i ~ U[0, σ_max]`` independently per training example (image / window), with
  ``σ_max = cond_noise_rel · unit`` fixed once from the embedding table at the start of training
  (after ``init_from`` is loaded), in the study's natural units: diffusion ``unit`` = half the
  class gap, ``min_k min_{j≠k} ‖u_k − u_j‖ / 2`` (``embedding_geometry()["nearest_other_min"] / 2``);
  LM ``unit`` = half the median nearest-token distance of ``wte`` (``nn_median / 2``). ``σ`` is a
  per-coordinate standard deviation, like the study's ``σ`` (the noise *norm* is ``≈ σ √E``).
  One model over the range ``[0, σ_max]`` rather than one per ``σ`` (Cohen et al. train one
  classifier per ``σ``): one checkpoint then serves the whole ``σ`` grid of the study (``k``
  fine-tunes would cost ``k×`` here), and keeping ``σ ≈ 0`` in the training distribution keeps
  the clean-condition quality, as for denoisers trained blind over a range of noise levels
  (DnCNN-B, σ ∈ [0, 55]) rather than one model per level. The card records ``cond_noise_rel``,
  the absolute ``σ_max``, the unit and the geometry it came from (``condition_noise``).
- frozen table: ``freeze_cond_embedding = null`` (default) freezes the condition-embedding table
  exactly when ``init_from`` is set. Frozen, the fine-tuned model keeps the base model's class
  rows / ``wte`` bit for bit, so the study's natural units, clean conditions and radii are
  identical for both models, and the network cannot "escape" the absolute noise by spreading
  its embeddings apart (which would shrink the relative noise it was meant to learn). For the LM
  ``wte`` is tied to the output layer, which therefore stays frozen too; everything else trains.
- ``init_from``: fine-tune from a checkpoint name (looked up in ``--out``, then the default
  checkpoint root), read sha256-verified through :func:`~smoothgen.models.checkpoints.load_weights`
  (safetensors, no pickle); the architecture comes from its card (preset architecture entries are
  replaced in the recorded training parameters); the LM's vocabulary file must match the data's.
  The card records ``init_from`` (name, sha256, git commit, steps). Training uses the preset's
  optimizer / schedule from step 0 (fresh AdamW moments; use a short warm-up).
- names: ``diffusion_cifar10_noise`` / ``lm_ptb_noise`` when ``cond_noise_rel > 0``, else
  ``..._finetune`` when only ``init_from`` is set (the "same extra steps, no noise" control), else
  the base names. ``--eval-only`` finds them from the same ``--cond-noise-rel`` / ``--init-from``.
- LM weight selection: with noise on, the shipped weights are those of the best validation
  perplexity *under the training noise* (the noisy objective's validation analogue; fixed noise
  draws at every evaluation, history key ``valid_perplexity_noisy``); the card's clean
  ``valid_perplexity`` / ``test_perplexity`` are computed afterwards as usual.

``cond_noise_rel = 0`` (the default of every preset) is the old training path bit for bit (no
extra random draws). Scale: notebook 08's grids (``STUDY_PRESETS["08_meaningful_radii"]``) reach
``σ = 0.4`` (cpu) / ``0.5`` (gpu) half class gaps, hence ``cond_noise_rel = 0.5`` for the diffusion
model (``σ_max ≈ 3.18`` for the shipped table); for PTB they are in units of the *full* median
nearest-token distance, 0.13 (cpu) / 0.16 (gpu), i.e. 0.26 / 0.32 in this module's half-distance
unit, hence ``cond_noise_rel = 0.35`` (``σ_max ≈ 0.153``). (The older notebooks' grids, ``σ`` up
to ``0.05 · mean_norm``, are 0.082 half gaps and 0.108 half nearest-token distances.)

Recipe: cpu fine-tunes, ≈ 15 min each on one core of the 2-core machine (``OMP_NUM_THREADS=1``;
measured 3.45 s per diffusion step at batch 64 (up to 4.2 s with other jobs running), 3.0 s per
LM step at 16 × 128 tokens (up to 3.5 s), 40 s per noisy LM validation pass, 85 s for the LM card
metrics; the diffusion card evaluation at these sizes ≈ 4 min: 0.9 s per guided image, 25 s for
the 10,000 real images' features). ``--time-budget`` caps the training part if the machine is
slower (the card then says ``stopped_by_time_budget``)::

    OMP_NUM_THREADS=1 python -m smoothgen.models.train diffusion --preset cpu --device cpu \\
        --init-from diffusion_cifar10 --cond-noise-rel 0.5 --steps 180 --batch-size 64 \\
        --set lr=2e-4 --set warmup_steps=20 --set checkpoint_every=30 --set sweep_scales='[4.0]' \\
        --set sweep_samples=20 --set eval_samples=200 --time-budget 720
    OMP_NUM_THREADS=1 python -m smoothgen.models.train lm --preset cpu --device cpu \\
        --init-from lm_ptb --cond-noise-rel 0.35 --steps 210 --batch-size 16 \\
        --set lr=3e-4 --set warmup_steps=20 --set eval_every=70 --set checkpoint_every=70 \\
        --time-budget 840

The single guidance scale 4.0 is the base model's measured default (kept for a like-for-like
comparison; the preset's sweep and sizes, 2,200 guided images, would take ≈ 33 min); FID on 200
samples is biased upwards and comparable only with the base model evaluated at the same sizes.
Delete the ``<name>.state.*`` files afterwards (resumable training state, not a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgen.data import load_cifar10, load_ptb
from smoothgen.models.checkpoints import (
    checkpoint_root, hardware_description, load_weights, read_card, repo_commit, save_checkpoint, sha256_file,
)
from smoothgen.models.classifier import ClassifierConfig, CifarResNet, classifier_name, random_crop_flip
from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, DiffusionGenerator
from smoothgen.models.evaluation import evaluate_checkpoint
from smoothgen.models.lm import LMConfig, LMGenerator, build_lm, stream_perplexity, vocab_path, windows
from smoothgen.models.training import EMA, EpochSampler, Task, fit, seeded_global_rng
from smoothgen.presets import get_train_preset
from smoothgen.results import atomic_write_text, git_dirty, package_versions
from smoothgen.runtime import make_generator, resolve_device

__all__ = ["check_noise_params", "condition_noise", "main", "output_name", "train"]

DIFFUSION_NAME = "diffusion_cifar10"
LM_NAME = "lm_ptb"


def _pick(params: dict[str, Any], cls: type) -> dict[str, Any]:
    """The entries of ``params`` that are fields of dataclass ``cls``."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in cls.__dataclass_fields__}


# ----------------------------------------------------------------------------- condition noise


def check_noise_params(params: Mapping[str, Any]) -> None:
    """Validate ``cond_noise_rel``, ``init_from`` and ``freeze_cond_embedding`` (absent = defaults).

    Raises
    ------
    ValueError
        ``cond_noise_rel`` not a finite number ``>= 0``, ``init_from`` not a plain checkpoint name
        (or null), ``freeze_cond_embedding`` not a bool (or null).
    """
    rel = params.get("cond_noise_rel", 0.0)
    if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not math.isfinite(rel) or rel < 0:
        raise ValueError(f"cond_noise_rel must be a finite number >= 0 (0 = no condition noise), got {rel!r}")
    init = params.get("init_from")
    if init is not None and (not isinstance(init, str) or not init or "/" in init or init.startswith(".")):
        raise ValueError(f"init_from must be a checkpoint name such as 'diffusion_cifar10' or null, got {init!r}")
    freeze = params.get("freeze_cond_embedding")
    if freeze is not None and not isinstance(freeze, bool):
        raise ValueError(f"freeze_cond_embedding must be true, false or null (= frozen iff init_from), got {freeze!r}")


def output_name(kind: str, params: Mapping[str, Any], sigma: float | None = None) -> str:
    """Checkpoint name of a run: the base name (``diffusion_cifar10`` / ``lm_ptb``) plus ``_noise``
    when ``cond_noise_rel > 0``, else ``_finetune`` when ``init_from`` is set; classifiers by ``sigma``."""
    if kind == "classifier":
        return classifier_name(sigma)
    base = DIFFUSION_NAME if kind == "diffusion" else LM_NAME
    if params.get("cond_noise_rel"):
        return base + "_noise"
    return base + "_finetune" if params.get("init_from") else base


def condition_noise(shape: Sequence[int], sigma_max: float, generator: torch.Generator,
                    device: torch.device | str) -> tuple[Tensor, Tensor]:
    """``(σ_i ξ, σ)``: levels ``σ_i ~ U[0, σ_max]``, one per index ``i`` of the first axis (one per
    training example), times ``ξ ~ N(0, I)`` of ``shape``; drawn from ``generator`` (``σ`` first)."""
    sigmas = sigma_max * torch.rand(shape[0], generator=generator, device=device)
    xi = torch.randn(tuple(shape), generator=generator, device=device)
    return sigmas.view(-1, *(1,) * (len(shape) - 1)) * xi, sigmas


def _frozen(params: Mapping[str, Any]) -> bool:
    """``freeze_cond_embedding``, or (null) whether ``init_from`` is set."""
    freeze = params.get("freeze_cond_embedding")
    return bool(params.get("init_from")) if freeze is None else freeze


def _load_init(name: str, roots: Sequence[Path | None]) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """``(state, card, folder)`` of checkpoint ``name``, from the first of ``roots`` that has its card.

    Raises ``ValueError`` when no folder has it; :class:`CheckpointError` when its weights fail the
    sha256 check."""
    searched: list[Path] = []
    for root in roots:
        folder = checkpoint_root(root)
        if folder in searched:
            continue
        searched.append(folder)
        if (folder / f"{name}.json").is_file():
            state, card = load_weights(name, folder)
            return state, card, folder
    known = sorted({p.stem for f in searched if f.is_dir() for p in f.glob("*.json") if not p.stem.endswith(".state")})
    raise ValueError(f"init_from: no checkpoint {name!r} in {[str(f) for f in searched]} (checkpoints there: {known})")


def _init_info(name: str, card: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "sha256": card["sha256"], "git_commit": card.get("git_commit"), "steps": card.get("steps"),
            "preset": card.get("preset")}


def _adopt_architecture(params: dict[str, Any], arch: dict[str, Any]) -> None:
    """Overwrite the architecture entries of ``params`` with those of the init card (recorded as trained)."""
    params.update({k: v for k, v in arch.items() if k in params})


def _noise_info(params: Mapping[str, Any], sigma_max: float, unit_name: str, unit: float,
                geometry: dict[str, Any], where: str, frozen: bool) -> dict[str, Any]:
    return {"kind": "gaussian", "where": where, "cond_noise_rel": float(params["cond_noise_rel"]),
            "sigma_max": sigma_max, "sigma_distribution": "uniform on [0, sigma_max], one level per training example",
            "sigma_is": "per-coordinate standard deviation", "unit": unit_name, "unit_value": unit,
            "embedding_geometry_at_start": geometry, "embedding_frozen": frozen}


# ----------------------------------------------------------------------------- tasks


class DiffusionTask(Task):
    """ε/v-prediction DDPM loss with condition dropout to the null row (see :mod:`.diffusion`)."""

    def __init__(self, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None,
                 init_roots: Sequence[Path | None] = (None,)) -> None:
        check_noise_params(params)
        data = load_cifar10("train", root=data_root)
        n = params["train_subset"] or data.images.shape[0]
        self.images, self.labels = data.images[:n].to(device), data.labels[:n].to(device)
        self.variant, self.params, self.name = data.variant, params, output_name("diffusion", params)
        self.init_info: dict[str, Any] | None = None
        if params.get("init_from"):
            state, card, _ = _load_init(params["init_from"], init_roots)
            try:
                self.config = DiffusionConfig.from_dict(card["config"]["architecture"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"init_from {params['init_from']!r} is not a diffusion checkpoint ({err})") from err
            _adopt_architecture(params, self.config.to_dict())
            self.model = ClassConditionalUNet(self.config).to(device)
            self.model.load_state_dict(state)
            self.init_info = _init_info(params["init_from"], card)
        else:
            self.config = DiffusionConfig(**_pick(params, DiffusionConfig))
            self.model = ClassConditionalUNet(self.config).to(device)
        self.frozen = _frozen(params)
        self.model.class_embedding.weight.requires_grad_(not self.frozen)
        self.sigma_max, self.noise_info = 0.0, None
        if params.get("cond_noise_rel"):
            geometry = DiffusionGenerator(self.model, self.config, steps=1).embedding_geometry()
            unit = geometry["nearest_other_min"] / 2
            if not unit > 0:
                raise ValueError("cond_noise_rel > 0 needs distinct class embeddings (the half class gap is 0)")
            self.sigma_max = float(params["cond_noise_rel"]) * unit
            self.noise_info = _noise_info(params, self.sigma_max, "half_gap = nearest_other_min / 2", unit, geometry,
                                          "class embedding fed to the UNet (non-null conditions; null row clean)",
                                          self.frozen)
            self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=params["lr"], weight_decay=params["weight_decay"])
        betas = torch.linspace(self.config.beta_start, self.config.beta_end, self.config.num_train_timesteps,
                               dtype=torch.float64)
        if self.config.beta_schedule != "linear":
            raise ValueError("the training loss implements the 'linear' beta schedule only")
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)
        self.sampler = EpochSampler(n, params["batch_size"], seed, device)
        self.ema = EMA(self.model, params["ema_decay"])

    def loss(self, step: int, generator: torch.Generator) -> Tensor:
        idx = self.sampler.indices(step)
        b, dev = idx.shape[0], self.images.device
        x0 = self.images[idx].float() / 127.5 - 1
        flip = torch.rand(b, generator=generator, device=dev) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        drop = torch.rand(b, generator=generator, device=dev) < self.params["cond_dropout"]
        labels = torch.where(drop, self.config.null_index, self.labels[idx])
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator, device=dev)
        noise = torch.randn(x0.shape, generator=generator, device=dev)
        a = self.alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - self.alphas_cumprod[t]).sqrt()[:, None, None, None]
        target = noise if self.config.prediction_type == "epsilon" else a * noise - s * x0
        cond = self.model.embed(labels)
        if self.sigma_max > 0:  # drawn after the draws above: the batch, t and x_t do not depend on the noise
            cond_noise, _ = condition_noise(cond.shape, self.sigma_max, generator, dev)
            cond = torch.where((labels == self.config.null_index)[:, None], cond, cond + cond_noise)
        pred = self.model(a * x0 + s * noise, t, cond)
        return F.mse_loss(pred.float(), target)

    def after_step(self, done: int) -> None:
        self.ema.update(done)

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {f"ema.{k}": v for k, v in self.ema.shadow.items()}, _sigma_meta(self)

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        for k in self.ema.shadow:
            self.ema.shadow[k].copy_(tensors[f"ema.{k}"])
        _restore_sigma_max(self, meta)

    def export_model(self) -> nn.Module:
        exported = ClassConditionalUNet(self.config).to(self.alphas_cumprod.device)
        self.ema.copy_to(exported)
        return exported

    def card_fields(self) -> dict[str, Any]:
        return {
            "architecture": (f"diffusers UNet2DModel(block_out_channels={list(self.config.block_out_channels)}, "
                             f"layers_per_block={self.config.layers_per_block}, mid-block attention="
                             f"{self.config.mid_attention}, class_embed_type='identity') + learned class table "
                             f"nn.Embedding({self.config.num_classes + 1}, {self.config.embedding_dim}) (row "
                             f"{self.config.null_index} = null condition); DDPM {self.config.prediction_type}-prediction, "
                             "DDIM sampling with classifier-free guidance; shipped weights = EMA"),
            "data": f"CIFAR-10 train split ({self.images.shape[0]} images), random horizontal flips" + (
                f"; Gaussian noise on the class embedding, sigma ~ U[0, {self.sigma_max:.4g}] per image "
                f"(cond_noise_rel {self.params['cond_noise_rel']} x half class gap), null condition clean"
                if self.sigma_max > 0 else ""),
            "data_variant": self.variant, "architecture_config": self.config.to_dict(),
            "condition_noise": self.noise_info, "init_from": self.init_info, "cond_embedding_frozen": self.frozen,
        }


def _sigma_meta(task: DiffusionTask | LMTask) -> dict[str, Any]:
    """The condition-noise scale saved with the training state (nothing when the noise is off)."""
    if task.noise_info is None:
        return {}
    return {"cond_sigma_max": task.sigma_max, "cond_noise_rel": task.noise_info["cond_noise_rel"]}


def _restore_sigma_max(task: DiffusionTask | LMTask, meta: dict[str, Any]) -> None:
    """Keep the ``σ_max`` of the interrupted run (its table may have trained since, unless frozen)."""
    saved = meta.get("cond_noise_rel", 0.0)
    current = task.noise_info["cond_noise_rel"] if task.noise_info is not None else 0.0
    if saved != current:
        raise ValueError(f"the saved training state of {task.name} used cond_noise_rel={saved}, this run "
                         f"{current}; pass --no-resume (or resume=False) to start afresh")
    if task.noise_info is not None and "cond_sigma_max" in meta:
        task.sigma_max = float(meta["cond_sigma_max"])
        task.noise_info["sigma_max"] = task.sigma_max


class ClassifierTask(Task):
    """Cross-entropy (label smoothing) with crop/flip augmentation and optional Gaussian noise ``σ``."""

    def __init__(self, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None,
                 sigma: float | None) -> None:
        data = load_cifar10("train", root=data_root)
        self.images, self.labels = data.images.to(device), data.labels.to(device)
        self.variant, self.params, self.sigma, self.name = data.variant, params, sigma, classifier_name(sigma)
        self.config = ClassifierConfig(widths=tuple(params["widths"]))
        self.model = CifarResNet(self.config).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=params["lr"], momentum=0.9, nesterov=True,
                                         weight_decay=params["weight_decay"])
        self.sampler = EpochSampler(self.images.shape[0], params["batch_size"], seed, device)

    def loss(self, step: int, generator: torch.Generator) -> Tensor:
        idx = self.sampler.indices(step)
        x = random_crop_flip(self.images[idx].float() / 255, generator)
        if self.sigma:
            x = x + self.sigma * torch.randn(x.shape, generator=generator, device=x.device)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        return F.cross_entropy(logits.float(), self.labels[idx], label_smoothing=self.params["label_smoothing"])

    def card_fields(self) -> dict[str, Any]:
        noise = (f"; Gaussian noise augmentation N(0, {self.sigma}^2 I) in [0,1] pixel units (Cohen et al. 2019)"
                 if self.sigma else "")
        return {
            "architecture": (f"ResNet-9-style CNN, widths {list(self.config.widths)}, {self.config.widths[3]}-d "
                             "penultimate features (global max-pool), input normalisation inside the model"),
            "data": f"CIFAR-10 train split (50,000 images), random crop (reflect pad 4) + horizontal flip{noise}",
            "data_variant": self.variant, "architecture_config": self.config.to_dict(), "sigma": self.sigma,
        }


class LMTask(Task):
    """Next-token cross-entropy on windows of ``seq_len + 1`` tokens; keeps the best-validation weights."""

    def __init__(self, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None,
                 init_roots: Sequence[Path | None] = (None,)) -> None:
        check_noise_params(params)
        train, valid = load_ptb("train", root=data_root), load_ptb("valid", root=data_root)
        self.vocab, self.variant, self.params, self.seed = train.vocab, train.variant, params, seed
        self.name = output_name("lm", params)
        self.tokens = train.tokens.to(device)
        self.valid_tokens = valid.tokens[: params["eval_tokens"]] if params["eval_tokens"] else valid.tokens
        self.init_info: dict[str, Any] | None = None
        state = None
        if params.get("init_from"):
            state, card, folder = _load_init(params["init_from"], init_roots)
            self.config = self._init_config(params["init_from"], card, folder)
            _adopt_architecture(params, self.config.to_dict())
            self.init_info = _init_info(params["init_from"], card)
        else:
            self.config = LMConfig(vocab_size=len(train.vocab), **_pick(params, LMConfig))
        if params["seq_len"] > self.config.n_positions:
            raise ValueError(f"seq_len {params['seq_len']} exceeds n_positions {self.config.n_positions}")
        self.model = build_lm(self.config, eos_id=train.vocab.eos_id).to(device)
        if state is not None:
            self.model.load_state_dict(state)
        self.frozen = _frozen(params)
        self.model.transformer.wte.weight.requires_grad_(not self.frozen)  # tied: the output layer too
        self.sigma_max, self.noise_info = 0.0, None
        if params.get("cond_noise_rel"):
            geometry = LMGenerator(self.model, self.vocab).embedding_geometry()
            unit = geometry["nn_median"] / 2
            if not unit > 0:
                raise ValueError("cond_noise_rel > 0 needs distinct token embeddings (median nearest distance 0)")
            self.sigma_max = float(params["cond_noise_rel"]) * unit
            self.noise_info = _noise_info(params, self.sigma_max, "half_nn_median = nn_median / 2", unit, geometry,
                                          "input token embeddings (wte rows) of every training position; position "
                                          "embeddings and targets untouched", self.frozen)
            self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=params["lr"], betas=(0.9, 0.98),
                                           weight_decay=params["weight_decay"])
        self.windows = (self.tokens.numel() - 1) // params["seq_len"] - 1
        self.sampler = EpochSampler(self.windows, params["batch_size"], seed, device)
        self.best: dict[str, Tensor] | None = None
        self.best_meta: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []

    def _init_config(self, name: str, card: dict[str, Any], folder: Path) -> LMConfig:
        """The init card's architecture, after checking that its vocabulary is the training data's."""
        try:
            config = LMConfig.from_dict(card["config"]["architecture"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"init_from {name!r} is not a language-model checkpoint ({err})") from err
        path = vocab_path(name, folder)
        if not path.is_file() or sha256_file(path) != card.get("vocab_sha256"):
            raise ValueError(f"init_from {name!r}: vocabulary {path} is missing or does not match its card")
        words = tuple(path.read_text(encoding="utf-8").split("\n"))
        if words != self.vocab.itos or config.vocab_size != len(self.vocab):
            raise ValueError(f"init_from {name!r} was trained on another vocabulary than this data's")
        return config

    def loss(self, step: int, generator: torch.Generator) -> Tensor:
        L = self.params["seq_len"]
        epoch = step // self.sampler.steps_per_epoch
        offset = int(torch.randint(0, L, (1,), generator=make_generator(self.seed * 7919 + epoch, "cpu")))
        starts = offset + self.sampler.indices(step) * L
        chunk = self.tokens[starts[:, None] + torch.arange(L + 1, device=starts.device)]
        if self.sigma_max > 0:
            embeds = self.model.transformer.wte(chunk[:, :-1])
            noise, _ = condition_noise(embeds.shape, self.sigma_max, generator, embeds.device)
            logits = self.model(inputs_embeds=embeds + noise).logits
        else:
            logits = self.model(input_ids=chunk[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())

    @property
    def _metric(self) -> str:
        return "valid_perplexity_noisy" if self.sigma_max > 0 else "valid_perplexity"

    def after_step(self, done: int) -> None:
        if done % self.params["eval_every"] and done != self.params["steps"]:
            return
        context = self.config.n_positions
        if self.sigma_max > 0:
            ppl = noisy_stream_perplexity(self.model, self.valid_tokens, context, self.sigma_max, seed=self.seed)
        else:
            ppl = stream_perplexity(self.model, self.valid_tokens, context=context)["perplexity"]
        self.model.train()
        self.history.append({"step": done, self._metric: ppl})
        if self.best is None or ppl < self.best_meta[f"best_{self._metric}"]:
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_meta = {f"best_{self._metric}": ppl, "best_step": done}

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"best.{k}": v for k, v in (self.best or {}).items()}
        return tensors, {**self.best_meta, "history": self.history, **_sigma_meta(self)}

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best = best or None
        keys = ("best_valid_perplexity", "best_valid_perplexity_noisy", "best_step")
        self.best_meta = {k: meta[k] for k in keys if k in meta}
        self.history = list(meta.get("history", []))
        _restore_sigma_max(self, meta)

    def export_model(self) -> nn.Module:
        if self.best is not None:
            self.model.load_state_dict(self.best)
        return self.model

    def card_fields(self) -> dict[str, Any]:
        return {
            "architecture": (f"GPT-2-style decoder (transformers GPT2LMHeadModel): {self.config.n_layer} layers, "
                             f"{self.config.n_embd} dims, {self.config.n_head} heads, context {self.config.n_positions}, "
                             f"word-level vocabulary {self.config.vocab_size}, tied input/output embeddings; "
                             "shipped weights = best validation perplexity during training"
                             + (" under the training noise (fixed draws)" if self.sigma_max > 0 else "")),
            "data": f"Penn Treebank train split ({self.tokens.numel()} tokens incl. <eos>), random window offsets" + (
                f"; Gaussian noise on the input token embeddings, sigma ~ U[0, {self.sigma_max:.4g}] per window "
                f"(cond_noise_rel {self.params['cond_noise_rel']} x half median nearest-token distance)"
                if self.sigma_max > 0 else ""),
            "data_variant": self.variant, "architecture_config": self.config.to_dict(),
            "validation_history": self.history, **self.best_meta,
            "condition_noise": self.noise_info, "init_from": self.init_info, "cond_embedding_frozen": self.frozen,
        }


def noisy_stream_perplexity(model: Any, tokens: Tensor, context: int, sigma_max: float, seed: int = 0,
                            batch_size: int = 64) -> float:
    """:func:`~smoothgen.models.lm.stream_perplexity` with the training noise on the input embeddings.

    Same windows and scoring; each window's token embeddings get ``σ_w ξ`` (``σ_w ~ U[0, σ_max]``)
    drawn from a generator seeded with ``seed``, so repeated calls use the same noise (paired
    comparisons across training steps). Runs in eval mode under ``inference_mode``.
    """
    device = model.transformer.wte.weight.device
    model.eval()
    generator = make_generator(seed, device)
    n = tokens.numel()
    starts = list(range(0, n - 1, context))
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            inputs, targets = windows(tokens, starts[i : i + batch_size], context)
            embeds = model.transformer.wte(inputs.to(device))
            noise, _ = condition_noise(embeds.shape, sigma_max, generator, device)
            logits = model(inputs_embeds=embeds + noise).logits.float()
            total += float(F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100,
                                           reduction="sum"))
            count += int((targets >= 0).sum())
    return math.exp(total / count)


# ----------------------------------------------------------------------------- training entry point


def _make_task(kind: str, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None,
               sigma: float | None, init_roots: Sequence[Path | None]) -> Task:
    if kind == "diffusion":
        return DiffusionTask(params, device, seed, data_root, init_roots)
    if kind == "lm":
        return LMTask(params, device, seed, data_root, init_roots)
    return ClassifierTask(params, device, seed, data_root, sigma)


def _write_checkpoint(task: Task, kind: str, out: Path, preset: str, overrides: dict[str, Any], seed: int,
                      result: Any, device: torch.device, note: str | None) -> None:
    fields = task.card_fields()
    arch = fields.pop("architecture_config")
    card = {
        **fields, "config": {"architecture": arch, "training": task.params, "preset": preset, "overrides": overrides},
        "preset": preset, "steps": result.steps, "steps_planned": task.params["steps"],
        "stopped_by_time_budget": result.stopped_by_budget, "wall_time_s": round(result.wall_time_s, 1),
        "hardware": hardware_description(device), "seed": seed, "git_commit": repo_commit(), "git_dirty": git_dirty(),
        "parameters": sum(p.numel() for p in task.model.parameters()), "metrics": {},
        "versions": package_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if note:
        card["training_note"] = note
    if kind == "lm":
        path = vocab_path(task.name, out)
        atomic_write_text(path, "\n".join(task.vocab.itos)).chmod(0o644)
        card["vocab_file"], card["vocab_sha256"] = path.name, sha256_file(path)
    dtype = getattr(torch, task.params.get("storage_dtype", "float32"))
    save_checkpoint(task.export_model(), task.name, card, root=out, dtype=dtype)


def train(kind: str, preset: str, *, sigma: float | None = None, overrides: dict[str, Any] | None = None,
          out: str | Path | None = None, device: Any = None, seed: int = 0, time_budget_s: float | None = None,
          resume: bool = True, skip_eval: bool = False, data_root: str | None = None,
          evaluator_root: str | Path | None = None, note: str | None = None) -> dict[str, Any]:
    """Train one model and write ``<out>/<name>.safetensors`` + card; return the card.

    See the module docstring for the parameters (they mirror the command line).
    """
    if kind not in ("diffusion", "lm", "classifier"):
        raise ValueError(f"kind must be 'diffusion', 'lm' or 'classifier', got {kind!r}")
    if sigma is not None and kind != "classifier":
        raise ValueError("--sigma applies to the classifier only")
    overrides = dict(overrides or {})
    params = get_train_preset(kind, preset, **overrides)
    check_noise_params(params)
    if params.get("init_from") and params["init_from"] == output_name(kind, params, sigma):
        raise ValueError(f"init_from {params['init_from']!r} is the output name of this run; it would be overwritten")
    dev, out_dir = resolve_device(device), checkpoint_root(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with seeded_global_rng(seed, dev):
        task = _make_task(kind, params, dev, seed, data_root, sigma, (out_dir, None))
        result = fit(task, out_dir, make_generator(seed, dev), dev, resume=resume, time_budget_s=time_budget_s)
        _write_checkpoint(task, kind, out_dir, preset, overrides, seed, result, dev, note)
    if not skip_eval:
        eroot = Path(evaluator_root) if evaluator_root else None
        evaluate_checkpoint(kind, task.name, out_dir, params, dev, seed, data_root, eroot)
    return read_card(task.name, out_dir)


# ----------------------------------------------------------------------------- command line


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=JSON, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--set {key}: value {value!r} is not JSON (quote strings: '\"x\"')") from err
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m smoothgen.models.train", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("diffusion", "lm", "classifier"))
    parser.add_argument("--preset", default="cpu", choices=("smoke", "cpu", "gpu"))
    parser.add_argument("--sigma", type=float, help="classifier: Gaussian noise augmentation level (pixel units)")
    parser.add_argument("--steps", type=int, help="override the preset's optimizer steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override any preset entry")
    parser.add_argument("--cond-noise-rel", type=float, metavar="R", help="diffusion/lm: condition-embedding "
                        "noise, sigma_max = R x the natural unit (same as --set cond_noise_rel=R)")
    parser.add_argument("--init-from", metavar="NAME",
                        help="diffusion/lm: fine-tune from checkpoint NAME (same as --set init_from)")
    parser.add_argument("--out", help="checkpoint folder (default: $SMOOTHGEN_CHECKPOINTS or data/checkpoints)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, help="stop (and save) after this many seconds of training")
    parser.add_argument("--no-resume", action="store_true", help="ignore a saved training state")
    parser.add_argument("--skip-eval", action="store_true", help="do not compute the card metrics")
    parser.add_argument("--eval-only", action="store_true", help="recompute the card metrics of a saved checkpoint")
    parser.add_argument("--evaluator-root", help="diffusion: folder holding the clean evaluator checkpoint")
    parser.add_argument("--data-root", help="data root (default: $SMOOTHGEN_DATA or <repo>/data)")
    parser.add_argument("--note", help="free text stored in the card as training_note")
    return parser


def _eval_only(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    out = checkpoint_root(args.out)
    name = output_name(args.kind, overrides, args.sigma)
    card = read_card(name, out)
    params = {**card["config"]["training"], **overrides}
    evaluator_root = Path(args.evaluator_root) if args.evaluator_root else None
    evaluate_checkpoint(args.kind, name, out, params, resolve_device(args.device), args.seed, args.data_root,
                        evaluator_root)
    return read_card(name, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    args = build_parser().parse_args(argv)
    overrides = _parse_set(args.set)
    overrides.update({k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                        ("cond_noise_rel", args.cond_noise_rel), ("init_from", args.init_from))
                      if v is not None})
    if args.eval_only:
        card = _eval_only(args, overrides)
    else:
        card = train(args.kind, args.preset, sigma=args.sigma, overrides=overrides, out=args.out, device=args.device,
                     seed=args.seed, time_budget_s=args.time_budget, resume=not args.no_resume,
                     skip_eval=args.skip_eval, data_root=args.data_root, evaluator_root=args.evaluator_root,
                     note=args.note)
    print(json.dumps({"name": card["name"], "steps": card["steps"], "wall_time_s": card["wall_time_s"],
                      "metrics": card["metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
