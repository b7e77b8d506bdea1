"""Inputs the certificate API must refuse early (or handle correctly) instead of over-claiming.

Each test pins one audit finding: before the fix the call returned a number that claims more than
it proves, or failed with an unclear error (ZeroDivisionError, OverflowError, TypeError).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothgen import calibrate, certify
from smoothgen.noise import GaussianNoise
from smoothgen.smoothing import SmoothedClassifier, SmoothedGreedyDecoder

# One candidate center at distance 0 from 2000 samples: the Δ-check passes (Δ₁ ≈ 0.039 < 0.05).
N_CENTER = 2000
ZEROS = np.zeros(N_CENTER)
PAIRWISE = np.zeros((1, N_CENTER))
# Too few samples: the Δ-check fails and the certificate abstains.
ABSTAINING = (np.zeros((3, 3)), np.zeros(5), np.zeros(5))


def center(*distances: np.ndarray, **kwargs) -> certify.CenterCertificate:
    return certify.center_certificate(*(distances or (PAIRWISE, ZEROS, ZEROS)), 0.1, 1.0, **kwargs)


# --------------------------------------------------------------------------------------------
# 1-3. center_certificate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coeff", [1.0, 2.0, 2.999])
def test_center_radius_coeff_below_three_is_refused(coeff: float) -> None:
    with pytest.raises(ValueError, match="radius_coeff must be a finite number >= 3"):
        center(radius_coeff=coeff)


def test_center_radius_coeff_three_and_above_accepted() -> None:
    assert not center().abstained
    assert center(radius_coeff=3.0).radius == center(radius_coeff=5.0).radius == 0.0


@pytest.mark.parametrize(
    "alphas, message",
    [
        ({"alpha_2": 0.9}, "alpha_2 must be <= 1/2"),
        ({"alpha_1": 0.6, "alpha_2": 0.45}, r"alpha_1 \+ alpha_2 must be < 1"),
        ({"alpha_1": 1.0}, "alpha_1 must lie strictly between 0 and 1"),
        ({"alpha_2": float("nan")}, "alpha_2 must lie strictly between 0 and 1"),
    ],
)
def test_center_alphas_refused(alphas: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        center(**alphas)


def test_center_alpha_limits_accepted() -> None:
    assert not center(alpha_1=0.4, alpha_2=0.5).abstained


def test_center_quantile_method_checked_even_when_abstaining() -> None:
    assert certify.center_certificate(*ABSTAINING, 0.1, 1.0).abstained  # the setting does abstain
    with pytest.raises(ValueError, match="quantile_method"):
        certify.center_certificate(*ABSTAINING, 0.1, 1.0, quantile_method="bogus")
    assert center(quantile_method="linear").radius == 0.0  # the reference's method stays available


# --------------------------------------------------------------------------------------------
# 4. Integer counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, n", [(2.5, 5), (math.nan, 5), (1, math.inf), (1, 4.5), (-1, 5), (6, 5), (0, 0)])
def test_binomial_test_half_needs_integer_counts(k: float, n: float) -> None:
    with pytest.raises(ValueError, match=r"need finite integers 0 <= k <= n and n >= 1"):
        certify.binomial_test_half(k, n)


def test_clopper_pearson_lower_refuses_infinite_trials() -> None:
    with pytest.raises(ValueError, match=r"0 <= count <= n"):
        certify.clopper_pearson_lower(1, math.inf, 0.05)


def test_integer_valued_floats_still_accepted() -> None:
    assert certify.binomial_test_half(np.float64(2.0), 4.0) == 1.0
    assert certify.clopper_pearson_lower(np.array([0.0, 3.0]), 10.0, 0.1)[0] == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: certify.dkw_margin(math.inf, 0.1), "n must be an integer >= 1"),
        (lambda: certify.dkw_margin(math.nan, 0.1), "n must be an integer >= 1"),
        (lambda: certify.mean_band(np.zeros((3, 2)), 0.1, 1.0, 0.1, chunk_size=math.inf), "chunk_size"),
        (lambda: certify.mean_band(np.zeros((3, 2)), 0.1, 1.0, 0.1, chunk_size=math.nan), "chunk_size"),
        (lambda: certify.sequence_certificate(None, [[9, 1]], 1.0, 0.1, tokens=[0], num_steps=math.inf), "num_steps"),
        (lambda: certify.sequence_certificate(None, [[9, 1]], 1.0, 0.1, tokens=[0], num_steps=math.nan), "num_steps"),
        (lambda: certify.sequence_certificate(None, [[9, 1]], 1.0, 0.1, tokens=[0], num_steps=True), "num_steps"),
    ],
)
def test_integer_parameters_refuse_nan_inf_bool(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------
# 5. Samples without coordinates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: certify.mean_band(np.zeros((5, 0)), 0.1, 1.0, 0.05),
        lambda: certify.mean_band(np.zeros((5, 3, 0)), 0.1, 1.0, 0.05),
        lambda: certify.np_bounds_mc(np.zeros((5, 0)), 0.1, 1.0, 0.05),
        lambda: certify.mean_interval(np.zeros((5, 0)), 0.05),
    ],
)
def test_samples_without_coordinates_refused(call) -> None:
    with pytest.raises(ValueError, match="no coordinate to certify"):
        call()


def test_constant_samples_give_a_band_around_the_constant() -> None:
    band = certify.mean_band(np.full((50, 3), 0.5), 0.1, 1.0, 0.05)
    assert np.all(band.lower < 0.5) and np.all(band.upper > 0.5)
    np.testing.assert_array_equal(band.mean, 0.5)


# --------------------------------------------------------------------------------------------
# 6. Complex and half-precision input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: certify.np_bounds_mc(np.full(5, 0.5 + 1j), 0.1, 1.0, 0.05),
        lambda: certify.mean_band(torch.full((5, 3), 0.5, dtype=torch.complex64), 0.1, 1.0, 0.05),
        lambda: certify.tv_bound(1.0 + 0j, 1.0),
        lambda: certify.cohen_certify(np.array([3 + 0j, 1]), [3, 1], 1.0, 0.05),
        lambda: certify.clopper_pearson_lower(np.complex128(1), 5, 0.05),
    ],
)
def test_complex_input_refused(call) -> None:
    with pytest.raises(ValueError, match="must be real"):
        call()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_accepted(dtype: torch.dtype) -> None:
    samples = torch.rand(40, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    exact = samples.float().numpy()
    band, reference = certify.mean_band(samples, 0.1, 1.0, 0.05), certify.mean_band(exact, 0.1, 1.0, 0.05)
    np.testing.assert_array_equal(band.lower, reference.lower)
    np.testing.assert_array_equal(band.upper, reference.upper)
    binary = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=dtype)
    assert certify.np_bounds_mc(binary, 0.1, 1.0, 0.05) == certify.np_bounds_mc(binary.float().numpy(), 0.1, 1.0, 0.05)
    assert certify.tv_bound(torch.tensor(1.0, dtype=dtype), 1.0) == certify.tv_bound(1.0, 1.0)


# --------------------------------------------------------------------------------------------
# 7. Inscribed radii
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [-1.0, -1e-12, math.nan])
def test_inscribed_radius_refuses_negative_and_nan(radius: float) -> None:
    cert = calibrate.isotropic_certificate(0.5, (4,))
    with pytest.raises(ValueError, match="mahalanobis_radius must be >= 0"):
        cert.inscribed_radius(radius)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        GaussianNoise(0.5).inscribed_radius(radius)


def test_inscribed_radius_of_infinite_region_is_infinite() -> None:
    cert = calibrate.isotropic_certificate(0.5, (4,))
    assert cert.inscribed_radius(0.0) == 0.0 and cert.inscribed_radius(2.0) == 1.0
    assert cert.inscribed_radius(cert.certified_radius(1.0) / cert.sigma_cert) == math.inf


# --------------------------------------------------------------------------------------------
# 8. Cohen radii are strict
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, strict",
    [
        (SmoothedClassifier.__doc__, "‖Σ^{-1/2} δ‖ < Φ⁻¹(p̲)"),
        (SmoothedClassifier.certify.__doc__, "‖δ‖₂ < radius"),
        (SmoothedGreedyDecoder.__doc__, "‖δ‖₂ <`` the sequence radius"),
    ],
)
def test_cohen_radius_docstrings_state_the_strict_inequality(doc: str, strict: str) -> None:
    assert strict in doc
    assert "‖δ‖₂ ≤ radius" not in doc and "‖δ‖₂ ≤`` the sequence radius" not in doc
