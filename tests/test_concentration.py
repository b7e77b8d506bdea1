"""Tests for the concentration certificates of smoothgen.certify.

:func:`certify.concentration_tv`, :func:`certify.concentration_certificate` and
:func:`certify.concentration_certified_radius` bound TV(P_c, P_{c+δ}) by
``1 − Φ(Φ⁻¹(p̲) − r/σ)`` when the base generator's output law is one fixed ``Q*`` on a set ``A``
of conditions with ``P(c + ε ∈ A) >= p̲``. Truths come from toys where ``A`` is a half-space or a
box (Voronoi cell), so ``P(A)`` and the exact TV are known in closed form or by 1-D quadrature;
they are computed here, not by the code under test. Coverage tests draw all seeds at once and
allow ``alpha`` plus three binomial standard deviations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from smoothgen import certify

ALPHA = 0.05


def assert_rate_at_most(failures: int, trials: int, alpha: float) -> None:
    """Observed failure rate <= alpha + 3 binomial standard deviations."""
    tolerance = 3.0 * math.sqrt(alpha * (1.0 - alpha) / trials)
    message = f"{failures}/{trials} failures, allowed rate {alpha} + {tolerance:.3g}"
    assert failures / trials <= alpha + tolerance, message


# --------------------------------------------------------------------------------------------
# Exact toys: A = {x : x₁ <= a}
# --------------------------------------------------------------------------------------------


def exact_tv_half_space(a: float, c1: float, shift: float, sigma: float) -> tuple[float, float, float]:
    r"""Exact TV(P_c, P_{c+shift·e₁}) for ``G(x) = y*`` on ``A = {x₁ <= a}`` and ``G(x) = x`` off ``A``.

    The output space is :math:`\mathbb R^d \cup \{y^*\}`. Both smoothed laws put mass ``p``, ``p'``
    on the atom ``y*`` and have density ``φ_c`` / ``φ_{c+δ}`` on ``{x₁ > a}``; coordinates 2..d
    have the same law under both, so the TV is the 1-D quantity
    ``(|p − p'| + ∫_a^∞ |φ_c − φ_{c+δ}|) / 2`` (by quadrature). Returns ``(tv, p, p')``.
    """
    p = stats.norm.cdf((a - c1) / sigma)
    p_shift = stats.norm.cdf((a - c1 - shift) / sigma)
    cross = c1 + shift / 2.0  # where the two densities cross
    upper = max(a, c1, c1 + shift) + 14.0 * sigma
    points = [cross] if a < cross < upper else None
    off_a, _ = integrate.quad(
        lambda x: abs(stats.norm.pdf(x, c1, sigma) - stats.norm.pdf(x, c1 + shift, sigma)),
        a,
        upper,
        points=points,
        epsabs=1e-13,
        epsrel=1e-12,
        limit=200,
    )
    return 0.5 * (abs(p - p_shift) + off_a), p, p_shift


# a <= 1.6 keeps 1 − p >= 1e-8: the bound's sensitivity to the rounding of p near 1 grows like
# exp(z r/σ) (z = Φ⁻¹(p)), so much deeper sets would test float rounding, not the mathematics.
@pytest.mark.parametrize("a", [-1.0, 0.0, 0.4, 1.0, 1.6])
@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_half_space_exact_tv_is_below_concentration_tv(a: float, sigma: float) -> None:
    c1 = 0.2  # condition c = (c1, anything): only the first coordinate matters
    for radius in (0.0, 0.05, 0.3, 1.0, 2.5):
        for sign in (1.0, -1.0):
            tv, p, p_shift = exact_tv_half_space(a, c1, sign * radius, sigma)
            # Independent closed form of the same TV: standardised b = (a−c1)/σ, s = shift/σ.
            b, s = (a - c1) / sigma, sign * radius / sigma
            closed = abs(p - p_shift) if b >= s / 2 else 2 * stats.norm.cdf(abs(s) / 2) - 1
            assert tv == pytest.approx(closed, abs=1e-9)
            bound = certify.concentration_tv(p, radius, sigma)
            assert tv <= bound * (1 + 1e-10) + 1e-15, (a, sigma, radius, sign, tv, bound)
            # The first step of the proof, TV <= 1 − min(p, p'), with the exact p'.
            assert tv <= 1 - min(p, p_shift) + 1e-12
            # Moving away from A (sign +1) the half-space attains the Neyman–Pearson bound on p'.
            if sign > 0:
                assert bound == pytest.approx(1 - p_shift, rel=1e-9, abs=1e-15)
            # A probability, and 1 − p at r = 0.
            assert 0.0 <= bound <= 1.0
            if radius == 0.0:
                assert bound == pytest.approx(1 - p, abs=1e-15)


@pytest.mark.parametrize(
    "p, radius_over_sigma, min_ratio, free_factor",
    [(0.9999, 1.0, 0.96, 100), (1 - 1e-6, 2.0, 0.999, 200), (0.99, 0.5, 0.55, 8)],
)
def test_half_space_nearly_attains_concentration_tv(
    p: float, radius_over_sigma: float, min_ratio: float, free_factor: float
) -> None:
    # With A deep in the bulk (p near 1) and δ pointing out of A, the crossing point of the two
    # noise densities lies inside A, so the exact TV is p − p' and the bound is 1 − p':
    # ratio 1 − (1 − p)/(1 − p'), which tends to 1 as (1 − p)/(1 − p') → 0.
    sigma, c1 = 0.7, -0.4
    a = c1 + sigma * stats.norm.ppf(p)
    radius = radius_over_sigma * sigma
    tv, p_exact, p_shift = exact_tv_half_space(a, c1, radius, sigma)
    assert p_exact == pytest.approx(p, rel=1e-12)
    assert tv == pytest.approx(p_exact - p_shift, rel=1e-8)
    bound = certify.concentration_tv(p, radius, sigma)
    assert tv <= bound
    expected_ratio = 1 - (1 - p) / (1 - stats.norm.cdf(stats.norm.ppf(p) - radius_over_sigma))
    assert tv / bound == pytest.approx(expected_ratio, rel=1e-6)
    assert tv / bound >= min_ratio
    # ... while the data-free bound is far looser there.
    assert certify.tv_bound(radius, sigma) > free_factor * tv


def test_half_space_disjoint_outputs_any_direction() -> None:
    # G(x) = y* on A = {x₁ <= a}, G(x) = y₀ ≠ y* off A, in R^8: TV = |p − p'| exactly for every δ,
    # with p' = Φ((a − c₁ − δ₁)/σ). The worst δ of norm r is ±r e₁; the bound must cover all.
    rng = np.random.default_rng(7)
    d, sigma = 8, 0.5
    c = rng.normal(size=d)
    for a in (c[0] - 0.3, c[0] + 0.2, c[0] + 1.5):
        p = stats.norm.cdf((a - c[0]) / sigma)
        for radius in (0.1, 0.5, 1.5):
            directions = rng.normal(size=(500, d))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            lengths = radius * rng.random(size=(500, 1)) ** (1 / d)
            e1 = np.eye(d)[0]
            deltas = np.concatenate([directions * lengths, [radius * e1, -radius * e1]])
            p_shift = stats.norm.cdf((a - c[0] - deltas[:, 0]) / sigma)
            tv = np.abs(p - p_shift)
            bound = certify.concentration_tv(p, radius, sigma)
            assert tv.max() <= bound + 1e-14
            # δ = +r e₁ gives TV = p − Φ(Φ⁻¹(p) − r/σ) = bound − (1 − p): exact up to 1 − p.
            assert tv[-2] == pytest.approx(bound - (1 - p), abs=1e-13)


# --------------------------------------------------------------------------------------------
# Projection toy: nearest-centre quantiser in R^8 with K = 5 centres
# --------------------------------------------------------------------------------------------


def voronoi_toy(seed: int = 11, d: int = 8, half_width: float = 2.25) -> tuple[np.ndarray, np.ndarray]:
    """Centres μ₀ + Q(0, ±2b e₁, ±2b e₂) for a random rotation Q: the cell of μ₀ is the box
    ``{|⟨x − μ₀, q₁⟩| < b, |⟨x − μ₀, q₂⟩| < b}``, so ``P(h(μ₀ + ε) = 0) = (2Φ(b/σ) − 1)²`` exactly."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    base = np.zeros((5, d))
    base[1, 0], base[2, 0], base[3, 1], base[4, 1] = 2 * half_width, -2 * half_width, 2 * half_width, -2 * half_width
    origin = rng.normal(size=d)
    return origin + base @ rotation.T, rotation


def nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """h(x) = argmin_k ‖x − μ_k‖ over the last axis of ``points``."""
    sq = (points**2).sum(-1)[..., None] - 2 * points @ centres.T + (centres**2).sum(-1)
    return np.argmin(sq, axis=-1)


def test_projection_toy_coverage_with_real_draws() -> None:
    d, half_width, sigma, radius = 8, 2.25, 1.0, 1.0
    seeds, n = 1000, 400
    centres, _ = voronoi_toy(d=d, half_width=half_width)
    p_true = (2 * stats.norm.cdf(half_width / sigma) - 1) ** 2
    c = centres[0]  # condition at a centre; A = h⁻¹(h(c)) is fixed before sampling
    rng = np.random.default_rng(12)
    noisy = c + sigma * rng.normal(size=(seeds, n, d))
    in_a = nearest_centre(noisy, centres) == 0
    # Sanity check of the exact P(A) on the pooled draws (4·10⁵ draws, 5 standard errors).
    pooled = in_a.mean()
    assert abs(pooled - p_true) < 5 * math.sqrt(p_true * (1 - p_true) / in_a.size)
    counts = in_a.sum(axis=1)
    certs = [certify.concentration_certificate(k, n, radius, sigma, ALPHA) for k in counts]
    p_lower = np.array([cert.p_lower for cert in certs])
    tv = np.array([cert.tv for cert in certs])
    tv_true_p = certify.concentration_tv(p_true, radius, sigma)  # the bound with the true P(A)
    failures = p_lower > p_true
    # The certificate fails exactly when its p̲ overshoots the true mass (tv is decreasing in p̲).
    np.testing.assert_array_equal(tv < tv_true_p, failures)
    assert_rate_at_most(int(failures.sum()), seeds, ALPHA)
    # Not trivially valid: p̲ sits about 1.6 standard errors below p, not far below it.
    se = math.sqrt(p_true * (1 - p_true) / n)
    assert 0.5 * se < p_true - p_lower.mean() < 2.5 * se
    assert all(cert.count == k and cert.n == n for cert, k in zip(certs, counts))


@pytest.mark.parametrize("n, p_true", [(50, 0.9), (1000, 0.9951), (10_000, 0.99)])
def test_concentration_certificate_coverage_binomial(n: int, p_true: float) -> None:
    # count ~ Bin(n, P(A)) is exactly the law of the number of noisy conditions that land in A.
    seeds, sigma, radius, diameter = 2000, 0.5, 0.25, 3.0
    rng = np.random.default_rng(n)
    counts = rng.binomial(n, p_true, size=seeds)
    certs = [certify.concentration_certificate(k, n, radius, sigma, ALPHA, diameter) for k in counts]
    truth = certify.concentration_tv(p_true, radius, sigma)
    failures = sum(cert.tv < truth or cert.w1 < diameter * truth for cert in certs)
    assert_rate_at_most(failures, seeds, ALPHA)
    radius_true = sigma * stats.norm.ppf(p_true)
    assert_rate_at_most(sum(cert.identity_radius > radius_true for cert in certs), seeds, ALPHA)


def test_projection_toy_exact_tv_of_cell_indicator_generator() -> None:
    # G(x) = 1[h(x) = h(c)] (Q* = δ₁, off A δ₀): TV(P_c, P_{c+δ}) = |p − p'|, with δ = t q₁ moving
    # the box: p' = (Φ((b − t)/σ) − Φ((−b − t)/σ)) (2Φ(b/σ) − 1). Checked against MC and the bound.
    d, half_width, sigma = 8, 1.5, 0.8
    centres, rotation = voronoi_toy(d=d, half_width=half_width)
    c = centres[0]
    side = 2 * stats.norm.cdf(half_width / sigma) - 1
    p = side**2
    rng = np.random.default_rng(13)
    for radius in (0.2, 0.8, 2.0):
        t = radius
        p_shift = (stats.norm.cdf((half_width - t) / sigma) - stats.norm.cdf((-half_width - t) / sigma)) * side
        noisy = c + t * rotation[:, 0] + sigma * rng.normal(size=(200_000, d))
        mc = np.mean(nearest_centre(noisy, centres) == 0)
        assert mc == pytest.approx(p_shift, abs=5 * math.sqrt(p_shift * (1 - p_shift) / noisy.shape[0]))
        assert abs(p - p_shift) <= certify.concentration_tv(p, radius, sigma)


# --------------------------------------------------------------------------------------------
# Closed forms and the comparison with the data-free bound
# --------------------------------------------------------------------------------------------


def test_concentration_tv_closed_form_and_comparison_with_tv_bound() -> None:
    sigma = 0.5
    tight = certify.concentration_tv(0.9999, sigma, sigma)
    assert tight == pytest.approx(1 - stats.norm.cdf(stats.norm.ppf(0.9999) - 1.0), rel=1e-12)
    assert round(tight, 4) == 0.0033
    loose = certify.tv_bound(sigma, sigma)
    assert round(loose, 2) == 0.38
    ratio = loose / tight
    assert 80 < ratio < 200
    assert ratio == pytest.approx(116.97, abs=0.01)
    # r = 0 gives 1 − p̲; p̲ = 1 gives 0; p̲ = 0 gives 1; broadcasting p̲ × r.
    p_grid = np.array([0.0, 0.3, 0.5, 0.9, 0.999, 1.0])
    np.testing.assert_allclose(certify.concentration_tv(p_grid, 0.0, sigma), 1 - p_grid, atol=1e-15)
    assert certify.concentration_tv(1.0, 3.0, sigma) == 0.0
    assert certify.concentration_tv(0.0, 3.0, sigma) == 1.0
    radii = np.linspace(0.0, 3.0, 61)
    table = certify.concentration_tv(p_grid[:, None], radii[None, :], sigma)
    assert table.shape == (p_grid.size, radii.size)
    expected = 1 - stats.norm.cdf(stats.norm.ppf(p_grid[:, None]) - radii[None, :] / sigma)
    np.testing.assert_allclose(table, expected, rtol=1e-12, atol=1e-15)
    # Non-decreasing in r, strictly for 0 < p̲ < 1; non-increasing in p̲.
    assert np.all(np.diff(table, axis=1) >= 0)
    assert np.all(np.diff(table[1:-1], axis=1) > 0)
    assert np.all(np.diff(table, axis=0) <= 0)
    # Only depends on r/σ.
    same = certify.concentration_tv(0.97, 2.0, 1.0)
    assert certify.concentration_tv(0.97, 0.6, 0.3) == pytest.approx(same, rel=1e-14)


@pytest.mark.parametrize("count, n", [(0, 10), (3, 10), (900, 1000), (1000, 1000), (99_990, 100_000)])
def test_concentration_certificate_fields(count: int, n: int) -> None:
    sigma, alpha, diameter = 0.4, 0.01, 2.5
    radii = np.array([0.0, 0.1, 0.4, 1.2])
    cert = certify.concentration_certificate(count, n, radii, sigma, alpha, diameter)
    expected_p = stats.beta.ppf(alpha, count, n - count + 1) if count > 0 else 0.0
    assert cert.p_lower == pytest.approx(expected_p, rel=1e-10, abs=1e-300)
    if count == n:
        assert cert.p_lower == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert (cert.count, cert.n) == (count, n)
    expected_tv = 1 - stats.norm.cdf(stats.norm.ppf(expected_p) - radii / sigma)
    np.testing.assert_allclose(cert.tv, expected_tv, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(cert.w1, diameter * np.asarray(cert.tv), rtol=1e-15)
    assert cert.tv[0] == pytest.approx(1 - cert.p_lower, abs=1e-15)
    tv, w1 = cert  # unpacks as (tv, w1)
    assert tv is cert.tv and w1 is cert.w1
    if cert.p_lower > 0.5:
        assert cert.identity_radius == pytest.approx(sigma * stats.norm.ppf(cert.p_lower), rel=1e-12)
        assert cert.identity_radius > 0
        # At the identity radius the NP lower bound on P(c + δ + ε ∈ A) is exactly 1/2.
        p_at = stats.norm.cdf(stats.norm.ppf(cert.p_lower) - cert.identity_radius / sigma)
        assert p_at == pytest.approx(0.5, abs=1e-12)
    else:
        assert cert.identity_radius == 0.0
    scalar = certify.concentration_certificate(count, n, 0.4, sigma, alpha, diameter)
    assert isinstance(scalar.tv, float) and isinstance(scalar.w1, float)
    assert scalar.tv == pytest.approx(cert.tv[2], rel=1e-15)


def test_identity_radius_threshold_at_one_half() -> None:
    # p̲ just below and just above 1/2 (n = 1000, α = 0.05): radius 0 and a small positive radius.
    below = certify.concentration_certificate(520, 1000, 0.1, 1.0, ALPHA)
    above = certify.concentration_certificate(560, 1000, 0.1, 1.0, ALPHA)
    assert below.p_lower < 0.5 < above.p_lower
    assert below.identity_radius == 0.0
    assert above.identity_radius == pytest.approx(stats.norm.ppf(above.p_lower), rel=1e-12)
    assert 0 < above.identity_radius < 0.1


@pytest.mark.parametrize("diameter", [1.0, 0.3, 4.0])
def test_concentration_certified_radius_inverts_w1_bound(diameter: float) -> None:
    sigma, alpha = 0.6, 0.01
    for count, n in [(995, 1000), (9_999, 10_000), (700, 1000), (10, 10)]:
        p_lower = float(certify.clopper_pearson_lower(count, n, alpha))
        for frac in (0.0, 1e-4, 0.003, 0.05, 0.2, 0.5, 0.999):
            eps = frac * diameter
            r = certify.concentration_certified_radius(count, n, eps, sigma, alpha, diameter)
            w1_at_zero = certify.concentration_certificate(count, n, 0.0, sigma, alpha, diameter).w1
            assert w1_at_zero == pytest.approx(diameter * (1 - p_lower), rel=1e-12)
            if w1_at_zero > eps:
                assert r == 0.0  # even r = 0 fails
                continue
            assert r >= 0.0
            w1 = certify.concentration_certificate(count, n, r, sigma, alpha, diameter).w1
            if r > 0:
                assert w1 == pytest.approx(eps, abs=1e-9)
                # Largest such r: a little further out the bound exceeds ε.
                further = r * (1 + 1e-6) + 1e-9
                assert certify.concentration_certificate(count, n, further, sigma, alpha, diameter).w1 > eps
            else:
                assert w1 <= eps + 1e-12
            closed = sigma * (stats.norm.ppf(p_lower) - stats.norm.ppf(1 - eps / diameter))
            assert r == pytest.approx(max(closed, 0.0), rel=1e-9, abs=1e-12)
        assert certify.concentration_certified_radius(count, n, diameter, sigma, alpha, diameter) == math.inf
        assert certify.concentration_certified_radius(count, n, 2 * diameter, sigma, alpha, diameter) == math.inf
    # Positive cases exist in the loop above (the test would be vacuous otherwise).
    assert certify.concentration_certified_radius(9_999, 10_000, 0.05 * diameter, sigma, alpha, diameter) > 0.5
    # count = 0: p̲ = 0, nothing below D is certifiable.
    assert certify.concentration_certified_radius(0, 100, 0.999 * diameter, sigma, alpha, diameter) == 0.0
    # Radius grows with ε and with the count.
    eps_grid = np.linspace(0.01, 0.9, 30) * diameter
    radii = [certify.concentration_certified_radius(990, 1000, e, sigma, alpha, diameter) for e in eps_grid]
    assert np.all(np.diff(radii) >= 0) and radii[-1] > radii[0]
    by_count = [
        certify.concentration_certified_radius(k, 1000, 0.1 * diameter, sigma, alpha, diameter)
        for k in (950, 980, 995, 1000)
    ]
    assert np.all(np.diff(by_count) > 0)


def test_certified_radius_beats_data_free_radius_when_concentrated() -> None:
    # At p̲ ≈ 0.9998 (99 990 of 100 000, α = 0.05) and ε = 0.05 the concentration radius is more
    # than ten times the data-free one (about 1.94 against 0.125).
    sigma, diameter, eps = 1.0, 1.0, 0.05
    conc = certify.concentration_certified_radius(99_990, 100_000, eps, sigma, ALPHA, diameter)
    free = certify.certified_radius(eps, sigma, diameter)
    assert free == pytest.approx(2 * stats.norm.ppf(0.525), rel=1e-12)
    assert conc > 10 * free


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

BAD_CALLS = {
    "tv sigma zero": (lambda: certify.concentration_tv(0.9, 0.1, 0.0), "sigma"),
    "tv sigma negative": (lambda: certify.concentration_tv(0.9, 0.1, -1.0), "sigma"),
    "tv p nan": (lambda: certify.concentration_tv(float("nan"), 0.1, 1.0), "NaN"),
    "tv p above one": (lambda: certify.concentration_tv(1.5, 0.1, 1.0), r"\[0, 1\]"),
    "tv p negative": (lambda: certify.concentration_tv(-0.1, 0.1, 1.0), r"\[0, 1\]"),
    "tv radius negative": (lambda: certify.concentration_tv(0.9, -0.1, 1.0), "radius"),
    "tv radius nan": (lambda: certify.concentration_tv(0.9, float("nan"), 1.0), "radius"),
    "cert sigma zero": (lambda: certify.concentration_certificate(9, 10, 0.1, 0.0, 0.05), "sigma"),
    "cert sigma negative": (lambda: certify.concentration_certificate(9, 10, 0.1, -0.5, 0.05), "sigma"),
    "cert alpha zero": (lambda: certify.concentration_certificate(9, 10, 0.1, 1.0, 0.0), "alpha"),
    "cert alpha one": (lambda: certify.concentration_certificate(9, 10, 0.1, 1.0, 1.0), "alpha"),
    "cert alpha above one": (lambda: certify.concentration_certificate(9, 10, 0.1, 1.0, 1.5), "alpha"),
    "cert count above n": (lambda: certify.concentration_certificate(11, 10, 0.1, 1.0, 0.05), "count <= n"),
    "cert count negative": (lambda: certify.concentration_certificate(-1, 10, 0.1, 1.0, 0.05), "count <= n"),
    "cert n zero": (lambda: certify.concentration_certificate(0, 0, 0.1, 1.0, 0.05), "n >= 1"),
    "cert count fractional": (lambda: certify.concentration_certificate(2.5, 10, 0.1, 1.0, 0.05), "integers"),
    "cert n fractional": (lambda: certify.concentration_certificate(2, 10.5, 0.1, 1.0, 0.05), "integers"),
    "cert count array": (lambda: certify.concentration_certificate([2, 3], 10, 0.1, 1.0, 0.05), "scalar"),
    "cert radius negative": (lambda: certify.concentration_certificate(9, 10, -0.1, 1.0, 0.05), "radius"),
    "cert diameter zero": (lambda: certify.concentration_certificate(9, 10, 0.1, 1.0, 0.05, 0.0), "diameter"),
    "cert diameter negative": (lambda: certify.concentration_certificate(9, 10, 0.1, 1.0, 0.05, -2.0), "diameter"),
    "cert diameter inf": (lambda: certify.concentration_certificate(9, 10, 0.1, 1.0, 0.05, math.inf), "diameter"),
    "radius sigma zero": (lambda: certify.concentration_certified_radius(9, 10, 0.1, 0.0, 0.05), "sigma"),
    "radius alpha zero": (lambda: certify.concentration_certified_radius(9, 10, 0.1, 1.0, 0.0), "alpha"),
    "radius count above n": (lambda: certify.concentration_certified_radius(11, 10, 0.1, 1.0, 0.05), "count <= n"),
    "radius n zero": (lambda: certify.concentration_certified_radius(0, 0, 0.1, 1.0, 0.05), "n >= 1"),
    "radius count fractional": (lambda: certify.concentration_certified_radius(9.5, 10, 0.1, 1.0, 0.05), "integers"),
    "radius epsilon negative": (lambda: certify.concentration_certified_radius(9, 10, -0.1, 1.0, 0.05), "epsilon"),
    "radius epsilon nan": (lambda: certify.concentration_certified_radius(9, 10, math.nan, 1.0, 0.05), "epsilon"),
    "radius diameter zero": (lambda: certify.concentration_certified_radius(9, 10, 0.1, 1.0, 0.05, 0.0), "diameter"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_clear_value_error(name: str) -> None:
    call, message = BAD_CALLS[name]
    with pytest.raises(ValueError, match=message):
        call()
