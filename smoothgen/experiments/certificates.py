r"""Notebook 02: every certificate on a toy generator whose output law is known exactly.

The toy (``ProbitToy``): condition ``u ∈ R^d``, output ``Y = Φ(aᵀu + s·z) ∈ [0, 1]`` with
``z ~ N(0, 1)``. Under smoothing, ``X = aᵀ(c + ε) + s z ~ N(μ, τ²)`` with ``μ = aᵀc`` and
``τ² = ‖a‖²σ² + s²``; an adversary's best move is ``δ = ±r a/‖a‖`` (shift ``m = ‖a‖ r``).
Because ``Y`` is an increasing function of a Gaussian, everything is in closed form:

* ``TV(P_c, P_{c+δ}) = 2Φ(m/(2τ)) − 1``;
* ``W₁(P_c, P_{c+δ}) = |E Y' − E Y|`` (stochastic order), ``E Y = Φ(μ/√(1+τ²))``;
* ``P(Y > 1/2) = Φ(μ/τ)``, moved to ``Φ((μ ± m)/τ)``.

With ``s = 0`` the TV bound is attained, so the toy also shows where certificates are tight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import special, stats

from smoothgen import certify
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.noise import GaussianNoise
from smoothgen.smoothing import SmoothedGenerator

EXPERIMENT = "02_certificates"


@dataclass(frozen=True)
class ProbitToy:
    """``G(u, z) = Φ(aᵀu + s z)``: a 1-D generator whose smoothed law is Gaussian-probit."""

    a: torch.Tensor
    s: float

    def __call__(self, embeddings: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(embeddings.shape[0], generator=generator, device=embeddings.device, dtype=embeddings.dtype)
        return special_ndtr(embeddings @ self.a + self.s * z)[:, None]

    def law(self, c: torch.Tensor, sigma: float) -> tuple[float, float]:
        """``(μ, τ)`` of the latent Gaussian ``X`` at condition ``c`` under noise ``σ``."""
        norm = float(self.a.norm())
        return float(c @ self.a), math.sqrt(norm**2 * sigma**2 + self.s**2)

    def exact(self, c: torch.Tensor, sigma: float, radius: float) -> dict[str, float]:
        """Exact worst-case shifts over ``‖δ‖ ≤ r`` (closed forms of the module docstring)."""
        mu, tau = self.law(c, sigma)
        m, k = float(self.a.norm()) * radius, math.sqrt(1.0 + tau**2)
        means = [special.ndtr(x / k) for x in (mu - m, mu, mu + m)]
        tails = [special.ndtr(x / tau) for x in (mu - m, mu, mu + m)]
        return {"true_tv": 2 * special.ndtr(m / (2 * tau)) - 1,
                "true_w1": max(means[1] - means[0], means[2] - means[1]),
                "mean_c": means[1], "mean_low": means[0], "mean_high": means[2],
                "tail_c": tails[1], "tail_low": tails[0], "tail_high": tails[2]}


def special_ndtr(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF on tensors."""
    return torch.special.ndtr(x)


def build_toy(a_norm: float, s: float, dim: int, seed: int) -> tuple[ProbitToy, torch.Tensor]:
    """A toy with ``‖a‖ = a_norm`` in a random direction of ``R^dim`` and its clean condition (``aᵀc = 0.3‖a‖``)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, generator=gen, dtype=torch.float64)
    a *= a_norm / a.norm()
    return ProbitToy(a=a, s=s), 0.3 * a / a.norm()


def side_by_side(toy: ProbitToy, c: torch.Tensor, params: dict[str, Any]) -> pd.DataFrame:
    """All certificates at each radius from one Monte-Carlo run, next to the exact values."""
    sigma, alpha, n = params["sigma"], params["alpha"], params["n"]
    smoothed = SmoothedGenerator(toy, GaussianNoise(sigma, dtype=torch.float64), batch_size=params["batch_size"])
    y = smoothed.sample(c, n, seed=params["seed"]).squeeze(1).numpy()
    y0 = float(special_ndtr(c @ toy.a))  # reference output: the base at the clean condition, z = 0
    rows = []
    for r in params["radii"]:
        exact = toy.exact(c, sigma, r)
        tail = certify.np_bounds_mc((y > 0.5).astype(float), r, sigma, alpha, kind="binary")
        band = certify.mean_band(y[:, None], r, sigma, alpha)
        rows.append({"radius": r, "tv_bound": certify.tv_bound(r, sigma), **exact,
                     "w1_diameter_bound": certify.wasserstein_bound(r, sigma, 1.0),
                     "w1_certificate": certify.wasserstein_certificate(np.abs(y - y0), r, sigma, alpha, 1.0),
                     "tail_lower": tail.lower, "tail_upper": tail.upper,
                     "mean_band_lower": float(band.lower[0]), "mean_band_upper": float(band.upper[0]),
                     "center_radius": _center_radius(smoothed, c, r, params)})
    return pd.DataFrame(rows)


def _center_radius(smoothed: SmoothedGenerator, c: torch.Tensor, radius: float, params: dict[str, Any]) -> float:
    """Center smoothing's certified output radius (``|·|`` metric) from three independent batches."""
    m, seed = params["n_center"], params["seed"]
    first, check, cert = (smoothed.sample(c, m, seed=seed + k).squeeze(1).double() for k in (101, 102, 103))
    pairwise = (first[:, None] - first[None, :]).abs().numpy()
    index, _ = certify.select_center(pairwise)
    center = first[index]
    result = certify.center_certificate(pairwise, (check - center).abs().numpy(), (cert - center).abs().numpy(),
                                        radius, smoothed.noise.sigma, delta=params["center_delta"])
    return result.radius


def coverage(toy: ProbitToy, c: torch.Tensor, params: dict[str, Any]) -> pd.DataFrame:
    """Failure rates of the Monte-Carlo certificates over many independent seeds.

    One long i.i.d. stream is cut into ``seeds`` disjoint runs of ``n`` samples (disjoint
    chunks of i.i.d. draws are independent runs). A certificate *fails* when the exact
    worst-case value escapes it. The one-sided binomial p-value tests ``rate ≤ α``.
    """
    sigma, alpha, r = params["sigma"], params["alpha_coverage"], params["coverage_radius"]
    smoothed = SmoothedGenerator(toy, GaussianNoise(sigma, dtype=torch.float64), batch_size=params["batch_size"])
    exact, y0 = toy.exact(c, sigma, r), float(special_ndtr(c @ toy.a))
    rows = []
    for n in params["coverage_n"]:
        runs = smoothed.sample(c, n * params["seeds"], seed=params["seed"] + n).reshape(params["seeds"], n).numpy()
        fails = {"w1_certificate": [], "tail_bounds": [], "mean_band": []}
        for y in runs:
            fails["w1_certificate"].append(
                certify.wasserstein_certificate(np.abs(y - y0), r, sigma, alpha, 1.0) < exact["true_w1"])
            lo, hi = certify.np_bounds_mc((y > 0.5).astype(float), r, sigma, alpha, kind="binary")
            fails["tail_bounds"].append(not lo <= min(exact["tail_low"], exact["tail_high"]) <= max(
                exact["tail_low"], exact["tail_high"]) <= hi)
            band = certify.mean_band(y[:, None], r, sigma, alpha)
            fails["mean_band"].append(not band.lower[0] <= exact["mean_low"] <= exact["mean_high"] <= band.upper[0])
        rows += [_rate_row(name, n, np.asarray(f), alpha) for name, f in fails.items()]
    return pd.DataFrame(rows)


def _rate_row(name: str, n: int, fails: np.ndarray, alpha: float) -> dict[str, Any]:
    k, trials = int(fails.sum()), int(fails.size)
    return {"certificate": name, "n": n, "trials": trials, "failures": k, "failure_rate": k / trials,
            "alpha": alpha, "p_value_rate_le_alpha": float(stats.binomtest(k, trials, alpha, "greater").pvalue)}


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 02: the side-by-side and coverage tables, one block of rows per toy."""
    clock = Stopwatch()
    tables: dict[str, list[pd.DataFrame]] = {"side_by_side": [], "coverage": []}
    for spec in params["toys"]:
        toy, c = build_toy(spec["a_norm"], spec["s"], params["dim"], params["seed"])
        mu, tau = toy.law(c, params["sigma"])
        label = {"toy": spec["name"], "a_norm": spec["a_norm"], "s": spec["s"], "mu": mu, "tau": tau}
        tables["side_by_side"].append(side_by_side(toy, c, params).assign(**label))
        tables["coverage"].append(coverage(toy, c, params).assign(**label))
    merged = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    return finish(EXPERIMENT, params, merged, seed=params["seed"], data_variant=None, clock=clock)
