"""Notebook 01: randomized smoothing of CIFAR-10 classifiers (Cohen et al. 2019), the refresher.

For each training noise level σ, the noise-trained evaluator is smoothed with the same σ and
CERTIFY is run on a fixed subset of the test set. The certified accuracy at radius r is the
fraction of images that are classified correctly *and* certified at radius ≥ r (abstentions count
as errors), exactly as in Cohen et al.'s Table/Figure.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from smoothgen import intervals
from smoothgen.data import load_cifar10
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.models.classifier import ClassifierBase, load_classifier
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import resolve_device
from smoothgen.smoothing import SmoothedClassifier

EXPERIMENT = "01_smoothing_classifiers"
COHEN_2019 = {0.25: 0.60, 0.5: 0.43, 0.75: 0.32, 1.0: 0.23}
"""Cohen et al. (2019), ResNet-110 on CIFAR-10, n = 100,000, α = 0.001, best σ per radius."""


def certify_images(sigma: float, images: Any, labels: Any, params: dict[str, Any]) -> pd.DataFrame:
    """CERTIFY every image with the classifier trained at ``sigma``: one row per image."""
    device = resolve_device(params.get("device"))
    smoothed = SmoothedClassifier(ClassifierBase(load_classifier(sigma, device=device)),
                                  GaussianNoise(sigma, event_shape=(3, 32, 32)), num_classes=10,
                                  batch_size=params["batch_size"])
    rows = []
    for i, (image, label) in enumerate(tqdm(list(zip(images, labels)), desc=f"certify σ={sigma}", leave=False)):
        start = time.perf_counter()
        cert = smoothed.certify(image.float() / 255, params["n0"], params["n"], params["alpha"],
                                seed=params["seed"] + i, device=device)
        prediction, radius = cert
        rows.append({"sigma": sigma, "image": i, "label": int(label), "prediction": int(prediction),
                     "radius": float(radius), "correct": int(prediction) == int(label),
                     "seconds": time.perf_counter() - start})
    return pd.DataFrame(rows)


def certified_accuracy(certs: pd.DataFrame, radii: list[float]) -> pd.DataFrame:
    """Certified accuracy per σ and radius with its exact 95 % Clopper–Pearson interval over the images,
    the best σ per radius (the interval is the chosen σ's; the choice itself is not accounted for), and
    Cohen et al.'s published row (no interval)."""
    rows = [{"source": "SmoothGen", "sigma": str(sigma), "radius": r,
             **intervals.proportion(int((group["correct"] & (group["radius"] >= r)).sum()), len(group),
                                    "certified_accuracy")}
            for sigma, group in certs.groupby("sigma") for r in radii]
    table = pd.DataFrame(rows)
    best = table.loc[table.groupby("radius")["certified_accuracy"].idxmax()].assign(sigma="best")
    cohen = pd.DataFrame({"source": "Cohen et al. 2019 (ResNet-110, n=100,000)", "sigma": "best",
                          "radius": list(COHEN_2019), "certified_accuracy": list(COHEN_2019.values())})
    return pd.concat([table, best, cohen], ignore_index=True)


def accuracy_summary(certs: pd.DataFrame) -> pd.DataFrame:
    """Per σ: clean accuracy of the smoothed prediction (with its Clopper–Pearson interval), abstention
    rate, median certified radius (0 for abstentions) and seconds per image."""
    rows = []
    for sigma, group in certs.groupby("sigma"):
        rows.append({"sigma": sigma, "images": len(group),
                     **intervals.proportion(int(group["correct"].sum()), len(group), "clean_accuracy"),
                     "abstain_rate": float((group["prediction"] < 0).mean()),
                     "median_radius": float(group["radius"].median()),
                     "seconds_per_image": float(group["seconds"].mean())})
    return pd.DataFrame(rows)


def test_subset(count: int, stride: int) -> tuple[Any, Any, str]:
    """Every ``stride``-th test image, ``count`` of them (Cohen et al. use every 20th), and the data variant."""
    data = load_cifar10("test")
    index = np.arange(0, len(data), stride)[:count]
    return data.images[index], data.labels[index], data.variant


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 01: per-image certificates and the certified-accuracy curves."""
    clock = Stopwatch()
    images, labels, variant = test_subset(params["n_images"], params["stride"])
    certs = pd.concat([certify_images(s, images, labels, params) for s in params["sigmas"]], ignore_index=True)
    tables = {"certificates": certs, "certified_accuracy": certified_accuracy(certs, params["radii"]),
              "summary": accuracy_summary(certs)}
    return finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant=variant, clock=clock)
