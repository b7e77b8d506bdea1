"""95 % intervals for the study's quality numbers: exact for proportions, bootstrap for the rest.

- Proportions (class-consistency, certified accuracy, the fraction of unchanged outputs):
  :func:`proportion`, the exact two-sided Clopper–Pearson interval
  ``[B(α/2; k, n−k+1), B(1−α/2; k+1, n−k)]``.
- Statistics of a sample (FID, IS, corpus BLEU, ROUGE, perplexity): :func:`bootstrap`, the percentile
  bootstrap over the sample's rows (images, prompts) with a seeded generator, ``draws`` resamples.
  :class:`Frechet` makes FID cheap enough to bootstrap: the real set's moments and square root are
  computed once, and each resample of the generated features costs one symmetric eigendecomposition.

A percentile interval of a biased statistic need not contain its point estimate: a resample repeats
images, which inflates FID, so FID's percentile interval lies above the FID of the full sample. FID and
its ratio therefore use the *basic* (reflected) bootstrap interval
``[2θ̂ − q_{97.5}, 2θ̂ − q_{2.5}]`` (:func:`summary` with ``kind="basic"``), which moves the interval
down by the resampling bias ``mean(θ*) − θ̂`` to first order (Davison & Hinkley 1997, §5.2).

Every function returns a dict ``{name: point, name_low: ..., name_high: ...}`` ready to go into a
results row. These intervals describe the sampling noise of the *evaluation* (which images, which
prompts were drawn); they are not certificates and carry no adversarial meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import numpy as np
import pandas as pd
from scipy import linalg

from smoothgen import certify

LEVEL = 0.95
"""Coverage of every interval here."""


def proportion(hits: int, n: int, name: str) -> dict[str, float]:
    """Point estimate ``hits/n`` and the exact 95 % Clopper–Pearson interval of a proportion."""
    tail = (1 - LEVEL) / 2
    low = float(certify.clopper_pearson_lower(hits, n, tail))
    high = 1.0 - float(certify.clopper_pearson_lower(n - hits, n, tail))
    return {name: hits / n, f"{name}_low": low, f"{name}_high": high}


def bootstrap(statistic: Callable[[np.ndarray], float], rows: int, draws: int, seed: int, name: str) -> dict[str, float]:
    """``statistic(all rows)`` and its 95 % percentile-bootstrap interval.

    ``statistic`` receives an index array into the sample (``np.arange(rows)`` for the point estimate,
    ``rows`` indices drawn with replacement for each of the ``draws`` resamples). NaN resamples (e.g. a
    BLEU of an empty selection) are skipped.

    Raises
    ------
    ValueError
        If ``rows < 1`` or ``draws < 1``.
    """
    if rows < 1 or draws < 1:
        raise ValueError(f"bootstrap needs rows >= 1 and draws >= 1, got rows={rows}, draws={draws}")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, rows, rows)) for _ in range(draws)]
    return summary(name, statistic(np.arange(rows)), values)


def bootstrap_all(statistics: Callable[[np.ndarray], Mapping[str, float]], rows: int, draws: int,
                  seed: int) -> dict[str, float]:
    """:func:`bootstrap` for a statistic that returns several named values from one resample (e.g. every
    text score of a table of prompts): ``{key: point, key_low, key_high}`` for each key."""
    if rows < 1 or draws < 1:
        raise ValueError(f"bootstrap needs rows >= 1 and draws >= 1, got rows={rows}, draws={draws}")
    rng = np.random.default_rng(seed)
    values = [statistics(rng.integers(0, rows, rows)) for _ in range(draws)]
    point = statistics(np.arange(rows))
    return {k: v for key in point for k, v in summary(key, point[key], [d[key] for d in values]).items()}


def summary(name: str, point: float, values: Sequence[float], kind: str = "percentile",
            floor: float = -np.inf) -> dict[str, float]:
    """``{name: point, name_low, name_high}`` from the finite bootstrap ``values`` (NaN if none).

    ``kind="percentile"``: their central 95 % ``[q_{2.5}, q_{97.5}]``; ``kind="basic"``: the reflection
    ``[2·point − q_{97.5}, 2·point − q_{2.5}]``, which corrects a resampling bias of the statistic;
    ``floor`` clips the interval below (e.g. 0 for a distance).
    """
    if kind not in ("percentile", "basic"):
        raise ValueError(f"kind must be 'percentile' or 'basic', got {kind!r}")
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (np.nan, np.nan)
    if kind == "basic":
        low, high = 2 * point - high, 2 * point - low
    return {name: float(point), f"{name}_low": float(max(low, floor)), f"{name}_high": float(max(high, floor))}


class Frechet:
    """Fréchet distance to one fixed real feature set,
    ``‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r^½ Σ_g Σ_r^½)^½`` (unbiased covariances; ``Σ_r^½``
    computed once), in the features' own space."""

    def __init__(self, real: np.ndarray) -> None:
        self.rows, self.mean, cov = len(real), real.mean(0), np.cov(real, rowvar=False)
        w, v = linalg.eigh(cov)
        self.root, self.trace = (v * np.sqrt(np.clip(w, 0, None))) @ v.T, float(np.trace(cov))

    def __call__(self, fake: np.ndarray) -> float:
        mu, cov = self.mean - fake.mean(0), np.cov(fake, rowvar=False)
        eig = linalg.eigvalsh(self.root @ cov @ self.root)
        return float(mu @ mu + self.trace + np.trace(cov) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def fid(fd: Frechet, fake: np.ndarray, base: np.ndarray | None, draws: int, seed: int,
        name: str = "fid") -> dict[str, float]:
    """FID of the features ``fake`` (key ``name``) and, given ``base`` (the unsmoothed model's features),
    its ratio to ``base``'s FID (``name_ratio``), each with a 95 % basic-bootstrap interval (``fake`` and
    ``base`` resampled independently in each draw, the real set fixed; see the module docstring)."""
    rng, fids, ratios = np.random.default_rng(seed), [], []
    for _ in range(draws):
        fids.append(fd(fake[rng.integers(0, len(fake), len(fake))]))
        if base is not None:
            ratios.append(fids[-1] / fd(base[rng.integers(0, len(base), len(base))]))
    point = fd(fake)
    out = summary(name, point, fids, "basic", floor=0.0)
    return out if base is None else {**out, **summary(f"{name}_ratio", point / fd(base), ratios, "basic", floor=0.0)}


def inception_score(probs: np.ndarray, draws: int, seed: int, name: str = "is") -> dict[str, float]:
    """``exp E_x KL(p(y|x) ‖ p(y))`` of class probabilities ``[N, K]`` (one split) with its 95 % bootstrap
    interval over the images."""
    def score(idx: np.ndarray) -> float:
        p = probs[idx]
        marginal = p.mean(0, keepdims=True)
        return float(np.exp(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(marginal + 1e-12)), axis=1))))

    return bootstrap(score, len(probs), draws, seed, name)


def formatted(table: pd.DataFrame, columns: Sequence[str], index: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """The ``index`` columns and, for each of ``columns``, one text column ``"value [low, high]"`` (the 95 %
    interval from ``<column>_low`` / ``<column>_high``), for display."""
    out = table[list(index)].copy()
    for column in columns:
        out[column] = [f"{v:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]" for v, lo, hi in
                       zip(table[column], table[f"{column}_low"], table[f"{column}_high"])]
    return out
