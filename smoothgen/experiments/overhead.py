r"""Notebook 07: the computational overhead of smoothing, and what sequential certification saves.

Three questions:

1. **Time and memory vs n.** For each base generator, the bare base on ``n / b`` ready-made noisy
   batches (the forward passes and nothing else) against :class:`SmoothedGenerator` drawing the
   same ``n`` samples (``sample``: all outputs kept; ``mean``: a running sum, O(batch) memory).
   Per run: best-of-``repeats`` wall and process-CPU seconds (after one warm-up call; ``threads``
   torch threads, e.g. 1 on a shared CPU), and the peak memory the run added (CUDA:
   ``max_memory_allocated``; CPU: the kernel's peak resident size after a reset).
2. **Forward passes per certificate**, next to the anchors: Cohen et al. (2019) ``n0 + n = 100 +
   10⁵``; center smoothing (Kumar & Goldstein 2021) ``10⁴ + 10⁶``; SmoothGen fixed-``n`` and
   sequential (decision and radius mode, median and mean over inputs), with seconds per
   certificate at the measured per-pass cost of each base.
3. **Sequential savings.** Per input with top-class probability ``p``, one simulated Bernoulli
   stream; fixed-``n`` Cohen uses all ``n`` draws, the sequential modes the prefix they need
   (same draws). ``p`` comes from the shipped noise-trained classifier's top-class frequencies on
   CIFAR-10 test images (``p_source="classifier"``) or from a mixture matched to Cohen et al.'s
   certified-accuracy curve (``"synthetic"``, :func:`cohen_like_p`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import special

from smoothgen import certify
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import make_generator, resolve_device
from smoothgen.sequential import LookSchedule, sequential_cohen_paths, simulate_bernoulli_paths
from smoothgen.smoothing import SmoothedClassifier, SmoothedGenerator

EXPERIMENT = "07_overhead"
ANCHORS = {"Cohen et al. 2019 (n0 + n)": 100 + 100_000, "center smoothing (10⁴ + 10⁶)": 10_000 + 1_000_000}
"""Forward passes per certificate of the published procedures."""


class LinearImageToy:
    """A cheap image generator: ``G(u, z) = sigmoid(u W + 0.1 z)`` as ``[3, 16, 16]``, ``u ∈ R^64``."""

    dim = 64

    def __init__(self, seed: int = 0) -> None:
        self.w = torch.randn((self.dim, 768), generator=torch.Generator().manual_seed(seed)) / self.dim**0.5

    def __call__(self, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        w = self.w.to(u.device)
        z = torch.randn((u.shape[0], 768), generator=generator, device=u.device)
        return torch.sigmoid(u @ w + 0.1 * z).view(u.shape[0], 3, 16, 16)


# --------------------------------------------------------------------------------------------
# 1. time and memory vs n
# --------------------------------------------------------------------------------------------
def build_base(name: str, params: dict[str, Any], device: torch.device) -> tuple[Any, torch.Tensor, float]:
    """``(base, clean condition, σ)`` for ``"toy"``, ``"diffusion"`` (shipped) or ``"lm"`` (shipped)."""
    if name == "toy":
        return LinearImageToy(params["seed"]), torch.zeros(LinearImageToy.dim, device=device), 0.5
    if name == "diffusion":
        from smoothgen.models.diffusion import load_diffusion
        diffusion = load_diffusion(device=device, steps=params["diffusion_steps"])
        return diffusion, diffusion.conditions()[0], params["sigma_diffusion"]
    if name == "lm":
        from smoothgen.models.lm import load_lm
        lm = load_lm(device=device, steps=params["lm_tokens"])
        return lm, lm.prompt_embeddings(list(range(2, 2 + params["lm_prompt_len"]))), params["sigma_lm"]
    raise ValueError(f"unknown model {name!r}; choose 'toy', 'diffusion' or 'lm'")


def _rss_mb(field: str) -> float:
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    line = next((x for x in status.read_text().splitlines() if x.startswith(field)), None)
    return int(line.split()[1]) / 1024.0 if line else float("nan")


def measure(fn: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Wall and CPU seconds of one call, and the peak memory it added in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
        except OSError:
            pass
        before = _rss_mb("VmRSS:") * 2**20
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_mb("VmHWM:") * 2**20
    return {"wall_s": wall, "cpu_s": cpu, "peak_added_mb": max(0.0, (peak - before) / 2**20)}


def _runs(base: Any, c: torch.Tensor, sigma: float, n: int, params: dict[str, Any], tokens: bool) -> dict[str, Callable[[], Any]]:
    """The timed calls: the bare base, smoothed ``sample`` and (for float outputs, not ``tokens``) ``mean``."""
    batch = params["batch_size"]
    smoothed = SmoothedGenerator(base, GaussianNoise(sigma), batch_size=batch)
    gen = make_generator(params["seed"], c.device)
    noisy = [c + sigma * torch.randn((min(batch, n - i), *c.shape), generator=gen, device=c.device) for i in range(0, n, batch)]

    def bare() -> None:
        g = make_generator(params["seed"] + 1, c.device)
        with torch.inference_mode():
            for u in noisy:
                base(u, g)
    runs = {"base": bare, "smoothed sample": lambda: smoothed.sample(c, n, params["seed"])}
    if not tokens:
        runs["smoothed mean"] = lambda: smoothed.mean(c, n, params["seed"])
    return runs


def timing(params: dict[str, Any], device: torch.device) -> pd.DataFrame:
    """One row per (model, n, run): best-of-repeats seconds, per-sample cost, peak memory added."""
    rows = []
    for name in params["models"]:
        base, c, sigma = build_base(name, params, device)
        for n in params["n_values"]:
            runs = _runs(base, c, sigma, n, params, tokens=name == "lm")
            for fn in runs.values():  # warm-up (allocator, kernels, first-call costs)
                fn()
            for run_name, fn in runs.items():
                best = min((measure(fn, device) for _ in range(params["repeats"])), key=lambda m: m["cpu_s"])
                rows.append({"model": name, "n": n, "batch_size": params["batch_size"], "run": run_name, **best,
                             "per_sample_ms": 1e3 * best["wall_s"] / n})
    table = pd.DataFrame(rows)
    ref = table[table["run"] == "base"].set_index(["model", "n"])
    for col in ("wall_s", "cpu_s"):
        table[f"ratio_{col[:-2]}"] = table[col].to_numpy() / ref.loc[list(zip(table["model"], table["n"])), col].to_numpy()
    return table


# --------------------------------------------------------------------------------------------
# 3. sequential savings (2. passes per certificate is built from it)
# --------------------------------------------------------------------------------------------
def cohen_like_p(count: int, rng: np.random.Generator) -> np.ndarray:
    """Top-class probabilities matched to Cohen et al. (2019), CIFAR-10, σ = 0.25.

    Their certified accuracy is 75 / 60 / 43 / 27 % at r = 0 / 0.25 / 0.5 / 0.75, i.e. at
    ``p ≥ Φ(r/σ) = Φ(0), Φ(1), Φ(2), Φ(3)``. Mixture: 25 % ``U(0.2, 0.5)``, 15 % ``U(0.5, Φ(1))``,
    17 % ``U(Φ(1), Φ(2))``, 16 % ``U(Φ(2), Φ(3))``, 12 % ``U(Φ(3), 1)``, 15 % ``p = 1``.
    """
    z = special.ndtr(np.array([1.0, 2.0, 3.0]))
    lows = np.array([0.2, 0.5, z[0], z[1], z[2], 1.0])
    highs = np.array([0.5, z[0], z[1], z[2], 1.0, 1.0])
    comp = rng.choice(6, size=count, p=[0.25, 0.15, 0.17, 0.16, 0.12, 0.15])
    return rng.uniform(lows[comp], highs[comp])


def classifier_top_p(images: int, draws: int, sigma: float, seed: int, device: torch.device) -> tuple[np.ndarray, str]:
    """Top-class frequencies of the shipped σ-classifier over ``draws`` noisy copies of test images."""
    from smoothgen.data import load_cifar10
    from smoothgen.models.classifier import ClassifierBase, load_classifier

    test = load_cifar10("test")
    smoothed = SmoothedClassifier(ClassifierBase(load_classifier(sigma, device=device)), GaussianNoise(sigma, (3, 32, 32)),
                                  10, batch_size=min(draws, 500))
    stride = max(1, len(test) // images)
    freq = [smoothed.counts(test.images[i].float() / 255, draws, seed + i, device).max() / draws
            for i in range(0, stride * images, stride)]
    return np.array(freq), test.variant


def input_p(params: dict[str, Any], device: torch.device) -> tuple[np.ndarray, str | None]:
    """``inputs`` top-class probabilities (resampled from the classifier's frequencies, or synthetic)."""
    rng = np.random.default_rng(params["seed"])
    if params["p_source"] == "synthetic":
        return cohen_like_p(params["inputs"], rng), None
    if params["p_source"] != "classifier":
        raise ValueError(f"p_source must be 'classifier' or 'synthetic', got {params['p_source']!r}")
    freq, variant = classifier_top_p(params["p_images"], params["p_draws"], params["cert_sigma"], params["seed"], device)
    return rng.choice(freq, size=params["inputs"]), variant


def sequential_inputs(p: np.ndarray, params: dict[str, Any]) -> pd.DataFrame:
    """Per input and mode (fixed, decision, radius): passes, radius (σ units), decision."""
    n, n0, alpha, sigma = params["n_fixed"], params["n0"], params["alpha"], params["cert_sigma"]
    schedule = LookSchedule.geometric(n_max=n)
    paths = simulate_bernoulli_paths(p, schedule, np.random.default_rng(params["seed"] + 1))
    fixed = np.asarray(certify.clopper_pearson_lower(paths[:, -1], n, alpha))
    fixed_radius = np.where(fixed >= 0.5, special.ndtri(np.maximum(fixed, 0.5)), 0.0)
    rho = params["decision_r_over_sigma"]
    dec = sequential_cohen_paths(paths, sigma, alpha, schedule=schedule, mode="decision", target_radius=rho * sigma, n0=n0)
    rad = sequential_cohen_paths(paths, sigma, alpha, schedule=schedule, tol=params["tol"], n0=n0)
    fixed_certified = fixed >= special.ndtr(rho)
    base = {"input": np.arange(len(p)), "p": p, "fixed_radius_sigma": fixed_radius, "fixed_certified": fixed_certified}
    frames = [pd.DataFrame({**base, "mode": mode, "passes": passes, "radius_sigma": radius, "certified": certified})
              for mode, passes, radius, certified in (
                  ("fixed", np.full(len(p), n0 + n), fixed_radius, fixed_certified),
                  ("decision", dec.passes, dec.radius / sigma, dec.certified),
                  ("radius", rad.passes, rad.radius / sigma, rad.radius / sigma >= rho))]
    table = pd.concat(frames, ignore_index=True)
    table["pass_reduction"] = (n0 + n) / table["passes"]
    table["radius_loss_sigma"] = table["fixed_radius_sigma"] - table["radius_sigma"]
    return table


def sequential_summary(inputs: pd.DataFrame) -> pd.DataFrame:
    """Per mode: median / total pass reduction, agreement with fixed-n decisions, radius loss quantiles.

    The decision mode stops once ``r*`` is decided, not at its best radius: its loss columns are NaN.
    """
    fixed_total = inputs.loc[inputs["mode"] == "fixed", "passes"].sum()
    rows = []
    for mode, g in inputs.groupby("mode", sort=False):
        loss = g["radius_loss_sigma"] if mode != "decision" else g["radius_loss_sigma"] * np.nan  # not maximising the radius
        rows.append({"mode": mode, "passes_median": float(g["passes"].median()), "passes_mean": float(g["passes"].mean()),
                     "pass_reduction_median": float(g["pass_reduction"].median()),
                     "pass_reduction_total": float(fixed_total / g["passes"].sum()),
                     "decision_agreement": float((g["certified"] == g["fixed_certified"]).mean()),
                     "radius_loss_median": float(loss.median()), "radius_loss_q90": float(loss.quantile(0.9)),
                     "radius_loss_max": float(loss.max()),
                     "share_loss_le_0.05": float((loss <= 0.05).mean()) if mode != "decision" else float("nan")})
    return pd.DataFrame(rows)


def passes_per_certificate(summary: pd.DataFrame, timing_table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Anchors and SmoothGen's modes: passes per certificate, and seconds at each base's per-pass cost."""
    rows = [{"method": name, "kind": "anchor (published)", "passes": float(passes)} for name, passes in ANCHORS.items()]
    label = {"fixed": f"SmoothGen fixed n = {params['n_fixed']:,}",
             "decision": f"SmoothGen sequential, decision (r* = {params['decision_r_over_sigma']}σ)",
             "radius": f"SmoothGen sequential, radius (tol {params['tol']}σ)"}
    for row in summary.itertuples():
        rows.append({"method": label[row.mode] + " — median", "kind": "simulated", "passes": row.passes_median})
        rows.append({"method": label[row.mode] + " — mean", "kind": "simulated", "passes": row.passes_mean})
    table = pd.DataFrame(rows)
    largest = timing_table[(timing_table["run"] == "base") & (timing_table["n"] == timing_table["n"].max())]
    for model in largest.itertuples():
        table[f"seconds_{model.model}"] = table["passes"] * model.wall_s / model.n
    return table


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 07: timing, passes per certificate, sequential savings."""
    clock = Stopwatch()
    device = resolve_device(params.get("device"))
    threads = torch.get_num_threads()
    torch.set_num_threads(params["threads"] or threads)
    try:
        timing_table = timing(params, device)
    finally:
        torch.set_num_threads(threads)
    p, variant = input_p(params, device)
    inputs = sequential_inputs(p, params)
    summary = sequential_summary(inputs)
    tables = {"timing": timing_table, "passes": passes_per_certificate(summary, timing_table, params),
              "sequential_inputs": inputs, "sequential_summary": summary}
    return finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant=variant, clock=clock,
                  device=str(device), timing_threads=params["threads"] or threads)
