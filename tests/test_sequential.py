"""Tests for smoothgen.sequential: confidence sequences, sequential Cohen / NP / sequence certificates.

Coverage is checked over thousands of simulated seeds (vectorised with numpy); a one-sided
binomial test rejects "failure rate <= α" at p < 1e-3. The power check shows the same test flags
repeated uncorrected Clopper–Pearson looks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from smoothgen import certify
from smoothgen.noise import GaussianNoise
from smoothgen.sequential import (
    LookSchedule,
    bernoulli_cs,
    bernoulli_sampler,
    beta_mixture_interval,
    classifier_sampler,
    decoder_sampler,
    generator_sampler,
    sequential_cohen,
    sequential_cohen_paths,
    sequential_np_bounds,
    sequential_sequence_certificate,
    simulate_bernoulli_paths,
)
from smoothgen.smoothing import SmoothedClassifier, SmoothedGenerator, SmoothedGreedyDecoder

P_VALUES = [0.5, 0.9, 0.99, 0.999]
SEEDS = 2000
SMALL = LookSchedule.geometric(n_max=4096, n_first=8)


def assert_rate_at_most(failures: np.ndarray, alpha: float) -> None:
    """One-sided binomial test of ``rate <= α``: fail when the excess is significant at 1e-3."""
    k, n = int(np.sum(failures)), int(np.size(failures))
    pvalue = stats.binomtest(k, n, alpha, alternative="greater").pvalue
    assert pvalue > 1e-3, f"failure rate {k}/{n} = {k / n:.4f} significantly above alpha = {alpha}"


def replay(increments: list[np.ndarray]):
    """A count sampler returning the given histograms in order, checking the requested sizes."""
    queue = list(increments)

    def draw(k: int) -> np.ndarray:
        out = queue.pop(0)
        assert out.sum() == k, (out.sum(), k)
        return out
    draw.remaining = queue
    return draw


# ------------------------------------------------------------------------------------------
# schedule
# ------------------------------------------------------------------------------------------
def test_geometric_schedule_sizes_and_spending() -> None:
    s = LookSchedule.geometric(n_max=100_000, n_first=32, growth=2.0, spending="uniform")
    assert s.sizes.tolist() == [32 * 2**j for j in range(12)] + [100_000]
    np.testing.assert_allclose(s.weights, 1 / 13)
    final = LookSchedule.geometric()
    assert final.sizes.tolist() == s.sizes.tolist()
    np.testing.assert_allclose(final.weights, [0.5 / 12] * 12 + [0.5])
    poly = LookSchedule.geometric(n_max=1000, n_first=10, growth=10.0, spending="polynomial")
    assert poly.sizes.tolist() == [10, 100, 1000]
    np.testing.assert_allclose(poly.weights, 6 / (math.pi**2 * np.array([1, 4, 9])))
    np.testing.assert_allclose(s.alphas(0.013), 0.001)
    assert LookSchedule.fixed(7).sizes.tolist() == [7] and LookSchedule.geometric(50, 50).sizes.tolist() == [50]


@pytest.mark.parametrize("kwargs", [dict(growth=1.0), dict(n_first=200, n_max=100), dict(n_max=0), dict(spending="x")])
def test_geometric_schedule_bad_input(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LookSchedule.geometric(**kwargs)


@pytest.mark.parametrize("sizes, weights", [([4, 4], [0.5, 0.5]), ([0, 3], [0.5, 0.5]), ([1, 2], [0.6, 0.6]),
                                            ([1, 2], [0.5]), ([1.5, 2], [0.5, 0.5]), ([1, 2], [0.5, -0.1])])
def test_schedule_bad_input(sizes: list, weights: list) -> None:
    with pytest.raises(ValueError):
        LookSchedule(np.array(sizes), np.array(weights))


# ------------------------------------------------------------------------------------------
# confidence sequences: closed forms and coverage
# ------------------------------------------------------------------------------------------
def test_union_cp_equals_running_clopper_pearson_at_spent_levels() -> None:
    s = LookSchedule.geometric(n_max=1000, n_first=10, growth=3.0, spending="uniform")
    assert s.sizes.tolist() == [10, 30, 90, 270, 810, 1000]
    counts = np.array([[10, 28, 80, 250, 700, 890], [3, 16, 50, 150, 500, 610]])
    lower, upper = bernoulli_cs(counts, s, 0.01, alpha_upper=0.02)
    a_k = 0.01 / s.sizes.size
    raw_low = stats.beta.ppf(a_k, counts, s.sizes - counts + 1)
    raw_up = stats.beta.ppf(1 - 2 * a_k, counts + 1, np.maximum(s.sizes - counts, 1))
    raw_up = np.where(counts == s.sizes, 1.0, raw_up)
    np.testing.assert_allclose(lower, np.maximum.accumulate(raw_low, axis=1), rtol=1e-10)
    np.testing.assert_allclose(upper, np.minimum.accumulate(raw_up, axis=1), rtol=1e-10)


def test_beta_mixture_closed_forms() -> None:
    n = np.array([1, 10, 1000])
    lower, upper = beta_mixture_interval(n, n, 0.05)  # S = n: m^n > α/(n+1)
    np.testing.assert_allclose(lower, (0.05 / (n + 1)) ** (1 / n), rtol=1e-12)
    assert (upper == 1).all()
    low0, up0 = beta_mixture_interval(0, n, 0.05)
    assert (low0 == 0).all()
    np.testing.assert_allclose(up0, 1 - (0.05 / (n + 1)) ** (1 / n), rtol=1e-9)
    s, m = np.array([3, 40, 500]), np.array([10, 100, 1000])
    lo, hi = beta_mixture_interval(s, m, 0.01)
    for end in (lo, hi):  # the mixture martingale equals 1/α at both ends
        log_m = special.betaln(s + 1, m - s + 1) - special.xlogy(s, end) - special.xlog1py(m - s, -end)
        np.testing.assert_allclose(log_m, math.log(100), rtol=1e-9)
    assert (lo < s / m).all() and (s / m < hi).all()


def _fails(lower: np.ndarray, upper: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    return (lower > p).any(axis=1), (upper < p).any(axis=1)


@pytest.mark.parametrize("method", ["union_cp", "beta_mixture"])
@pytest.mark.parametrize("p", P_VALUES)
def test_confidence_sequence_coverage(method: str, p: float) -> None:
    alpha = 0.05
    paths = simulate_bernoulli_paths(np.full(SEEDS, p), SMALL, np.random.default_rng(int(p * 1e4)))
    low_fail, up_fail = _fails(*bernoulli_cs(paths, SMALL, alpha, method), p)
    assert_rate_at_most(low_fail, alpha)
    assert_rate_at_most(up_fail, alpha)
    if method == "beta_mixture":  # one two-sided sequence: both sides share α
        assert_rate_at_most(low_fail | up_fail, alpha)


@pytest.mark.parametrize("spending", ["uniform", "polynomial"])
def test_union_cp_coverage_for_other_spending(spending: str) -> None:
    s = LookSchedule.geometric(n_max=4096, n_first=8, spending=spending)
    paths = simulate_bernoulli_paths(np.full(SEEDS, 0.5), s, np.random.default_rng(11))
    low_fail, up_fail = _fails(*bernoulli_cs(paths, s, 0.05), 0.5)
    assert_rate_at_most(low_fail, 0.05)
    assert_rate_at_most(up_fail, 0.05)


def test_beta_mixture_valid_at_every_sample() -> None:
    every = LookSchedule(np.arange(1, 121), np.full(120, 1 / 120))
    for p in (0.5, 0.95):
        paths = simulate_bernoulli_paths(np.full(1000, p), every, np.random.default_rng(1))
        low_fail, up_fail = _fails(*bernoulli_cs(paths, every, 0.1, "beta_mixture"), p)
        assert_rate_at_most(low_fail | up_fail, 0.1)


def test_coverage_check_has_power_against_uncorrected_looks() -> None:
    paths = simulate_bernoulli_paths(np.full(SEEDS, 0.5), SMALL, np.random.default_rng(2))
    naive = np.stack([certify.clopper_pearson_lower(paths[:, k], n, 0.05) for k, n in enumerate(SMALL.sizes)], 1)
    failures = (naive > 0.5).any(axis=1)
    assert stats.binomtest(int(failures.sum()), SEEDS, 0.05, alternative="greater").pvalue < 1e-3


def test_bernoulli_cs_bad_input() -> None:
    with pytest.raises(ValueError, match="cumulative"):
        bernoulli_cs(np.array([[5, 3, 6, 7, 8, 9, 10, 11, 12, 13]]), SMALL, 0.05)
    with pytest.raises(ValueError, match="looks"):
        bernoulli_cs(np.array([1, 2]), SMALL, 0.05)
    with pytest.raises(ValueError, match="method"):
        bernoulli_cs(np.zeros(SMALL.sizes.size, dtype=int), SMALL, 0.05, method="betting")
    with pytest.raises(ValueError, match="alpha"):
        bernoulli_cs(np.zeros(SMALL.sizes.size, dtype=int), SMALL, 1.5)
    with pytest.raises(ValueError):
        beta_mixture_interval(5, 3, 0.1)


# ------------------------------------------------------------------------------------------
# sequential Cohen: soundness over seeds
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["union_cp", "beta_mixture"])
@pytest.mark.parametrize("r_over_sigma", [0.0, 1.0, 2.5])
def test_decision_mode_false_certificates_at_most_alpha(method: str, r_over_sigma: float) -> None:
    sigma, alpha = 0.5, 0.05
    q = float(special.ndtr(r_over_sigma))
    below = simulate_bernoulli_paths(np.full(4000, q - 1e-4), SMALL, np.random.default_rng(3))
    cert = sequential_cohen_paths(below, sigma, alpha, schedule=SMALL, mode="decision",
                                  target_radius=r_over_sigma * sigma, method=method)
    assert_rate_at_most(cert.certified, alpha)
    above = simulate_bernoulli_paths(np.full(4000, min(q + 1e-4, 1.0)), SMALL, np.random.default_rng(4))
    cert = sequential_cohen_paths(above, sigma, alpha, schedule=SMALL, mode="decision",
                                  target_radius=r_over_sigma * sigma, method=method, alpha_futility=0.1)
    assert_rate_at_most(cert.stopped == "futile", 0.1)


@pytest.mark.parametrize("projection", ["estimate", "upper"])
@pytest.mark.parametrize("method", ["union_cp", "beta_mixture"])
@pytest.mark.parametrize("p", P_VALUES)
def test_radius_mode_radius_at_most_true_radius(p: float, method: str, projection: str) -> None:
    sigma, alpha = 0.25, 0.05
    paths = simulate_bernoulli_paths(np.full(SEEDS, p), SMALL, np.random.default_rng(int(p * 1e3) + 5))
    cert = sequential_cohen_paths(paths, sigma, alpha, schedule=SMALL, method=method, projection=projection, tol=0.1)
    true_radius = sigma * special.ndtri(p)
    assert_rate_at_most((cert.prediction == 0) & (cert.radius > true_radius), alpha)
    assert (cert.n <= SMALL.n_max).all() and set(np.unique(cert.stopped)) <= {"converged", "futile", "budget"}


def test_decision_mode_stops_at_first_decisive_look_for_unanimous_draws() -> None:
    sigma, alpha, r = 0.25, 0.001, 0.5
    s = LookSchedule.geometric()
    cert = sequential_cohen_paths(s.sizes[None, :], sigma, alpha, schedule=s, mode="decision", target_radius=r)
    # S = n: Clopper–Pearson lower (α/K)^{1/n} >= Φ(r/σ) first at:
    first = s.sizes[np.argmax(s.alphas(alpha) ** (1.0 / s.sizes) >= special.ndtr(r / sigma))]
    assert cert.certified[0] and cert.n[0] == first and cert.passes[0] == first + 100
    assert cert.stopped[0] == "certified" and cert.radius[0] >= r


def test_radius_mode_converges_early_for_moderate_p_and_runs_to_budget_for_unanimous() -> None:
    s = LookSchedule.geometric()
    paths = np.round(np.outer([0.8, 1.0], s.sizes)).astype(np.int64)
    cert = sequential_cohen_paths(paths, 0.25, 0.001, schedule=s, tol=0.05)
    assert cert.stopped[0] == "converged" and cert.n[0] <= s.n_max // 3
    assert cert.n[1] == s.n_max


def test_radius_mode_futile_when_abstention_is_certain() -> None:
    s = LookSchedule.geometric(n_max=10_000)
    paths = np.round(0.2 * s.sizes[None, :]).astype(np.int64)
    cert = sequential_cohen_paths(paths, 0.25, 0.001, schedule=s)
    assert cert.stopped[0] == "futile" and cert.prediction[0] == -1 and cert.radius[0] == 0.0


# ------------------------------------------------------------------------------------------
# parity: fixed n, lazy vs vectorised
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [0, 40, 51, 99, 100])
def test_fixed_schedule_equals_cohen_certify(count: int) -> None:
    sel, est = np.array([3, 7]), np.array([100 - count, count])
    fixed = LookSchedule.fixed(100)
    ref = certify.cohen_certify(sel, est, sigma=0.5, alpha=0.01)
    lazy = sequential_cohen(replay([sel, est]), 0.5, 0.01, n0=10, schedule=fixed)
    paths = sequential_cohen_paths(np.array([[count]]), 0.5, 0.01, schedule=fixed, selected=1, n0=10)
    for cert in (lazy, paths):
        assert np.all(cert.prediction == ref.prediction) and np.allclose(cert.radius, ref.radius)
        assert np.allclose(cert.p_lower, ref.p_lower)
    assert tuple(lazy) == (ref.prediction, ref.radius) and lazy.passes == 110 and lazy.n == 100


@pytest.mark.parametrize("mode, target", [("decision", 0.3), ("radius", None)])
@pytest.mark.parametrize("p", [0.45, 0.7, 0.93, 0.999])
def test_lazy_equals_vectorised_on_the_same_draws(mode: str, target: float | None, p: float) -> None:
    s = LookSchedule.geometric(n_max=20_000, n_first=16)
    rng = np.random.default_rng(int(p * 100))
    path = simulate_bernoulli_paths([p], s, rng)[0]
    steps = np.diff(path, prepend=0)
    incs = [np.array([60, 40])] + [np.array([k, d - k]) for k, d in zip(steps, np.diff(s.sizes, prepend=0))]
    draw = replay(incs)
    lazy = sequential_cohen(draw, 0.25, 0.001, n0=100, schedule=s, mode=mode, target_radius=target)
    vec = sequential_cohen_paths(path[None], 0.25, 0.001, schedule=s, mode=mode, target_radius=target)
    assert len(draw.remaining) == s.sizes.size - lazy.looks  # drew nothing after the stop
    for field in ("prediction", "radius", "certified", "p_lower", "p_upper", "count", "n", "passes", "looks", "stopped"):
        assert getattr(lazy, field) == pytest.approx(getattr(vec, field)[0] if getattr(vec, field) is not None else None), field


def test_sequential_cohen_bad_input() -> None:
    draw = bernoulli_sampler(0.9, np.random.default_rng(0))
    with pytest.raises(ValueError, match="target_radius"):
        sequential_cohen(draw, 0.25, 0.001, mode="decision")
    with pytest.raises(ValueError, match="target_radius"):
        sequential_cohen(draw, 0.25, 0.001, mode="radius", target_radius=0.1)
    with pytest.raises(ValueError, match="mode"):
        sequential_cohen(draw, 0.25, 0.001, mode="both")
    with pytest.raises(ValueError, match="tol"):
        sequential_cohen(draw, 0.25, 0.001, tol=0.0)
    with pytest.raises(ValueError, match="alpha"):
        sequential_cohen(draw, 0.25, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        sequential_cohen(draw, -1.0, 0.01)
    with pytest.raises(ValueError, match="n0"):
        sequential_cohen(draw, 0.25, 0.01, n0=0)
    with pytest.raises(ValueError, match="schedule"):
        sequential_cohen(draw, 0.25, 0.01, schedule=[10, 100])
    with pytest.raises(ValueError, match="summing to 100"):
        sequential_cohen(lambda k: np.array([1, 2]), 0.25, 0.01)
    with pytest.raises(ValueError, match="number of classes"):
        sequential_cohen(replay([np.array([100, 0]), np.array([20, 10, 2])]), 0.25, 0.01)
    with pytest.raises(ValueError, match="draw must be callable"):
        sequential_cohen(None, 0.25, 0.01)
    with pytest.raises(ValueError, match="shape"):
        sequential_cohen_paths(np.zeros((2, 2, 13), dtype=int), 0.25, 0.01)


# ------------------------------------------------------------------------------------------
# sequential Neyman–Pearson bounds
# ------------------------------------------------------------------------------------------
def test_np_bounds_fixed_schedule_equals_np_bounds_mc() -> None:
    values = np.random.default_rng(0).beta(2, 5, 500)
    for kind, v in (("bounded", values), ("binary", (values > 0.3).astype(float))):
        seq = sequential_np_bounds(lambda k, v=v: v[:k], 0.2, 0.5, 0.01, schedule=LookSchedule.fixed(500), kind=kind)
        ref = certify.np_bounds_mc(v, 0.2, 0.5, 0.01, kind=kind)
        assert (seq.lower, seq.upper) == pytest.approx((ref.lower, ref.upper), rel=1e-12)
        assert seq.n == 500 and seq.stopped == "budget"


def test_np_bounds_coverage() -> None:
    alpha, radius, sigma, mean = 0.1, 0.3, 0.5, 2 / 7
    rng = np.random.default_rng(7)
    moved = certify.np_bounds(mean, radius, sigma)
    s = LookSchedule.geometric(n_max=512, n_first=8)
    fails = []
    for _ in range(1000):
        res = sequential_np_bounds(lambda k: rng.beta(2, 5, k), radius, sigma, alpha, schedule=s, tol=0.05)
        fails.append(res.lower > moved[0] or res.upper < moved[1])
    assert_rate_at_most(np.array(fails), alpha)


def test_np_bounds_modes_stop_early() -> None:
    rng = np.random.default_rng(8)
    s = LookSchedule.geometric(n_max=50_000, n_first=64)
    precise = sequential_np_bounds(lambda k: rng.beta(8, 2, k), 0.1, 0.5, 0.001, schedule=s, tol=0.05)
    assert precise.stopped == "converged" and precise.n < s.n_max and precise.mean_lower <= 0.8 <= precise.mean_upper
    cert = sequential_np_bounds(lambda k: rng.beta(8, 2, k), 0.1, 0.5, 0.001, schedule=s, mode="decision", threshold=0.5)
    assert cert.certified and cert.stopped == "certified" and cert.lower >= 0.5 and cert.n < 1000
    futile = sequential_np_bounds(lambda k: rng.beta(8, 2, k), 0.1, 0.5, 0.001, schedule=s, mode="decision", threshold=0.9)
    assert futile.certified is False and futile.stopped == "futile"


def test_np_bounds_bad_input() -> None:
    with pytest.raises(ValueError, match="threshold"):
        sequential_np_bounds(lambda k: np.zeros(k), 0.1, 0.5, 0.01, mode="decision")
    with pytest.raises(ValueError, match="threshold"):
        sequential_np_bounds(lambda k: np.zeros(k), 0.1, 0.5, 0.01, threshold=0.5)
    with pytest.raises(ValueError, match="rescale"):
        sequential_np_bounds(lambda k: np.full(k, 2.0), 0.1, 0.5, 0.01)
    with pytest.raises(ValueError, match="kind"):
        sequential_np_bounds(lambda k: np.zeros(k), 0.1, 0.5, 0.01, kind="auto")
    with pytest.raises(ValueError, match="radius"):
        sequential_np_bounds(lambda k: np.zeros(k), -0.1, 0.5, 0.01)


# ------------------------------------------------------------------------------------------
# sequential sequence certificate
# ------------------------------------------------------------------------------------------
def step_sampler(probs: list[float], vocab: int = 5, seed: int = 0):
    """Next token = len(prefix) % vocab with probability probs[len(prefix)], else the next id."""
    rng = np.random.default_rng(seed)

    def draw(prefix: np.ndarray, k: int) -> np.ndarray:
        t = len(prefix)
        top = int(rng.binomial(k, probs[t]))
        out = np.zeros(vocab, dtype=np.int64)
        out[t % vocab] += top
        out[(t + 1) % vocab] += k - top
        return out
    return draw


def test_sequence_fixed_schedule_equals_sequence_certificate() -> None:
    calls = []
    inner = step_sampler([0.99, 0.9, 0.8])

    def draw(prefix: np.ndarray, k: int) -> np.ndarray:
        calls.append((prefix.tolist(), inner(prefix, k)))
        return calls[-1][1]
    res = sequential_sequence_certificate(draw, 3, 0.25, 0.01, n0=50, schedule=LookSchedule.fixed(2000))
    sel, est = np.stack([c[1] for c in calls[0::2]]), np.stack([c[1] for c in calls[1::2]])
    ref = certify.sequence_certificate(sel, est, 0.25, 0.01)
    assert res.tokens.tolist() == ref.tokens.tolist() == [0, 1, 2]
    assert [c[0] for c in calls[0::2]] == [[], [0], [0, 1]]
    np.testing.assert_allclose([c.radius for c in res.steps], ref.step_radii)
    assert res.radius == pytest.approx(ref.radius) and res.alpha_per_step == ref.alpha_per_step
    assert res.passes == 3 * 2050


def test_sequence_decision_mode_stops_at_first_uncertified_step_and_stop_token() -> None:
    res = sequential_sequence_certificate(step_sampler([0.999, 0.55, 0.99]), 3, 0.25, 0.01, mode="decision", target_radius=0.3)
    assert res.certified is False and len(res.tokens) == 2 and res.steps[0].certified and not res.steps[1].certified
    stop = sequential_sequence_certificate(step_sampler([0.999, 0.999, 0.999]), 3, 0.25, 0.01, stop_token=1)
    assert stop.tokens.tolist() == [0, 1] and stop.certified is None and stop.radius > 0


def test_sequence_decision_false_certificates_at_most_alpha() -> None:
    s = LookSchedule.geometric(n_max=2048, n_first=16)
    alpha, steps, sigma, r = 0.2, 2, 0.25, 0.25
    p = float(special.ndtr(r / sigma)) - 1e-4  # every step's true radius is just below r
    fails = []
    for seed in range(200):
        res = sequential_sequence_certificate(step_sampler([p] * steps, seed=seed), steps, sigma, alpha, schedule=s,
                                              mode="decision", target_radius=r)
        fails.append(res.certified)
        assert res.alpha_per_step == alpha / steps
    assert_rate_at_most(np.array(fails), alpha)


# ------------------------------------------------------------------------------------------
# samplers on the real smoothing engine
# ------------------------------------------------------------------------------------------
def linear_classifier(u: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.stack([u[:, 0], u[:, 1], -u[:, 0]], dim=1)


def test_classifier_sampler_runs_reproducibly_and_counts_fresh_draws() -> None:
    smoothed = SmoothedClassifier(linear_classifier, GaussianNoise(0.5), num_classes=3, batch_size=64)
    x = torch.tensor([0.6, 0.0])
    s = LookSchedule.geometric(n_max=4096, n_first=64)
    a = sequential_cohen(classifier_sampler(smoothed, x, seed=3), 0.5, 0.001, schedule=s)
    b = sequential_cohen(classifier_sampler(smoothed, x, seed=3), 0.5, 0.001, schedule=s)
    assert a == b and a.prediction == 0
    # class 0 wins iff u0 > 0 and u0 - u1 > 0, with (u0, u0 - u1) Gaussian: mean (0.6, 0.6), cov [[.25, .25], [.25, .5]]
    p_true = stats.multivariate_normal(mean=[-0.6, -0.6], cov=[[0.25, 0.25], [0.25, 0.5]]).cdf([0.0, 0.0])
    assert a.p_lower <= p_true <= a.p_upper and a.radius == pytest.approx(0.5 * special.ndtri(a.p_lower))
    draw = classifier_sampler(smoothed, x, seed=3)
    first, second = draw(500), draw(500)
    assert first.sum() == second.sum() == 500 and not np.array_equal(first, second)


def test_generator_and_decoder_samplers() -> None:
    base = lambda u, g: torch.sigmoid(u.sum(1, keepdim=True) + 0.1 * torch.randn(u.shape[0], 1, generator=g))  # noqa: E731
    smoothed = SmoothedGenerator(base, GaussianNoise(0.5), batch_size=32)
    draw = generator_sampler(smoothed, torch.tensor([1.0, 0.5]), lambda y: y[:, 0], seed=0)
    values = draw(100)
    assert values.shape == (100,) and values.dtype == np.float64 and ((0 <= values) & (values <= 1)).all()
    res = sequential_np_bounds(draw, 0.1, 0.5, 0.01, schedule=LookSchedule.geometric(4096, 64), tol=0.05)
    assert 0 <= res.lower <= res.mean <= res.upper <= 1

    next_token = lambda emb, prefix: (emb[:, 0, 0] > 0).long() * 2 + prefix.shape[1] % 2  # noqa: E731
    decoder = SmoothedGreedyDecoder(next_token, GaussianNoise(0.25), vocab_size=4, batch_size=64)
    step = decoder_sampler(decoder, torch.ones(2, 3), seed=1)
    seq = sequential_sequence_certificate(step, 3, 0.25, 0.01, schedule=LookSchedule.geometric(4096, 64))
    assert seq.tokens.tolist() == [2, 3, 2] and seq.radius > 0


def test_sampler_bad_input() -> None:
    with pytest.raises(ValueError):
        classifier_sampler(lambda u, g: u, torch.zeros(2), 0)
    with pytest.raises(ValueError):
        generator_sampler(None, torch.zeros(2), lambda y: y, 0)
    with pytest.raises(ValueError):
        decoder_sampler(None, torch.zeros(2, 2), 0)
    with pytest.raises(ValueError):
        bernoulli_sampler(1.5, np.random.default_rng(0))
    with pytest.raises(ValueError):
        simulate_bernoulli_paths([0.5, 2.0], SMALL, np.random.default_rng(0))
