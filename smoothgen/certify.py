r"""Certificates for Gaussian-smoothed generators: numbers in, bounds out.

Everything here is mathematics on numbers (NumPy / SciPy only). Inputs may be NumPy arrays,
Python numbers or CPU/GPU torch tensors (converted with ``.detach().cpu().numpy()``, float16 and
bfloat16 upcast exactly to float32 first; torch is never imported); complex input is refused.
Notation: the smoothed generator at condition embedding ``c`` outputs
:math:`P_c = \mathrm{Law}(G(c + \varepsilon, z))`, :math:`\varepsilon \sim N(0, \sigma^2 I)`; the
adversary moves ``c`` to ``c + δ`` with :math:`\|\delta\|_2 \le r`; :math:`\Phi` is the standard
normal CDF. Every ``alpha`` is a failure probability: a Monte-Carlo certificate holds with
probability at least ``1 - alpha`` over the sampling noise.

Contents
--------
* Closed forms: :func:`tv_bound`, :func:`tv_bound_mahalanobis`, :func:`wasserstein_bound`,
  :func:`certified_radius`, :func:`np_bounds`.
* Confidence intervals: :func:`mean_interval` (Clopper–Pearson / Hoeffding ∧ empirical
  Bernstein), :func:`clopper_pearson_lower`, :func:`dkw_margin`.
* Monte-Carlo certificates: :func:`np_bounds_mc`, :func:`mean_band`,
  :func:`wasserstein_certificate`, :func:`wasserstein_certified_radius`.
* Classifiers and token sequences (Cohen et al. 2019): :func:`cohen_radius`, :func:`cohen_certify`,
  :func:`cohen_predict`, :func:`sequence_certificate`.
* Concentration (output law fixed on a set of conditions, e.g. a projection front-end):
  :func:`concentration_tv`, :func:`concentration_certificate`, :func:`concentration_certified_radius`.
* Center smoothing (Kumar & Goldstein 2021): :func:`select_center`, :func:`center_certificate`, :func:`center_min_samples`.

Anisotropic noise :math:`N(0, \Sigma)`: every bound below depends on ``radius`` and ``sigma``
only through ``radius / sigma``; pass ``radius = ‖Σ^{-1/2} δ‖`` (or an upper bound on it over the
threat set, e.g. ``r / sqrt(λ_min(Σ))``) and ``sigma = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
from scipy import optimize, special, stats

ArrayLike = Any
FloatOrArray = float | np.ndarray
IntervalKind = Literal["auto", "binary", "bounded"]

ABSTAIN = -1
"""Prediction returned by :func:`cohen_certify` / :func:`cohen_predict` when they abstain."""


# --------------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a real NumPy array; refuse complex input (its imaginary part would be lost).

    Torch tensors go through ``detach().cpu().numpy()``; floating tensors narrower than 32 bits
    (float16, and bfloat16, which NumPy cannot hold) are first upcast to float32, which is exact.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if x.is_complex():
            x = x.cdouble()  # complex32 has no NumPy dtype; refused below like any complex input
        elif x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got a complex array; pass its real part or modulus explicitly")
    return arr


def _as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _scalar(x: ArrayLike, name: str) -> float:
    arr = _as_float_array(x, name)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    return float(arr)


def _check_sigma(sigma: ArrayLike) -> float:
    value = _scalar(sigma, "sigma")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {value!r}")
    return value


def _check_alpha(alpha: ArrayLike, name: str = "alpha") -> float:
    value = _scalar(alpha, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return value


def _check_diameter(diameter: ArrayLike) -> float:
    value = _scalar(diameter, "diameter")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"diameter must be a finite number > 0, got {value!r}")
    return value


def _check_int(value: Any, name: str, minimum: int) -> int:
    """An integer-valued number ``>= minimum`` (NaN, ``inf``, fractions and bools refused)."""
    number = _scalar(value, name) if not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number == round(number) and number >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(number)


def _check_trials(count: ArrayLike, n: ArrayLike, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of integer counts ``0 <= count <= n``, ``n >= 1`` (finite; broadcast against each other)."""
    k, m = _as_float_array(count, names[0]), _as_float_array(n, names[1])
    integers = np.isfinite(k) & np.isfinite(m) & (k == np.round(k)) & (m == np.round(m))
    if not (integers & (m >= 1) & (k >= 0) & (k <= m)).all():
        shown = f"{names[0]}={k}, {names[1]}={m}" if k.size * m.size < 8 else "arrays"
        raise ValueError(f"need finite integers 0 <= {names[0]} <= {names[1]} and {names[1]} >= 1, got {shown}")
    return k, m


def _check_nonnegative(x: ArrayLike, name: str) -> np.ndarray:
    """Array of values ≥ 0 (``+inf`` allowed, NaN not)."""
    arr = _as_float_array(x, name)
    if np.isnan(arr).any() or (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 and not NaN, got {arr if arr.size < 8 else 'an array'}")
    return arr


def _check_radius(radius: ArrayLike) -> np.ndarray:
    """Array of finite radii >= 0."""
    arr = _check_nonnegative(radius, "radius")
    if np.isinf(arr).any():
        raise ValueError("radius must be finite")
    return arr


def _check_samples(samples: ArrayLike, name: str = "samples") -> np.ndarray:
    """Float array with samples along axis 0: at least one sample and coordinate, no NaN, values in [0, 1]."""
    arr = _as_float_array(samples, name)
    if arr.ndim == 0 or arr.shape[0] < 1:
        raise ValueError(f"{name} needs at least one sample along axis 0, got shape {arr.shape}")
    _check_has_coordinates(arr, name)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name} must lie in [0, 1]; rescale the statistic first")
    return arr


def _check_has_coordinates(arr: np.ndarray, name: str) -> None:
    """Refuse ``[n, ...]`` samples whose trailing shape holds no coordinate (an empty certificate)."""
    if arr.size == 0:
        raise ValueError(f"{name} has shape {arr.shape}: an axis after the sample axis has length 0, "
                         "so there is no coordinate to certify")


def _check_counts(counts: ArrayLike, name: str) -> np.ndarray:
    """Integer count array ``[K]`` or ``[B, K]`` with K >= 1, counts >= 0, each row summing to >= 1."""
    arr = _to_numpy(counts, name)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be an integer count array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [K] or [B, K] with K >= 1, got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise ValueError(f"{name} must hold non-negative integers")
    arr = arr.astype(np.int64)
    if (arr.sum(axis=-1) < 1).any():
        raise ValueError(f"{name}: every count vector needs at least one sample (sum >= 1)")
    return arr


def _as_output(x: np.ndarray) -> FloatOrArray:
    """0-d arrays become Python floats; other arrays are returned unchanged."""
    return float(x) if np.ndim(x) == 0 else x


class _Unpackable:
    """Mixin: a result dataclass that unpacks like the tuple named by ``_unpack``."""

    _unpack: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter(tuple(getattr(self, name) for name in self._unpack))


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------


def tv_bound_mahalanobis(mahalanobis_radius: ArrayLike) -> FloatOrArray:
    r"""Total variation between :math:`N(c, \Sigma)` and :math:`N(c + \delta, \Sigma)`.

    .. math:: \mathrm{TV} = 2\Phi\big(\tfrac12 \|\Sigma^{-1/2}\delta\|\big) - 1
              = \operatorname{erf}\big(\|\Sigma^{-1/2}\delta\| / (2\sqrt2)\big).

    By data processing it bounds :math:`\mathrm{TV}(P_c, P_{c+\delta})` for **any** generator.
    Monotone in the Mahalanobis radius, so an upper bound on :math:`\|\Sigma^{-1/2}\delta\|` over
    the threat set (e.g. :math:`r/\sqrt{\lambda_{\min}(\Sigma)}` for :math:`\|\delta\|_2\le r`) gives
    a bound valid for the whole set.

    Parameters
    ----------
    mahalanobis_radius
        :math:`\|\Sigma^{-1/2}\delta\|` (scalar or array, ``>= 0``).

    Returns
    -------
    float or ndarray
        The total variation, in ``[0, 1]``.
    """
    m = _check_nonnegative(mahalanobis_radius, "mahalanobis_radius")
    return _as_output(special.erf(m / (2.0 * math.sqrt(2.0))))


def tv_bound(radius: ArrayLike, sigma: float) -> FloatOrArray:
    r"""Total variation between :math:`N(c, \sigma^2 I)` and :math:`N(c+\delta, \sigma^2 I)`, ``‖δ‖ = r``.

    .. math:: \tau(r) = 2\Phi\big(r / (2\sigma)\big) - 1.

    Only the projection of the noise on :math:`\delta` matters, so this is the TV of
    :math:`N(0,1)` and :math:`N(r/\sigma, 1)`; by data processing,
    :math:`\mathrm{TV}(P_c, P_{c+\delta}) \le \tau(r)` for every generator and every
    :math:`\|\delta\| \le r` (``τ`` is increasing in ``r``). See :func:`tv_bound_mahalanobis` for
    anisotropic noise.

    Parameters
    ----------
    radius
        Threat radius ``r >= 0`` (scalar or array).
    sigma
        Noise standard deviation ``> 0``.

    Returns
    -------
    float or ndarray
        ``τ(r)`` in ``[0, 1]``.
    """
    s = _check_sigma(sigma)
    return tv_bound_mahalanobis(_check_radius(radius) / s)


def wasserstein_bound(radius: ArrayLike, sigma: float, diameter: float) -> FloatOrArray:
    r"""Data-free W₁ bound :math:`W_1(P_c, P_{c+\delta}) \le D\,\tau(r)` for ``‖δ‖ <= r``.

    Couple the two noisy inputs maximally (they differ with probability ``τ``), share ``z``:
    the outputs differ only on that event, and then by at most the metric's diameter ``D``.

    Parameters
    ----------
    radius
        Threat radius ``r >= 0`` (scalar or array).
    sigma
        Noise standard deviation ``> 0``.
    diameter
        Diameter ``D`` of the output metric space (finite, ``> 0``).

    Returns
    -------
    float or ndarray
        ``D · (2Φ(r/(2σ)) − 1)``.
    """
    d = _check_diameter(diameter)
    return _as_output(d * np.asarray(tv_bound(radius, sigma)))


def certified_radius(epsilon: ArrayLike, sigma: float, diameter: float) -> FloatOrArray:
    r"""Largest ``r`` with :func:`wasserstein_bound` ``<= ω``: the inverse of ``D·τ(r)``.

    .. math:: r(\omega) = 2\sigma\,\Phi^{-1}\Big(\frac{1 + \omega/D}{2}\Big)
              = 2\sqrt2\,\sigma\,\operatorname{erf}^{-1}(\omega / D),

    and ``inf`` when ``ω >= D`` (the bound never exceeds ``D``).

    Parameters
    ----------
    epsilon
        The tolerance ``ω >= 0`` on W₁ (scalar or array).
    sigma
        Noise standard deviation ``> 0``.
    diameter
        Output diameter ``D > 0``.

    Returns
    -------
    float or ndarray
        The certified radius (``0`` at ``ω = 0``, ``inf`` for ``ω >= D``).
    """
    s = _check_sigma(sigma)
    d = _check_diameter(diameter)
    eps = _check_nonnegative(epsilon, "epsilon")
    ratio = np.minimum(eps / d, 1.0)
    r = 2.0 * math.sqrt(2.0) * s * special.erfinv(ratio)
    return _as_output(np.where(eps >= d, np.inf, r))


def np_bounds(p: ArrayLike, radius: ArrayLike, sigma: float) -> tuple[FloatOrArray, FloatOrArray]:
    r"""Neyman–Pearson range of a smoothed ``[0, 1]`` statistic after a shift of norm ``<= r``.

    For any :math:`h: Y \to [0,1]` with :math:`\mathbb E_{P_c} h = p`, and every
    :math:`\|\delta\| \le r`,

    .. math:: \Phi\big(\Phi^{-1}(p) - r/\sigma\big) \;\le\; \mathbb E_{P_{c+\delta}} h
              \;\le\; \Phi\big(\Phi^{-1}(p) + r/\sigma\big)

    (Salman et al. 2019: :math:`x \mapsto \Phi^{-1}(\mathbb E\, h(x+\varepsilon))` is
    :math:`1/\sigma`-Lipschitz; half-spaces attain both ends). ``p = 0`` / ``p = 1`` are handled
    through :math:`\Phi^{-1}(0) = -\infty`, :math:`\Phi^{-1}(1) = \infty`.

    Parameters
    ----------
    p
        Smoothed expectation(s) at ``c``, in ``[0, 1]`` (scalar or array).
    radius
        Threat radius ``r >= 0`` (broadcasts against ``p``).
    sigma
        Noise standard deviation ``> 0``.

    Returns
    -------
    (lower, upper)
        Floats, or arrays of the broadcast shape.
    """
    s = _check_sigma(sigma)
    r = _check_radius(radius)
    prob = _as_float_array(p, "p")
    if np.isnan(prob).any() or (prob < 0).any() or (prob > 1).any():
        raise ValueError("p must lie in [0, 1] (and not be NaN)")
    z = special.ndtri(prob)
    return _as_output(special.ndtr(z - r / s)), _as_output(special.ndtr(z + r / s))


# --------------------------------------------------------------------------------------------
# Confidence intervals
# --------------------------------------------------------------------------------------------


def dkw_margin(n: int, alpha: float) -> float:
    r"""One-sided Dvoretzky–Kiefer–Wolfowitz margin with Massart's constant.

    For ``n`` i.i.d. real samples with CDF ``F`` and empirical CDF ``F̂`` (any ``F``, atoms
    allowed), :math:`P\big(\sup_t (\hat F(t) - F(t)) > \eta\big) \le e^{-2n\eta^2}` whenever
    :math:`e^{-2n\eta^2} \le 1/2` (Massart 1990). Hence with probability ``>= 1 − α`` the band
    :math:`F(t) \ge \hat F(t) - \eta` holds for all ``t`` at once, for

    .. math:: \eta = \sqrt{\ln(1/\min(\alpha, 1/2)) / (2n)}.

    (For ``α > 1/2`` the band for ``α = 1/2`` is returned, which is valid a fortiori.)

    Parameters
    ----------
    n
        Number of samples ``>= 1``.
    alpha
        Failure probability in ``(0, 1)``.
    """
    m, a = _check_int(n, "n", 1), _check_alpha(alpha)
    return math.sqrt(math.log(1.0 / min(a, 0.5)) / (2.0 * m))


def clopper_pearson_lower(count: ArrayLike, n: ArrayLike, alpha: float) -> FloatOrArray:
    r"""One-sided Clopper–Pearson lower confidence bound at level ``1 − α``.

    :math:`\underline p = B^{-1}(\alpha;\, k,\, n - k + 1)` (Beta quantile), ``0`` when ``k = 0``;
    :math:`P(p < \underline p) \le \alpha` for :math:`k \sim \mathrm{Bin}(n, p)`. This is
    ``statsmodels.proportion_confint(k, n, alpha=2α, method="beta")[0]``, as used by Cohen et al.

    Parameters
    ----------
    count, n
        Successes ``k`` and trials ``n`` (integers, ``0 <= k <= n``, ``n >= 1``; broadcast).
    alpha
        Failure probability in ``(0, 1)``.
    """
    a = _check_alpha(alpha)
    k, trials = _check_trials(count, n, ("count", "n"))
    lower = stats.beta.ppf(a, np.maximum(k, 1.0), trials - k + 1.0)
    return _as_output(np.where(k > 0, lower, 0.0))


def _clopper_pearson_two_sided(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper–Pearson interval (each tail α/2) for k successes out of n."""
    lower = stats.beta.ppf(alpha / 2.0, np.maximum(k, 1.0), n - k + 1.0)
    upper = stats.beta.ppf(1.0 - alpha / 2.0, k + 1.0, np.maximum(n - k, 1.0))
    return np.where(k > 0, lower, 0.0), np.where(k < n, upper, 1.0)


def _bounded_half_width(var: np.ndarray, n: int, alpha: float) -> np.ndarray:
    r"""Half-width of a two-sided level-α interval for the mean of [0, 1] variables.

    ``n = 1``: Hoeffding with α/2 per side. ``n >= 2``: per side, the smaller of Hoeffding and the
    Maurer–Pontil (2009, Thm 4) empirical Bernstein bound, each at α/4 (union bound):
    Hoeffding :math:`\sqrt{\ln(4/\alpha)/(2n)}`, Bernstein
    :math:`\sqrt{2 V_n \ln(8/\alpha)/n} + 7\ln(8/\alpha)/(3(n-1))` with the unbiased variance
    :math:`V_n`.
    """
    if n == 1:
        return np.full(np.shape(var), math.sqrt(math.log(2.0 / alpha) / 2.0))
    log_term = math.log(8.0 / alpha)
    hoeffding = math.sqrt(math.log(4.0 / alpha) / (2.0 * n))
    bernstein = np.sqrt(2.0 * np.maximum(var, 0.0) * log_term / n) + 7.0 * log_term / (3.0 * (n - 1))
    return np.minimum(hoeffding, bernstein)


def _resolve_kind(arr: np.ndarray, kind: str) -> str:
    if kind not in ("auto", "binary", "bounded"):
        raise ValueError(f"kind must be 'auto', 'binary' or 'bounded', got {kind!r}")
    if kind == "bounded":
        return kind
    binary = bool(np.all((arr == 0.0) | (arr == 1.0)))
    if kind == "binary" and not binary:
        raise ValueError("kind='binary' needs every sample to be 0 or 1; use kind='bounded'")
    return "binary" if binary else "bounded"


def _mean_interval(arr: np.ndarray, alpha: float, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) along axis 0 of a validated [0, 1] array with a resolved ``kind``."""
    n = arr.shape[0]
    mean = arr.mean(axis=0)
    if kind == "binary":
        low, high = _clopper_pearson_two_sided(arr.sum(axis=0), n, alpha)
        return mean, low, high
    var = arr.var(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
    width = _bounded_half_width(var, n, alpha)
    return mean, np.clip(mean - width, 0.0, 1.0), np.clip(mean + width, 0.0, 1.0)


def mean_interval(samples: ArrayLike, alpha: float, kind: IntervalKind = "auto") -> tuple[FloatOrArray, FloatOrArray]:
    r"""Two-sided confidence interval for the mean of ``[0, 1]``-valued samples (along axis 0).

    With probability ``>= 1 − α`` (for each column separately), ``low <= E h <= high``:

    * ``"binary"`` — samples in {0, 1}: exact Clopper–Pearson, α/2 per tail.
    * ``"bounded"`` — samples in [0, 1]: per side the better of Hoeffding and the Maurer–Pontil
      empirical Bernstein bound, each at α/4 (see ``_bounded_half_width``).
    * ``"auto"`` — ``"binary"`` if every sample is 0 or 1, else ``"bounded"``. Right for a
      {0,1}-valued statistic; if the statistic can take values inside (0, 1), pass ``"bounded"``
      (choosing the interval from the observed values is not covered by the guarantee).

    Parameters
    ----------
    samples
        Array ``[n, ...]`` of i.i.d. draws of the statistic, ``n >= 1``, values in ``[0, 1]``, at
        least one coordinate (no zero-length axis).
    alpha
        Failure probability in ``(0, 1)``.
    kind
        ``"auto"``, ``"binary"`` or ``"bounded"``.

    Returns
    -------
    (low, high)
        Floats (1-D samples) or arrays of shape ``samples.shape[1:]``.
    """
    a = _check_alpha(alpha)
    arr = _check_samples(samples)
    _, low, high = _mean_interval(arr, a, _resolve_kind(arr, kind))
    return _as_output(low), _as_output(high)


# --------------------------------------------------------------------------------------------
# Monte-Carlo Neyman–Pearson bounds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonteCarloBounds(_Unpackable):
    """Result of :func:`np_bounds_mc`; unpacks as ``(lower, upper)``.

    Attributes
    ----------
    lower, upper
        Bounds on the smoothed mean of ``h`` at every ``c + δ``, ``‖δ‖ <= r``.
    mean_lower, mean_upper
        Confidence interval for the smoothed mean at ``c`` itself.
    mean
        Sample mean at ``c``.
    n
        Number of samples.
    kind
        Interval used: ``"binary"`` (Clopper–Pearson) or ``"bounded"``.
    """

    lower: FloatOrArray
    upper: FloatOrArray
    mean_lower: FloatOrArray
    mean_upper: FloatOrArray
    mean: FloatOrArray
    n: int
    kind: str
    _unpack = ("lower", "upper")


def np_bounds_mc(
    samples: ArrayLike, radius: ArrayLike, sigma: float, alpha: float, kind: IntervalKind = "auto"
) -> MonteCarloBounds:
    r"""Monte-Carlo version of :func:`np_bounds`, valid with probability ``>= 1 − α``.

    From ``n`` samples :math:`h(Y_i)`, :math:`Y_i \sim P_c`, take the two-sided level-α interval
    ``[p̲, p̄]`` of :func:`mean_interval` for :math:`p = \mathbb E_{P_c} h`, then

    .. math:: \text{lower} = \Phi(\Phi^{-1}(\underline p) - r/\sigma), \quad
              \text{upper} = \Phi(\Phi^{-1}(\bar p) + r/\sigma).

    Both maps are increasing in ``p``, so on the event ``p ∈ [p̲, p̄]`` (probability
    ``>= 1 − α``) the interval contains :math:`\mathbb E_{P_{c+\delta}} h` for **all**
    ``‖δ‖ <= r`` at once. Multi-column samples give one interval per column, each at level α
    (not simultaneous; see :func:`mean_band` for that).

    Parameters
    ----------
    samples
        ``[n, ...]`` draws of ``h ∈ [0, 1]`` at ``c`` (bool/int/float; torch tensors accepted),
        ``n >= 1``, at least one coordinate.
    radius
        Threat radius ``r >= 0``.
    sigma
        Noise standard deviation ``> 0``.
    alpha
        Failure probability in ``(0, 1)``.
    kind
        Interval type, see :func:`mean_interval`.

    Returns
    -------
    MonteCarloBounds
        Unpacks as ``(lower, upper)``.
    """
    a = _check_alpha(alpha)
    s = _check_sigma(sigma)
    r = _check_radius(radius)
    arr = _check_samples(samples)
    resolved = _resolve_kind(arr, kind)
    mean, low, high = _mean_interval(arr, a, resolved)
    lower, _ = np_bounds(low, r, s)
    _, upper = np_bounds(high, r, s)
    return MonteCarloBounds(
        lower=lower,
        upper=upper,
        mean_lower=_as_output(low),
        mean_upper=_as_output(high),
        mean=_as_output(mean),
        n=int(arr.shape[0]),
        kind=resolved,
    )


@dataclass(frozen=True)
class MeanBand(_Unpackable):
    """Result of :func:`mean_band`; unpacks as ``(lower, upper)``.

    Attributes
    ----------
    lower, upper
        Per-coordinate band for the smoothed mean at every ``c + δ``, ``‖δ‖ <= r``
        (shape ``samples.shape[1:]``, in the original ``[low, high]`` units).
    mean
        Sample mean at ``c`` (original units).
    alpha_per_coordinate
        ``α / d``: the level of each coordinate's interval.
    n
        Number of samples.
    """

    lower: FloatOrArray
    upper: FloatOrArray
    mean: FloatOrArray
    alpha_per_coordinate: float
    n: int
    _unpack = ("lower", "upper")


def _column_moments(flat: np.ndarray, low: float, high: float, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of the columns of ``flat`` ``[n, d]`` rescaled to [0, 1].

    Two passes over row chunks in float64 (memory ``chunk_size × d``), validating each chunk.
    """
    n, width = flat.shape
    scale = high - low
    total = np.zeros(width)
    for start in range(0, n, chunk_size):
        block = (flat[start : start + chunk_size].astype(np.float64) - low) / scale
        if np.isnan(block).any():
            raise ValueError("samples contain NaN")
        if (block < 0).any() or (block > 1).any():
            raise ValueError(f"samples must lie in [low, high] = [{low}, {high}]")
        total += block.sum(axis=0)
    mean = total / n
    if n == 1:
        return mean, np.zeros(width)
    squares = np.zeros(width)
    for start in range(0, n, chunk_size):
        block = (flat[start : start + chunk_size].astype(np.float64) - low) / scale - mean
        squares += np.einsum("ij,ij->j", block, block)
    return mean, squares / (n - 1)


def mean_band(
    samples: ArrayLike,
    radius: ArrayLike,
    sigma: float,
    alpha: float,
    low: float = 0.0,
    high: float = 1.0,
    *,
    chunk_size: int = 1024,
) -> MeanBand:
    r"""Per-coordinate band containing the smoothed mean at every ``c + δ``, ``‖δ‖ <= r``.

    For outputs with coordinates in ``[low, high]`` (pixels), rescale coordinate ``j`` to
    ``[0, 1]``: :math:`h_j(x) = (\mathbb E_z G_j(x, z) - \text{low})/(\text{high}-\text{low})`
    is a ``[0, 1]``-function of the noisy input, so :func:`np_bounds` applies to it. Per
    coordinate take the two-sided ``"bounded"`` interval of :func:`mean_interval` at level
    ``α/d`` (Bonferroni over the ``d`` coordinates), push its ends through
    :math:`\Phi(\Phi^{-1}(\cdot) \mp r/\sigma)` and map back. With probability ``>= 1 − α`` the
    band contains :math:`\mathbb E_{P_{c+\delta}} Y_j` for every coordinate ``j`` and every
    ``‖δ‖ <= r`` simultaneously.

    Parameters
    ----------
    samples
        ``[n, *shape]`` i.i.d. outputs at ``c`` (NumPy or torch, any real dtype incl. bfloat16),
        ``n >= 1``, at least one coordinate (``prod(shape) >= 1``).
    radius
        Threat radius ``r >= 0`` (scalar).
    sigma
        Noise standard deviation ``> 0``.
    alpha
        Simultaneous failure probability in ``(0, 1)``.
    low, high
        Range of every coordinate, ``low < high``.
    chunk_size
        Rows processed at once (bounds the float64 working memory).

    Returns
    -------
    MeanBand
        Unpacks as ``(lower, upper)``, each of shape ``shape``.
    """
    a, s = _check_alpha(alpha), _check_sigma(sigma)
    r = float(_check_radius(_scalar(radius, "radius")))
    lo, hi = _scalar(low, "low"), _scalar(high, "high")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite low < high, got low={lo}, high={hi}")
    chunk = _check_int(chunk_size, "chunk_size", 1)
    arr = _to_numpy(samples, "samples")
    if arr.ndim == 0 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"samples must be a numeric array [n, ...] with n >= 1, got {arr.shape}")
    _check_has_coordinates(arr, "samples")
    flat = arr.reshape(arr.shape[0], -1)
    a_coord = a / flat.shape[1]
    mean, var = _column_moments(flat, lo, hi, chunk)
    width = _bounded_half_width(var, flat.shape[0], a_coord)
    lower, _ = np_bounds(np.clip(mean - width, 0.0, 1.0), r, s)
    _, upper = np_bounds(np.clip(mean + width, 0.0, 1.0), r, s)
    shape = arr.shape[1:]
    return MeanBand(
        lower=_as_output((lo + (hi - lo) * np.asarray(lower)).reshape(shape)),
        upper=_as_output((lo + (hi - lo) * np.asarray(upper)).reshape(shape)),
        mean=_as_output((lo + (hi - lo) * mean).reshape(shape)),
        alpha_per_coordinate=a_coord,
        n=int(flat.shape[0]),
    )


# --------------------------------------------------------------------------------------------
# Data-dependent Wasserstein certificate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SurvivalSteps:
    """The DKW upper band ``S`` on ``P(ρ(Y, y₀) > t)`` as a step function on ``[0, D]``.

    On the k-th interval (``k = 0..n``, between the k-th and (k+1)-th smallest distance, with 0
    and ``D`` at the ends) ``S = min(1, (n − k)/n + η)``; ``lengths[k]`` is that interval's length.
    """

    lengths: np.ndarray
    band: np.ndarray
    probit: np.ndarray
    diameter: float


def _survival_steps(distances: ArrayLike, alpha: float, diameter: float) -> _SurvivalSteps:
    d = _as_float_array(distances, "distances")
    if d.ndim != 1 or d.size < 1:
        raise ValueError(f"distances must be a 1-D array with at least one entry, got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError("distances contain NaN")
    if (d < 0).any() or (d > diameter).any():
        raise ValueError(f"distances must lie in [0, diameter] = [0, {diameter}]")
    n = d.size
    edges = np.concatenate(([0.0], np.sort(d), [diameter]))
    band = np.minimum(1.0, (n - np.arange(n + 1)) / n + dkw_margin(n, alpha))
    return _SurvivalSteps(np.diff(edges), band, special.ndtri(band), diameter)


def _w1_from_steps(steps: _SurvivalSteps, radius: float, sigma: float) -> float:
    """``min(D·τ, Σ_k L_k [min(τ, S_k) + min(τ, Φ(Φ⁻¹(S_k) + r/σ))])`` (Φ⁻¹(1) = inf → Φ = 1)."""
    tau = float(special.erf(radius / (2.0 * math.sqrt(2.0) * sigma)))
    moved = special.ndtr(steps.probit + radius / sigma)
    integrand = np.minimum(tau, steps.band) + np.minimum(tau, moved)
    return min(steps.diameter * tau, float(steps.lengths @ integrand))


def wasserstein_certificate(
    distances: ArrayLike, radius: ArrayLike, sigma: float, alpha: float, diameter: float
) -> FloatOrArray:
    r"""Data-dependent upper bound on :math:`W_1(P_c, P_{c+\delta})`, all ``‖δ‖ <= r`` at once.

    Input: ``distances[i] = ρ(Y_i, y₀)`` for ``n`` i.i.d. :math:`Y_i \sim P_c` and a reference
    output ``y₀`` chosen **independently** of these samples (a pilot batch, a deterministic
    output). With :math:`\tau = 2\Phi(r/(2\sigma)) - 1`, :math:`\hat S` the empirical survival
    function of the distances, :math:`\eta` = :func:`dkw_margin` ``(n, α)`` and
    :math:`S(t) = \min(1, \hat S(t) + \eta)`, returns

    .. math:: \min\Big(D\tau,\; \int_0^D \big[\min(\tau, S(t))
              + \min\big(\tau, \Phi(\Phi^{-1}(S(t)) + r/\sigma)\big)\big]\,dt\Big),

    valid with probability ``>= 1 − α`` over the samples. The integrand is piecewise constant
    between sorted distances, so the integral is an exact finite sum (``O(n log n)``).

    Derivation. Fix ``‖δ‖ <= r``. Couple :math:`X \sim N(c, \sigma^2 I)` and
    :math:`X' \sim N(c+\delta, \sigma^2 I)` maximally, so the event :math:`A = \{X \ne X'\}`
    has :math:`P(A) = \mathrm{TV} \le \tau`, and share ``z``: :math:`Y = G(X, z) \sim P_c`,
    :math:`Y' = G(X', z) \sim P_{c+\delta}`, and ``Y = Y'`` off ``A``. Then
    :math:`W_1 \le \mathbb E[\rho(Y, Y')1_A]`. On ``A``, :math:`\rho(Y, Y') \le D` and
    :math:`\rho(Y, Y') \le U + U'` with :math:`U = \rho(Y, y_0)`, :math:`U' = \rho(Y', y_0)`
    in ``[0, D]``. So :math:`W_1 \le D\tau` and
    :math:`W_1 \le \mathbb E[U 1_A] + \mathbb E[U' 1_A]`, where
    :math:`\mathbb E[U 1_A] = \int_0^D P(U > t, A)\,dt \le \int_0^D \min(\tau, P(U > t))\,dt`
    (same for ``U'``). :math:`h_t(x) = P_z(\rho(G(x, z), y_0) > t)` is a ``[0, 1]``-function of
    the input, so by :func:`np_bounds`
    :math:`P(U' > t) \le \Phi(\Phi^{-1}(P(U > t)) + \|\delta\|/\sigma)`. By the one-sided DKW
    inequality (Massart) :math:`P(U > t) \le S(t)` for all ``t`` at once with probability
    ``>= 1 − α``; every term is nondecreasing in :math:`P(U > t)` and in ``‖δ‖``, which gives
    the bound for all ``‖δ‖ <= r`` simultaneously.

    Parameters
    ----------
    distances
        1-D array of ``n >= 1`` distances in ``[0, D]``.
    radius
        Threat radius ``r >= 0``; an array gives one certificate per radius (same event).
    sigma
        Noise standard deviation ``> 0``.
    alpha
        Failure probability in ``(0, 1)``.
    diameter
        Diameter ``D`` of the output metric (finite, ``> 0``).

    Returns
    -------
    float or ndarray
        The W₁ certificate (``<= D·τ``; ``0`` at ``r = 0``).
    """
    s, a, dia = _check_sigma(sigma), _check_alpha(alpha), _check_diameter(diameter)
    r = _check_radius(radius)
    steps = _survival_steps(distances, a, dia)
    values = np.array([_w1_from_steps(steps, float(ri), s) for ri in r.ravel()])
    return _as_output(values.reshape(r.shape))


def wasserstein_certified_radius(
    distances: ArrayLike,
    epsilon: float,
    sigma: float,
    alpha: float,
    diameter: float,
    *,
    rtol: float = 1e-10,
) -> float:
    r"""Largest radius whose :func:`wasserstein_certificate` is ``<= ω``.

    The certificate is continuous and strictly increasing in ``r`` (on every interval one of the
    two terms is ``τ`` or :math:`\Phi(\Phi^{-1}(S) + r/\sigma)` with ``S < 1``), equals ``0`` at
    ``r = 0`` and tends to ``D``. The root of ``certificate(r) = ω`` is bracketed by doubling and
    found by Brent's method (the band ``S`` is computed once) to relative tolerance ``rtol``; if
    the root found overshoots, it is lowered by ``2·rtol`` relative, so the returned radius
    always has certificate ``<= ω`` (conservative by at most ``2·rtol`` relative). Returns
    ``inf`` when ``ω >= D`` and ``0`` when ``ω = 0``. Valid with probability ``>= 1 − α`` (the
    same DKW event as the certificate, for all radii at once).

    Parameters
    ----------
    distances, sigma, alpha, diameter
        As in :func:`wasserstein_certificate`.
    epsilon
        The tolerance ``ω >= 0`` on W₁.
    rtol
        Relative tolerance of the root (``>= 1e-15``).

    Returns
    -------
    float
        The certified radius.
    """
    s, a, dia = _check_sigma(sigma), _check_alpha(alpha), _check_diameter(diameter)
    eps = _scalar(epsilon, "epsilon")
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"epsilon must be >= 0, got {eps!r}")
    if not (math.isfinite(rtol) and 1e-15 <= rtol < 1):
        raise ValueError(f"rtol must lie in [1e-15, 1), got {rtol!r}")
    steps = _survival_steps(distances, a, dia)
    if eps >= dia:
        return math.inf
    if eps == 0.0:
        return 0.0
    lo, hi = 0.0, s
    while _w1_from_steps(steps, hi, s) <= eps:  # terminates: the certificate reaches D > ω
        lo, hi = hi, 2.0 * hi
    root = optimize.brentq(lambda r: _w1_from_steps(steps, r, s) - eps, lo, hi, xtol=1e-300, rtol=rtol)
    # brentq leaves the root within rtol·root of the true one: step below it to stay sound, and
    # fall back to the bracket's lower end (certificate <= ω by construction) should that fail.
    for candidate in (root, root * (1.0 - 2.0 * rtol)):
        if _w1_from_steps(steps, candidate, s) <= eps:
            return candidate
    return lo


# --------------------------------------------------------------------------------------------
# Smoothed classifiers (Cohen, Rosenfeld & Kolter 2019) and token sequences
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohenCertificate(_Unpackable):
    """Result of :func:`cohen_certify`; unpacks as ``(prediction, radius)``.

    Attributes
    ----------
    prediction
        Class index, or ``ABSTAIN`` (``-1``); ``int`` or ``int`` array ``[B]``.
    radius
        Certified L2 radius (``0.0`` when abstaining).
    p_lower
        One-sided Clopper–Pearson lower bound on the top-class probability.
    count, n
        Estimation count of the selected class and the estimation sample size.
    """

    prediction: int | np.ndarray
    radius: FloatOrArray
    p_lower: FloatOrArray
    count: int | np.ndarray
    n: int | np.ndarray
    _unpack = ("prediction", "radius")


def cohen_radius(p_a: ArrayLike, sigma: float, p_b: ArrayLike | None = None) -> FloatOrArray:
    r"""Certified L2 radius of Cohen et al. (2019) from bounds on the two top class probabilities.

    If :math:`p_A(x) \ge \underline{p_A} \ge \overline{p_B} \ge \max_{k \ne A} p_k(x)`, the smoothed
    classifier returns ``A`` at every ``x + δ`` with ``‖δ‖₂ < R``, where

    .. math:: R = \frac{\sigma}{2}\big(\Phi^{-1}(\underline{p_A}) - \Phi^{-1}(\overline{p_B})\big).

    Without ``p_b`` the bound :math:`\overline{p_B} = 1 - \underline{p_A}` is used (the other classes
    share at most the mass that ``A`` leaves), which gives :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`.
    This is the closed form only; :func:`cohen_certify` adds the Monte-Carlo confidence bound and the
    abstention.

    Parameters
    ----------
    p_a
        Lower bound(s) :math:`\underline{p_A}` on the top class probability, in ``[0, 1]``.
    sigma
        Noise standard deviation ``> 0``.
    p_b
        Upper bound(s) :math:`\overline{p_B}` on every other class probability, in ``[0, 1]``
        (default ``1 − p_a``; broadcasts against ``p_a``).

    Returns
    -------
    float or ndarray
        ``R``, or ``0.0`` where :math:`\underline{p_A} \le \overline{p_B}` (no certificate); ``inf``
        at :math:`\underline{p_A} = 1` (or :math:`\overline{p_B} = 0`) when the other bound is not ``0``
        (resp. ``1``).
    """
    s = _check_sigma(sigma)
    top = _as_float_array(p_a, "p_a")
    other = 1.0 - top if p_b is None else _as_float_array(p_b, "p_b")
    for name, arr in (("p_a", top), ("p_b", other)):
        if np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
            raise ValueError(f"{name} must lie in [0, 1] (and not be NaN)")
    top, other = np.broadcast_arrays(top, other)
    certified = top > other
    radius = 0.5 * s * (special.ndtri(np.where(certified, top, 0.5)) - special.ndtri(np.where(certified, other, 0.5)))
    return _as_output(np.where(certified, radius, 0.0))


def _cohen_radius(p_lower: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(abstain mask, radius): abstain iff ``p̲ < 1/2``; radius ``σ Φ⁻¹(p̲)`` else ``0.0``."""
    abstain = p_lower < 0.5
    radius = np.where(abstain, 0.0, sigma * special.ndtri(np.where(abstain, 0.5, p_lower)))
    return abstain, radius


def _int_output(x: np.ndarray) -> int | np.ndarray:
    return int(x) if np.ndim(x) == 0 else x.astype(np.int64)


def cohen_certify(
    counts_selection: ArrayLike, counts_estimation: ArrayLike, sigma: float, alpha: float
) -> CohenCertificate:
    r"""CERTIFY of Cohen et al. (2019), from class counts (``locuslab/smoothing`` ``core.py``).

    ``ĉ_A = argmax counts_selection`` (first index on ties, as ``ndarray.argmax``);
    ``n_A = counts_estimation[ĉ_A]``, ``n = Σ counts_estimation``;
    :math:`\underline{p_A}` = :func:`clopper_pearson_lower` ``(n_A, n, α)``
    (= ``proportion_confint(n_A, n, alpha=2α, method="beta")[0]``). Abstain (``-1``, radius
    ``0.0``) if :math:`\underline{p_A} < 1/2`, else return ``ĉ_A`` and
    :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`.

    Guarantee: with probability ``>= 1 − α`` over the estimation samples, if the result is not
    an abstention then the smoothed classifier
    :math:`g(x) = \arg\max_k P(f(x + \varepsilon) = k)` satisfies ``g(x + δ) = ĉ_A`` for every
    ``‖δ‖ < R`` (the selection counts must be independent of the estimation counts).

    Parameters
    ----------
    counts_selection, counts_estimation
        Non-negative integer counts ``[K]`` or ``[B, K]`` (same shape), each row summing to
        ``>= 1``.
    sigma
        Noise standard deviation ``> 0``.
    alpha
        Failure probability in ``(0, 1)``.

    Returns
    -------
    CohenCertificate
        Unpacks as ``(prediction, radius)``; arrays ``[B]`` for batched counts.
    """
    s, a = _check_sigma(sigma), _check_alpha(alpha)
    sel = _check_counts(counts_selection, "counts_selection")
    est = _check_counts(counts_estimation, "counts_estimation")
    if sel.shape != est.shape:
        raise ValueError(f"counts_selection {sel.shape} and counts_estimation {est.shape} differ in shape")
    top = sel.argmax(axis=-1)
    count = np.take_along_axis(est, top[..., None], axis=-1)[..., 0]
    n = est.sum(axis=-1)
    p_lower = np.asarray(clopper_pearson_lower(count, n, a))
    abstain, radius = _cohen_radius(p_lower, s)
    return CohenCertificate(
        prediction=_int_output(np.where(abstain, ABSTAIN, top)),
        radius=_as_output(radius),
        p_lower=_as_output(p_lower),
        count=_int_output(count),
        n=_int_output(n),
    )


def binomial_test_half(k: ArrayLike, n: ArrayLike) -> FloatOrArray:
    r"""Two-sided exact binomial test p-value of ``k`` successes in ``n`` trials against ``p = 1/2``.

    By the symmetry of :math:`\mathrm{Bin}(n, 1/2)`, with :math:`m = \min(k, n-k)`:
    :math:`\min\big(1,\; F(m) + \bar F(n - m - 1)\big)` (``F`` the CDF, :math:`\bar F` the
    survival function), and ``1`` when ``2k = n``. This is the expression that
    ``scipy.stats.binomtest(k, n, 0.5).pvalue`` evaluates (its ``1 + 1e-7`` relative tolerance
    on equal probabilities only matters when ``n`` exceeds about ``10⁷``), vectorised.

    Parameters
    ----------
    k, n
        Integers with ``0 <= k <= n``, ``n >= 1`` (broadcast).
    """
    kk, nn = _check_trials(k, n, ("k", "n"))
    m = np.minimum(kk, nn - kk)
    pvalue = stats.binom.cdf(m, nn, 0.5) + stats.binom.sf(nn - m - 1, nn, 0.5)
    return _as_output(np.where(2 * kk == nn, 1.0, np.minimum(1.0, pvalue)))


def cohen_predict(counts: ArrayLike, alpha: float) -> int | np.ndarray:
    r"""PREDICT of Cohen et al. (2019): the top class, or ``-1`` if not significant.

    Let ``n₁ >= n₂`` be the two largest counts and ``ĉ`` the class of ``n₁``. Return ``ĉ`` if the
    two-sided binomial test of ``n₁`` successes in ``n₁ + n₂`` trials against ``p = 1/2`` has
    p-value ``<= α`` (:func:`binomial_test_half`, = ``scipy.stats.binomtest(...).pvalue``),
    else abstain (``-1``). On ties ``n₁ = n₂`` the p-value is 1, so the tie order is irrelevant.
    Guarantee (Hung & Fithian 2019, arXiv:1610.03944): the probability of returning a class other than
    :math:`g(x)` is at most ``α``.

    Parameters
    ----------
    counts
        Non-negative integer counts ``[K]`` or ``[B, K]`` with ``K >= 2``, rows summing to ``>= 1``.
    alpha
        Failure probability in ``(0, 1)``.

    Returns
    -------
    int or ndarray
        The class index or ``-1``, per row.
    """
    a = _check_alpha(alpha)
    arr = _check_counts(counts, "counts")
    if arr.shape[-1] < 2:
        raise ValueError(f"counts needs at least 2 classes, got {arr.shape[-1]}")
    ordered = np.sort(arr, axis=-1)
    first, second = ordered[..., -1], ordered[..., -2]
    pvalue = np.asarray(binomial_test_half(first, first + second))
    return _int_output(np.where(pvalue > a, ABSTAIN, arr.argmax(axis=-1)))


@dataclass(frozen=True)
class SequenceCertificate(_Unpackable):
    """Result of :func:`sequence_certificate`; unpacks as ``(tokens, step_radii, radius)``.

    Attributes
    ----------
    tokens
        Emitted tokens ``[T]``.
    step_radii
        Cohen radius ``R_t`` of each step at level ``α / num_steps`` (``0.0`` if it abstains).
    radius
        ``min_t R_t``: the whole sequence is certified for ``‖δ‖ < radius``.
    prefix_radii
        ``prefix_radii[s-1] = min_{t <= s} R_t``: tokens ``y_1..y_s`` are certified for
        ``‖δ‖ < prefix_radii[s-1]``.
    p_lower
        Per-step Clopper–Pearson lower bounds on the emitted token's probability.
    abstained
        Per-step abstention mask (``p_lower < 1/2``).
    alpha_per_step
        ``α / num_steps``.
    """

    tokens: np.ndarray
    step_radii: np.ndarray
    radius: float
    prefix_radii: np.ndarray
    p_lower: np.ndarray
    abstained: np.ndarray
    alpha_per_step: float
    _unpack = ("tokens", "step_radii", "radius")

    def certified_prefix_length(self, radius: float) -> int:
        """Length of the longest prefix certified at ``radius`` (``radius < prefix_radii[s-1]``)."""
        r = float(_check_radius(_scalar(radius, "radius")))
        return int(np.sum(self.prefix_radii > r))


def _check_tokens(tokens: ArrayLike, steps: int, classes: int) -> np.ndarray:
    arr = _to_numpy(tokens, "tokens")
    if arr.shape != (steps,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array of shape ({steps},), got {arr.dtype} {arr.shape}")
    if (arr < 0).any() or (arr >= classes).any():
        raise ValueError(f"tokens must lie in [0, {classes}) (the vocabulary of the counts)")
    return arr.astype(np.int64)


def sequence_certificate(
    counts_selection: ArrayLike | None,
    counts_estimation: ArrayLike,
    sigma: float,
    alpha: float,
    tokens: ArrayLike | None = None,
    num_steps: int | None = None,
) -> SequenceCertificate:
    r"""Certified token sequence of smoothed greedy decoding (one Cohen certificate per step).

    Step ``t`` of the smoothed decoder is a smoothed classifier of the prompt embedding:
    :math:`g_t(c') = \arg\max_k P(\text{next token} = k \mid y_{<t}, c' + \varepsilon)`, given the
    already-emitted prefix. For the emitted token :math:`y_t` (by default the argmax of the
    step's selection counts), :math:`\underline p_t` = :func:`clopper_pearson_lower`
    ``(counts_estimation[t, y_t], n_t, α/T)`` and :math:`R_t = \sigma\Phi^{-1}(\underline p_t)`,
    or ``0`` (abstain) if :math:`\underline p_t < 1/2`. Guarantee: with probability
    ``>= 1 − α`` (union bound over the ``T`` steps; each step's estimation samples are fresh
    given the prefix), for every ``‖δ‖ < min_{t<=s} R_t`` the smoothed decoder at ``c + δ``
    emits :math:`y_1..y_s` — by induction on ``t``, since the prefixes then agree.

    Parameters
    ----------
    counts_selection
        Per-step selection counts ``[T, V]``; ignored (may be ``None``) when ``tokens`` is given.
    counts_estimation
        Per-step estimation counts ``[T, V]`` (independent of the choice of tokens).
    sigma
        Noise standard deviation ``> 0``.
    alpha
        Failure probability for the whole sequence, in ``(0, 1)``.
    tokens
        Emitted tokens ``[T]``; default: ``argmax`` of each selection row. Must not be chosen
        from the estimation counts.
    num_steps
        Bonferroni denominator ``T`` (default ``len(tokens)``); it must be fixed before sampling,
        e.g. ``max_new_tokens`` when decoding may stop early at an end token.

    Returns
    -------
    SequenceCertificate
        Unpacks as ``(tokens, step_radii, radius)``.
    """
    s, a = _check_sigma(sigma), _check_alpha(alpha)
    est = _check_counts(counts_estimation, "counts_estimation")
    if est.ndim != 2 or est.shape[0] < 1:
        raise ValueError(f"counts_estimation must have shape [T, V] with T >= 1, got {est.shape}")
    if tokens is None:
        if counts_selection is None:
            raise ValueError("give counts_selection or tokens (the emitted tokens)")
        sel = _check_counts(counts_selection, "counts_selection")
        if sel.shape != est.shape:
            raise ValueError(f"counts_selection {sel.shape} and counts_estimation {est.shape} differ in shape")
        tokens = sel.argmax(axis=-1)
    toks = _check_tokens(tokens, est.shape[0], est.shape[1])
    steps = est.shape[0] if num_steps is None else _check_int(num_steps, "num_steps", est.shape[0])
    a_step = a / steps
    p_lower = np.asarray(clopper_pearson_lower(est[np.arange(est.shape[0]), toks], est.sum(axis=-1), a_step))
    abstain, radii = _cohen_radius(p_lower, s)
    prefix = np.minimum.accumulate(radii)
    return SequenceCertificate(toks, radii, float(prefix[-1]), prefix, p_lower, abstain, a_step)


# --------------------------------------------------------------------------------------------
# Concentration certificates (generators whose output law is constant on a set of conditions)
# --------------------------------------------------------------------------------------------


def concentration_tv(p_lower: ArrayLike, radius: ArrayLike, sigma: float) -> FloatOrArray:
    r"""TV bound of a smoothed generator whose output law is fixed on a set that holds mass ``p̲``.

    Assume a set :math:`A` of conditions, fixed before sampling, on which the base generator's
    output law is one and the same :math:`Q^*` (:math:`\mathrm{Law}\,G(x, z) = Q^*` for every
    :math:`x \in A`; e.g. :math:`G(x, z) = \tilde G(h(x), z)` for a projection :math:`h` and
    :math:`A = h^{-1}(h^*)`), and :math:`P(c + \varepsilon \in A) \ge \underline p`. Then for
    every :math:`\|\delta\|_2 \le r`

    .. math:: \mathrm{TV}(P_c, P_{c+\delta}) \le 1 - \Phi\big(\Phi^{-1}(\underline p) - r/\sigma\big).

    Both laws are mixtures that put mass :math:`p = P(c+\varepsilon \in A)` and
    :math:`p' = P(c+\delta+\varepsilon \in A)` on the common component :math:`Q^*`, so
    :math:`\mathrm{TV} \le 1 - \min(p, p')`, and the Neyman–Pearson bound gives
    :math:`p' \ge \Phi(\Phi^{-1}(p) - r/\sigma)`. It is never larger than ``1 − p̲`` at ``r = 0``
    and, for ``p̲`` near one, far below the data-free :func:`tv_bound` (at ``p̲ = 0.9999``,
    ``r = σ``: 0.0033 against 0.38).

    Parameters
    ----------
    p_lower
        Lower bound(s) on :math:`P(c + \varepsilon \in A)`, in ``[0, 1]`` (e.g.
        :func:`clopper_pearson_lower`).
    radius
        Threat radius ``r >= 0`` (broadcasts against ``p_lower``).
    sigma
        Noise standard deviation ``> 0``.

    Returns
    -------
    float or ndarray
        The bound, in ``[0, 1]``.
    """
    lower, _ = np_bounds(p_lower, radius, sigma)
    return _as_output(1.0 - np.asarray(lower))


@dataclass(frozen=True)
class ConcentrationCertificate(_Unpackable):
    """Result of :func:`concentration_certificate`; unpacks as ``(tv, w1)``.

    Attributes
    ----------
    tv, w1
        Bounds on :math:`\\mathrm{TV}(P_c, P_{c+\\delta})` and :math:`W_1 \\le D\\,\\mathrm{TV}`
        for every ``‖δ‖ <= radius``.
    identity_radius
        :math:`\\sigma\\Phi^{-1}(\\underline p)` when ``p̲ > 1/2`` (else ``0.0``): for ``‖δ‖`` below it the
        noisy condition still falls in ``A`` with probability ``> 1/2`` (Cohen et al.'s radius).
    p_lower
        One-sided Clopper–Pearson lower bound on :math:`P(c + \\varepsilon \\in A)` at level ``α``.
    count, n
        Draws that fell in ``A``, and all draws.
    """

    tv: FloatOrArray
    w1: FloatOrArray
    identity_radius: float
    p_lower: float
    count: int
    n: int
    _unpack = ("tv", "w1")


def _check_hits(count: ArrayLike, n: ArrayLike) -> tuple[int, int]:
    """Scalar :func:`_check_trials`."""
    k, m = _check_trials(_scalar(count, "count"), _scalar(n, "n"), ("count", "n"))
    return int(k), int(m)


def concentration_certificate(count: ArrayLike, n: ArrayLike, radius: ArrayLike, sigma: float, alpha: float,
                              diameter: float = 1.0) -> ConcentrationCertificate:
    r"""Monte-Carlo concentration certificate: :func:`concentration_tv` from ``count`` of ``n`` draws in ``A``.

    ``count`` draws of :math:`c + \varepsilon_i` out of ``n`` fell in the fixed set ``A`` (see
    :func:`concentration_tv`; ``A`` must not be chosen from these draws, e.g. the cell of
    :math:`h(c)` itself, or the majority cell of an independent selection sample).
    :math:`\underline p` = :func:`clopper_pearson_lower` ``(count, n, α)``. With probability
    ``>= 1 − α`` over the draws, for every :math:`\|\delta\|_2 \le r`

    .. math:: \mathrm{TV}(P_c, P_{c+\delta}) \le 1 - \Phi\big(\Phi^{-1}(\underline p) - r/\sigma\big),
              \qquad W_1(P_c, P_{c+\delta}) \le D\,\big(1 - \Phi(\Phi^{-1}(\underline p) - r/\sigma)\big),

    and the noisy condition stays in ``A`` with probability ``> 1/2`` for ``‖δ‖ < σΦ⁻¹(p̲)``.
    No generator pass is needed: only the membership of the noisy conditions in ``A``.

    Parameters
    ----------
    count, n
        Integers ``0 <= count <= n``, ``n >= 1``.
    radius
        Threat radius ``r >= 0`` (scalar or array).
    sigma
        Noise standard deviation ``> 0``.
    alpha
        Failure probability in ``(0, 1)``.
    diameter
        Diameter ``D > 0`` of the output metric (for the W₁ bound).
    """
    s, a, d = _check_sigma(sigma), _check_alpha(alpha), _check_diameter(diameter)
    k, m = _check_hits(count, n)
    p_lower = float(clopper_pearson_lower(k, m, a))
    tv = concentration_tv(p_lower, radius, s)
    radius_id = s * float(special.ndtri(p_lower)) if p_lower > 0.5 else 0.0
    return ConcentrationCertificate(tv, _as_output(d * np.asarray(tv)), radius_id, p_lower, k, m)


def concentration_certified_radius(count: ArrayLike, n: ArrayLike, epsilon: float, sigma: float, alpha: float,
                                   diameter: float = 1.0) -> float:
    r"""Largest ``r`` whose :func:`concentration_certificate` W₁ bound is ``<= ω`` (``epsilon``).

    .. math:: r = \sigma\big(\Phi^{-1}(\underline p) - \Phi^{-1}(1 - \omega / D)\big)^+,

    ``inf`` for ``ω >= D`` (the bound never exceeds ``D``), ``0.0`` when even ``r = 0`` fails.
    Valid with probability ``>= 1 − α`` (the same event as the certificate's).
    """
    s, a, d = _check_sigma(sigma), _check_alpha(alpha), _check_diameter(diameter)
    eps = float(_check_nonnegative(_scalar(epsilon, "epsilon"), "epsilon"))
    k, m = _check_hits(count, n)
    if eps >= d:
        return math.inf
    p_lower = float(clopper_pearson_lower(k, m, a))
    return max(0.0, s * float(special.ndtri(p_lower) - special.ndtri(1.0 - eps / d)))


# --------------------------------------------------------------------------------------------
# Center smoothing (Kumar & Goldstein, NeurIPS 2021; aounon/center-smoothing)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CenterCertificate(_Unpackable):
    """Result of :func:`center_certificate`; unpacks as ``(center_index, radius)``.

    Attributes
    ----------
    center_index
        Row of ``pairwise_distances`` chosen as the center ``ŷ``.
    median_radius
        ``r̂``: the center's median distance to the samples.
    delta_1, delta_2
        The reference's ``Δ₁ = sqrt(ln(2/α₁)/(2n))`` and ``Δ₂ = 1/2 − (frac − Δ₁)``.
    is_good
        Whether the Δ-check ``max(Δ₁, Δ₂) <= Δ`` passed.
    quantile
        The quantile level ``ν + η``: the mass level ``ν = Φ(Φ⁻¹(1/2 + Δ) + r/σ)`` plus the DKW
        margin ``η = sqrt(ln(1/α₂)/(2m))``.
    radius
        Certified output radius ``coeff ×`` the ``(ν + η)``-quantile of the certification distances;
        ``inf`` (no bound) when abstaining.
    abstained
        ``True`` when the Δ-check failed or ``ν + η >= 1``.
    """

    center_index: int
    median_radius: float
    delta_1: float
    delta_2: float
    is_good: bool
    quantile: float
    radius: float
    abstained: bool
    _unpack = ("center_index", "radius")


def _check_distance_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    arr = _as_float_array(x, name)
    if arr.ndim != ndim or arr.size < 1:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return arr


def select_center(pairwise_distances: ArrayLike) -> tuple[int, float]:
    r"""The candidate with the smallest median distance to the samples (a 2-approximate 1/2-MEB).

    ``pairwise_distances[i, j] = ρ(candidate_i, sample_j)``. Square with the candidates equal to
    the samples (diagonal 0) is the reference's ``meb``; ``[n_cntr, n]`` with separate candidates
    is its ``compute_center_hd``. Ties go to the first index.

    Returns
    -------
    (index, median_radius)
        ``argmin_i median_j d[i, j]`` and that median (``np.median``: mean of the two middle
        values for even ``n``).
    """
    d = _check_distance_array(pairwise_distances, "pairwise_distances", 2)
    medians = np.median(d, axis=1)
    index = int(np.argmin(medians))
    return index, float(medians[index])


_QUANTILE_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation", "interpolated_inverted_cdf",
                     "hazen", "weibull", "linear", "median_unbiased", "normal_unbiased", "lower", "higher",
                     "midpoint", "nearest")
"""The ``method`` values ``np.quantile`` accepts."""


def _check_center_alphas(alpha_1: ArrayLike, alpha_2: ArrayLike) -> tuple[float, float]:
    """``α₁, α₂ ∈ (0, 1)``, ``α₂ <= 1/2`` (Massart's condition for the DKW margin), ``α₁ + α₂ < 1``."""
    a1, a2 = _check_alpha(alpha_1, "alpha_1"), _check_alpha(alpha_2, "alpha_2")
    if a2 > 0.5:
        raise ValueError(f"alpha_2 must be <= 1/2 (the DKW margin with Massart's constant needs it), got {a2!r}")
    if a1 + a2 >= 1.0:
        raise ValueError(f"alpha_1 + alpha_2 must be < 1 (the certificate holds with probability "
                         f">= 1 - alpha_1 - alpha_2), got {a1!r} + {a2!r}")
    return a1, a2


def _check_center_delta(delta: ArrayLike) -> float:
    """``Δ ∈ (0, 1/2)``."""
    dlt = _scalar(delta, "delta")
    if not 0.0 < dlt < 0.5:
        raise ValueError(f"delta must lie in (0, 1/2), got {dlt!r}")
    return dlt


def _check_center_delta_coeff(delta: ArrayLike, radius_coeff: ArrayLike) -> tuple[float, float]:
    """``Δ ∈ (0, 1/2)`` and a finite ``radius_coeff >= 3`` (``1 + β`` for the 2-approximate center)."""
    dlt, coeff = _check_center_delta(delta), _scalar(radius_coeff, "radius_coeff")
    if not (math.isfinite(coeff) and coeff >= 3.0):
        raise ValueError(f"radius_coeff must be a finite number >= 3 (= 1 + beta with beta = 2: select_center's "
                         f"center is only 2-approximate), got {coeff!r}")
    return dlt, coeff


def center_min_samples(delta: float, alpha_1: float = 0.005) -> int:
    r"""The smallest batch size at which center smoothing's Δ-check can pass: ``⌈ln(2/α₁) / (2Δ²)⌉``.

    The check (:func:`center_certificate`) needs ``Δ₁ = sqrt(ln(2/α₁)/(2n)) <= Δ`` for the ``n``
    center-estimation samples, and ``Δ₂ = 1/2 − (frac − sqrt(ln(2/α₁)/(2n'))) <= Δ`` for the ``n'``
    check samples, where ``frac`` is about 1/2 (the share of fresh samples within the center's median
    distance). Both batches therefore need at least this many samples; with fewer the certificate
    abstains whatever the outputs are. At the reference's ``Δ = 0.05, α₁ = 0.005`` it is 1,199.

    Raises
    ------
    ValueError
        Unless ``Δ ∈ (0, 1/2)`` and ``α₁ ∈ (0, 1)``.
    """
    dlt = _check_center_delta(delta)
    a1 = _check_alpha(alpha_1, "alpha_1")
    return math.ceil(math.log(2.0 / a1) / (2.0 * dlt * dlt))


def _center_check(median_radius: float, n: int, check: np.ndarray, alpha_1: float) -> tuple[float, float]:
    """(Δ₁, Δ₂) of the reference: Δ₁ from the n median samples, Δ₂ from the fresh check batch."""
    delta_1 = math.sqrt(math.log(2.0 / alpha_1) / (2.0 * n))
    delta_check = math.sqrt(math.log(2.0 / alpha_1) / (2.0 * check.size))
    fraction = float(np.count_nonzero(check <= median_radius)) / check.size
    return delta_1, 0.5 - (fraction - delta_check)


def center_certificate(
    pairwise_distances: ArrayLike,
    check_distances: ArrayLike,
    certify_distances: ArrayLike,
    radius: float,
    sigma: float,
    *,
    alpha_1: float = 0.005,
    alpha_2: float = 0.005,
    delta: float = 0.05,
    radius_coeff: float = 3.0,
    quantile_method: str = "inverted_cdf",
) -> CenterCertificate:
    r"""Center smoothing certificate (Kumar & Goldstein 2021) from precomputed distances.

    1. Center: :func:`select_center` on ``pairwise_distances`` → ``ŷ`` and its median distance
       ``r̂`` (over ``n`` samples).
    2. Δ-check on a fresh batch (``check_distances[i] = ρ(Y_i, ŷ)``, ``n'`` samples):
       ``Δ₁ = sqrt(ln(2/α₁)/(2n))``, ``frac = #{ρ <= r̂}/n'``,
       ``Δ₂ = 1/2 − (frac − sqrt(ln(2/α₁)/(2n')))``; good iff ``max(Δ₁, Δ₂) <= Δ``. With
       ``n = n'`` this is exactly the reference.
    3. Certificate from ``m`` fresh distances to ``ŷ`` (``certify_distances``): the mass level
       ``ν = Φ(Φ⁻¹(1/2 + Δ) + r/σ)`` and the DKW margin ``η = sqrt(ln(1/α₂)/(2m))``; abstain if the
       check failed or ``ν + η >= 1``; else the output radius is
       ``radius_coeff × Q_{ν+η}(certify_distances)``.

    Guarantee (Kumar & Goldstein, Thm 1 with a β-approximate center, ``radius_coeff >= 1 + β``,
    ``β = 2`` for a sample point of smallest median distance, hence ``radius_coeff >= 3``): with
    probability ``>= 1 − α₁ − α₂``, the smoothed output moves by at most the returned radius (in
    ``ρ``) for every ``‖δ‖ <= r``. A smaller ``radius_coeff`` is not covered (it fails routinely),
    so it is refused; ``α₁ + α₂ < 1`` is required for the statement to say anything, and
    ``α₂ <= 1/2`` for the DKW margin below (Massart's condition, as in :func:`dkw_margin`). The
    DKW term makes ``Q_{ν+η}`` an upper confidence bound on the population ``ν``-quantile ``R_ν``
    **provided** ``Q_{ν+η}`` is a value ``t`` with empirical CDF ``>= ν + η``: that is
    ``quantile_method="inverted_cdf"`` (the ``⌈m(ν + η)⌉``-th smallest distance), the default here. The
    reference uses ``np.quantile``'s default ``"linear"``, which interpolates below that order
    statistic (anti-conservative by up to one sample, i.e. ``1/m`` in probability); pass
    ``quantile_method="linear"`` to reproduce it. The reference abstains only for ``ν + η > 1``.

    Parameters
    ----------
    pairwise_distances
        ``[n_cntr, n]`` distances from candidate centers to the center-estimation samples
        (square with zero diagonal when the candidates are those samples).
    check_distances
        ``[n']`` distances from a fresh batch to the chosen center.
    certify_distances
        ``[m]`` distances from another fresh batch to the chosen center.
    radius
        Input threat radius ``r`` (the reference's ``eps_in``), ``>= 0``.
    sigma
        Noise standard deviation ``> 0``.
    alpha_1, alpha_2
        Failure probabilities of the center check and of the quantile bound: each in ``(0, 1)``,
        ``alpha_2 <= 1/2``, ``alpha_1 + alpha_2 < 1``.
    delta
        The reference's ``Δ`` in ``(0, 1/2)``.
    radius_coeff
        ``1 + β`` (reference default 3), ``>= 3``; larger values stay sound but loosen the radius.
    quantile_method
        A method of ``np.quantile`` (see above), checked before any work, abstention or not.

    Raises
    ------
    ValueError
        On any parameter outside the ranges above, whether or not the certificate would abstain.

    Returns
    -------
    CenterCertificate
        Unpacks as ``(center_index, radius)``.
    """
    s, r = _check_sigma(sigma), float(_check_radius(_scalar(radius, "radius")))
    a1, a2 = _check_center_alphas(alpha_1, alpha_2)
    dlt, coeff = _check_center_delta_coeff(delta, radius_coeff)
    if quantile_method not in _QUANTILE_METHODS:
        raise ValueError(f"quantile_method must be one of np.quantile's methods {_QUANTILE_METHODS}, "
                         f"got {quantile_method!r}")
    index, median_radius = select_center(pairwise_distances)
    check = _check_distance_array(check_distances, "check_distances", 1)
    cert = _check_distance_array(certify_distances, "certify_distances", 1)
    n = _as_float_array(pairwise_distances, "pairwise_distances").shape[1]
    delta_1, delta_2 = _center_check(median_radius, n, check, a1)
    is_good = max(delta_1, delta_2) <= dlt
    q = float(special.ndtr(special.ndtri(0.5 + dlt) + r / s)) + math.sqrt(math.log(1.0 / a2) / (2.0 * cert.size))
    abstained = (not is_good) or q >= 1.0
    out = math.inf if abstained else coeff * float(np.quantile(cert, q, method=quantile_method))
    return CenterCertificate(index, median_radius, delta_1, delta_2, is_good, q, out, abstained)
