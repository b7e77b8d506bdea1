"""Model-card metrics of saved checkpoints (computed on the weights as stored, after loading).

- classifier: ``test_accuracy`` (clean test set); noise-trained variants also
  ``test_accuracy_under_noise`` = accuracy on ``x + σ ε`` with one draw ``ε ~ N(0, I)`` per test
  image (the base classifier under its training noise, not a smoothed prediction);
- LM: ``valid_perplexity`` / ``test_perplexity`` (:func:`smoothgen.models.lm.stream_perplexity`);
- diffusion, with the clean evaluator ``f``:

  * ``class_consistency`` = ``(1/N) Σ_i 1[argmax_k f(x_i)_k = y_i]`` over ``N`` class-balanced
    samples ``x_i`` generated for class ``y_i`` (``N/10`` per class);
  * ``fid_evaluator_features`` = ``FID[evaluator-penultimate]`` =
    ``‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})`` of the evaluator's penultimate features of
    the 10,000 test images (r) and of the samples (g), computed by torchmetrics'
    ``FrechetInceptionDistance`` with that custom feature module (float64). It is **not** the
    Inception FID and is not comparable with published FIDs;
  * a guidance sweep: each scale of ``sweep_scales`` on ``sweep_samples`` images;
    ``default_guidance_scale`` = the smallest scale whose class-consistency is within 0.02 of the
    sweep's best; the headline numbers use ``eval_samples`` fresh images at that scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from smoothgen.data import load_cifar10, load_ptb
from smoothgen.metrics import class_consistency
from smoothgen.models.checkpoints import CheckpointError, hardware_description, read_card, write_card
from smoothgen.models.classifier import CifarResNet, FeatureExtractor, accuracy, load_classifier
from smoothgen.models.diffusion import DiffusionGenerator, load_diffusion
from smoothgen.models.lm import load_lm, stream_perplexity
from smoothgen.models.training import seeded_global_rng
from smoothgen.runtime import make_generator

__all__ = ["EvaluatorFID", "balanced_samples", "evaluate_checkpoint"]

FID_NAME = "FID[evaluator-penultimate]"


class EvaluatorFID:
    """FID in the evaluator's penultimate features against a fixed real set (its statistics kept).

    The real images' features are computed once; :meth:`score` then compares any number of
    generated sets with them.
    """

    def __init__(self, evaluator: CifarResNet, real_images: Tensor, batch_size: int = 500) -> None:
        extractor = FeatureExtractor(evaluator.eval())
        extractor.num_features = evaluator.feature_dim  # tells torchmetrics the width (no probe call)
        self.batch_size = batch_size
        self.device = next(evaluator.parameters()).device
        self.metric = FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=False)
        self.metric.to(self.device)
        self._update(real_images, real=True)
        self.real_count = int(real_images.shape[0])

    def _update(self, images: Tensor, real: bool) -> None:
        with torch.no_grad():
            for i in range(0, images.shape[0], self.batch_size):
                x = images[i : i + self.batch_size].to(self.device)
                self.metric.update(x.float() / 255 if x.dtype == torch.uint8 else x.float(), real=real)

    def score(self, fake_images: Tensor) -> float:
        """FID of float ``[N, 3, 32, 32]`` images in [0, 1] (N ≥ 2) against the real set."""
        if fake_images.shape[0] < 2:
            raise ValueError("FID needs at least 2 generated images")
        self.metric.reset()
        self._update(fake_images, real=False)
        return float(self.metric.compute())


def balanced_samples(gen: DiffusionGenerator, n: int, seed: int, batch: int) -> tuple[Tensor, Tensor]:
    """``max(1, n // K)`` images per class (class-major order) and their labels, on the CPU."""
    k = gen.config.num_classes
    labels = torch.arange(k).repeat_interleave(max(1, n // k))
    cond = gen.conditions()
    rng = make_generator(seed, gen.device)
    images = [gen(cond[labels[i : i + batch].to(gen.device)], rng).cpu() for i in range(0, labels.numel(), batch)]
    return torch.cat(images), labels


def _diffusion_scores(gen: DiffusionGenerator, evaluator: CifarResNet, fid: EvaluatorFID, n: int, seed: int,
                      batch: int) -> dict[str, float]:
    images, labels = balanced_samples(gen, n, seed, batch)
    return {"guidance_scale": gen.guidance_scale, "class_consistency": class_consistency(images, labels, evaluator, batch_size=batch),
            "fid_evaluator_features": fid.score(images), "samples": int(labels.numel())}


def _find_evaluator(roots: Sequence[Path | None], device: torch.device) -> CifarResNet:
    for root in roots:
        try:
            return load_classifier(root=root, device=device)
        except CheckpointError:
            continue
    raise CheckpointError(f"no clean evaluator checkpoint in {[str(r) for r in roots]}; train it with "
                          "`python -m smoothgen.models.train classifier --preset cpu`, then rerun with --eval-only")


def _evaluate_diffusion(name: str, out: Path, params: dict[str, Any], device: torch.device, seed: int,
                        data_root: str | None, evaluator_root: Path | None) -> dict[str, Any]:
    evaluator = _find_evaluator([evaluator_root, out, None], device)
    gen = load_diffusion(name, root=out, device=device, steps=params["sample_steps"])
    batch = params["eval_batch_size"]
    real = load_cifar10("test", root=data_root).images[: params["fid_real_samples"]]  # None: all 10,000
    fid = EvaluatorFID(evaluator, real, batch_size=batch)
    sweep = []
    for scale in params["sweep_scales"]:
        gen.guidance_scale = float(scale)
        sweep.append(_diffusion_scores(gen, evaluator, fid, params["sweep_samples"], seed, batch))
    best = max(s["class_consistency"] for s in sweep)
    gen.guidance_scale = min(s["guidance_scale"] for s in sweep if s["class_consistency"] >= best - 0.02)
    final = _diffusion_scores(gen, evaluator, fid, params["eval_samples"], seed + 1, batch)
    metrics = {**final, "fid_name": FID_NAME, "fid_real_images": fid.real_count, "sample_steps": params["sample_steps"],
               "fid_note": "Frechet distance in the clean evaluator's penultimate features, class-balanced samples "
                           "vs the CIFAR-10 test images; not comparable with Inception FIDs",
               "evaluator_sha256": evaluator.card["sha256"]}
    return {"metrics": metrics, "default_guidance_scale": gen.guidance_scale, "guidance_sweep": sweep,
            "embedding_geometry": gen.embedding_geometry()}


def _evaluate_lm(name: str, out: Path, params: dict[str, Any], device: torch.device, seed: int,
                 data_root: str | None) -> dict[str, Any]:
    generator = load_lm(name, root=out, device=device)
    context = generator.model.config.n_positions
    metrics: dict[str, Any] = {"perplexity_setup": (
        f"non-overlapping windows of {context} tokens, context reset at each window, all N-1 next-token "
        "predictions of the split's <eos>-terminated stream scored")}
    for split in ("valid", "test"):
        tokens = load_ptb(split, root=data_root).tokens
        tokens = tokens[: params["eval_tokens"]] if params["eval_tokens"] else tokens
        ppl = stream_perplexity(generator.model, tokens, context=context)
        metrics[f"{split}_perplexity"], metrics[f"{split}_predictions"] = ppl["perplexity"], ppl["predictions"]
    return {"metrics": metrics, "embedding_geometry": generator.embedding_geometry()}


def _evaluate_classifier(name: str, out: Path, params: dict[str, Any], device: torch.device, seed: int,
                         data_root: str | None) -> dict[str, Any]:
    model = load_classifier(name=name, root=out, device=device)
    test = load_cifar10("test", root=data_root)
    n = params["eval_samples"] or test.images.shape[0]
    images, labels = test.images[:n], test.labels[:n]
    metrics: dict[str, Any] = {"test_accuracy": accuracy(model, images, labels), "test_images": n}
    sigma = model.card.get("sigma")
    if sigma:
        noisy = accuracy(model, images, labels, sigma, make_generator(seed, device))
        metrics.update(test_accuracy_under_noise=noisy, noise_sigma=sigma)
    return {"metrics": metrics}


def evaluate_checkpoint(kind: str, name: str, out: Path, params: dict[str, Any], device: torch.device, seed: int,
                        data_root: str | None = None, evaluator_root: Path | None = None) -> dict[str, Any]:
    """Compute the card metrics of checkpoint ``out/<name>`` and merge them into its card (atomically).

    ``kind`` is ``"diffusion"``, ``"lm"`` or ``"classifier"``; ``params`` the training parameters
    (evaluation sizes). Returns the fields written.
    """
    card = read_card(name, out)
    with seeded_global_rng(seed, device):
        if kind == "diffusion":
            fields = _evaluate_diffusion(name, out, params, device, seed, data_root, evaluator_root)
        elif kind == "lm":
            fields = _evaluate_lm(name, out, params, device, seed, data_root)
        else:
            fields = _evaluate_classifier(name, out, params, device, seed, data_root)
    fields["evaluation"] = {"hardware": hardware_description(device), "seed": seed,
                            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_card(name, {**card, **fields}, out)
    return fields
