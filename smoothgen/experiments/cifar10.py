r"""Notebook 03: smoothing the class-conditional CIFAR-10 diffusion model.

For each class embedding ``u_k`` and each noise level ``σ`` (given relative to the mean class-
embedding norm), draw ``n`` smoothed samples ``G(u_k + ε, z)`` and measure quality and
certificates on the same samples:

* quality: FID and IS in the evaluator's feature space (named so), class-consistency;
* the output metric for Wasserstein certificates is the **RMS pixel distance**
  ``ρ(y, y') = ‖y − y'‖₂ / √3072`` on images in ``[0, 1]`` (diameter ``D = 1``), with reference
  ``y₀`` = the medoid of an independent pilot batch;
* certified class-consistency under attack: the Neyman–Pearson lower bound on the probability
  that the evaluator still sees class ``k``;
* the certified pixel band of the smoothed mean image, and center smoothing on the same samples;
* the same certificates for one class at one σ from many more samples (``focus_n``): the
  data-dependent ones (tail-coupling W₁, mean band, center smoothing) tighten with ``n``.

Radii are reported in embedding units and relative to half the distance from a class embedding to
its nearest other class embedding (an adversary with ``r ≥`` that can move onto another class).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from smoothgen import certify, distributed, intervals, metrics
from smoothgen.data import load_cifar10
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.models.classifier import load_classifier
from smoothgen.models.diffusion import DiffusionGenerator, load_diffusion
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import resolve_device
from smoothgen.smoothing import SmoothedGenerator, medoid, sample_base

EXPERIMENT = "03_cifar10"
SHARDED = True
"""The classes of each σ are split across torchrun ranks (:mod:`smoothgen.distributed`)."""
PIXELS = 3 * 32 * 32


def rms_distance(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """``‖y_i − y₀‖₂ / √3072`` for images ``[n, 3, 32, 32]`` in [0, 1] (values in [0, 1])."""
    return ((images.flatten(1).double() - reference.flatten().double()).norm(dim=1) / math.sqrt(PIXELS)).numpy()


def rms_pairwise(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pairwise RMS pixel distances ``[len(a), len(b)]``."""
    return (torch.cdist(a.flatten(1).double(), b.flatten(1).double()) / math.sqrt(PIXELS)).numpy()


def draw(diffusion: DiffusionGenerator, condition: torch.Tensor, sigma: float, n: int, seed: int,
         batch_size: int) -> torch.Tensor:
    """``n`` images at ``condition``: smoothed with ``GaussianNoise(σ)``, or the base itself for ``σ = 0``."""
    if sigma == 0:
        return sample_base(diffusion, condition, n, seed, batch_size).cpu()
    smoothed = SmoothedGenerator(diffusion, GaussianNoise(sigma, event_shape=condition.shape), batch_size)
    return smoothed.sample(condition, n, seed=seed).cpu()


def certify_samples(images: torch.Tensor, distances: np.ndarray, consistent: np.ndarray, sigma: float,
                    radii: np.ndarray, params: dict[str, Any]) -> pd.DataFrame:
    """Every certificate at every radius from one class's smoothed samples (one row per radius).

    ``distances`` are the RMS distances of ``images`` to the pilot reference; ``consistent`` says
    whether the evaluator sees the conditioned class in each image.
    """
    alpha = params["alpha"]
    band = [certify.mean_band(images.flatten(1).numpy(), r, sigma, alpha) for r in radii]
    rows = []
    for r, b in zip(radii, band):
        rows.append({"radius": r, "tv_bound": certify.tv_bound(r, sigma),
                     "w1_diameter_bound": certify.wasserstein_bound(r, sigma, 1.0),
                     "w1_certificate": certify.wasserstein_certificate(distances, r, sigma, alpha, 1.0),
                     "consistency_lower": certify.np_bounds_mc(consistent.astype(float), r, sigma, alpha,
                                                               kind="binary").lower,
                     "band_halfwidth_mean": float(np.mean(b.upper - b.lower) / 2),
                     "center_radius": center_radius(images, r, sigma, params)})
    return pd.DataFrame(rows)


def center_distances(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Center smoothing's inputs with the samples split into center/check/certify thirds: the first third's
    pairwise RMS distances and the other thirds' RMS distances to its center (:func:`certify.select_center`)."""
    third = images.shape[0] // 3
    first, check, cert = images[:third], images[third : 2 * third], images[2 * third :]
    pairwise = rms_pairwise(first, first)
    center = first[certify.select_center(pairwise)[0]]
    return pairwise, rms_distance(check, center), rms_distance(cert, center)


def center_radius(images: torch.Tensor, radius: float, sigma: float, params: dict[str, Any]) -> float:
    """Center smoothing's certified RMS radius (``inf``: abstained) from :func:`center_distances`."""
    return certify.center_certificate(*center_distances(images), radius, sigma, delta=params["center_delta"]).radius


def focus_draw(diffusion: DiffusionGenerator, evaluator: torch.nn.Module, k: int, sigma: float, n: int, seed: int,
               params: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n`` smoothed images of class ``k`` from ``seed``, their RMS distances to the medoid of an independent
    pilot batch (seed ``seed + 1``, ``n_pilot`` images), and whether the evaluator sees class ``k`` in each."""
    condition = diffusion.conditions()[k]
    images = draw(diffusion, condition, sigma, n, seed, params["batch_size"])
    with torch.inference_mode():
        consistent = (torch.cat([evaluator(chunk) for chunk in images.split(500)]).argmax(1) == k).numpy()
    pilot = draw(diffusion, condition, sigma, params["n_pilot"], seed + 1, params["batch_size"])
    return images, rms_distance(images, medoid(pilot)), consistent


def certified_radii(distances: np.ndarray, sigma: float, params: dict[str, Any]) -> dict[str, float]:
    """Largest radius whose W₁ certificate is ≤ ε: data-dependent and diameter-based."""
    eps, alpha = params["epsilon"], params["alpha"]
    return {"epsilon": eps, "radius_w1_certificate": certify.wasserstein_certified_radius(distances, eps, sigma, alpha, 1.0),
            "radius_w1_diameter": float(certify.certified_radius(eps, sigma, 1.0))}


def quality(images: torch.Tensor, labels: torch.Tensor, evaluator: torch.nn.Module, fd: intervals.Frechet,
            base: np.ndarray | None, params: dict[str, Any]) -> tuple[dict[str, float], np.ndarray]:
    """FID / IS in the evaluator's feature space and class-consistency of one pooled sample set, each with
    its 95 % interval (:mod:`smoothgen.intervals`; FID also as a ratio to the base model's, given its
    features ``base``); returns the row and the features."""
    features = evaluator_features(evaluator, images)
    with torch.inference_mode():
        feats, logits = features.double().cpu().numpy(), evaluator.head(features).double().cpu()
    hits = int((logits.argmax(1) == labels).sum())
    draws, seed = params["bootstrap"], params["seed"]
    row = {**intervals.fid(fd, feats, base, draws, seed, "fid_evaluator"),
           "fid_name": f"FID[{metrics.EVALUATOR_FEATURE_NAME}]", "feature_space": "evaluator", "n_generated": len(feats),
           "n_real": fd.rows,
           **intervals.inception_score(logits.softmax(1).numpy(), draws, seed, "is_evaluator"),
           "is_name": "IS[evaluator]", **intervals.proportion(hits, len(labels), "class_consistency")}
    return row, feats


def evaluator_features(evaluator: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The evaluator's penultimate features of ``images`` (floats in [0, 1]), in chunks of ``batch`` moved to
    the evaluator's device; the features stay there."""
    device = next(evaluator.parameters()).device
    with torch.inference_mode():
        return torch.cat([evaluator.features(chunk.to(device)) for chunk in images.split(batch)])


def real_frechet(evaluator: torch.nn.Module, real: torch.Tensor) -> intervals.Frechet:
    """The Fréchet distance to the uint8 images ``real`` ``[N, 3, 32, 32]``, in the evaluator's feature space."""
    return intervals.Frechet(evaluator_features(evaluator, real.float() / 255.0).double().cpu().numpy())


def run_class(diffusion: DiffusionGenerator, evaluator: torch.nn.Module, k: int, sigma: float,
              params: dict[str, Any], radii: np.ndarray) -> tuple[dict, pd.DataFrame | None, torch.Tensor]:
    """One class at one σ, from its own seed ``seed + 1000·k``: its row, certificate table and images."""
    condition, seed = diffusion.conditions()[k], params["seed"] + 1000 * k
    images = draw(diffusion, condition, sigma, params["n"], seed, params["batch_size"])
    with torch.inference_mode():
        consistent = (evaluator(images).argmax(1) == k).numpy()
    row, certs = {"class": k, "class_consistency": float(consistent.mean())}, None
    if sigma > 0:
        pilot = draw(diffusion, condition, sigma, params["n_pilot"], seed + 1, params["batch_size"])
        distances = rms_distance(images, medoid(pilot))  # y₀ independent of the certified samples
        certs = certify_samples(images, distances, consistent, sigma, radii, params).assign(**{"class": k})
        row.update(certified_radii(distances, sigma, params))
    return row, certs, images


def run_sigma(diffusion: DiffusionGenerator, evaluator: torch.nn.Module, sigma: float,
              params: dict[str, Any], radii: np.ndarray) -> tuple[list[dict], list[pd.DataFrame], torch.Tensor]:
    """All classes at one σ (split across torchrun ranks, :mod:`smoothgen.distributed`): per-class rows,
    certificate tables, and the pooled images."""
    done = distributed.map_items(lambda _, k: run_class(diffusion, evaluator, k, sigma, params, radii),
                                 params["classes"], desc=f"σ={sigma:.3g}")
    return [row for row, _, _ in done], [c for _, c, _ in done if c is not None], torch.cat([im for _, _, im in done])


def run_focus(diffusion: DiffusionGenerator, evaluator: torch.nn.Module, unit: float, params: dict[str, Any],
              radii: np.ndarray) -> pd.DataFrame:
    """Every certificate of one class at one σ from ``focus_n`` samples (many more than the grid's
    ``n``): how the data-dependent certificates tighten with the sample size."""
    k, sigma = params["focus_class"], params["focus_sigma_rel"] * unit
    images, distances, consistent = focus_draw(diffusion, evaluator, k, sigma, params["focus_n"],
                                               params["seed"] + 1000 * k + 7, params)
    table = certify_samples(images, distances, consistent, sigma, radii, params)
    return table.assign(**{"class": k, "sigma_rel": params["focus_sigma_rel"], "sigma": sigma, "n": params["focus_n"],
                           "class_consistency": float(consistent.mean()),
                           **certified_radii(distances, sigma, params)})


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 03 over the σ grid; returns tables and, in ``extras``, sample images for figures."""
    clock = Stopwatch()
    device = resolve_device(params.get("device"))
    diffusion = load_diffusion(device=device, steps=params["steps"], guidance_scale=params["guidance_scale"])
    evaluator = load_classifier(None)
    test = load_cifar10("test")
    geometry = diffusion.embedding_geometry()
    half_gap = geometry["nearest_other_min"] / 2
    radii = np.asarray(params["radii_rel"]) * half_gap
    fd = real_frechet(evaluator, test.images[: params["n_real"]])
    quality_rows, class_rows, cert_tables, grids, base = [], [], [], {}, None
    for rel in params["sigma_rel"]:
        sigma = rel * geometry["mean_norm"]
        per_class, certs, pooled = run_sigma(diffusion, evaluator, sigma, params, radii)
        labels = torch.as_tensor(params["classes"]).repeat_interleave(params["n"])
        row, feats = quality(pooled, labels, evaluator, fd, base, params)
        base = feats if rel == 0 else base
        quality_rows.append({"sigma_rel": rel, "sigma": sigma, **row})
        class_rows += [{"sigma_rel": rel, "sigma": sigma, **row} for row in per_class]
        cert_tables += [t.assign(sigma_rel=rel, sigma=sigma) for t in certs]
        grids[rel] = pooled.view(len(params["classes"]), params["n"], 3, 32, 32)[:, : params["grid_samples"]]
    certificates = pd.concat(cert_tables, ignore_index=True)
    certificates["radius_rel"] = certificates["radius"] / half_gap
    focus = run_focus(diffusion, evaluator, geometry["mean_norm"], params, radii).assign(radius_rel=radii / half_gap)
    tables = {"geometry": pd.DataFrame([{**geometry, "half_gap": half_gap}]), "quality": pd.DataFrame(quality_rows),
              "per_class": pd.DataFrame(class_rows), "certificates": certificates, "focus": focus}
    result = finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant=test.variant, clock=clock,
                    guidance_scale=diffusion.guidance_scale, checkpoint_sha256=diffusion.card["sha256"])
    result.extras.update(grids=grids, classes=list(test.classes))
    return result
