r"""Notebook 09: the ablations of notebook 03 that a reviewer asks for, on the CIFAR-10 diffusion model.

* **Guidance scale.** For each classifier-free guidance weight ``w`` (``w = 1``: plain conditional
  sampling) and each noise level ``σ`` (relative to the mean class-embedding norm), ``n`` samples per
  class from the seeds of notebook 03 (common random numbers across ``w`` and ``σ``): FID and IS in
  the evaluator's feature space and class-consistency, each with its 95 % interval, and the FID ratio
  to the unsmoothed model at the *same* ``w``. Notebook 03 blames guidance for the textures at large
  ``σ``; this table varies it. The certificates do not depend on ``w`` (the TV bound is the same for
  every generator), only what they certify does.
* **Sample size.** One class at one ``σ``, ``n_max`` samples drawn once; every certificate of notebook
  03 on nested prefixes of ``n`` samples, and center smoothing at several ``Δ`` with the smallest stage
  size at which its Δ-check can pass (:func:`smoothgen.certify.center_min_samples`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from smoothgen import certify, intervals
from smoothgen.data import load_cifar10
from smoothgen.experiments import cifar10
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.models.classifier import load_classifier
from smoothgen.models.diffusion import DiffusionGenerator, load_diffusion
from smoothgen.runtime import resolve_device

EXPERIMENT = "09_ablations"


def pooled(diffusion: DiffusionGenerator, sigma: float, params: dict[str, Any]) -> torch.Tensor:
    """``n`` images per class of ``params["classes"]`` at noise ``σ``, class ``k`` from seed ``seed + 1000·k``
    (notebook 03's seeds), stacked class by class: ``[classes · n, 3, 32, 32]``."""
    conditions = diffusion.conditions()
    return torch.cat([cifar10.draw(diffusion, conditions[k], sigma, params["n"], params["seed"] + 1000 * k,
                                   params["batch_size"])
                      for k in tqdm(params["classes"], desc=f"w={diffusion.guidance_scale:g} σ={sigma:.3g}", leave=False)])


def guidance_block(evaluator: torch.nn.Module, fd: intervals.Frechet, unit: float, device: torch.device,
                   params: dict[str, Any]) -> tuple[pd.DataFrame, dict[tuple[float, float], torch.Tensor]]:
    """Quality at every (guidance weight, σ) cell; the FID ratio is to ``σ = 0`` at the same weight.

    Returns the table and, per cell, ``grid_samples`` images of every class ``[classes, g, 3, 32, 32]``.
    """
    if params["sigma_rel"][0] != 0:
        raise ValueError(f"sigma_rel must start with 0 (the base model each FID ratio refers to), got {params['sigma_rel']}")
    labels = torch.as_tensor(params["classes"]).repeat_interleave(params["n"])
    rows, grids = [], {}
    for w in params["guidance_scales"]:
        diffusion = load_diffusion(device=device, steps=params["steps"], guidance_scale=w)
        base = None
        for rel in params["sigma_rel"]:
            images = pooled(diffusion, rel * unit, params)
            row, feats = cifar10.quality(images, labels, evaluator, fd, base, params)
            base = feats if rel == 0 else base
            rows.append({"guidance_scale": w, "sigma_rel": rel, "sigma": rel * unit, **row})
            grids[(w, rel)] = images.view(len(params["classes"]), params["n"], 3, 32, 32)[:, : params["grid_samples"]]
    return pd.DataFrame(rows), grids


def focus_samples(diffusion: DiffusionGenerator, evaluator: torch.nn.Module, unit: float,
                  params: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float]:
    """``n_max`` smoothed images of the focus class at ``focus_sigma_rel`` (:func:`cifar10.focus_draw`) and ``σ``."""
    k, sigma = params["focus_class"], params["focus_sigma_rel"] * unit
    return (*cifar10.focus_draw(diffusion, evaluator, k, sigma, max(params["sample_sizes"]),
                                params["seed"] + 1000 * k + 9, params), sigma)


def sample_size_block(images: torch.Tensor, distances: np.ndarray, consistent: np.ndarray, sigma: float,
                      radii: np.ndarray, params: dict[str, Any]) -> pd.DataFrame:
    """Every certificate of notebook 03 from the first ``n`` samples, for each ``n`` in ``sample_sizes``."""
    tables = [cifar10.certify_samples(images[:n], distances[:n], consistent[:n], sigma, radii, params)
              .assign(n=n, **cifar10.certified_radii(distances[:n], sigma, params))
              for n in params["sample_sizes"]]
    return pd.concat(tables, ignore_index=True)


def center_block(images: torch.Tensor, sigma: float, radii: np.ndarray, params: dict[str, Any]) -> pd.DataFrame:
    """Center smoothing's certified RMS radius (``inf``: abstained) per ``Δ``, sample size and radius, beside the
    smallest stage size (a third of ``n``) at which its Δ-check can pass at ``α₁ = 0.005``."""
    rows, need = [], {delta: certify.center_min_samples(delta, 0.005) for delta in params["center_deltas"]}
    for n in params["sample_sizes"]:
        distances = cifar10.center_distances(images[:n])
        for delta in params["center_deltas"]:
            for r in radii:
                radius = certify.center_certificate(*distances, r, sigma, delta=delta).radius
                rows.append({"center_delta": delta, "n": n, "stage_n": n // 3, "stage_n_needed": need[delta],
                             "radius": r, "center_radius": radius, "abstained": not np.isfinite(radius)})
    return pd.DataFrame(rows).sort_values(["center_delta", "n", "radius"], kind="stable", ignore_index=True)


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 09: the guidance-scale grid, then the sample-size and center-smoothing ablations."""
    clock = Stopwatch()
    device = resolve_device(params.get("device"))
    evaluator, test = load_classifier(None), load_cifar10("test")
    diffusion = load_diffusion(device=device, steps=params["steps"], guidance_scale=params["guidance_scale"])
    geometry = diffusion.embedding_geometry()
    unit, half_gap = geometry["mean_norm"], geometry["nearest_other_min"] / 2
    radii = np.asarray(params["radii_rel"]) * half_gap
    fd = cifar10.real_frechet(evaluator, test.images[: params["n_real"]])
    guidance, grids = guidance_block(evaluator, fd, unit, device, params)
    images, distances, consistent, sigma = focus_samples(diffusion, evaluator, unit, params)
    sample_size = sample_size_block(images, distances, consistent, sigma, radii, params)
    center = center_block(images, sigma, radii, params)
    for table in (sample_size, center):
        table["radius_rel"] = table["radius"] / half_gap
    tables = {"geometry": pd.DataFrame([{**geometry, "half_gap": half_gap}]), "guidance": guidance,
              "sample_size": sample_size.assign(**{"class": params["focus_class"], "sigma_rel": params["focus_sigma_rel"],
                                                  "sigma": sigma}),
              "center": center.assign(**{"class": params["focus_class"], "sigma_rel": params["focus_sigma_rel"]})}
    result = finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant=test.variant, clock=clock,
                    guidance_scale=diffusion.guidance_scale, checkpoint_sha256=diffusion.card["sha256"])
    result.extras.update(grids=grids, classes=list(test.classes))
    return result
