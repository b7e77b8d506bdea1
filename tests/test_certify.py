"""Tests for smoothgen.certify: closed forms, exact references, coverage and parity.

Coverage tests draw the samples of all seeds in one NumPy array and check, with a one-sided
binomial test, that the observed failure rate is consistent with ``rate <= alpha``
(p-value > 0.001). Truths are computed from the toy models directly, not from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from smoothgen import certify

SEEDS = 2000
COVERAGE_ALPHA = 0.1


def assert_rate_at_most(failures: int, trials: int, alpha: float) -> None:
    """One-sided binomial test of H0 'failure rate <= alpha'; fail the test if p <= 0.001."""
    pvalue = stats.binomtest(int(failures), trials, alpha, alternative="greater").pvalue
    assert pvalue > 1e-3, f"{failures}/{trials} failures is inconsistent with rate <= {alpha} (p={pvalue:.2g})"


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius, sigma", [(0.0, 1.0), (0.1, 0.25), (0.5, 0.5), (1.0, 0.25), (3.0, 1.0)])
def test_tv_bound_matches_numerical_integration(radius: float, sigma: float) -> None:
    shift = radius / sigma  # TV of N(0, σ²I), N(δ, σ²I) only depends on the projection on δ
    half_l1, _ = integrate.quad(
        lambda x: 0.5 * abs(stats.norm.pdf(x) - stats.norm.pdf(x - shift)),
        -12,
        12 + shift,
        points=[shift / 2],
        epsabs=1e-13,
    )
    assert certify.tv_bound(radius, sigma) == pytest.approx(half_l1, abs=1e-9)
    assert certify.tv_bound(radius, sigma) == pytest.approx(2 * stats.norm.cdf(radius / (2 * sigma)) - 1, abs=1e-14)


def test_tv_bound_mahalanobis_matches_two_dimensional_integration() -> None:
    cov = np.diag([0.25, 4.0])
    delta = np.array([0.3, 0.5])
    grid = np.linspace(-9.0, 9.0, 601)
    x, y = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([x, y], axis=-1)
    p = stats.multivariate_normal(np.zeros(2), cov).pdf(points)
    q = stats.multivariate_normal(delta, cov).pdf(points)
    tv_numeric = 0.5 * np.abs(p - q).sum() * (grid[1] - grid[0]) ** 2
    mahalanobis = math.sqrt(delta @ np.linalg.solve(cov, delta))
    assert certify.tv_bound_mahalanobis(mahalanobis) == pytest.approx(tv_numeric, abs=2e-5)
    assert certify.tv_bound_mahalanobis(mahalanobis) == pytest.approx(certify.tv_bound(mahalanobis, 1.0))


def test_certified_radius_inverts_wasserstein_bound() -> None:
    radii = np.array([0.0, 0.01, 0.1, 0.5, 1.0, 2.5])
    sigma, diameter = 0.4, 3.0
    bounds = certify.wasserstein_bound(radii, sigma, diameter)
    expected = diameter * (2 * stats.norm.cdf(radii / (2 * sigma)) - 1)
    np.testing.assert_allclose(bounds, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(certify.certified_radius(bounds, sigma, diameter), radii, rtol=1e-10, atol=1e-14)
    closed = 2 * sigma * stats.norm.ppf((1 + 0.7 / diameter) / 2)
    assert certify.certified_radius(0.7, sigma, diameter) == pytest.approx(closed, rel=1e-12)
    assert certify.certified_radius(diameter, sigma, diameter) == math.inf
    assert certify.certified_radius(5.0, sigma, diameter) == math.inf
    assert certify.certified_radius(0.0, sigma, diameter) == 0.0


@pytest.mark.parametrize("n, expected", [(100, 1.5005), (10_000, 3.1986), (100_000, 3.8115)])
def test_cohen_maximal_radius(n: int, expected: float) -> None:
    # nA = n: p̲ = α^(1/n) exactly (Beta(n, 1) quantile), radius σ Φ⁻¹(α^(1/n)).
    for sigma in (0.25, 1.0):
        prediction, radius = certify.cohen_certify([0, n, 0], [0, n, 0], sigma, 0.001)
        assert prediction == 1
        assert radius / sigma == pytest.approx(expected, abs=5e-5 * expected)
        assert radius == pytest.approx(sigma * stats.norm.ppf(0.001 ** (1 / n)), rel=1e-12)


def test_cohen_radius_closed_form() -> None:
    # Cohen et al.'s example: p_A = 0.98 at σ = 0.25 gives R = σ Φ⁻¹(0.98) ≈ 2.05 σ.
    assert certify.cohen_radius(0.98, 0.25) == pytest.approx(0.25 * stats.norm.ppf(0.98), rel=1e-13)
    assert certify.cohen_radius(0.8, 1.0, 0.15) == pytest.approx(
        0.5 * (stats.norm.ppf(0.8) - stats.norm.ppf(0.15)), rel=1e-13)
    np.testing.assert_array_equal(certify.cohen_radius([0.3, 0.5, 1.0], 1.0), [0.0, 0.0, math.inf])
    assert certify.cohen_radius(0.6, 1.0, 0.7) == 0.0
    # The same radius as CERTIFY from the same lower bound.
    cert = certify.cohen_certify([0, 90], [3, 97], 0.5, 0.001)
    assert cert.radius == pytest.approx(certify.cohen_radius(cert.p_lower, 0.5), rel=1e-13)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="p_a"):
            certify.cohen_radius(bad, 1.0)
    with pytest.raises(ValueError, match="p_b"):
        certify.cohen_radius(0.9, 1.0, 2.0)


def test_np_bounds_closed_form_and_half_space_attains_it() -> None:
    lower, upper = certify.np_bounds(0.9, 0.25, 0.5)
    assert round(lower, 4) == 0.7828
    assert round(upper, 4) == 0.9626
    # The half-space h = 1[x <= a] with x ~ N(c, σ²) attains both ends after shifting c by ∓r.
    a, c, sigma, r = 0.3, -0.2, 0.7, 0.45
    p = stats.norm.cdf((a - c) / sigma)
    lo, hi = certify.np_bounds(p, r, sigma)
    assert lo == pytest.approx(stats.norm.cdf((a - c - r) / sigma), rel=1e-12)
    assert hi == pytest.approx(stats.norm.cdf((a - c + r) / sigma), rel=1e-12)
    assert certify.np_bounds(0.0, 1.0, 1.0) == (0.0, 0.0)
    assert certify.np_bounds(1.0, 1.0, 1.0) == (1.0, 1.0)
    lo_arr, hi_arr = certify.np_bounds(np.array([0.2, 0.5]), 0.0, 1.0)
    np.testing.assert_allclose(lo_arr, [0.2, 0.5])
    np.testing.assert_allclose(hi_arr, [0.2, 0.5])


def test_mean_interval_formulas() -> None:
    alpha = 0.05
    binary = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    low, high = certify.mean_interval(binary, alpha)
    assert low == pytest.approx(stats.beta.ppf(alpha / 2, 8, 3), rel=1e-12)
    assert high == pytest.approx(stats.beta.ppf(1 - alpha / 2, 9, 2), rel=1e-12)
    assert certify.mean_interval(np.zeros(7), alpha) == (0.0, pytest.approx(1 - (alpha / 2) ** (1 / 7)))
    values = np.tile([0.2, 0.3, 0.25, 0.35, 0.3, 0.2, 0.28, 0.31], 6)
    n, mean, var = values.size, values.mean(), values.var(ddof=1)
    hoeffding = math.sqrt(math.log(4 / alpha) / (2 * n))
    bernstein = math.sqrt(2 * var * math.log(8 / alpha) / n) + 7 * math.log(8 / alpha) / (3 * (n - 1))
    width = min(hoeffding, bernstein)
    assert 0 < mean - width and mean + width < 1
    assert certify.mean_interval(values, alpha) == (pytest.approx(mean - width), pytest.approx(mean + width))
    one_width = math.sqrt(math.log(2 / 0.9) / 2)  # n = 1: Hoeffding, α/2 per side
    assert certify.mean_interval([0.7], 0.9) == (pytest.approx(0.7 - one_width), 1.0)
    assert certify.mean_interval([0.5], alpha) == (0.0, 1.0)  # clipped to [0, 1]
    # Large n, small variance: the empirical Bernstein side wins.
    tight = np.full(10_000, 0.5) + np.tile([-0.01, 0.01], 5_000)
    t_low, t_high = certify.mean_interval(tight, alpha)
    assert t_high - t_low < 2 * math.sqrt(math.log(4 / alpha) / (2 * 10_000)) / 3


def test_np_bounds_mc_pushes_interval_through_np_bounds() -> None:
    samples = np.array([1, 0, 1, 1, 1, 1, 1, 0, 1, 1] * 5, dtype=float)
    result = certify.np_bounds_mc(samples, 0.3, 0.5, 0.05)
    assert result.kind == "binary"
    lo_mean, hi_mean = certify.mean_interval(samples, 0.05, kind="binary")
    assert result.lower == pytest.approx(certify.np_bounds(lo_mean, 0.3, 0.5)[0])
    assert result.upper == pytest.approx(certify.np_bounds(hi_mean, 0.3, 0.5)[1])
    lower, upper = result
    assert (lower, upper) == (result.lower, result.upper)
    bounded = certify.np_bounds_mc(samples, 0.3, 0.5, 0.05, kind="bounded")
    assert bounded.kind == "bounded" and bounded.lower < result.lower


def test_inputs_accept_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    samples = torch.tensor([0.0, 1.0, 1.0, 1.0])
    from_numpy = certify.np_bounds_mc(samples.numpy(), 0.1, 1.0, 0.1)
    assert certify.np_bounds_mc(samples, 0.1, 1.0, 0.1).lower == from_numpy.lower
    assert certify.cohen_certify(torch.tensor([1, 9]), torch.tensor([2, 98]), 1.0, 0.01).prediction == 1


# --------------------------------------------------------------------------------------------
# The data-dependent W1 certificate
# --------------------------------------------------------------------------------------------


def brute_force_w1_certificate(distances, radius, sigma, alpha, diameter, grid_points):
    """Midpoint-rule integral of the defining integrand on a fine grid (independent of the code)."""
    n = len(distances)
    eta = math.sqrt(math.log(1 / alpha) / (2 * n))
    tau = 2 * stats.norm.cdf(radius / (2 * sigma)) - 1
    edges = np.linspace(0.0, diameter, grid_points)
    t = 0.5 * (edges[1:] + edges[:-1])
    survival = 1.0 - np.searchsorted(np.sort(distances), t, side="right") / n
    band = np.minimum(1.0, survival + eta)
    moved = stats.norm.cdf(stats.norm.ppf(band) + radius / sigma)
    integrand = np.minimum(tau, band) + np.minimum(tau, moved)
    return min(diameter * tau, integrand.sum() * (edges[1] - edges[0]))


def test_wasserstein_certificate_is_the_exact_integral() -> None:
    rng = np.random.default_rng(0)
    distances = np.minimum(rng.exponential(0.3, size=10_000), 4.0)
    for radius in (0.1, 0.3, 0.6):
        exact = certify.wasserstein_certificate(distances, radius, 0.5, 0.05, 4.0)
        brute = brute_force_w1_certificate(distances, radius, 0.5, 0.05, 4.0, grid_points=1_000_001)
        assert exact == pytest.approx(brute, abs=1e-6)
        assert exact < 0.9 * certify.wasserstein_bound(radius, 0.5, 4.0)  # the integral, not the cap
    radii = np.array([0.0, 0.05, 0.2])
    values = certify.wasserstein_certificate(distances, radii, 0.5, 0.05, 4.0)
    assert values[0] == 0.0 and np.all(np.diff(values) > 0)


def test_wasserstein_certificate_closed_form_cases() -> None:
    n, alpha, sigma, radius, diameter = 2000, 0.05, 0.5, 0.2, 3.0
    eta = math.sqrt(math.log(1 / alpha) / (2 * n))
    tau = 2 * stats.norm.cdf(radius / (2 * sigma)) - 1
    # All samples equal y0: S(t) = η on (0, D].
    expected = diameter * (min(tau, eta) + min(tau, stats.norm.cdf(stats.norm.ppf(eta) + radius / sigma)))
    assert expected < diameter * tau  # the cap does not bind here
    w1 = certify.wasserstein_certificate
    assert w1(np.zeros(n), radius, sigma, alpha, diameter) == pytest.approx(expected, rel=1e-12)
    # All samples at distance D: S = 1 everywhere, the integral is 2Dτ and the cap Dτ binds.
    assert w1(np.full(n, diameter), radius, sigma, alpha, diameter) == pytest.approx(diameter * tau)
    # α > 1/2 uses the (valid) band of α = 1/2.
    assert w1(np.zeros(n), radius, sigma, 0.9, diameter) == w1(np.zeros(n), radius, sigma, 0.5, diameter)


def test_wasserstein_certified_radius_inverts_certificate() -> None:
    rng = np.random.default_rng(1)
    distances = rng.uniform(0, 1.0, size=1000)
    sigma, alpha, diameter = 0.5, 0.01, 2.0
    for epsilon in (0.01, 0.1, 0.5, 1.5):
        r = certify.wasserstein_certified_radius(distances, epsilon, sigma, alpha, diameter)
        assert certify.wasserstein_certificate(distances, r, sigma, alpha, diameter) <= epsilon
        assert certify.wasserstein_certificate(distances, r * (1 + 1e-8), sigma, alpha, diameter) > epsilon
    assert certify.wasserstein_certified_radius(distances, diameter, sigma, alpha, diameter) == math.inf
    assert certify.wasserstein_certified_radius(distances, 0.0, sigma, alpha, diameter) == 0.0


def linear_gaussian_truth(mu: float, scale: float, shift: float, diameter: float) -> float:
    """W1 of clip(N(mu, s²), 0, D) and clip(N(mu + shift, s²), 0, D) = ∫_0^D |F - F'| dt."""
    value, _ = integrate.quad(
        lambda t: stats.norm.cdf((t - mu) / scale) - stats.norm.cdf((t - mu - shift) / scale),
        0.0,
        diameter,
        epsabs=1e-12,
    )
    return value


def test_wasserstein_certificate_upper_bounds_true_w1_of_linear_gaussian_generator() -> None:
    # G(u, z) = clip(<a, u> + b z, 0, D), u ∈ R^8: P_c = clip(N(<a,c>, |a|²σ² + b²)); the worst
    # ‖δ‖ = r points along a and shifts the mean by |a| r; W1 is monotone in that shift.
    rng = np.random.default_rng(2)
    dim, sigma, b, diameter, radius, n = 8, 0.5, 0.2, 4.0, 0.25, 100_000
    a = rng.normal(size=dim)
    a /= np.linalg.norm(a)
    c = rng.normal(size=dim)
    c += (diameter / 2 - a @ c) * a
    mu, scale = a @ c, math.hypot(sigma, b)
    truth = linear_gaussian_truth(mu, scale, radius, diameter)
    outputs = np.clip((c + sigma * rng.normal(size=(n, dim))) @ a + b * rng.normal(size=n), 0.0, diameter)
    y0 = np.clip(mu, 0.0, diameter)  # deterministic reference, independent of the samples
    cert = certify.wasserstein_certificate(np.abs(outputs - y0), radius, sigma, 0.05, diameter)
    ratio = cert / truth
    data_free = certify.wasserstein_bound(radius, sigma, diameter)
    print(f"linear-Gaussian: true W1 = {truth:.4f}, certificate = {cert:.4f}, ratio = {ratio:.3f}, D·τ = {data_free:.4f}")
    assert cert >= truth
    assert cert < 0.7 * certify.wasserstein_bound(radius, sigma, diameter)
    assert ratio < 2.5


# --------------------------------------------------------------------------------------------
# Coverage over many seeds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 10, 100])
def test_np_bounds_mc_binary_coverage(n: int) -> None:
    # h = 1[x > θ], x ~ N(c, σ²) in 1-D: E h at c ± r is Φ((c ± r − θ)/σ) exactly.
    rng = np.random.default_rng(100 + n)
    c, theta, sigma, radius = 0.1, -0.3, 0.5, 0.2
    inputs = c + sigma * rng.normal(size=(n, SEEDS))
    result = certify.np_bounds_mc((inputs > theta).astype(float), radius, sigma, COVERAGE_ALPHA, kind="binary")
    truth_low = stats.norm.cdf((c - radius - theta) / sigma)
    truth_high = stats.norm.cdf((c + radius - theta) / sigma)
    failures = np.sum((result.lower > truth_low) | (result.upper < truth_high))
    assert_rate_at_most(failures, SEEDS, COVERAGE_ALPHA)


@pytest.mark.parametrize("n", [5, 10, 100])
def test_np_bounds_mc_bounded_coverage(n: int) -> None:
    # h(x) = Φ((x − θ)/κ): E h at c' is Φ((c' − θ)/sqrt(σ² + κ²)), monotone in c'.
    rng = np.random.default_rng(200 + n)
    c, theta, kappa, sigma, radius = 0.0, 0.2, 0.3, 0.5, 0.25
    samples = stats.norm.cdf((c + sigma * rng.normal(size=(n, SEEDS)) - theta) / kappa)
    result = certify.np_bounds_mc(samples, radius, sigma, COVERAGE_ALPHA, kind="bounded")
    spread = math.hypot(sigma, kappa)
    truth_low = stats.norm.cdf((c - radius - theta) / spread)
    truth_high = stats.norm.cdf((c + radius - theta) / spread)
    failures = np.sum((result.lower > truth_low) | (result.upper < truth_high))
    assert_rate_at_most(failures, SEEDS, COVERAGE_ALPHA)


@pytest.mark.parametrize("n, p_top", [(5, 0.6), (10, 0.7), (10, 0.75), (100, 0.8)])
def test_cohen_certify_coverage(n: int, p_top: float) -> None:
    # Base classifier on 1-D input: class 1 if x > θ, else class 0 if x > θ0, else class 2.
    # For class 1 the true robust radius of g is exactly σ Φ⁻¹(p₁) (a half-space).
    rng = np.random.default_rng(300 + n)
    sigma = 0.5
    probs = np.array([1 - p_top - 0.05, p_top, 0.05])
    true_radius = np.where(probs > 0.5, sigma * stats.norm.ppf(probs), -np.inf)
    selection = rng.multinomial(10, probs, size=SEEDS)
    estimation = rng.multinomial(n, probs, size=SEEDS)
    prediction, radius = certify.cohen_certify(selection, estimation, sigma, COVERAGE_ALPHA)
    certified = prediction != certify.ABSTAIN
    failures = np.sum(certified & (radius > true_radius[np.maximum(prediction, 0)]))
    assert_rate_at_most(failures, SEEDS, COVERAGE_ALPHA)
    assert certified.any()


@pytest.mark.parametrize("n", [5, 10, 100])
def test_wasserstein_certificate_coverage_half_space(n: int) -> None:
    # G(x) = D·1[x₁ > θ], y₀ = 0: W1(P_c, P_{c+δ}) = D |p' − p|, worst over ‖δ‖ <= r exactly known.
    rng = np.random.default_rng(400 + n)
    sigma, radius, diameter = 0.5, 0.5, 2.0
    for p in (0.02, 0.3):
        shifted = stats.norm.cdf(stats.norm.ppf(p) + np.array([-1, 1]) * radius / sigma)
        truth = diameter * np.max(np.abs(shifted - p))
        distances = diameter * (rng.random(size=(SEEDS, n)) < p)
        certs = np.array([certify.wasserstein_certificate(d, radius, sigma, COVERAGE_ALPHA, diameter) for d in distances])
        assert_rate_at_most(np.sum(certs < truth), SEEDS, COVERAGE_ALPHA)


@pytest.mark.parametrize("n", [5, 10])
def test_wasserstein_certificate_coverage_linear_gaussian(n: int) -> None:
    rng = np.random.default_rng(500 + n)
    sigma, b, diameter, radius, mu = 0.5, 0.2, 4.0, 0.25, 2.0
    scale = math.hypot(sigma, b)
    truth = linear_gaussian_truth(mu, scale, radius, diameter)
    outputs = np.clip(mu + scale * rng.normal(size=(SEEDS, n)), 0.0, diameter)
    distances = np.abs(outputs - mu)
    certs = np.array([certify.wasserstein_certificate(d, radius, sigma, COVERAGE_ALPHA, diameter) for d in distances])
    assert_rate_at_most(np.sum(certs < truth), SEEDS, COVERAGE_ALPHA)


@pytest.mark.parametrize("n", [5, 10, 100])
def test_mean_band_coverage(n: int) -> None:
    # Y_j = Φ((x_j − θ_j)/κ), x ~ N(c, σ² I_4): E Y_j at c + δ is Φ((c_j + δ_j − θ_j)/sqrt(σ² + κ²)).
    rng = np.random.default_rng(600 + n)
    dim, sigma, kappa, radius = 4, 0.5, 0.3, 0.25
    c, theta = np.array([0.0, 0.3, -0.5, 1.0]), np.array([0.2, 0.0, 0.0, 0.4])
    spread = math.hypot(sigma, kappa)
    truth_low = stats.norm.cdf((c - radius - theta) / spread)
    truth_high = stats.norm.cdf((c + radius - theta) / spread)
    samples = stats.norm.cdf((c + sigma * rng.normal(size=(SEEDS, n, dim)) - theta) / kappa)
    failures = 0
    for seed_samples in samples:
        lower, upper = certify.mean_band(seed_samples, radius, sigma, COVERAGE_ALPHA)
        failures += bool(np.any((lower > truth_low) | (upper < truth_high)))
    assert_rate_at_most(failures, SEEDS, COVERAGE_ALPHA)


def test_mean_band_matches_per_coordinate_formula_and_rescales() -> None:
    rng = np.random.default_rng(7)
    low, high, alpha, radius, sigma = -1.0, 1.0, 0.05, 0.1, 0.5
    samples = rng.uniform(low, high, size=(300, 2, 3)).astype(np.float32)
    band = certify.mean_band(samples, radius, sigma, alpha, low=low, high=high, chunk_size=64)
    flat = (samples.reshape(300, -1).astype(np.float64) - low) / (high - low)
    lo01, hi01 = certify.mean_interval(flat, alpha / 6, kind="bounded")
    expected_low = low + (high - low) * certify.np_bounds(lo01, radius, sigma)[0]
    expected_high = low + (high - low) * certify.np_bounds(hi01, radius, sigma)[1]
    np.testing.assert_allclose(band.lower, expected_low.reshape(2, 3), rtol=1e-12)
    np.testing.assert_allclose(band.upper, expected_high.reshape(2, 3), rtol=1e-12)
    np.testing.assert_allclose(band.mean, samples.astype(np.float64).mean(axis=0), rtol=1e-12)
    assert band.alpha_per_coordinate == pytest.approx(alpha / 6)


# --------------------------------------------------------------------------------------------
# Parity with straightforward implementations
# --------------------------------------------------------------------------------------------


def loop_cohen_certify(sel, est, sigma, alpha):
    top = int(np.argmax(sel))
    n_a, n = int(est[top]), int(sum(est))
    p_lower = 0.0 if n_a == 0 else stats.beta.ppf(alpha, n_a, n - n_a + 1)
    return (-1, 0.0) if p_lower < 0.5 else (top, sigma * stats.norm.ppf(p_lower))


def loop_cohen_predict(counts, alpha):
    order = np.argsort(counts)[::-1]
    first, second = int(counts[order[0]]), int(counts[order[1]])
    return -1 if stats.binomtest(first, first + second, 0.5).pvalue > alpha else int(order[0])


def test_cohen_parity_with_loop_implementation() -> None:
    rng = np.random.default_rng(11)
    batch, classes = 400, 4
    probs = rng.dirichlet(np.full(classes, 0.4), size=batch)
    sizes = rng.choice([1, 3, 10, 50, 200, 1000], size=batch)
    sel = np.array([rng.multinomial(10, p) for p in probs])
    est = np.array([rng.multinomial(m, p) for p, m in zip(probs, sizes)])
    est[:5] = [[5, 5, 0, 0], [0, 7, 7, 1], [3, 0, 0, 0], [0, 0, 0, 1], [40, 60, 0, 0]]  # ties / edges
    for alpha in (0.001, 0.05):
        prediction, radius = certify.cohen_certify(sel, est, 0.25, alpha)
        predicted = certify.cohen_predict(est, alpha)
        for i in range(batch):
            ref_pred, ref_radius = loop_cohen_certify(sel[i], est[i], 0.25, alpha)
            assert prediction[i] == ref_pred and radius[i] == pytest.approx(ref_radius, rel=1e-12, abs=0)
            assert predicted[i] == loop_cohen_predict(est[i], alpha)
            single = certify.cohen_certify(sel[i], est[i], 0.25, alpha)
            assert (single.prediction, single.radius) == (prediction[i], radius[i])


def test_binomial_test_half_equals_scipy_binomtest() -> None:
    for n in (1, 2, 7, 30, 101, 1000, 20_000):
        for k in np.unique(np.linspace(0, n, 25).astype(int)):
            expected = stats.binomtest(int(k), n, 0.5).pvalue
            assert certify.binomial_test_half(k, n) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_sequence_certificate_matches_per_step_cohen() -> None:
    rng = np.random.default_rng(12)
    steps, vocab, sigma, alpha = 6, 5, 0.3, 0.05
    probs = rng.dirichlet(np.full(vocab, 0.2), size=steps)
    sel = np.array([rng.multinomial(20, p) for p in probs])
    est = np.array([rng.multinomial(500, p) for p in probs])
    est[4] = [100, 100, 100, 100, 100]  # a step that abstains
    result = certify.sequence_certificate(sel, est, sigma, alpha)
    tokens, step_radii, radius = result
    for t in range(steps):
        ref_pred, ref_radius = loop_cohen_certify(sel[t], est[t], sigma, alpha / steps)
        assert tokens[t] == np.argmax(sel[t])
        assert step_radii[t] == pytest.approx(ref_radius, rel=1e-12)
        assert result.abstained[t] == (ref_pred == -1)
    assert radius == 0.0
    np.testing.assert_allclose(result.prefix_radii, np.minimum.accumulate(step_radii))
    first_abstain = int(np.argmax(result.abstained))
    assert result.certified_prefix_length(0.0) == int(np.sum(result.prefix_radii > 0))
    assert result.certified_prefix_length(0.0) <= first_abstain
    # Tokens given explicitly and a larger Bonferroni denominator (decoding may stop early).
    explicit = certify.sequence_certificate(None, est[:3], sigma, alpha, tokens=tokens[:3], num_steps=steps)
    np.testing.assert_allclose(explicit.step_radii, step_radii[:3])


def loop_center_certificate(pairwise, check, cert, radius, sigma, alpha_1, alpha_2, delta, coeff):
    """Straight transcription of the reference procedure on precomputed distances."""
    best, center = math.inf, -1
    for i in range(pairwise.shape[0]):
        median = float(np.median(pairwise[i]))
        if median < best:
            best, center = median, i
    n = pairwise.shape[1]
    delta_1 = math.sqrt(math.log(2 / alpha_1) / (2 * n))
    inside = sum(1 for d in check if d <= best)
    delta_2 = 0.5 - (inside / len(check) - delta_1)
    quantile = stats.norm.cdf(stats.norm.ppf(0.5 + delta) + radius / sigma)
    quantile += math.sqrt(math.log(1 / alpha_2) / (2 * len(cert)))
    if max(delta_1, delta_2) > delta or quantile >= 1:
        return center, math.inf, quantile, (delta_1, delta_2)
    ordered = sorted(cert)
    return center, coeff * ordered[math.ceil(len(cert) * quantile) - 1], quantile, (delta_1, delta_2)


@pytest.mark.parametrize("spread, radius", [(0.2, 0.1), (1.0, 0.05), (0.3, 2.0)])
def test_center_certificate_parity(spread: float, radius: float) -> None:
    rng = np.random.default_rng(13)
    n = 500
    points = rng.normal(size=(n, 3)) * spread
    points[: n // 10] += 5.0  # a far cluster the center must ignore
    pairwise = np.linalg.norm(points[:, None] - points[None], axis=-1)
    index, _ = certify.select_center(pairwise)
    fresh = rng.normal(size=(n + 2000, 3)) * spread
    check = np.linalg.norm(fresh[:n] - points[index], axis=1)
    cert = np.linalg.norm(fresh[n:] - points[index], axis=1)
    result = certify.center_certificate(pairwise, check, cert, radius, 0.25, delta=0.1)
    reference = loop_center_certificate(pairwise, check, cert, radius, 0.25, 0.005, 0.005, 0.1, 3.0)
    ref_index, ref_radius, ref_q, ref_deltas = reference
    assert (result.delta_1, result.delta_2) == pytest.approx(ref_deltas, rel=1e-12)
    assert result.center_index == ref_index == index
    assert result.quantile == pytest.approx(ref_q, rel=1e-12)
    assert result.radius == ref_radius
    assert result.abstained == (ref_radius == math.inf)
    linear = certify.center_certificate(pairwise, check, cert, radius, 0.25, delta=0.1, quantile_method="linear")
    if not linear.abstained:
        assert linear.radius == pytest.approx(3.0 * np.quantile(cert, ref_q), rel=1e-12)
        assert linear.radius <= result.radius


def test_center_certificate_outcomes() -> None:
    rng = np.random.default_rng(14)
    points = rng.normal(size=(400, 2)) * 0.1
    pairwise = np.linalg.norm(points[:, None] - points[None], axis=-1)
    index, median = certify.select_center(pairwise)
    near = np.linalg.norm(rng.normal(size=(400, 2)) * 0.1 - points[index], axis=1)
    good = certify.center_certificate(pairwise, near, near, 0.05, 0.25, delta=0.1)
    assert good.is_good and not good.abstained and math.isfinite(good.radius)
    assert certify.center_certificate(pairwise, near + 10.0, near, 0.05, 0.25, delta=0.1).abstained  # check fails
    assert certify.center_certificate(pairwise, near, near, 3.0, 0.25, delta=0.1).abstained  # q >= 1
    # Check batch of another size n': Δ₁ uses the n median samples, Δ₂'s Hoeffding term uses n'.
    small = certify.center_certificate(pairwise, near[:100], near, 0.05, 0.25, delta=0.1)
    assert small.delta_1 == pytest.approx(math.sqrt(math.log(2 / 0.005) / 800))
    fraction = np.mean(near[:100] <= median)
    assert small.delta_2 == pytest.approx(0.5 - (fraction - math.sqrt(math.log(2 / 0.005) / 200)))
    # The reference's defaults (Δ = 0.05) need more samples: Δ₁ = sqrt(ln(400)/800) > 0.05 at n = 400.
    assert not certify.center_certificate(pairwise, near, near, 0.05, 0.25).is_good


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.3])
def test_center_min_samples_is_where_the_check_first_can_pass(delta: float) -> None:
    """Δ₁ <= Δ exactly from center_min_samples on: with one sample fewer the certificate abstains on any
    outputs (here all identical, the easiest case), with exactly that many its check passes."""
    need = certify.center_min_samples(delta)
    assert need == math.ceil(math.log(2 / 0.005) / (2 * delta**2))
    assert certify.center_min_samples(0.05) == 1199 and certify.center_min_samples(0.05, 0.05) < 1199

    def outcome(n: int) -> certify.CenterCertificate:
        same = np.zeros(n)
        return certify.center_certificate(np.zeros((n, n)), same, same, 0.01, 1.0, delta=delta)

    assert outcome(need - 1).abstained and not outcome(need - 1).is_good
    passed = outcome(need)  # the check passes; it still abstains where ν + η >= 1 (small n, large Δ)
    assert passed.is_good and passed.radius == (math.inf if passed.quantile >= 1 else 0.0)
    with pytest.raises(ValueError, match="delta"):
        certify.center_min_samples(0.5)
    with pytest.raises(ValueError, match="alpha_1"):
        certify.center_min_samples(0.1, 1.0)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

GOOD_D = np.array([0.1, 0.5, 0.9])
GOOD_PAIRWISE = np.array([[0.0, 1.0], [1.0, 0.0]])


def center(*args, **kwargs):
    return certify.center_certificate(GOOD_PAIRWISE, *args, **kwargs)


BAD_CALLS = {
    "sigma zero": (lambda: certify.tv_bound(0.1, 0.0), "sigma"),
    "sigma negative": (lambda: certify.np_bounds(0.5, 0.1, -1.0), "sigma"),
    "sigma nan": (lambda: certify.wasserstein_bound(0.1, float("nan"), 1.0), "sigma"),
    "sigma inf": (lambda: certify.certified_radius(0.1, float("inf"), 1.0), "sigma"),
    "radius negative": (lambda: certify.tv_bound(-0.1, 1.0), "radius"),
    "radius nan": (lambda: certify.np_bounds(0.5, float("nan"), 1.0), "radius"),
    "radius inf": (lambda: certify.np_bounds(0.5, float("inf"), 1.0), "radius"),
    "mahalanobis negative": (lambda: certify.tv_bound_mahalanobis(-1.0), "mahalanobis_radius"),
    "diameter zero": (lambda: certify.wasserstein_bound(0.1, 1.0, 0.0), "diameter"),
    "diameter inf": (lambda: certify.certified_radius(0.1, 1.0, float("inf")), "diameter"),
    "epsilon negative": (lambda: certify.certified_radius(-0.1, 1.0, 1.0), "epsilon"),
    "p above one": (lambda: certify.np_bounds(1.2, 0.1, 1.0), "p must lie"),
    "alpha zero": (lambda: certify.np_bounds_mc([0, 1], 0.1, 1.0, 0.0), "alpha"),
    "alpha one": (lambda: certify.mean_interval([0, 1], 1.0), "alpha"),
    "alpha nan": (lambda: certify.cohen_predict([3, 1], float("nan")), "alpha"),
    "samples empty": (lambda: certify.np_bounds_mc([], 0.1, 1.0, 0.1), "at least one sample"),
    "samples nan": (lambda: certify.np_bounds_mc([0.5, float("nan")], 0.1, 1.0, 0.1), "NaN"),
    "samples outside": (lambda: certify.np_bounds_mc([0.5, 1.5], 0.1, 1.0, 0.1), r"\[0, 1\]"),
    "samples not binary": (lambda: certify.np_bounds_mc([0.5, 1.0], 0.1, 1.0, 0.1, kind="binary"), "binary"),
    "kind unknown": (lambda: certify.mean_interval([0.5], 0.1, kind="gauss"), "kind"),
    "samples text": (lambda: certify.np_bounds_mc(["a"], 0.1, 1.0, 0.1), "numeric"),
    "band outside": (lambda: certify.mean_band(np.full((3, 2), 2.0), 0.1, 1.0, 0.1), r"\[low, high\]"),
    "band nan": (lambda: certify.mean_band(np.full((3, 2), np.nan), 0.1, 1.0, 0.1), "NaN"),
    "band low high": (lambda: certify.mean_band(np.zeros((3, 2)), 0.1, 1.0, 0.1, low=1.0, high=0.0), "low < high"),
    "band empty": (lambda: certify.mean_band(np.zeros((0, 2)), 0.1, 1.0, 0.1), "n >= 1"),
    "band chunk": (lambda: certify.mean_band(np.zeros((3, 2)), 0.1, 1.0, 0.1, chunk_size=0), "chunk_size"),
    "distances nan": (lambda: certify.wasserstein_certificate([0.1, np.nan], 0.1, 1.0, 0.1, 1.0), "NaN"),
    "distances above D": (lambda: certify.wasserstein_certificate([0.1, 1.5], 0.1, 1.0, 0.1, 1.0), "diameter"),
    "distances negative": (lambda: certify.wasserstein_certificate([-0.1], 0.1, 1.0, 0.1, 1.0), "diameter"),
    "distances empty": (lambda: certify.wasserstein_certificate([], 0.1, 1.0, 0.1, 1.0), "at least one"),
    "distances 2-D": (lambda: certify.wasserstein_certificate(np.zeros((2, 2)), 0.1, 1.0, 0.1, 1.0), "1-D"),
    "w1 radius negative": (lambda: certify.wasserstein_certificate(GOOD_D, -0.1, 1.0, 0.1, 1.0), "radius"),
    "w1 alpha": (lambda: certify.wasserstein_certificate(GOOD_D, 0.1, 1.0, 1.5, 1.0), "alpha"),
    "w1 inverse epsilon": (lambda: certify.wasserstein_certified_radius(GOOD_D, -1.0, 1.0, 0.1, 1.0), "epsilon"),
    "w1 inverse rtol": (lambda: certify.wasserstein_certified_radius(GOOD_D, 0.1, 1.0, 0.1, 1.0, rtol=0.0), "rtol"),
    "dkw n": (lambda: certify.dkw_margin(0, 0.1), "n must"),
    "counts negative": (lambda: certify.cohen_certify([-1, 5], [1, 5], 1.0, 0.1), "non-negative"),
    "counts fractional": (lambda: certify.cohen_certify([1.5, 5], [1, 5], 1.0, 0.1), "integers"),
    "counts all zero": (lambda: certify.cohen_certify([0, 0], [1, 5], 1.0, 0.1), "sum >= 1"),
    "counts shape mismatch": (lambda: certify.cohen_certify([1, 5], [1, 5, 0], 1.0, 0.1), "shape"),
    "counts 3-D": (lambda: certify.cohen_certify(np.ones((2, 2, 2)), np.ones((2, 2, 2)), 1.0, 0.1), "shape"),
    "counts sigma": (lambda: certify.cohen_certify([1, 5], [1, 5], 0.0, 0.1), "sigma"),
    "predict one class": (lambda: certify.cohen_predict([5], 0.1), "2 classes"),
    "predict nan": (lambda: certify.cohen_predict([np.nan, 1.0], 0.1), "non-negative integers"),
    "cp count above n": (lambda: certify.clopper_pearson_lower(5, 3, 0.1), "count <= n"),
    "sequence no tokens": (lambda: certify.sequence_certificate(None, [[1, 5]], 1.0, 0.1), "tokens"),
    "sequence bad token": (lambda: certify.sequence_certificate(None, [[1, 5]], 1.0, 0.1, tokens=[2]), "tokens"),
    "sequence token shape": (lambda: certify.sequence_certificate(None, [[1, 5]], 1.0, 0.1, tokens=[0, 1]), "shape"),
    "sequence num_steps": (
        lambda: certify.sequence_certificate([[1, 5], [2, 2]], [[1, 5], [2, 2]], 1.0, 0.1, num_steps=1),
        "num_steps",
    ),
    "sequence 1-D": (lambda: certify.sequence_certificate([1, 5], [1, 5], 1.0, 0.1), r"\[T, V\]"),
    "sequence alpha": (lambda: certify.sequence_certificate([[1, 5]], [[1, 5]], 1.0, 2.0), "alpha"),
    "center not square": (lambda: certify.select_center(np.zeros(3)), "2-D"),
    "center nan": (lambda: certify.select_center(np.array([[0.0, np.nan], [1.0, 0.0]])), "finite"),
    "center check negative": (lambda: center([-1.0], [1.0], 0.1, 1.0), "check_distances"),
    "center certify empty": (lambda: center([1.0], [], 0.1, 1.0), "certify_distances"),
    "center delta": (lambda: center([1.0], [1.0], 0.1, 1.0, delta=0.5), "delta"),
    "center coeff": (lambda: center([1.0], [1.0], 0.1, 1.0, radius_coeff=0.5), "radius_coeff"),
    "center alpha_1": (lambda: center([1.0], [1.0], 0.1, 1.0, alpha_1=0.0), "alpha_1"),
    "center radius": (lambda: center([1.0], [1.0], -0.1, 1.0), "radius"),
    "center sigma": (lambda: center([1.0], [1.0], 0.1, np.inf), "sigma"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_clear_value_error(name: str) -> None:
    call, message = BAD_CALLS[name]
    with pytest.raises(ValueError, match=message):
        call()
