"""Draw the book's theory figures into book/figures/ (closed forms and toy models only, no trained model).

Usage: python book/tools/make_figures.py [NAME ...]    (default: every figure)
The SVGs are committed; rerun this script after changing it. Output is deterministic: the same
library version on the same machine writes the same bytes (no date stamp, a fixed ``svg.hashsalt``,
fixed seeds, text drawn as paths). Wherever a figure shows a certificate it is computed by
SmoothGen itself (``smoothgen.certify``, ``smoothgen.noise``, ``smoothgen.smoothing``,
``smoothgen.models.frontends``), so the picture shows what the code computes.

Every figure is about 7.5 x 3 inches (the book's column is about 784 px wide) with fonts of at least
10 pt, in one seaborn style ("whitegrid", colour-blind palette).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Circle, Polygon  # noqa: E402
from scipy.spatial import Voronoi  # noqa: E402
from scipy.special import gammaln  # noqa: E402
from scipy.stats import norm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from smoothgen import certify  # noqa: E402
from smoothgen.models.frontends import NearestEmbedding  # noqa: E402
from smoothgen.noise import GaussianNoise  # noqa: E402
from smoothgen.smoothing import SmoothedGenerator, l2_distances  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "figures"
WIDTH, HEIGHT = 7.5, 3.0
RC = {
    "svg.hashsalt": "smoothgen-book",
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.handlelength": 3.0,
    "legend.framealpha": 0.9,
    "lines.linewidth": 1.8,
    "grid.alpha": 0.5,
}
COLORS = sns.color_palette("colorblind")
C_CLEAN, C_SHIFT, C_CERT, C_EXIT, C_GREY = COLORS[0], COLORS[1], COLORS[2], COLORS[3], COLORS[7]


def style() -> None:
    """The one style of every figure (seaborn whitegrid, colour-blind palette, fonts >= 10 pt)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc=RC)


def save_svg(fig: plt.Figure, name: str) -> Path:
    """Write ``fig`` to ``FIGURES/name`` atomically, without a date stamp (reproducible bytes)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    target = FIGURES / name
    fd, tmp = tempfile.mkstemp(dir=FIGURES, suffix=".svg.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="svg", metadata={"Date": None}, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    plt.close(fig)
    return target


def figure(ncols: int = 2, **kwargs: object) -> tuple[plt.Figure, np.ndarray]:
    """A styled ``WIDTH x HEIGHT`` figure with one row of ``ncols`` panels (``kwargs`` go to ``plt.subplots``)."""
    style()
    fig, axes = plt.subplots(1, ncols, figsize=(WIDTH, HEIGHT), squeeze=False, **kwargs)
    return fig, axes[0]


def legend_column(axes: Sequence[plt.Axes], slot: plt.Axes, **kwargs: object) -> None:
    """Collect the legend entries of ``axes`` into the empty panel ``slot`` (kept off)."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    slot.axis("off")
    slot.legend(handles, labels, loc="center left", fontsize=10, frameon=False, borderaxespad=0,
                **{"markerscale": 1.5, "handlelength": 2.5, **kwargs})


# ----------------------------------------------------------------------------- generators.md, Wasserstein
def certificate_curves() -> Path:
    """TV bound and NP interval against r/σ; W1-certified radius against ω/D (all from smoothgen.certify)."""
    fig, (left, right) = figure()
    ratio = np.linspace(0.0, 3.0, 301)
    p = 0.9
    lower, upper = certify.np_bounds(p, ratio, 1.0)
    left.plot(ratio, certify.tv_bound(ratio, 1.0), color=C_CLEAN, label=r"TV bound $\tau(r)$")
    left.plot(ratio, lower, "--", color=C_SHIFT, label=r"NP ends, $p = 0.9$")
    left.plot(ratio, upper, "--", color=C_SHIFT)
    left.set_xlabel(r"$r/\sigma$")
    left.set_ylabel("bound")
    left.set_ylim(0, 1.3)
    left.set_yticks(np.linspace(0, 1, 6))
    left.legend(loc="upper center", ncol=2, handlelength=2.2, columnspacing=0.8)
    eps = np.linspace(0.0, 0.99, 300)
    right.plot(eps, [certify.certified_radius(e, 1.0, 1.0) for e in eps], color=C_CERT)
    right.set_xlabel(r"$\omega / D$")
    right.set_ylabel(r"$R_W(\omega)/\sigma$")
    fig.tight_layout()
    return save_svg(fig, "certificate_curves.svg")


# ----------------------------------------------------------------------------- generators.md, TV
def tv_gaussians() -> Path:
    """N(0, σ²) and N(r, σ²) with (p − q)_+ shaded; the area against certify.tv_bound."""
    sigma, r = 1.0, 1.5
    fig, (left, right) = figure(gridspec_kw={"width_ratios": [1.35, 1]})
    x = np.linspace(-3.8, 5.3, 1201)
    p, q = norm.pdf(x, 0.0, sigma), norm.pdf(x, r, sigma)
    left.plot(x, p, color=C_CLEAN, label=r"$p = N(0, \sigma^2)$")
    left.plot(x, q, color=C_SHIFT, label=r"$q = N(r, \sigma^2)$")
    left.fill_between(x, q, p, where=p >= q, color=C_CLEAN, alpha=0.35, lw=0,
                      label=r"$(p-q)_+$, area $= 2\Phi(r/2\sigma) - 1$")
    left.axvline(r / 2, color=C_GREY, ls=":", lw=1.5)
    left.annotate(r"$r/2$", (r / 2, 0.02), xytext=(4, 0), textcoords="offset points")
    left.set_xlabel(r"$x_1$ (the coordinate along $\delta$)")
    left.set_ylabel("density")
    left.set_ylim(0, 0.62)
    left.legend(loc="upper left", fontsize=10)
    grid = np.linspace(-12, 14, 20001)
    ratios = np.linspace(0.0, 4.0, 201)
    right.plot(ratios, certify.tv_bound(ratios, sigma), color=C_CLEAN, label="tv_bound")
    marks = np.arange(0.5, 4.0, 0.5)
    areas = [np.trapezoid(np.clip(norm.pdf(grid) - norm.pdf(grid, m), 0, None), grid) for m in marks]
    right.plot(marks, areas, "o", color=C_SHIFT, label="area, numerically")
    right.plot([r], [certify.tv_bound(r, sigma)], "*", ms=14, color=C_EXIT, label="left panel")
    right.set_xlabel(r"$r/\sigma$")
    right.set_ylabel(r"$\mathrm{TV}$")
    right.set_ylim(0, 1.02)
    right.legend(loc="lower right")
    fig.tight_layout()
    return save_svg(fig, "tv_gaussians.svg")


# ----------------------------------------------------------------------------- generators.md, coupling
def maximal_coupling() -> Path:
    """The overlap min(p, q) is shared (X = X'); the rest is coupled across (X ≠ X', probability TV)."""
    s = 1.5
    t = float(certify.tv_bound(s, 1.0))
    fig, (left, right) = figure(gridspec_kw={"width_ratios": [1.35, 1]})
    x = np.linspace(-3.8, 5.3, 1201)
    p, q = norm.pdf(x), norm.pdf(x, s)
    m = np.minimum(p, q)
    left.fill_between(x, 0, m, color=C_GREY, alpha=0.45, lw=0, label=r"$\min(p,q)$: $X = X'$")
    left.fill_between(x, m, p, where=p > q, color=C_CLEAN, alpha=0.45, lw=0, label=r"$(p-q)_+$: $X$ alone")
    left.fill_between(x, m, q, where=q > p, color=C_SHIFT, alpha=0.45, lw=0, label=r"$(q-p)_+$: $X'$ alone")
    left.plot(x, p, color=C_CLEAN)
    left.plot(x, q, color=C_SHIFT)
    left.set_xlabel(r"$x$")
    left.set_ylabel("density")
    left.set_ylim(0, 0.62)
    left.legend(loc="upper left")
    left.set_title(r"shared mass $1 - \mathrm{TV}$, moved mass $\mathrm{TV}$", fontsize=10)

    # The construction of the proof: heads (probability 1 − t) X = X' ~ m/(1 − t); tails X ~ (p − m)/t and
    # X' ~ (q − m)/t independently. Rejection from p (resp. q) with acceptance min(1, q/p) splits p into
    # m/(1 − t) (accepted) and (p − m)/t (rejected).
    rng = np.random.default_rng(0)
    pairs = 400
    heads = rng.random(pairs) < 1 - t
    cand_p = rng.standard_normal(20 * pairs)
    keep_p = rng.random(cand_p.size) < np.minimum(1.0, norm.pdf(cand_p, s) / norm.pdf(cand_p))
    cand_q = s + rng.standard_normal(20 * pairs)
    keep_q = rng.random(cand_q.size) < np.minimum(1.0, norm.pdf(cand_q) / norm.pdf(cand_q, s))
    shared, only_p, only_q = cand_p[keep_p], cand_p[~keep_p], cand_q[~keep_q]
    k = int(heads.sum())
    xs = np.concatenate([shared[:k], only_p[: pairs - k]])
    ys = np.concatenate([shared[:k], only_q[: pairs - k]])
    lim = (-3.3, 4.8)
    right.plot(lim, lim, color=C_GREY, lw=1, ls="--")
    right.scatter(xs[:k], ys[:k], s=12, color=C_GREY, alpha=0.8, lw=0, label=r"$X = X'$")
    right.scatter(xs[k:], ys[k:], s=12, color=C_EXIT, alpha=0.8, lw=0, label=r"$X \neq X'$")
    right.set_xlim(lim)
    right.set_ylim(lim)
    right.set_aspect("equal")
    right.set_xlabel(r"$X \sim p$")
    right.set_ylabel(r"$X' \sim q$")
    right.set_title(r"$\Pr(X \neq X') = \mathrm{TV}(p, q)$", fontsize=10)
    right.legend(loc="lower right", markerscale=2.0)
    fig.tight_layout()
    return save_svg(fig, "maximal_coupling.svg")


# ----------------------------------------------------------------------------- classifiers.md, NP
def np_worst_case() -> Path:
    """The half-space S = {u : ⟨u − x, δ⟩/‖δ‖ ≤ σΦ⁻¹(p_A)} holds p_A under N(x, σ²I), less under N(x + δ, σ²I)."""
    sigma, shift, p_a = 1.0, 1.2, 0.8
    threshold = sigma * norm.ppf(p_a)
    lower, _ = certify.np_bounds(p_a, shift, sigma)
    fig, (left, right) = figure(gridspec_kw={"width_ratios": [1, 1.25]})
    xlim, ylim = (-3.0, 4.2), (-2.6, 2.6)
    left.axvspan(xlim[0], threshold, color=C_CERT, alpha=0.18, lw=0)
    left.axvline(threshold, color=C_CERT, lw=1.5)
    for center, color, ls in (((0.0, 0.0), C_CLEAN, "-"), ((shift, 0.0), C_SHIFT, "--")):
        for radius in (sigma, 2 * sigma):
            left.add_patch(Circle(center, radius, fill=False, color=color, ls=ls, lw=1.5))
        left.plot(*center, "o", color=color, ms=5)
    left.annotate("", xy=(shift, 0.0), xytext=(0.0, 0.0),
                  arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.3})
    left.text(0.0, -0.38, r"$x$", ha="center", va="top", fontsize=11)
    left.text(shift, 0.25, r"$x+\delta$", ha="left", va="bottom", fontsize=11)
    left.text(xlim[0] + 0.15, ylim[1] - 0.2, r"$S$", ha="left", va="top", fontsize=12, color=C_CERT)
    left.set_xlim(xlim)
    left.set_ylim(ylim)
    left.set_aspect("equal")
    left.set_xlabel(r"along $\delta$")
    left.set_ylabel(r"across $\delta$")
    left.set_title(r"contours at $\sigma$ and $2\sigma$", fontsize=10)

    s = np.linspace(-3.8, 4.8, 1201)
    p, q = norm.pdf(s, 0.0, sigma), norm.pdf(s, shift, sigma)
    inside = s <= threshold
    right.fill_between(s[inside], 0, p[inside], color=C_CLEAN, alpha=0.35, lw=0,
                       label=rf"$P(S) = p_A = {p_a:g}$")
    right.fill_between(s[inside], 0, q[inside], facecolor="none", edgecolor=C_SHIFT, hatch="///", lw=0,
                       label=rf"$Q(S) = \Phi(\Phi^{{-1}}(p_A) - \|\delta\|/\sigma) = {float(lower):.2f}$")
    right.plot(s, p, color=C_CLEAN, label=r"$P = N(x, \sigma^2 I)$")
    right.plot(s, q, "--", color=C_SHIFT, label=r"$Q = N(x + \delta, \sigma^2 I)$")
    right.axvline(threshold, color=C_CERT, lw=1.5)
    right.set_xlabel(r"$\langle u - x, \delta\rangle / \|\delta\|$" + rf"  ($\|\delta\| = {shift:g}\sigma$)")
    right.set_ylabel("density")
    right.set_ylim(0, 0.98)
    right.legend(loc="upper left", fontsize=10)
    fig.tight_layout()
    return save_svg(fig, "np_worst_case.svg")


# ----------------------------------------------------------------------------- generators.md, center smoothing
def _banana(embeddings: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A toy conditional generator R² -> R²: outputs on an arc whose angle follows the condition."""
    z = torch.randn(embeddings.shape[0], 2, generator=generator, dtype=embeddings.dtype)
    angle = 1.5 * embeddings[:, 0] + 0.1 * z[:, 0]
    radius = 2.0 + 0.3 * embeddings[:, 1] + 0.1 * z[:, 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


def _center(smoothed: SmoothedGenerator, c: torch.Tensor, radius: float, sigma: float, delta: float,
            seed: int) -> tuple[np.ndarray, np.ndarray, certify.CenterCertificate, float]:
    """Samples, the center ŷ and certify.center_certificate from three independent batches."""
    samples = smoothed.sample(c, n=1000, seed=seed).double()
    pairwise = l2_distances(samples, samples)
    check = smoothed.sample(c, n=1000, seed=seed + 1).double()
    fresh = smoothed.sample(c, n=2000, seed=seed + 2).double()
    index, _ = certify.select_center(pairwise.numpy())
    z = samples[index]
    cert = certify.center_certificate(pairwise.numpy(), (check - z).norm(dim=1).numpy(),
                                      (fresh - z).norm(dim=1).numpy(), radius, sigma, delta=delta)
    r_q = cert.radius / 3.0
    return samples.numpy(), z.numpy(), cert, r_q


def center_smoothing() -> Path:
    """Samples of a toy generator at c and c + δ, the center, its median ball and its certified output ball."""
    sigma, delta = 0.3, 0.2
    shift = torch.tensor([0.1, 0.0], dtype=torch.float64)
    radius = float(shift.norm())
    smoothed = SmoothedGenerator(_banana, GaussianNoise(sigma, (2,), dtype=torch.float64), batch_size=1000)
    c = torch.zeros(2, dtype=torch.float64)
    ys, z, cert, r_q = _center(smoothed, c, radius, sigma, delta, seed=0)
    ys2, z2, _, _ = _center(smoothed, c + shift, radius, sigma, delta, seed=10)
    if cert.abstained:
        raise RuntimeError("center smoothing abstained; change the toy parameters")
    fig, axes = figure(3, gridspec_kw={"width_ratios": [1, 1, 0.95]})
    show = 300
    near, far = r_q + 0.25, cert.radius + 0.15
    axes[0].scatter(ys[:show, 0], ys[:show, 1], s=7, color=C_CLEAN, alpha=0.55, lw=0, label=r"outputs at $c$")
    axes[1].scatter(ys[:show, 0], ys[:show, 1], s=5, color=C_CLEAN, alpha=0.35, lw=0)
    axes[1].scatter(ys2[:show, 0], ys2[:show, 1], s=5, color=C_SHIFT, alpha=0.55, lw=0,
                    label=r"outputs at $c + \delta$")
    for ax, span, title in ((axes[0], near, r"at $c$"), (axes[1], far, r"at $c + \delta$ (zoomed out)")):
        ax.set_aspect("equal")
        ax.set_xlim(z[0] - span, z[0] + span)
        ax.set_ylim(z[1] - span, z[1] + span)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(r"$y_1$")
    axes[0].set_ylabel(r"$y_2$")
    axes[0].add_patch(Circle(z, cert.median_radius, fill=False, color=C_CLEAN, ls="--", lw=1.6,
                             label=r"median ball $B(\hat y, \hat r)$"))
    axes[0].add_patch(Circle(z, r_q, fill=False, color=C_CERT, ls="--", lw=1.6,
                             label=r"$B(\hat y, \hat R)$, mass $\geq \nu$"))
    axes[1].add_patch(Circle(z, r_q, fill=False, color=C_CERT, ls="--", lw=1.2))
    axes[1].add_patch(Circle(z, cert.radius, fill=False, color=C_CERT, lw=2.2,
                             label=r"certified ball $B(\hat y, 3\hat R)$"))
    axes[0].plot(*z, "*", ms=12, color="black", label=r"center $\hat y$ at $c$")
    axes[1].plot(*z, "*", ms=12, color="black")
    axes[1].plot(*z2, "*", ms=12, color=C_EXIT, label=r"center $\hat y'$ at $c + \delta$")
    legend_column(axes[:2], axes[2], markerscale=1.0)
    fig.tight_layout(w_pad=0.4)
    return save_svg(fig, "center_smoothing.svg")


# ----------------------------------------------------------------------------- meaningful.md, σ√E
def sigma_sqrt_e() -> Path:
    """Noise norm σ√E against the class gap γ as E grows, at σ = γ/8; the certifiable radius stays ~σ."""
    gap, sigma = 1.0, 1.0 / 8.0
    alpha, n = 1e-3, 100_000
    # The largest radius any n-draw certificate can give: all n draws hit, p̲ = α^(1/n), R = σΦ⁻¹(p̲).
    cap = sigma * float(norm.ppf(certify.clopper_pearson_lower(n, n, alpha)))
    fig, (left, right) = figure(gridspec_kw={"width_ratios": [1.25, 1]})
    dims = np.unique(np.round(np.logspace(0, np.log10(4096), 200)).astype(int))
    mean_norm = sigma * np.sqrt(2.0) * np.exp(gammaln((dims + 1) / 2) - gammaln(dims / 2))
    left.plot(dims, mean_norm / gap, color=C_CLEAN, label=r"$\mathbb{E}\|\varepsilon\| \approx \sigma\sqrt{E}$")
    gen = torch.Generator().manual_seed(0)
    noise = GaussianNoise(sigma, dtype=torch.float64)
    for k, e in enumerate([2, 8, 32, 128, 512, 1280, 4096]):
        draws = noise.sample((5, e), gen)
        left.plot([e] * 5, draws.norm(dim=1).numpy() / gap, "o", ms=4, color=C_CLEAN, alpha=0.7,
                  label=r"sampled $\|\varepsilon\|$" if k == 0 else None)
        left.plot([e] * 5, draws[:, 0].abs().numpy() / gap, "s", ms=4, color=C_SHIFT, alpha=0.7,
                  label=r"sampled $|\langle\varepsilon, \delta\rangle| / \|\delta\|$" if k == 0 else None)
    left.axhline(gap, color=C_EXIT, lw=1.5)
    right.axvline(gap, color=C_EXIT, lw=1.5)
    left.axhline(cap / gap, color=C_CERT, lw=1.8, ls="--")
    right.axvline(cap / gap, color=C_CERT, lw=1.8, ls="--")
    for e, name in ((128, "a class"), (1280, "5 tokens")):
        left.axvline(e, color=C_GREY, lw=1, ls=":")
        left.text(e * 0.9, 4e-3, name, rotation=90, ha="right", va="bottom", fontsize=10, color="dimgray")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlim(1, 4096)
    left.set_ylim(3e-3, 20)
    left.set_xlabel(r"embedding dimension $E$")
    left.set_ylabel(r"distance / $\gamma$")
    left.set_title(r"noise at $\sigma = \gamma/8$", fontsize=10)

    bins = np.logspace(-2.5, 1.3, 150)
    for e, color, name in ((2, C_GREY, r"$E = 2$"), (128, C_CLEAN, r"$128$"), (1280, COLORS[4], r"$1280$")):
        norms = noise.sample((4000, e), gen).norm(dim=1).numpy() / gap
        counts, _, _ = right.hist(norms, bins=bins, histtype="stepfilled", alpha=0.45, color=color)
        right.text(float(np.median(norms)), counts.max() * 1.04, name, ha="center", va="bottom", fontsize=10)
    right.set_xscale("log")
    right.set_xlim(10 ** -2.5, 20)
    right.set_yticks([])
    right.set_xlabel(r"$\|\varepsilon\| / \gamma$")
    right.set_ylabel("draws")
    right.set_title(r"$\|\varepsilon\|$ concentrates at $\sigma\sqrt{E}$", fontsize=10)
    right.set_ylim(0, right.get_ylim()[1] * 1.15)

    handles, labels = left.get_legend_handles_labels()
    lines = [plt.Line2D([], [], color=C_EXIT, lw=1.5), plt.Line2D([], [], color=C_CERT, lw=1.8, ls="--")]
    fig.legend(handles + lines, labels + [r"class gap $\gamma$",
                                          r"largest certifiable radius ($n = 10^5$, $\alpha = 10^{-3}$)"],
               loc="lower center", ncol=2, fontsize=10, bbox_to_anchor=(0.5, -0.02), handlelength=3.0,
               columnspacing=1.2, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    return save_svg(fig, "sigma_sqrt_e.svg")


# ----------------------------------------------------------------------------- meaningful.md, projection
CODEBOOK = np.array([[0.0, 0.0], [1.0, 0.05], [0.45, 0.95], [-0.6, 0.85], [-1.1, -0.1], [-0.5, -1.0],
                     [0.65, -0.95], [1.7, 1.0], [-1.6, 1.1]])


def voronoi_projection() -> Path:
    """Voronoi cells of a 2-D codebook, the noise cloud at c = u_0 and at c + δ, the draws that leave the
    clean cell, and the concentration certificate of smoothgen.certify against the data-free bound."""
    book = torch.tensor(CODEBOOK, dtype=torch.float64)
    project = NearestEmbedding(book)
    gap = float((book[1:] - book[0]).norm(dim=1).min())
    sigma, alpha, n = gap / 6.0, 1e-3, 10_000
    direction = (book[1] - book[0]) / (book[1] - book[0]).norm()
    shift = 0.3 * gap * direction
    noise = GaussianNoise(sigma, (2,), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    draws = noise.sample((n, 2), gen)
    clean = book[0] + draws
    moved = book[0] + shift + noise.sample((n, 2), gen)
    stay = project.indices(clean) == 0
    stay_moved = project.indices(moved) == 0
    cert = certify.concentration_certificate(int(stay.sum()), n, float(shift.norm()), sigma, alpha)

    fig, (left, right, slot) = figure(3, gridspec_kw={"width_ratios": [1.3, 1, 0.72]})
    vor = Voronoi(CODEBOOK)
    cell = vor.regions[vor.point_region[0]]
    left.add_patch(Polygon(vor.vertices[cell], closed=True, color=C_CLEAN, alpha=0.12, lw=0))
    center = CODEBOOK.mean(axis=0)
    far = np.ptp(CODEBOOK, axis=0).max() * 10
    for (i, j), ridge in zip(vor.ridge_points, vor.ridge_vertices):
        ridge = np.asarray(ridge)
        if np.all(ridge >= 0):
            seg = vor.vertices[ridge]
        else:
            finite = vor.vertices[ridge[ridge >= 0][0]]
            tangent = CODEBOOK[j] - CODEBOOK[i]
            normal = np.array([-tangent[1], tangent[0]]) / np.linalg.norm(tangent)
            midpoint = CODEBOOK[[i, j]].mean(axis=0)
            normal *= np.sign(np.dot(midpoint - center, normal))
            seg = np.array([finite, finite + normal * far])
        left.plot(seg[:, 0], seg[:, 1], color=C_GREY, lw=1.2)
    left.plot(CODEBOOK[:, 0], CODEBOOK[:, 1], "o", color="black", ms=4)
    show = 250
    c_np, m_np = clean.numpy()[:show], moved.numpy()[:show]
    s_np, sm_np = stay.numpy()[:show], stay_moved.numpy()[:show]
    left.scatter(*c_np[s_np].T, s=6, color=C_CLEAN, alpha=0.6, lw=0, label=r"$c + \varepsilon$")
    left.scatter(*m_np[sm_np].T, s=6, color=C_SHIFT, alpha=0.6, lw=0, label=r"$c + \delta + \varepsilon$")
    left.scatter(*np.concatenate([c_np[~s_np], m_np[~sm_np]]).T, s=22, marker="x", color=C_EXIT, lw=1.2,
                 label="left the clean cell")
    left.add_patch(Circle(CODEBOOK[0], cert.identity_radius, fill=False, color=C_CERT, lw=2.0,
                          label=r"identity radius"))
    left.annotate("", xy=tuple((book[0] + shift).numpy()), xytext=(0.0, 0.0),
                  arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.3})
    left.text(-0.08, -0.1, r"$c$", ha="right", va="top", fontsize=12,
              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0})
    left.set_xlim(-1.35, 1.45)
    left.set_ylim(-1.3, 1.3)
    left.set_aspect("equal")
    left.set_xticks([])
    left.set_yticks([])

    # Right: the certificates against the radius, and the exit probabilities the draws show.
    ratios = np.linspace(0.0, 0.6, 121)
    right.plot(ratios, certify.tv_bound(ratios * gap, sigma), "--", color=C_GREY,
               label=r"data-free $\tau(r)$")
    right.plot(ratios, certify.concentration_tv(cert.p_lower, ratios * gap, sigma), color=C_CERT,
               label=r"$1 - \Phi(\Phi^{-1}(\underline{p}) - r/\sigma)$")
    probe = np.linspace(0.0, 0.55, 12)
    unit = noise.sample((n, 2), torch.Generator().manual_seed(1))
    exits = [1.0 - float((project.indices(book[0] + a * gap * direction + unit) == 0).double().mean())
             for a in probe]
    p_clean = float(stay.double().mean())
    right.plot(probe, [1.0 - min(p_clean, 1.0 - e) for e in exits], "o", color=C_SHIFT, ms=5,
               label=r"$1 - \min(p, p')$")
    right.axvline(cert.identity_radius / gap, color=C_CERT, lw=1.2, ls=":")
    right.axvline(0.5, color=C_EXIT, lw=1.2, ls=":")
    right.text(cert.identity_radius / gap, 1.0, r" $\sigma\Phi^{-1}(\underline{p})$", color=C_CERT, va="top",
               ha="right", fontsize=10)
    right.text(0.5, 0.5, r" $\gamma/2$", color=C_EXIT, va="center", ha="left", fontsize=10)
    right.set_xlabel(r"$r / \gamma$")
    right.set_ylabel(r"$\mathrm{TV}(P_c, P_{c+\delta})$")
    right.set_ylim(0, 1.02)
    right.set_xlim(0, 0.6)
    legend_column((left, right), slot)
    fig.tight_layout(w_pad=0.4)
    return save_svg(fig, "voronoi_projection.svg")


ALL: dict[str, Callable[[], Path]] = {f.__name__: f for f in (
    certificate_curves, tv_gaussians, maximal_coupling, np_worst_case, center_smoothing, sigma_sqrt_e,
    voronoi_projection)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(ALL)
    unknown = [name for name in names if name not in ALL]
    if unknown:
        sys.exit(f"unknown figure(s) {unknown}; choose from {list(ALL)}")
    for name in names:
        print(ALL[name]())
