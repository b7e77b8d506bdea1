"""Draw the book's theory figures (closed-form curves only, no model) into book/figures/.

Usage: python book/tools/make_figures.py
The SVGs are committed; rerun this script after changing it. Output is deterministic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def save_svg(fig: plt.Figure, name: str) -> Path:
    """Write ``fig`` to ``FIGURES/name`` atomically, without a date stamp (reproducible bytes)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    target = FIGURES / name
    fd, tmp = tempfile.mkstemp(dir=FIGURES, suffix=".svg.tmp")
    os.close(fd)
    fig.savefig(tmp, format="svg", metadata={"Date": None}, bbox_inches="tight")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def certificate_curves() -> Path:
    """TV bound and NP interval against r/σ; W1-certified radius against ε/D."""
    plt.rcParams["svg.hashsalt"] = "smoothgen-book"
    ratio = np.linspace(0.0, 3.0, 301)
    p = 0.9
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    left.plot(ratio, 2 * norm.cdf(ratio / 2) - 1, label=r"TV bound $\tau = 2\Phi(r/2\sigma)-1$")
    left.plot(ratio, norm.cdf(norm.ppf(p) - ratio), "--", label=r"NP lower end, $p = 0.9$")
    left.plot(ratio, norm.cdf(norm.ppf(p) + ratio), ":", label=r"NP upper end, $p = 0.9$")
    left.set_xlabel(r"$r/\sigma$")
    left.set_ylabel("bound")
    left.set_ylim(0, 1.02)
    left.legend(fontsize=8, loc="center right")
    eps = np.linspace(0.0, 0.99, 300)
    right.plot(eps, 2 * norm.ppf((1 + eps) / 2))
    right.set_xlabel(r"$\epsilon / D$")
    right.set_ylabel(r"certified radius $R_W(\epsilon)/\sigma$")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = save_svg(fig, "certificate_curves.svg")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(certificate_curves())
