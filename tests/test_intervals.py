"""smoothgen.intervals: exact proportion intervals, the percentile bootstrap, FID and IS with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, stats

from smoothgen import intervals


def test_proportion_is_the_exact_clopper_pearson_interval() -> None:
    out = intervals.proportion(7, 20, "p")
    assert out["p"] == 7 / 20
    assert out["p_low"] == pytest.approx(stats.beta.ppf(0.025, 7, 14))
    assert out["p_high"] == pytest.approx(stats.beta.ppf(0.975, 8, 13))
    assert intervals.proportion(0, 10, "p")["p_low"] == 0 and intervals.proportion(10, 10, "p")["p_high"] == 1


def test_proportion_covers_at_least_95_percent() -> None:
    rng, p, n = np.random.default_rng(0), 0.3, 40
    hits = rng.binomial(n, p, 2000)
    covered = [(o := intervals.proportion(int(k), n, "p"))["p_low"] <= p <= o["p_high"] for k in hits]
    assert np.mean(covered) >= 0.95


def test_bootstrap_point_and_coverage_of_a_mean() -> None:
    rng = np.random.default_rng(1)
    covered = []
    for seed in range(200):
        x = rng.normal(2.0, 1.0, 60)
        out = intervals.bootstrap(lambda idx: x[idx].mean(), len(x), 200, seed, "m")
        assert out["m"] == pytest.approx(x.mean()) and out["m_low"] < out["m"] < out["m_high"]
        covered.append(out["m_low"] <= 2.0 <= out["m_high"])
    assert 0.88 <= np.mean(covered) <= 0.99  # percentile bootstrap of a mean: close to its nominal 95 %


def test_bootstrap_is_seeded_skips_nan_and_refuses_empty_input() -> None:
    x = np.arange(10.0)
    one = intervals.bootstrap(lambda idx: x[idx].mean(), 10, 50, 3, "m")
    assert one == intervals.bootstrap(lambda idx: x[idx].mean(), 10, 50, 3, "m")
    assert one != intervals.bootstrap(lambda idx: x[idx].mean(), 10, 50, 4, "m")
    out = intervals.bootstrap(lambda idx: np.nan if 0 in idx else x[idx].mean(), 10, 200, 0, "m")
    assert np.isfinite(out["m_low"]) and out["m_low"] >= 1.0
    with pytest.raises(ValueError, match="rows >= 1"):
        intervals.bootstrap(lambda idx: 0.0, 0, 10, 0, "m")
    table = intervals.bootstrap_all(lambda idx: {"a": x[idx].mean(), "b": x[idx].max()}, 10, 50, 0)
    assert set(table) == {"a", "a_low", "a_high", "b", "b_low", "b_high"} and table["b"] == 9


def test_frechet_matches_the_closed_form_with_a_matrix_square_root() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(400, 5)), rng.normal(0.5, 2.0, size=(300, 5)) @ rng.normal(size=(5, 5))
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    expected = np.sum((real.mean(0) - fake.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    fd = intervals.Frechet(real)
    assert fd(fake) == pytest.approx(expected, rel=1e-6) and fd(real) == pytest.approx(0, abs=1e-9)
    base = rng.normal(1.0, 1.0, size=(300, 5))
    out = intervals.fid(fd, fake, base, 50, 0)
    assert out["fid_low"] <= out["fid"] <= out["fid_high"] and out["fid_ratio"] == pytest.approx(expected / fd(base))
    assert out["fid_ratio_low"] <= out["fid_ratio"] <= out["fid_ratio_high"]


def test_basic_interval_reflects_the_percentile_one_and_corrects_the_resampling_bias_of_fid() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    pct, basic = intervals.summary("x", 3.0, values), intervals.summary("x", 3.0, values, "basic")
    assert basic["x_low"] == pytest.approx(6.0 - pct["x_high"]) and basic["x_high"] == pytest.approx(6.0 - pct["x_low"])
    assert intervals.summary("x", 0.1, values, "basic", floor=0.0)["x_low"] == 0.0
    with pytest.raises(ValueError, match="kind"):
        intervals.summary("x", 0.0, values, "student")
    # generated N(0.3, I) against real N(0, I) in 8 dims: the true Fréchet distance is 8 x 0.3² = 0.72, and
    # FID from 150 generated images is biased upward by about as much as its spread
    rng, truth = np.random.default_rng(3), 8 * 0.3**2
    fd = intervals.Frechet(rng.normal(size=(20_000, 8)))
    covered = {"percentile": 0, "basic": 0}
    for seed in range(40):
        fake = rng.normal(0.3, 1.0, size=(150, 8))
        resampled = [fd(fake[rng.integers(0, 150, 150)]) for _ in range(200)]
        out = intervals.fid(fd, fake, None, 200, seed)
        covered["percentile"] += np.percentile(resampled, 2.5) <= truth <= np.percentile(resampled, 97.5)
        covered["basic"] += out["fid_low"] <= truth <= out["fid_high"]
    assert covered["basic"] >= 32 and covered["basic"] > covered["percentile"] + 8, covered


def test_inception_score_extremes() -> None:
    uniform = np.full((30, 4), 0.25)
    assert intervals.inception_score(uniform, 20, 0)["is"] == pytest.approx(1.0)
    onehot = np.eye(4)[np.arange(40) % 4]
    assert intervals.inception_score(onehot, 20, 0)["is"] == pytest.approx(4.0, rel=1e-6)


def test_formatted_shows_value_and_interval() -> None:
    table = pd.DataFrame({"s": [0.0], "x": [0.5], "x_low": [0.25], "x_high": [0.75]})
    assert intervals.formatted(table, ["x"], ["s"]).to_dict("records") == [{"s": 0.0, "x": "0.5 [0.25, 0.75]"}]
