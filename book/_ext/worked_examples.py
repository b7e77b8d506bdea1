"""Sphinx extension: the ``example`` role prints a closed-form value that SmoothGen computes at build time.

Usage in a chapter (MyST)::

    {example}`cohen_radius?p=0.98&sigma=0.25:.2f`          -> 0.51
    {example}`max_radius?n=100000&alpha=0.001:.4f`         -> 3.8115

``<name>?<key>=<value>&...[:<format>]`` calls the function registered under ``name`` in
:data:`EXAMPLES` with the given keyword arguments (numbers: integers, decimals, ``1e-3``) and formats
the result with the Python format spec after the last ``:`` (default ``.4g``). The worked examples
and exercise solutions of the theory chapters use it, so that every number they print is computed by
the library (``smoothgen.certify``, ``smoothgen.calibrate``) from the settings written in the role,
never typed. An unknown name, a missing, unknown or malformed argument, a value the library refuses,
or a result that is NaN or not a number is a build warning (an error with ``-W``), as in
``study_results.py``.

The registry (:func:`registry_table` lists it with each function's parameters):

* Cohen et al.: ``cohen_radius`` (closed form), ``clopper_pearson_lower``, ``cohen_certify`` (radius
  of CERTIFY from counts), ``max_radius`` (the radius when all ``n`` draws agree), ``samples_for_radius``
  (the fewest draws that can certify a radius), ``binomial_pvalue`` (PREDICT's test), ``tie_certify``
  (how often CERTIFY returns a class on an exact tie).
* Generators: ``tv_bound``, ``w1_bound``, ``w1_radius``, ``np_lower``, ``np_upper``, ``np_mc_lower``,
  ``np_mc_upper`` (from a hit count), ``concentration_tv``, ``concentration_gain`` (``τ`` over it),
  ``concentration_radius``, ``dkw_margin``, ``dkw_samples`` (the fewest draws whose DKW margin is at most
  ``tv_bound / factor``), ``center_min_samples`` (the smallest batch at which center smoothing's
  Δ-check can pass), ``sigma_eff`` (``smoothgen.calibrate.effective_sigma`` of a schedule).
* Front-end geometry: ``voronoi_exit`` (the union bound on leaving a Voronoi cell),
  ``simplex_exit_lower`` (a Bonferroni lower bound on it for a regular simplex), ``identity_draws``,
  ``identity_radius``.
* Standard normal helpers (SciPy): ``phi``, ``phi_inv``, ``variance_tv`` (total variation between
  ``N(0, I_d)`` and ``N(0, κ² I_d)``).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docutils import nodes
from scipy import special, stats
from sphinx.application import Sphinx
from sphinx.util import logging

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # as repo_on_path: the working tree's smoothgen
    sys.path.insert(0, str(REPO_ROOT))

from smoothgen import certify  # noqa: E402

LOGGER = logging.getLogger(__name__)
DEFAULT_FORMAT = ".4g"


class ExampleError(ValueError):
    """A reference that names no computable value."""


# ----------------------------------------------------------------------------------------------- registry
def cohen_radius(p: float, sigma: float = 1.0, pb: float | None = None) -> float:
    """Cohen's radius ``σ/2 (Φ⁻¹(p) − Φ⁻¹(pb))`` (``pb = 1 − p`` by default: ``σ Φ⁻¹(p)``)."""
    return certify.cohen_radius(p, sigma, pb)


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper–Pearson lower bound of ``k`` successes in ``n`` at level ``1 − α``."""
    return certify.clopper_pearson_lower(k, n, alpha)


def cohen_certify(k: int, n: int, alpha: float, sigma: float = 1.0) -> float:
    """CERTIFY's radius when ``k`` of ``n`` estimation draws return the selected class (``0`` = abstain)."""
    _check_count(k, n)
    return certify.cohen_certify([1, 0], [k, n - k], sigma, alpha).radius


def max_radius(n: int, alpha: float, sigma: float = 1.0) -> float:
    """The largest radius CERTIFY can return from ``n`` draws: ``σ Φ⁻¹(α^{1/n})`` (all ``n`` agree)."""
    return cohen_certify(n, n, alpha, sigma)


def samples_for_radius(radius: float, alpha: float, sigma: float = 1.0) -> int:
    """The fewest estimation draws ``n`` whose :func:`max_radius` exceeds ``radius``."""
    if not (math.isfinite(radius) and radius > 0):
        raise ExampleError(f"radius must be positive and finite, got {radius!r}")
    target = float(special.ndtr(radius / sigma))
    n = max(1, math.floor(math.log(alpha) / math.log(target)))  # α^{1/n} > Φ(R/σ) ⇔ n > ln α / ln Φ(R/σ)
    while max_radius(n, alpha, sigma) <= radius:
        n += 1
    while n > 1 and max_radius(n - 1, alpha, sigma) > radius:
        n -= 1
    return n


def binomial_pvalue(k: int, n: int) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` against ``1/2`` (PREDICT's test)."""
    return certify.binomial_test_half(k, n)


def tie_certify(n: int, alpha: float, shared: int = 0) -> float:
    """Probability that CERTIFY returns a class (does not abstain) on an exact two-class tie ``p₁ = p₂ = 1/2``
    with ``n`` estimation draws: ``P(Bin(n, 1/2) ≥ k*)``, ``k*`` the fewest hits whose Clopper–Pearson bound
    reaches 1/2; with ``shared=1``, the variant that selects the class on the same draws (twice that)."""
    import numpy as np

    _check_int(n, "n", 1)
    if shared not in (0, 1):
        raise ExampleError(f"shared must be 0 or 1, got {shared!r}")
    hits = np.arange(n + 1)
    reach = np.flatnonzero(np.asarray(certify.clopper_pearson_lower(hits, n, alpha)) >= 0.5)
    if reach.size == 0:
        return 0.0
    return (1 + shared) * float(stats.binom.sf(reach[0] - 1, n, 0.5))


def tv_bound(r: float, sigma: float = 1.0) -> float:
    """``τ(r) = 2Φ(r / 2σ) − 1``."""
    return certify.tv_bound(r, sigma)


def w1_bound(r: float, sigma: float = 1.0, D: float = 1.0) -> float:  # noqa: N803 (the book's D)
    """Data-free ``W₁ ≤ D τ(r)``."""
    return certify.wasserstein_bound(r, sigma, D)


def w1_radius(eps: float, sigma: float = 1.0, D: float = 1.0) -> float:  # noqa: N803
    """The largest ``r`` with ``D τ(r) ≤ ε``: ``2σ Φ⁻¹((1 + ε/D)/2)`` (with ``D = 1``: TV ``≤ ε``)."""
    return certify.certified_radius(eps, sigma, D)


def np_lower(p: float, r: float, sigma: float = 1.0) -> float:
    """Neyman–Pearson lower end ``Φ(Φ⁻¹(p) − r/σ)``."""
    return certify.np_bounds(p, r, sigma)[0]


def np_upper(p: float, r: float, sigma: float = 1.0) -> float:
    """Neyman–Pearson upper end ``Φ(Φ⁻¹(p) + r/σ)``."""
    return certify.np_bounds(p, r, sigma)[1]


def np_mc_lower(k: int, n: int, r: float, alpha: float, sigma: float = 1.0) -> float:
    """Monte-Carlo Neyman–Pearson lower end when ``k`` of ``n`` binary draws are hits (``np_bounds_mc``)."""
    return _np_mc(k, n, r, alpha, sigma).lower


def np_mc_upper(k: int, n: int, r: float, alpha: float, sigma: float = 1.0) -> float:
    """Monte-Carlo Neyman–Pearson upper end when ``k`` of ``n`` binary draws are hits (``np_bounds_mc``)."""
    return _np_mc(k, n, r, alpha, sigma).upper


def _np_mc(k: int, n: int, r: float, alpha: float, sigma: float) -> certify.MonteCarloBounds:
    import numpy as np

    _check_count(k, n)
    return certify.np_bounds_mc(np.arange(n) < k, r, sigma, alpha)


def concentration_tv(p: float, r: float, sigma: float = 1.0) -> float:
    """Concentration bound ``1 − Φ(Φ⁻¹(p̲) − r/σ)``."""
    return certify.concentration_tv(p, r, sigma)


def concentration_gain(p: float, r: float, sigma: float = 1.0) -> float:
    """How many times tighter the concentration bound is than the data-free one: ``τ(r) / concentration_tv``."""
    return float(certify.tv_bound(r, sigma)) / float(certify.concentration_tv(p, r, sigma))


def concentration_radius(k: int, n: int, eps: float, alpha: float, sigma: float = 1.0,
                         D: float = 1.0) -> float:  # noqa: N803
    """The largest ``r`` whose concentration ``W₁`` bound is ``≤ ε`` when ``k`` of ``n`` draws fall in ``A``."""
    return certify.concentration_certified_radius(k, n, eps, sigma, alpha, D)


def dkw_margin(n: int, alpha: float) -> float:
    """One-sided DKW margin ``η = sqrt(ln(1/α) / 2n)``."""
    return certify.dkw_margin(n, alpha)


def dkw_samples(r: float, alpha: float, sigma: float = 1.0, factor: float = 1.0) -> int:
    """The fewest draws ``n`` with ``dkw_margin(n, α) ≤ τ(r) / factor``."""
    if not (math.isfinite(factor) and factor > 0):
        raise ExampleError(f"factor must be positive and finite, got {factor!r}")
    eta = float(certify.tv_bound(r, sigma)) / factor
    if eta <= 0:
        raise ExampleError("the target margin is 0: no sample size reaches it")
    n = max(1, math.ceil(math.log(1.0 / min(alpha, 0.5)) / (2.0 * eta**2)))
    while certify.dkw_margin(n, alpha) > eta:
        n += 1
    while n > 1 and certify.dkw_margin(n - 1, alpha) <= eta:
        n -= 1
    return n


def center_min_samples(delta: float, alpha_1: float = 0.005) -> int:
    """The fewest samples per batch at which center smoothing's Δ-check can pass: ``⌈ln(2/α₁) / (2Δ²)⌉``."""
    return certify.center_min_samples(delta, alpha_1)


def sigma_eff(sigma: float, steps: int = 1, first: float | None = None) -> float:
    """``σ_eff`` of ``steps`` fresh noisy copies: the first at ``first`` (default ``sigma``), the rest at ``sigma``."""
    from smoothgen import calibrate  # imports torch: only when a page asks for it

    _check_int(steps, "steps", 1)
    return calibrate.effective_sigma([sigma if first is None else first] + [sigma] * (steps - 1))


def voronoi_exit(gap: float, sigma: float = 1.0, neighbours: int = 1) -> float:
    """Union bound ``neighbours · Φ(−gap / 2σ)`` on leaving the cell of ``u_k`` (exact for one neighbour)."""
    _check_int(neighbours, "neighbours", 1)
    if not (gap >= 0 and sigma > 0):
        raise ExampleError(f"need gap >= 0 and sigma > 0, got {gap!r}, {sigma!r}")
    return neighbours * float(special.ndtr(-gap / (2.0 * sigma)))


def simplex_exit_lower(gap: float, sigma: float = 1.0, neighbours: int = 1) -> float:
    """Bonferroni lower bound ``kΦ(−h) − C(k, 2)Φ(−2h/√3)``, ``h = gap/2σ``, on leaving the cell of a
    vertex of a regular simplex with ``k`` neighbours at distance ``gap`` (pairwise correlation 1/2)."""
    _check_int(neighbours, "neighbours", 1)
    h = gap / (2.0 * sigma)
    pairs = neighbours * (neighbours - 1) / 2
    return neighbours * float(special.ndtr(-h)) - pairs * float(special.ndtr(-2.0 * h / math.sqrt(3.0)))


def identity_draws(gap: float, radius: float, alpha: float, sigma: float = 1.0, neighbours: int = 1) -> int:
    """Typical number of draws to certify the identity up to ``radius``: the fewest ``n`` whose Clopper–Pearson
    bound at the expected number of draws that stay in the cell (rounded; exit probability :func:`voronoi_exit`)
    exceeds ``Φ(radius/σ)``."""
    exit_p = voronoi_exit(gap, sigma, neighbours)
    target = float(special.ndtr(radius / sigma))
    if 1.0 - exit_p <= target:
        raise ExampleError("the identity cannot be certified at this radius: the cell holds too little mass")

    def certifies(n: int) -> bool:
        return float(certify.clopper_pearson_lower(n - round(n * exit_p), n, alpha)) > target

    hi = 1
    while not certifies(hi):
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:  # bisection: the bound at the expected count grows with n up to rounding
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if certifies(mid) else (mid, hi)
    return hi


def identity_radius(gap: float, sigma: float, n: int, alpha: float, neighbours: int = 1) -> float:
    """Typical certified identity radius ``σ Φ⁻¹(p̲)`` of a projection front-end from ``n`` draws, ``p̲`` the
    Clopper–Pearson bound at the expected number of draws that stay in the cell, rounded
    (``0`` when ``p̲ < 1/2``)."""
    _check_int(n, "n", 1)
    exit_p = voronoi_exit(gap, sigma, neighbours)
    stays = n - min(n, round(n * exit_p))
    return certify.concentration_certificate(stays, n, 0.0, sigma, alpha).identity_radius


def phi(x: float) -> float:
    """Standard normal CDF ``Φ(x)``."""
    return float(special.ndtr(x))


def phi_inv(p: float) -> float:
    """Standard normal quantile ``Φ⁻¹(p)``."""
    if not 0.0 <= p <= 1.0:
        raise ExampleError(f"p must lie in [0, 1], got {p!r}")
    return float(special.ndtri(p))


def variance_tv(d: int, kappa: float) -> float:
    """``TV(N(0, I_d), N(0, κ² I_d)) = F_d(u*) − F_d(u*/κ²)``, ``u* = 2d ln κ / (1 − κ⁻²)``
    (``F_d``: the χ²_d CDF)."""
    _check_int(d, "d", 1)
    if not (math.isfinite(kappa) and kappa > 1):
        raise ExampleError(f"kappa must be > 1, got {kappa!r}")
    u = 2.0 * d * math.log(kappa) / (1.0 - kappa**-2)
    return float(stats.chi2.cdf(u, d) - stats.chi2.cdf(u / kappa**2, d))


EXAMPLES: dict[str, Callable[..., Any]] = {f.__name__: f for f in (
    cohen_radius, clopper_pearson_lower, cohen_certify, max_radius, samples_for_radius, binomial_pvalue, tie_certify,
    tv_bound, w1_bound, w1_radius, np_lower, np_upper, np_mc_lower, np_mc_upper, concentration_tv,
    concentration_gain, concentration_radius, dkw_margin,
    dkw_samples, center_min_samples, sigma_eff, voronoi_exit, simplex_exit_lower, identity_draws, identity_radius, phi, phi_inv,
    variance_tv)}
"""The functions the ``example`` role may call, by name."""


def _check_int(value: Any, name: str, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ExampleError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_count(k: Any, n: Any) -> None:
    _check_int(n, "n", 1)
    _check_int(k, "k", 0)
    if k > n:
        raise ExampleError(f"k must be at most n, got k={k}, n={n}")


def registry_table() -> list[tuple[str, str, str]]:
    """``(name, parameters, summary)`` of every registered function."""
    return [(name, str(inspect.signature(fn)), (fn.__doc__ or "").strip().splitlines()[0])
            for name, fn in EXAMPLES.items()]


# ----------------------------------------------------------------------------------------------- the role
def _number(text: str, key: str, ref: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ExampleError(f"{ref!r}: {key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ExampleError(f"{ref!r}: {key}={text!r} is not finite")
    return value


def parse(text: str) -> tuple[str, dict[str, int | float], str]:
    """Split ``name?key=value&...[:format]`` into the name, the keyword arguments and the format spec."""
    head, sep, spec = text.strip().rpartition(":")
    if not sep:
        head, spec = text.strip(), ""
    name, _, query = head.partition("?")
    name = name.strip()
    if not name:
        raise ExampleError(f"{text!r}: expected <name>?<key>=<value>&...[:<format>]")
    kwargs: dict[str, int | float] = {}
    for item in filter(None, (part.strip() for part in query.split("&"))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ExampleError(f"{text!r}: {item!r} is not <key>=<value>")
        if key in kwargs:
            raise ExampleError(f"{text!r}: {key!r} is given twice")
        kwargs[key] = _number(value.strip(), key, text)
    return name, kwargs, spec.strip() or DEFAULT_FORMAT


def compute(text: str) -> int | float:
    """The value that ``text`` names (unformatted)."""
    name, kwargs, _ = parse(text)
    if name not in EXAMPLES:
        raise ExampleError(f"{text!r}: unknown example {name!r}; known: {', '.join(sorted(EXAMPLES))}")
    fn = EXAMPLES[name]
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as err:
        raise ExampleError(f"{text!r}: {err} (signature {name}{inspect.signature(fn)})") from None
    try:
        value = fn(**kwargs)
    except ExampleError:
        raise
    except (ValueError, TypeError, ZeroDivisionError, OverflowError) as err:
        raise ExampleError(f"{text!r}: {name} refused the arguments: {err}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExampleError(f"{text!r}: {name} returned {value!r}, not a number")
    if value != value:
        raise ExampleError(f"{text!r}: the value is NaN")
    return value


def lookup(text: str) -> str:
    """The formatted value that ``text`` names."""
    spec = parse(text)[2]
    value = compute(text)
    try:
        return format(value, spec)
    except (ValueError, TypeError) as err:
        raise ExampleError(f"{text!r}: bad format {spec!r}: {err}") from None


def example_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
                 content: Any = None) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    """Docutils role: a text node holding the computed value."""
    env = inliner.document.settings.env
    try:
        return [nodes.inline(rawtext, lookup(text), classes=["worked-example"])], []
    except ExampleError as err:
        LOGGER.warning(str(err), location=(env.docname, lineno))
        return [nodes.problematic(rawtext, rawtext)], []


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``example`` role."""
    app.add_role("example", example_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
