"""Gaussian smoothing noise on condition embeddings: isotropic, diagonal, low-rank and spiked.

Every noise object describes a centred Gaussian ``N(0, Σ)`` over a condition embedding of event shape
``E`` (written ``*E`` in the shapes below: ``(E,)`` for a class embedding of dimension ``E``, ``(L, E)``
for the ``L`` token rows of a prompt), flattened to ``d = prod(E)`` coordinates (``d = L·E`` for a
prompt) wherever a matrix is involved, and offers

- ``sample(shape, generator)`` / ``sample_(out, generator)``: draws through a passed
  ``torch.Generator`` only, on that generator's device, filled in place;
- ``whiten(δ) = Σ^{-1/2} δ`` and ``mahalanobis_norm(δ) = ‖Σ^{-1/2} δ‖₂`` per batch row;
- the geometry of the certified ellipsoid ``{δ : ‖Σ^{-1/2} δ‖₂ ≤ R}``: its inscribed ℓ₂ radius
  ``R·λ_min(Σ)^{1/2}`` and its log-volume.

Why the ellipsoid: smoothing with ``N(0, Σ)`` is smoothing with ``N(0, I)`` in the whitened
coordinates ``x' = Σ^{-1/2} x``, so every isotropic certificate of radius ``R`` at ``σ = 1``
certifies the ellipsoid above (its interior ``< R`` for Cohen's radius, which is strict); its
largest inscribed ball has radius ``R·sigma_min``.
Isotropic ``N(0, σ²I)`` is the special case ``sigma_min = σ``, ellipsoid = ball of radius ``Rσ``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

Shape = tuple[int, ...]


def _positive_float(name: str, value: float) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _as_shape(name: str, shape: Sequence[int] | torch.Size) -> Shape:
    """Return ``shape`` as a tuple of positive ints, raising ``ValueError`` otherwise."""
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as err:
        raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}") from err
    if any(s < 1 for s in out):
        raise ValueError(f"{name} must contain positive sizes only, got {out}")
    return out


def _check_radius(radius: float | np.ndarray) -> np.ndarray:
    """Return ``radius`` as a float array, raising ``ValueError`` if any entry is < 0 or NaN."""
    r = np.asarray(radius, dtype=float)
    if np.any(np.isnan(r)) or np.any(r < 0):
        raise ValueError(f"radius must be >= 0 (inf allowed), got {radius!r}")
    return r


def _finite_tensor(name: str, value: Tensor | np.ndarray | Sequence[float], ndim_min: int) -> Tensor:
    """Return ``value`` as a finite float64 CPU tensor with at least ``ndim_min`` dimensions."""
    t = torch.as_tensor(value).detach().to("cpu", torch.float64)
    if t.ndim < ndim_min or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty tensor with >= {ndim_min} dims, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite (no NaN/inf)")
    return t


class Noise(ABC):
    """A centred Gaussian ``N(0, Σ)`` on condition embeddings of shape ``event_shape``.

    Subclasses implement in-place sampling, whitening and ``log det Σ``; the rest follows.

    Parameters
    ----------
    dtype
        Floating dtype of the samples (default ``torch.float32``).
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    # -- shape ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def event_shape(self) -> Shape | None:
        """The embedding shape ``E`` this noise expects; ``None`` when any shape is accepted."""

    def check_event_shape(self, shape: Sequence[int] | torch.Size) -> None:
        """Raise ``ValueError`` unless ``shape`` is the embedding shape this noise expects."""
        expected = self.event_shape
        if expected is not None and tuple(shape) != expected:
            raise ValueError(
                f"embedding shape {tuple(shape)} does not match the noise's event_shape {expected}; "
                "build the noise for this embedding shape (or reshape the condition)"
            )

    def _dim(self, dim: int | None) -> int:
        """Return ``d = prod(event_shape)``, or ``dim`` when the noise accepts any shape."""
        if self.event_shape is not None:
            return math.prod(self.event_shape)
        if dim is None or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"this noise has no event_shape: pass dim=D (a positive int), got {dim!r}")
        return dim

    # -- sampling ------------------------------------------------------------------------
    @abstractmethod
    def sample_(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """Fill ``out`` (shape ``(batch, *E)``, on the generator's device) with i.i.d. draws; return it."""

    def sample(self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype | None = None) -> Tensor:
        """Draw ``shape[0]`` i.i.d. samples of ``N(0, Σ)``, shape ``(batch, *E)``.

        Drawn on ``generator.device`` with ``dtype`` (default ``self.dtype``) through ``generator``
        only: the same generator state gives the same samples.

        Raises
        ------
        ValueError
            If ``shape`` is not ``(batch, *E)`` with ``E`` this noise's ``event_shape``.
        """
        shape = _as_shape("shape", shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (batch, *event_shape), got {shape}")
        self.check_event_shape(shape[1:])
        out = torch.empty(shape, dtype=dtype or self.dtype, device=generator.device)
        return self.sample_(out, generator)

    def _on(self, key: str, value: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Return a cached copy of parameter ``value`` on ``device`` with ``dtype``."""
        k = (key, torch.device(device), dtype)
        if k not in self._cache:
            self._cache[k] = value.to(device=device, dtype=dtype)
        return self._cache[k]

    # -- geometry ------------------------------------------------------------------------
    @abstractmethod
    def whiten(self, delta: Tensor) -> Tensor:
        """Return ``Σ^{-1/2} δ`` for ``delta`` of shape ``(batch, *E)`` (float64, differentiable)."""

    def mahalanobis_norm(self, delta: Tensor) -> Tensor:
        """Return ``‖Σ^{-1/2} δ_b‖₂`` for each row ``b`` of ``delta`` (shape ``(batch, *E)``) as float64."""
        return self.whiten(delta).flatten(1).norm(dim=1)

    def _check_delta(self, delta: Tensor) -> Tensor:
        """Validate a ``(batch, *E)`` perturbation tensor and return it as float64."""
        if not isinstance(delta, Tensor) or delta.ndim < 2:
            raise ValueError("delta must be a tensor of shape (batch, *event_shape)")
        self.check_event_shape(delta.shape[1:])
        return delta.to(torch.float64)

    @property
    @abstractmethod
    def sigma_min(self) -> float:
        """``λ_min(Σ)^{1/2}``: the smallest noise standard deviation over all directions."""

    @property
    @abstractmethod
    def sigma_max(self) -> float:
        """``λ_max(Σ)^{1/2}``: the largest noise standard deviation over all directions."""

    @abstractmethod
    def log_det(self, dim: int | None = None) -> float:
        """``log det Σ`` (``dim`` = d is needed only when the noise has no ``event_shape``)."""

    @abstractmethod
    def covariance(self, dim: int | None = None) -> Tensor:
        """The dense ``d × d`` covariance ``Σ`` over the flattened embedding (float64, CPU)."""

    def inscribed_radius(self, radius: float | np.ndarray) -> float | np.ndarray:
        """Largest ℓ₂ ball inside the ellipsoid ``‖Σ^{-1/2} δ‖₂ ≤ R``: radius ``R·λ_min(Σ)^{1/2}``.

        Proof: ``‖Σ^{-1/2} δ‖ ≤ ‖δ‖ / λ_min(Σ)^{1/2}``, with equality along the eigenvector of
        ``λ_min``; so ``‖δ‖ ≤ R·sigma_min`` implies membership and no larger ball fits (the same
        holds for the open ellipsoid and ball). ``R`` must be ``>= 0``; ``inf`` (the whole space)
        maps to ``inf``; negative or NaN ``R`` raises ``ValueError``.
        """
        r = _check_radius(radius) * self.sigma_min
        return float(r) if r.ndim == 0 else r

    def log_volume(self, radius: float, dim: int | None = None) -> float:
        """``log vol{δ : ‖Σ^{-1/2} δ‖₂ ≤ R}`` in ``R^d``.

        ``= (d/2)·log π − log Γ(d/2 + 1) + d·log R + ½·log det Σ`` (``-inf`` at ``R = 0``).
        """
        r = float(_check_radius(radius))
        d = self._dim(dim)
        log_r = math.log(r) if r > 0 else -math.inf
        return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0) + d * log_r + 0.5 * self.log_det(d)


class GaussianNoise(Noise):
    """Isotropic ``N(0, σ² I)``.

    Parameters
    ----------
    sigma
        Standard deviation ``σ > 0`` (finite).
    event_shape
        Optional embedding shape ``E``; ``None`` accepts any shape (then ``dim`` must be given to
        ``log_det`` / ``log_volume`` / ``covariance``).
    dtype
        Sample dtype (default ``torch.float32``).

    Raises
    ------
    ValueError
        If ``sigma`` is not a positive finite number, or ``event_shape`` has a size < 1.
    """

    def __init__(
        self, sigma: float, event_shape: Sequence[int] | None = None, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(dtype)
        self.sigma = _positive_float("sigma", sigma)
        self._event_shape = None if event_shape is None else _as_shape("event_shape", event_shape)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, event_shape={self._event_shape})"

    @property
    def event_shape(self) -> Shape | None:
        return self._event_shape

    def sample_(self, out: Tensor, generator: torch.Generator) -> Tensor:
        torch.randn(out.shape, generator=generator, out=out)
        return out.mul_(self.sigma)

    def whiten(self, delta: Tensor) -> Tensor:
        """``Σ^{-1/2} δ = δ / σ``."""
        return self._check_delta(delta) / self.sigma

    @property
    def sigma_min(self) -> float:
        return self.sigma

    @property
    def sigma_max(self) -> float:
        return self.sigma

    def log_det(self, dim: int | None = None) -> float:
        """``log det(σ² I_D) = 2D·log σ``."""
        return 2.0 * self._dim(dim) * math.log(self.sigma)

    def covariance(self, dim: int | None = None) -> Tensor:
        return self.sigma**2 * torch.eye(self._dim(dim), dtype=torch.float64)


class DiagonalGaussianNoise(Noise):
    """Axis-aligned ``N(0, diag(s²))`` with one standard deviation per embedding coordinate.

    Parameters
    ----------
    scales
        Tensor of shape ``E`` (the embedding shape) with entries ``s > 0``, finite.
    dtype
        Sample dtype (default ``torch.float32``).

    Raises
    ------
    ValueError
        If ``scales`` is empty, 0-d, non-finite, or has an entry ``<= 0``.
    """

    def __init__(self, scales: Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(dtype)
        s = _finite_tensor("scales", scales, ndim_min=1)
        if (s <= 0).any():
            raise ValueError("scales must all be > 0 (each is a standard deviation)")
        self.scales = s

    def __repr__(self) -> str:
        return f"DiagonalGaussianNoise(event_shape={self.event_shape}, sigma_min={self.sigma_min:.4g})"

    @property
    def event_shape(self) -> Shape:
        return tuple(self.scales.shape)

    def sample_(self, out: Tensor, generator: torch.Generator) -> Tensor:
        torch.randn(out.shape, generator=generator, out=out)
        return out.mul_(self._on("scales", self.scales, out.device, out.dtype))

    def whiten(self, delta: Tensor) -> Tensor:
        """``Σ^{-1/2} δ = δ / s`` coordinate-wise."""
        d = self._check_delta(delta)
        return d / self.scales.to(d.device)

    @property
    def sigma_min(self) -> float:
        return float(self.scales.min())

    @property
    def sigma_max(self) -> float:
        return float(self.scales.max())

    def log_det(self, dim: int | None = None) -> float:
        """``log det diag(s²) = 2 Σ log s``."""
        return float(2.0 * torch.log(self.scales).sum())

    def covariance(self, dim: int | None = None) -> Tensor:
        return torch.diag(self.scales.flatten() ** 2)


class LowRankGaussianNoise(Noise):
    """``N(0, σ² I + U Uᵀ)`` over the flattened embedding: isotropic plus a low-rank part.

    Sampled as ``σ ε + U ξ`` with ``ε ~ N(0, I_d)``, ``ξ ~ N(0, I_k)`` independent (covariance
    ``σ² I + U Uᵀ``). Whitening uses the thin SVD ``U = Q S Vᵀ`` (the Woodbury identity in U's
    singular basis, exact):
    ``Σ^{-1/2} δ = (δ − Q Qᵀ δ)/σ + Q diag((σ² + s_i²)^{-1/2}) Qᵀ δ``, hence
    ``‖Σ^{-1/2} δ‖² = ‖δ − Q Qᵀ δ‖²/σ² + Σ_i (q_iᵀ δ)²/(σ² + s_i²)``.

    Parameters
    ----------
    sigma
        Isotropic standard deviation ``σ > 0`` (finite).
    factors
        ``U``, shape ``(d, k)``, finite, ``d = prod(event_shape)``.
    event_shape
        Embedding shape ``E`` (default ``(d,)``), e.g. ``(L, E)`` for the embeddings of a prompt of ``L`` tokens.
    dtype
        Sample dtype (default ``torch.float32``).

    Raises
    ------
    ValueError
        If ``sigma`` is not positive finite, ``factors`` is not a finite 2-D tensor, or
        ``prod(event_shape) != D``.
    """

    def __init__(
        self,
        sigma: float,
        factors: Tensor | np.ndarray,
        event_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(dtype)
        self.sigma = _positive_float("sigma", sigma)
        u = _finite_tensor("factors", factors, ndim_min=2)
        if u.ndim != 2:
            raise ValueError(f"factors must have shape (D, k), got {tuple(u.shape)}")
        shape = (u.shape[0],) if event_shape is None else _as_shape("event_shape", event_shape)
        if math.prod(shape) != u.shape[0]:
            raise ValueError(
                f"event_shape {shape} has {math.prod(shape)} coordinates but factors has D={u.shape[0]} rows"
            )
        self.factors = u
        self._event_shape = shape
        q, s, _ = torch.linalg.svd(u, full_matrices=False)
        self._basis, self._singular = q, s

    def __repr__(self) -> str:
        rank = self.factors.shape[1]
        return f"LowRankGaussianNoise(sigma={self.sigma}, rank={rank}, event_shape={self._event_shape})"

    @property
    def event_shape(self) -> Shape:
        return self._event_shape

    def sample_(self, out: Tensor, generator: torch.Generator) -> Tensor:
        torch.randn(out.shape, generator=generator, out=out)
        out.mul_(self.sigma)
        eta_shape = (out.shape[0], self.factors.shape[1])
        eta = torch.randn(eta_shape, generator=generator, device=out.device, dtype=out.dtype)
        u = self._on("factors", self.factors, out.device, out.dtype)
        out.view(out.shape[0], -1).addmm_(eta, u.T)
        return out

    def whiten(self, delta: Tensor) -> Tensor:
        d = self._check_delta(delta)
        flat = d.flatten(1)
        q = self._basis.to(flat.device)
        coef = flat @ q
        inv_sd = (self.sigma**2 + self._singular.to(flat.device) ** 2).rsqrt()
        white = (flat - coef @ q.T) / self.sigma + (coef * inv_sd) @ q.T
        return white.reshape(d.shape)

    @property
    def sigma_min(self) -> float:
        d, r = self.factors.shape[0], self._singular.numel()
        smallest = 0.0 if r < d else float(self._singular.min())
        return math.sqrt(self.sigma**2 + smallest**2)

    @property
    def sigma_max(self) -> float:
        return math.sqrt(self.sigma**2 + float(self._singular.max()) ** 2)

    def log_det(self, dim: int | None = None) -> float:
        """``log det Σ = 2(d − r)·log σ + Σ_i log(σ² + s_i²)``, ``r = min(d, k)``."""
        d, r = self.factors.shape[0], self._singular.numel()
        return 2.0 * (d - r) * math.log(self.sigma) + float(torch.log(self.sigma**2 + self._singular**2).sum())

    def covariance(self, dim: int | None = None) -> Tensor:
        return self.sigma**2 * torch.eye(self.factors.shape[0], dtype=torch.float64) + self.factors @ self.factors.T


class SpikedGaussianNoise(Noise):
    r"""``N(0, Σ)`` with ``Σ = a² (I − V Vᵀ) + V diag(b²) Vᵀ``: isotropic plus a rank-``k`` change.

    ``V`` (``[d, k]``, orthonormal columns) spans a subspace with its own standard deviations
    ``b_i`` (smaller or larger than ``a``); the complement has ``a``. Unlike
    :class:`LowRankGaussianNoise` (``σ²I + UUᵀ``, which can only add noise), this
    can also *remove* noise along ``V``: the shape needed when the sensitive directions are few.

    Sampling: ``x = a ε + V((b − a) ⊙ Vᵀε)``, ``ε ~ N(0, I_d)`` (covariance as above).
    Whitening: ``Σ^{-1/2}δ = (δ − VVᵀδ)/a + V(Vᵀδ / b)``; ``log det Σ = 2(d − k) log a + 2Σ log b_i``.

    Raises
    ------
    ValueError
        Non-positive ``a`` or ``b``, ``V`` not ``[d, k]`` with orthonormal columns (tolerance 1e-6),
        ``k`` not matching ``b``, or ``prod(event_shape) != d``.
    """

    def __init__(self, isotropic: float, basis: Tensor, scales: Tensor, event_shape: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(dtype)
        a = float(isotropic)
        v = torch.as_tensor(basis).detach().to("cpu", torch.float64)
        b = torch.as_tensor(scales).detach().to("cpu", torch.float64).reshape(-1)
        if not (math.isfinite(a) and a > 0) or not bool(torch.isfinite(b).all()) or bool((b <= 0).any()):
            raise ValueError("isotropic and every entry of scales must be positive finite standard deviations")
        if v.ndim != 2 or v.shape[1] != b.numel() or v.shape[1] > v.shape[0]:
            raise ValueError(f"basis must be [D, k] with k = len(scales) <= D, got {tuple(v.shape)} and k={b.numel()}")
        if float((v.T @ v - torch.eye(v.shape[1], dtype=v.dtype)).abs().max()) > 1e-6:
            raise ValueError("basis columns must be orthonormal (orthonormalise with torch.linalg.qr)")
        shape = (v.shape[0],) if event_shape is None else tuple(int(s) for s in event_shape)
        if math.prod(shape) != v.shape[0]:
            raise ValueError(f"event_shape {shape} has {math.prod(shape)} coordinates but basis has D={v.shape[0]}")
        self.isotropic, self.basis, self.scales, self._event_shape = a, v, b, shape

    def __repr__(self) -> str:
        return (f"SpikedGaussianNoise(isotropic={self.isotropic:.4g}, rank={self.scales.numel()}, "
                f"event_shape={self._event_shape})")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._event_shape

    def sample_(self, out: Tensor, generator: torch.Generator) -> Tensor:
        torch.randn(out.shape, generator=generator, out=out)
        flat = out.view(out.shape[0], -1)
        v = self._on("basis", self.basis, out.device, out.dtype)
        extra = self._on("extra", self.scales - self.isotropic, out.device, out.dtype)
        coef = (flat @ v) * extra
        flat.mul_(self.isotropic).addmm_(coef, v.T)
        return out

    def whiten(self, delta: Tensor) -> Tensor:
        d = self._check_delta(delta)
        flat = d.flatten(1)
        v = self.basis.to(flat.device)
        coef = flat @ v
        white = (flat - coef @ v.T) / self.isotropic + (coef / self.scales.to(flat.device)) @ v.T
        return white.reshape(d.shape)

    def _spread(self) -> Tensor:
        rest = torch.tensor([self.isotropic], dtype=torch.float64)
        return self.scales if self.scales.numel() == self.basis.shape[0] else torch.cat([self.scales, rest])

    @property
    def sigma_min(self) -> float:
        return float(self._spread().min())

    @property
    def sigma_max(self) -> float:
        return float(self._spread().max())

    def log_det(self, dim: int | None = None) -> float:
        d, k = self.basis.shape
        return 2.0 * (d - k) * math.log(self.isotropic) + float(2.0 * torch.log(self.scales).sum())

    def covariance(self, dim: int | None = None) -> Tensor:
        v = self.basis
        spikes = v @ torch.diag(self.scales**2 - self.isotropic**2) @ v.T
        return self.isotropic**2 * torch.eye(v.shape[0], dtype=torch.float64) + spikes
