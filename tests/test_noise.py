"""Tests for smoothgen.noise: covariance of samples, whitening, ellipsoid geometry, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln

from smoothgen.noise import DiagonalGaussianNoise, GaussianNoise, LowRankGaussianNoise, Noise, SpikedGaussianNoise
from smoothgen.runtime import make_generator

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
EVENT = (2, 3)
D = 6

SCALES = np.array([[0.3, 1.2, 0.7], [2.0, 0.5, 1.0]])
FACTORS = np.random.default_rng(0).normal(size=(D, 2))


def dense_sigma(kind: str) -> np.ndarray:
    """The covariance each noise should have, built independently in numpy."""
    if kind == "iso":
        return 0.8**2 * np.eye(D)
    if kind == "diag":
        return np.diag(SCALES.ravel() ** 2)
    return 0.5**2 * np.eye(D) + FACTORS @ FACTORS.T


def make_noise(kind: str, dtype: torch.dtype = torch.float32) -> Noise:
    if kind == "iso":
        return GaussianNoise(0.8, event_shape=EVENT, dtype=dtype)
    if kind == "diag":
        return DiagonalGaussianNoise(torch.tensor(SCALES), dtype=dtype)
    return LowRankGaussianNoise(0.5, torch.tensor(FACTORS), event_shape=EVENT, dtype=dtype)


def inv_sqrt(sigma: np.ndarray) -> np.ndarray:
    lam, vec = np.linalg.eigh(sigma)
    return vec @ np.diag(lam**-0.5) @ vec.T


KINDS = ["iso", "diag", "lowrank"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_empirical_covariance_matches_sigma(kind: str, device: str) -> None:
    # Gaussian sample covariance: Var(Ĉ_ij) = (Σ_ii Σ_jj + Σ_ij²)/N; 5 standard errors per entry
    # (21 entries: family-wise false-alarm probability < 1e-5), while the alternatives a bug
    # produces (missing σ², UᵀU instead of UUᵀ, scales instead of scales²) are off by >> 5 SE.
    n = 200_000
    sigma = dense_sigma(kind)
    x = make_noise(kind).sample((n, *EVENT), make_generator(1, device))
    assert x.shape == (n, *EVENT) and x.dtype == torch.float32 and x.device.type == device
    flat = x.reshape(n, D).double().cpu().numpy()
    mean_se = np.sqrt(np.diag(sigma) / n)
    assert np.all(np.abs(flat.mean(0)) <= 5 * mean_se)
    cov = np.cov(flat, rowvar=False)
    se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)
    assert np.all(np.abs(cov - sigma) <= 5 * se), np.abs(cov - sigma) / se


@pytest.mark.parametrize("kind", KINDS)
def test_dense_covariance_method(kind: str) -> None:
    np.testing.assert_allclose(make_noise(kind).covariance().numpy(), dense_sigma(kind), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_whiten_and_mahalanobis_against_dense_inverse_sqrt(kind: str) -> None:
    delta = np.random.default_rng(3).normal(size=(7, *EVENT)) * 2.0
    root = inv_sqrt(dense_sigma(kind))
    expected_white = delta.reshape(7, D) @ root.T
    noise = make_noise(kind)
    white = noise.whiten(torch.tensor(delta)).numpy().reshape(7, D)
    np.testing.assert_allclose(white, expected_white, rtol=1e-10, atol=1e-12)
    norms = noise.mahalanobis_norm(torch.tensor(delta, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(norms, np.linalg.norm(expected_white, axis=1), rtol=1e-6)


def test_lowrank_mahalanobis_matches_woodbury_quadratic_form() -> None:
    # δᵀΣ⁻¹δ via the Woodbury identity Σ⁻¹ = σ⁻²(I − U(σ²I + UᵀU)⁻¹Uᵀ),
    # for δ inside and outside span(U).
    rng = np.random.default_rng(5)
    sigma, u = 0.3, rng.normal(size=(10, 3)) * 4.0
    deltas = np.concatenate([rng.normal(size=(4, 10)), (u @ rng.normal(size=(3, 4))).T])
    inner = np.linalg.solve(sigma**2 * np.eye(3) + u.T @ u, u.T @ deltas.T)
    quad = ((deltas.T**2).sum(0) - ((u.T @ deltas.T) * inner).sum(0)) / sigma**2
    got = LowRankGaussianNoise(sigma, torch.tensor(u)).mahalanobis_norm(torch.tensor(deltas)).numpy()
    np.testing.assert_allclose(got, np.sqrt(quad), rtol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_inscribed_radius_against_eigenvalues(kind: str) -> None:
    lam, vec = np.linalg.eigh(dense_sigma(kind))
    noise = make_noise(kind)
    assert noise.sigma_min == pytest.approx(math.sqrt(lam.min()), rel=1e-10)
    assert noise.sigma_max == pytest.approx(math.sqrt(lam.max()), rel=1e-10)
    assert noise.inscribed_radius(2.5) == pytest.approx(2.5 * math.sqrt(lam.min()), rel=1e-10)
    np.testing.assert_allclose(noise.inscribed_radius(np.array([0.0, 1.0])), [0.0, math.sqrt(lam.min())])
    # the ball touches the ellipsoid along the smallest eigenvector and stays inside elsewhere
    r = noise.inscribed_radius(2.5)
    touching = torch.tensor(r * vec[:, 0]).reshape(1, *EVENT)
    assert float(noise.mahalanobis_norm(touching)) == pytest.approx(2.5, rel=1e-9)
    dirs = np.random.default_rng(2).normal(size=(500, D))
    inside = torch.tensor(r * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).reshape(500, *EVENT)
    assert float(noise.mahalanobis_norm(inside).max()) <= 2.5 * (1 + 1e-9)


def test_lowrank_full_rank_factors_raise_sigma_min() -> None:
    u = np.random.default_rng(4).normal(size=(3, 4))
    lam = np.linalg.eigvalsh(0.2**2 * np.eye(3) + u @ u.T)
    noise = LowRankGaussianNoise(0.2, torch.tensor(u))
    assert noise.sigma_min == pytest.approx(math.sqrt(lam.min()), rel=1e-10)
    assert noise.log_det() == pytest.approx(float(np.sum(np.log(lam))), rel=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_log_volume_against_slogdet(kind: str) -> None:
    _, logdet = np.linalg.slogdet(dense_sigma(kind))
    unit_ball = 0.5 * D * math.log(math.pi) - gammaln(0.5 * D + 1)
    noise = make_noise(kind)
    assert noise.log_det() == pytest.approx(logdet, rel=1e-10)
    assert noise.log_volume(1.7) == pytest.approx(unit_ball + D * math.log(1.7) + 0.5 * logdet, rel=1e-10)
    assert noise.log_volume(0.0) == -math.inf


def test_log_volume_closed_forms_for_isotropic() -> None:
    assert math.exp(GaussianNoise(0.5).log_volume(2.0, dim=2)) == pytest.approx(math.pi * (2.0 * 0.5) ** 2)
    assert math.exp(GaussianNoise(0.5).log_volume(2.0, dim=3)) == pytest.approx(4 / 3 * math.pi * 1.0**3)
    with pytest.raises(ValueError, match="dim"):
        GaussianNoise(0.5).log_volume(1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_samples_different_seed_different(kind: str) -> None:
    noise = make_noise(kind)
    a = noise.sample((5, *EVENT), make_generator(7, "cpu"))
    b = noise.sample((5, *EVENT), make_generator(7, "cpu"))
    c = noise.sample((5, *EVENT), make_generator(8, "cpu"))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    out = torch.empty(5, *EVENT)
    assert torch.equal(noise.sample_(out, make_generator(7, "cpu")), a)


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_configurable(kind: str) -> None:
    x = make_noise(kind, dtype=torch.float64).sample((3, *EVENT), make_generator(0, "cpu"))
    assert x.dtype == torch.float64
    assert make_noise(kind).sample((3, *EVENT), make_generator(0, "cpu"), dtype=torch.float64).dtype == torch.float64


def test_isotropic_accepts_any_shape_without_event_shape() -> None:
    noise = GaussianNoise(0.5)
    assert noise.event_shape is None
    assert noise.sample((4, 3, 2), make_generator(0, "cpu")).shape == (4, 3, 2)
    delta = torch.ones(2, 3, 2)
    np.testing.assert_allclose(noise.mahalanobis_norm(delta).numpy(), [math.sqrt(6) / 0.5] * 2)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "0.5", True, None])
def test_bad_sigma_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma"):
        LowRankGaussianNoise(bad, torch.ones(3, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "scales",
    [torch.tensor([1.0, 0.0]), torch.tensor([1.0, -2.0]), torch.tensor([1.0, math.nan]), torch.tensor(1.0), torch.ones(0)],
)
def test_bad_scales_raise(scales: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="scales"):
        DiagonalGaussianNoise(scales)


def test_bad_factors_raise() -> None:
    with pytest.raises(ValueError, match="factors"):
        LowRankGaussianNoise(0.5, torch.ones(3))
    with pytest.raises(ValueError, match="factors"):
        LowRankGaussianNoise(0.5, torch.tensor([[1.0], [math.inf]]))
    with pytest.raises(ValueError, match="event_shape"):
        LowRankGaussianNoise(0.5, torch.ones(6, 1), event_shape=(2, 2))


@pytest.mark.parametrize("kind", ["diag", "lowrank"])
def test_shape_mismatch_raises(kind: str) -> None:
    noise = make_noise(kind)
    with pytest.raises(ValueError, match="event_shape"):
        noise.sample((4, 3, 2), make_generator(0, "cpu"))
    with pytest.raises(ValueError, match="event_shape"):
        noise.mahalanobis_norm(torch.ones(4, D))
    with pytest.raises(ValueError, match="event_shape"):
        noise.check_event_shape((3, 2))
    with pytest.raises(ValueError, match="batch"):
        noise.sample(EVENT[:1], make_generator(0, "cpu"))


def test_bad_radius_and_dtype_raise() -> None:
    with pytest.raises(ValueError, match="radius"):
        GaussianNoise(0.5).inscribed_radius(-1.0)
    with pytest.raises(ValueError, match="radius"):
        GaussianNoise(0.5).inscribed_radius(math.nan)
    with pytest.raises(ValueError, match="dtype"):
        GaussianNoise(0.5, dtype=torch.int64)


def test_spiked_noise_moments_whitening_and_log_det() -> None:
    v = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0][:, :2]
    noise = SpikedGaussianNoise(0.8, v, torch.tensor([0.1, 2.0]), dtype=torch.float64)
    cov = noise.covariance()
    x = noise.sample((200_000, 5), torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.T @ x / x.shape[0], cov, atol=0.03, rtol=0.02)
    delta = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.einsum("bi,ij,bj->b", delta, torch.linalg.inv(cov), delta).sqrt()
    torch.testing.assert_close(noise.mahalanobis_norm(delta), exact)
    assert noise.log_det() == pytest.approx(float(torch.linalg.slogdet(cov).logabsdet))
    assert noise.sigma_min == pytest.approx(0.1) and noise.sigma_max == pytest.approx(2.0)
    with pytest.raises(ValueError, match="orthonormal"):
        SpikedGaussianNoise(1.0, torch.ones(5, 2), torch.tensor([1.0, 1.0]))
