"""Train (and evaluate) SmoothGen's base models, writing checkpoints with model cards.

Usage::

    python -m smoothgen.models.train {diffusion,lm,classifier} --preset {smoke,cpu,gpu}
        [--sigma 0.25] [--steps N] [--batch-size B] [--set KEY=JSON ...] [--out DIR]
        [--device cpu|cuda] [--seed 0] [--time-budget SECONDS] [--no-resume]
        [--skip-eval | --eval-only] [--evaluator-root DIR] [--data-root DIR] [--note TEXT]

(also ``smoothgen train ...``). Parameters come from :data:`smoothgen.presets.TRAIN_PRESETS`;
``--steps``, ``--batch-size`` and ``--set`` override them, and the card records preset and
overrides. ``--out`` defaults to the checkpoint root (``$SMOOTHGEN_CHECKPOINTS`` or
``<repo>/data/checkpoints``). An interrupted run resumes from ``<out>/<name>.state.*``.

Card metrics (:mod:`smoothgen.models.evaluation`) are computed on the *saved* weights after
training, or alone with ``--eval-only``. The diffusion metrics need the clean evaluator checkpoint
(``--evaluator-root``, else ``--out``, else the default root).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgen.data import load_cifar10, load_ptb
from smoothgen.models.checkpoints import (
    checkpoint_root, hardware_description, read_card, repo_commit, save_checkpoint, sha256_file,
)
from smoothgen.models.classifier import ClassifierConfig, CifarResNet, classifier_name, random_crop_flip
from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig
from smoothgen.models.evaluation import evaluate_checkpoint
from smoothgen.models.lm import LMConfig, build_lm, stream_perplexity, vocab_path
from smoothgen.models.training import EMA, EpochSampler, Task, fit, seeded_global_rng
from smoothgen.presets import get_train_preset
from smoothgen.results import atomic_write_text, package_versions
from smoothgen.runtime import make_generator, resolve_device

__all__ = ["main", "train"]

DIFFUSION_NAME = "diffusion_cifar10"
LM_NAME = "lm_ptb"


def _pick(params: dict[str, Any], cls: type) -> dict[str, Any]:
    """The entries of ``params`` that are fields of dataclass ``cls``."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in cls.__dataclass_fields__}


# ----------------------------------------------------------------------------- tasks


class DiffusionTask(Task):
    """ε/v-prediction DDPM loss with condition dropout to the null row (see :mod:`.diffusion`)."""

    def __init__(self, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None) -> None:
        data = load_cifar10("train", root=data_root)
        n = params["train_subset"] or data.images.shape[0]
        self.images, self.labels = data.images[:n].to(device), data.labels[:n].to(device)
        self.variant, self.params, self.name = data.variant, params, DIFFUSION_NAME
        self.config = DiffusionConfig(**_pick(params, DiffusionConfig))
        self.model = ClassConditionalUNet(self.config).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
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
        pred = self.model(a * x0 + s * noise, t, self.model.embed(labels))
        return F.mse_loss(pred.float(), target)

    def after_step(self, done: int) -> None:
        self.ema.update(done)

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {f"ema.{k}": v for k, v in self.ema.shadow.items()}, {}

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        for k in self.ema.shadow:
            self.ema.shadow[k].copy_(tensors[f"ema.{k}"])

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
            "data": f"CIFAR-10 train split ({self.images.shape[0]} images), random horizontal flips",
            "data_variant": self.variant, "architecture_config": self.config.to_dict(),
        }


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

    def __init__(self, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None) -> None:
        train, valid = load_ptb("train", root=data_root), load_ptb("valid", root=data_root)
        self.vocab, self.variant, self.params, self.name, self.seed = train.vocab, train.variant, params, LM_NAME, seed
        self.tokens = train.tokens.to(device)
        self.valid_tokens = valid.tokens[: params["eval_tokens"]] if params["eval_tokens"] else valid.tokens
        self.config = LMConfig(vocab_size=len(train.vocab), **_pick(params, LMConfig))
        if params["seq_len"] > self.config.n_positions:
            raise ValueError(f"seq_len {params['seq_len']} exceeds n_positions {self.config.n_positions}")
        self.model = build_lm(self.config, eos_id=train.vocab.eos_id).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=params["lr"], betas=(0.9, 0.98),
                                           weight_decay=params["weight_decay"])
        self.windows = (self.tokens.numel() - 1) // params["seq_len"] - 1
        self.sampler = EpochSampler(self.windows, params["batch_size"], seed, device)
        self.best: dict[str, Tensor] | None = None
        self.best_meta: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []

    def loss(self, step: int, generator: torch.Generator) -> Tensor:
        L = self.params["seq_len"]
        epoch = step // self.sampler.steps_per_epoch
        offset = int(torch.randint(0, L, (1,), generator=make_generator(self.seed * 7919 + epoch, "cpu")))
        starts = offset + self.sampler.indices(step) * L
        chunk = self.tokens[starts[:, None] + torch.arange(L + 1, device=starts.device)]
        logits = self.model(input_ids=chunk[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())

    def after_step(self, done: int) -> None:
        if done % self.params["eval_every"] and done != self.params["steps"]:
            return
        ppl = stream_perplexity(self.model, self.valid_tokens, context=self.config.n_positions)["perplexity"]
        self.model.train()
        self.history.append({"step": done, "valid_perplexity": ppl})
        if self.best is None or ppl < self.best_meta["best_valid_perplexity"]:
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_meta = {"best_valid_perplexity": ppl, "best_step": done}

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"best.{k}": v for k, v in (self.best or {}).items()}
        return tensors, {**self.best_meta, "history": self.history}

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best = best or None
        self.best_meta = {k: meta[k] for k in ("best_valid_perplexity", "best_step") if k in meta}
        self.history = list(meta.get("history", []))

    def export_model(self) -> nn.Module:
        if self.best is not None:
            self.model.load_state_dict(self.best)
        return self.model

    def card_fields(self) -> dict[str, Any]:
        return {
            "architecture": (f"GPT-2-style decoder (transformers GPT2LMHeadModel): {self.config.n_layer} layers, "
                             f"{self.config.n_embd} dims, {self.config.n_head} heads, context {self.config.n_positions}, "
                             f"word-level vocabulary {self.config.vocab_size}, tied input/output embeddings; "
                             "shipped weights = best validation perplexity during training"),
            "data": f"Penn Treebank train split ({self.tokens.numel()} tokens incl. <eos>), random window offsets",
            "data_variant": self.variant, "architecture_config": self.config.to_dict(),
            "validation_history": self.history, **self.best_meta,
        }


# ----------------------------------------------------------------------------- training entry point


def _make_task(kind: str, params: dict[str, Any], device: torch.device, seed: int, data_root: str | None,
               sigma: float | None) -> Task:
    if kind == "diffusion":
        return DiffusionTask(params, device, seed, data_root)
    if kind == "lm":
        return LMTask(params, device, seed, data_root)
    return ClassifierTask(params, device, seed, data_root, sigma)


def _write_checkpoint(task: Task, kind: str, out: Path, preset: str, overrides: dict[str, Any], seed: int,
                      result: Any, device: torch.device, note: str | None) -> None:
    fields = task.card_fields()
    arch = fields.pop("architecture_config")
    card = {
        **fields, "config": {"architecture": arch, "training": task.params, "preset": preset, "overrides": overrides},
        "preset": preset, "steps": result.steps, "steps_planned": task.params["steps"],
        "stopped_by_time_budget": result.stopped_by_budget, "wall_time_s": round(result.wall_time_s, 1),
        "hardware": hardware_description(device), "seed": seed, "git_commit": repo_commit(),
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
    dev, out_dir = resolve_device(device), checkpoint_root(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with seeded_global_rng(seed, dev):
        task = _make_task(kind, params, dev, seed, data_root, sigma)
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
    name = {"diffusion": DIFFUSION_NAME, "lm": LM_NAME}.get(args.kind) or classifier_name(args.sigma)
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
    overrides.update({k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None})
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
