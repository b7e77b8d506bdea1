r"""Adaptive noise calibration that keeps the smoothing certificate valid.

Two halves:

**Sensitivity** of a differentiable map ``f: R^d → R^O`` (a generator with its own randomness held
fixed, e.g. ``u ↦ diffusion.sample_from_noise(u, x_T)``, or the LM's next-token logits) to its
condition embedding, at points ``c_1..c_N``: Jacobian-vector products ``J v`` and
vector-Jacobian products ``Jᵀ w`` through autograd (:class:`JacobianOperator`), block power
iteration for the top singular values / right singular vectors (:func:`top_singular`),
Hutchinson for ``‖J‖_F²`` (:func:`frobenius_sq`) and a low-rank-plus-isotropic estimate of the
average Jacobian Gram ``Ḡ = (1/N) Σ_n J_nᵀ J_n`` (:func:`average_gram` by subspace iteration, or
:func:`sketch_gram` from vector-Jacobian products alone). Every function returns the number of
rows it pushed through ``f`` (:class:`PassCount`).

**Strategies**, each returning a noise object and the certificate it supports
(:class:`NoiseCertificate`):

- :func:`global_calibration`: one σ for every input, the smallest on a grid that meets a target
  (certified W₁ ≤ ω or certified class-consistency ≥ κ at radius r) on calibration conditions,
  re-certified on held-out ones;
- :func:`per_class_table`: a σ per condition *identity* (class), computed offline;
- :func:`anisotropic_noise`: ``Σ`` shaped by ``Ḡ`` (more noise where the output is insensitive);
  the certified region is the ellipsoid ``‖Σ^{-1/2}δ‖ ≤ R``;
- :func:`schedule_noise`: fresh condition noise ``σ_t`` at each of ``T`` denoising steps,
  certified through ``σ_eff = (Σ_t σ_t⁻²)^{-1/2}``;
- :func:`naive_sigma_rule` + :func:`attack_claimed_certificate`: a σ(x) tuned per input at test
  time, implemented **only** as the counter-example (Súkeník et al., ICML 2022): the attack finds a
  perturbation whose true total variation exceeds the claimed bound.

Why the sound strategies are sound: the certificate of Gaussian smoothing rests on one fact,
``TV(N(c, Σ), N(c + δ, Σ)) = 2Φ(‖Σ^{-1/2}δ‖/2) − 1``, plus data processing. It needs the *same*
``Σ`` at ``c`` and at ``c + δ``: any rule that fixes ``Σ`` without looking at the (possibly
perturbed) input keeps it; a ``Σ(x)`` computed from the input does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Literal

import numpy as np
import torch
from scipy import special
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from smoothgen import certify
from smoothgen.noise import DiagonalGaussianNoise, GaussianNoise, Noise, SpikedGaussianNoise
from smoothgen.smoothing import SmoothedGenerator, derive_seed

__all__ = [
    "AttackResult",
    "CalibrationResult",
    "CellSigma",
    "GramEstimate",
    "HutchinsonEstimate",
    "IntervalToy",
    "JacobianOperator",
    "NoiseCertificate",
    "PassCount",
    "SharedDraw",
    "SigmaTable",
    "SingularSpectrum",
    "Target",
    "anisotropic_noise",
    "attack_claimed_certificate",
    "average_gram",
    "consistency_values",
    "effective_sigma",
    "frobenius_sq",
    "gaussian_sampler",
    "global_calibration",
    "isotropic_certificate",
    "naive_sigma_rule",
    "noise_certificate",
    "per_class_table",
    "per_step_condition",
    "safe_margin",
    "schedule_for",
    "schedule_noise",
    "sketch_gram",
    "smallest_passing",
    "table_from_grid",
    "top_singular",
    "tv_distance",
    "voronoi_margin",
    "wasserstein_values",
    "with_fixed_randomness",
]

Map = Callable[[Tensor], Tensor]
"""A batched map ``f(u[B, *E]) -> y[B, *O]``, row ``r`` depending on ``u[r]`` only (see :class:`JacobianOperator`)."""


# ============================================================================================
# Sensitivity
# ============================================================================================
@dataclass
class PassCount:
    """Rows pushed through the map, by kind of pass (a row = one point × one direction).

    Attributes
    ----------
    forward
        Rows evaluated by a plain forward pass of ``f`` (with or without a graph).
    forward_ad
        Rows evaluated by a forward-mode (dual-number) pass, ``mode="forward"`` only.
    backward
        Rows pulled back by one reverse pass; the double-backward JVP of ``mode="reverse"``
        costs two per row, a Gram product ``JᵀJv`` three.
    calls
        Calls of ``f`` (each on a batch of rows).
    """

    forward: int = 0
    forward_ad: int = 0
    backward: int = 0
    calls: int = 0

    def __sub__(self, other: PassCount) -> PassCount:
        return PassCount(self.forward - other.forward, self.forward_ad - other.forward_ad,
                         self.backward - other.backward, self.calls - other.calls)

    def copy(self) -> PassCount:
        return replace(self)


def with_fixed_randomness(fn: Callable[[Tensor, Tensor], Tensor], z: Tensor) -> Map:
    """Turn ``fn(u, z)`` with per-row randomness ``z[N, ...]`` into a map obeying the tiling contract.

    The result maps ``u[m·N, *E]`` to ``fn(u, z.repeat(m, ...))``: row ``r`` of ``u`` is paired
    with ``z[r mod N]``, which is how :class:`JacobianOperator` lays out ``m`` directions at ``N``
    points. E.g. ``with_fixed_randomness(diffusion.sample_from_noise, x_T)``.

    Raises
    ------
    ValueError
        When called with a batch whose size is not a multiple of ``N``.
    """
    if not isinstance(z, Tensor) or z.ndim < 1 or z.shape[0] < 1:
        raise ValueError("z must be a tensor [N, ...] holding one draw of the randomness per point")

    def tiled(u: Tensor) -> Tensor:
        reps, rest = divmod(u.shape[0], z.shape[0])
        if rest:
            raise ValueError(f"batch of {u.shape[0]} rows is not a multiple of the {z.shape[0]} fixed draws")
        return fn(u, z.repeat(reps, *([1] * (z.ndim - 1))))

    return tiled


@contextmanager
def _differentiable_attention() -> Iterator[None]:
    """Autograd on, and the math SDPA kernel: the flash / memory-efficient attention kernels
    implement neither forward-mode AD nor double backward; the math kernel computes the same
    attention from differentiable primitives."""
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        yield


def _grad(outputs: Tensor, inputs: Tensor, grad_outputs: Tensor, **kwargs: Any) -> Tensor:
    """``torch.autograd.grad`` for one input, zeros where the input was unused."""
    (g,) = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, **kwargs)
    return torch.zeros_like(inputs) if g is None else g


class JacobianOperator:
    r"""Jacobians ``J_n = ∂f(u)/∂u |_{u = c_n}`` of a batched map at ``N`` points, applied to directions.

    Tiling contract: to apply ``m`` directions at ``N`` points in one call, ``f`` receives
    ``u[m·N, *E]`` with row ``r = j·N + n`` equal to point ``c_n`` (direction ``j``); it must
    return ``[m·N, *O]`` whose row ``r`` depends on ``u[r]`` only and is ``f_n(u[r])``. Maps with
    fixed randomness satisfy this through :func:`with_fixed_randomness`; deterministic row-wise
    maps (LM logits, toys) satisfy it as they are.

    Products (directions ``v[m, N, d]``, cotangents ``w[m, N, O]``, flattened ``d = prod(E)``):
    :meth:`jvp` ``J_n v_{j,n}``, :meth:`vjp` ``J_nᵀ w_{j,n}``, :meth:`gram` ``J_nᵀ J_n v_{j,n}``.

    Parameters
    ----------
    f
        The map.
    points
        ``c[N, *E]``, floating, finite. Products run in its dtype and on its device.
    mode
        ``"reverse"`` (default): ``J v`` by double backward, ``∂/∂w ⟨Jᵀw, v⟩`` (one forward and two
        backward passes); works for every twice-differentiable map, diffusers' UNet included.
        ``"forward"``: ``torch.func.jvp`` (one dual forward pass; cheaper, but some modules lack
        forward-mode rules).
    max_rows
        Rows per call of ``f`` (a multiple of ``N`` is used; default all directions at once).

    Raises
    ------
    ValueError
        Bad points, an unknown mode, or ``max_rows < N``.
    """

    def __init__(self, f: Map, points: Tensor, *, mode: Literal["reverse", "forward"] = "reverse",
                 max_rows: int | None = None) -> None:
        if not callable(f):
            raise ValueError("f must be callable as f(u[B, *E]) -> y[B, *O]")
        if not isinstance(points, Tensor) or not points.is_floating_point() or points.ndim < 2:
            raise ValueError("points must be a floating tensor [N, *E] (N points, embedding shape E)")
        if not bool(torch.isfinite(points).all()):
            raise ValueError("points contain NaN or inf")
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
        n = points.shape[0]
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < n):
            raise ValueError(f"max_rows must be an int >= the number of points {n}, got {max_rows!r}")
        self.f, self.points, self.mode = f, points.detach(), mode
        self.num_points, self.event_shape = n, tuple(points.shape[1:])
        self.dim = math.prod(self.event_shape)
        self.max_rows = max_rows
        self.counts = PassCount()

    # -- layout ----------------------------------------------------------------------------
    def _check_directions(self, v: Tensor, width: int | None, name: str) -> Tensor:
        if not isinstance(v, Tensor) or v.ndim != 3 or v.shape[1] != self.num_points:
            raise ValueError(f"{name} must have shape [m, N={self.num_points}, width], got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
        if width is not None and v.shape[2] != width:
            raise ValueError(f"{name} must have width {width}, got {v.shape[2]}")
        return v.to(device=self.points.device, dtype=self.points.dtype)

    def _chunks(self, m: int) -> list[slice]:
        per = m if self.max_rows is None else max(1, self.max_rows // self.num_points)
        return [slice(s, min(m, s + per)) for s in range(0, m, per)]

    def _tile(self, j: int) -> Tensor:
        return self.points.repeat(j, *([1] * len(self.event_shape)))

    def _as_input(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0] * self.num_points, *self.event_shape)

    def _apply(self, v: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Run ``fn(u, v_rows)`` chunk by chunk and reshape to ``[m, N, width]``."""
        parts = []
        for sl in self._chunks(v.shape[0]):
            rows = v[sl]
            with _differentiable_attention():
                out = fn(self._tile(rows.shape[0]), rows.reshape(rows.shape[0] * self.num_points, -1))
            parts.append(out.detach().reshape(rows.shape[0], self.num_points, -1))
        return torch.cat(parts)

    def _forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        u = u.detach().requires_grad_(True)
        y = self.f(u)
        if not isinstance(y, Tensor) or y.shape[0] != u.shape[0]:
            raise ValueError(f"f returned {getattr(y, 'shape', type(y))} for {u.shape[0]} rows")
        self.counts.forward += u.shape[0]
        self.counts.calls += 1
        return u, y

    # -- products --------------------------------------------------------------------------
    def _jvp_rows(self, u: Tensor, v: Tensor) -> Tensor:
        if self.mode == "forward":
            _, jv = torch.func.jvp(self.f, (u,), (v.reshape(u.shape),))
            self.counts.forward_ad += u.shape[0]
            self.counts.calls += 1
            return jv.reshape(u.shape[0], -1)
        u, y = self._forward(u)
        w = torch.zeros_like(y, requires_grad=True)
        g = _grad(y, u, w, create_graph=True)
        self.counts.backward += 2 * u.shape[0]
        if not g.requires_grad:  # f is constant in u
            return torch.zeros(u.shape[0], y[0].numel(), dtype=y.dtype, device=y.device)
        return _grad(g, w, v.reshape(u.shape)).reshape(u.shape[0], -1)

    def _vjp_rows(self, u: Tensor, w: Tensor) -> Tensor:
        u, y = self._forward(u)
        self.counts.backward += u.shape[0]
        return _grad(y, u, w.reshape(y.shape)).reshape(u.shape[0], -1)

    def _gram_rows(self, u: Tensor, v: Tensor) -> Tensor:
        if self.mode == "forward":
            return self._vjp_rows(u, self._jvp_rows(u, v))
        u, y = self._forward(u)  # one forward serves both products
        w = torch.zeros_like(y, requires_grad=True)
        g = _grad(y, u, w, create_graph=True)
        self.counts.backward += 3 * u.shape[0]
        if not g.requires_grad:  # f is constant in u
            return torch.zeros(u.shape[0], self.dim, dtype=u.dtype, device=u.device)
        jv = _grad(g, w, v.reshape(u.shape), retain_graph=True)
        return _grad(y, u, jv).reshape(u.shape[0], -1)

    def sketch(self, m: int, seed: int) -> Tensor:
        """``J_nᵀ w`` for ``m`` independent Gaussian cotangents ``w ~ N(0, I_O)`` per point: ``[m, N, d]``.

        Drawn in float64 on the CPU from a generator seeded with ``seed`` (reproducible on every
        device). Cost: ``m·N`` rows of one forward and one backward pass.
        """
        generator, parts = _generator(seed), []
        for sl in self._chunks(_check_int("m", m, 1)):
            j = sl.stop - sl.start
            with _differentiable_attention():
                u, y = self._forward(self._tile(j))
                w = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y)
                parts.append(_grad(y, u, w).detach().reshape(j, self.num_points, -1))
            self.counts.backward += u.shape[0]
        return torch.cat(parts)

    def jvp(self, v: Tensor) -> Tensor:
        """``J_n v_{j,n}`` for directions ``v[m, N, d]``: a ``[m, N, O]`` tensor."""
        return self._apply(self._check_directions(v, self.dim, "v"), self._jvp_rows)

    def vjp(self, w: Tensor) -> Tensor:
        """``J_nᵀ w_{j,n}`` for cotangents ``w[m, N, O]``: a ``[m, N, d]`` tensor."""
        return self._apply(self._check_directions(w, None, "w"), self._vjp_rows)

    def gram(self, v: Tensor) -> Tensor:
        """``J_nᵀ J_n v_{j,n}`` for directions ``v[m, N, d]``: a ``[m, N, d]`` tensor."""
        v = self._check_directions(v, self.dim, "v")
        return self._apply(v, self._gram_rows)


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _orthonormal_columns(v: Tensor) -> Tensor:
    """Orthonormal basis of the column span of ``v[..., d, k]``: the ``Q`` of its reduced QR."""
    return torch.linalg.qr(v).Q


@dataclass(frozen=True)
class SingularSpectrum:
    """Result of :func:`top_singular`: per point ``n``, ``J_n ≈ Σ_i s_{n,i} u_{n,i} v_{n,i}ᵀ`` (top k).

    Attributes
    ----------
    values
        ``[N, k]`` singular values, descending.
    vectors
        ``[N, k, *E]`` right singular vectors (orthonormal per point).
    counts
        Passes used.
    """

    values: Tensor
    vectors: Tensor
    counts: PassCount


def top_singular(op: JacobianOperator, k: int, *, iters: int = 20, oversample: int = 4,
                 seed: int = 0) -> SingularSpectrum:
    r"""Top-``k`` singular values and right singular vectors of each ``J_n`` by block power iteration.

    Subspace iteration on ``J_nᵀJ_n`` with ``p = k + oversample`` vectors (seeded Gaussian start,
    QR after every product), then Rayleigh–Ritz: ``Y = J_n V`` and the SVD ``Y = P S Qᵀ`` give
    ``s = S`` and right vectors ``V Q``. The error in the ``i``-th value decays like
    ``(s_{p+1}/s_i)^{2·iters}``. Cost: ``iters·p·N`` Gram products plus ``p·N`` JVPs.
    """
    k = _check_int("k", k, 1)
    p = min(op.dim, k + _check_int("oversample", oversample, 0))
    if k > op.dim:
        raise ValueError(f"k={k} exceeds the embedding dimension {op.dim}")
    start = op.counts.copy()
    v = torch.randn((op.num_points, op.dim, p), generator=_generator(seed), dtype=torch.float64)
    v = _orthonormal_columns(v).to(op.points.dtype)
    for _ in range(_check_int("iters", iters, 0)):
        v = _orthonormal_columns(op.gram(v.permute(2, 0, 1)).permute(1, 2, 0))
    y = op.jvp(v.permute(2, 0, 1)).permute(1, 2, 0)  # [N, O, p]
    _, s, qh = torch.linalg.svd(y, full_matrices=False)
    vectors = (v @ qh.transpose(1, 2))[:, :, :k].transpose(1, 2)
    return SingularSpectrum(s[:, :k], vectors.reshape(op.num_points, k, *op.event_shape), op.counts - start)


def _rademacher(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> Tensor:
    return torch.randint(0, 2, shape, generator=_generator(seed)).to(dtype).mul_(2).sub_(1)


@dataclass(frozen=True)
class HutchinsonEstimate:
    """Result of :func:`frobenius_sq`: ``‖J_n‖_F²`` per point with its standard error."""

    estimate: np.ndarray
    stderr: np.ndarray
    probes: int
    counts: PassCount


def frobenius_sq(op: JacobianOperator, probes: int = 32, *, seed: int = 0) -> HutchinsonEstimate:
    r"""Hutchinson's estimate of ``‖J_n‖_F² = tr(J_nᵀJ_n)`` at every point.

    With Rademacher probes ``v`` (``E vvᵀ = I``), ``E‖J v‖² = ‖J‖_F²``; the estimate is the mean
    of ``‖J v_i‖²`` over ``probes`` independent probes, its standard error the sample standard
    deviation over ``√probes``. For Rademacher probes
    ``Var ‖Jv‖² = 2(‖M‖_F² − Σ_j M_jj²)``, ``M = JᵀJ`` (zero when ``M`` is diagonal).
    Cost: ``probes·N`` JVPs.
    """
    m = _check_int("probes", probes, 2)
    start = op.counts.copy()
    v = _rademacher((m, op.num_points, op.dim), seed, op.points.dtype)
    sq = op.jvp(v).double().pow(2).sum(-1).cpu().numpy()  # [m, N]
    return HutchinsonEstimate(sq.mean(0), sq.std(0, ddof=1) / math.sqrt(m), m, op.counts - start)


@dataclass(frozen=True)
class GramEstimate:
    r"""Low-rank-plus-isotropic model of the average Gram ``Ḡ = (1/N) Σ_n J_nᵀ J_n``.

    ``Ḡ ≈ V diag(λ) Vᵀ + ρ (I − V Vᵀ)``: ``λ`` the top eigenvalues, ``V`` their orthonormal
    eigenvectors, ``ρ = (tr Ḡ − Σλ)/(d − k)`` the average eigenvalue of the rest.

    Attributes
    ----------
    eigenvalues
        ``[k]``, descending, float64.
    eigenvectors
        ``[k, d]`` (rows orthonormal, flattened embedding), float64.
    trace, trace_stderr
        Hutchinson estimate of ``tr Ḡ`` and its standard error.
    diagonal
        Hutchinson estimate of ``diag Ḡ`` ``[d]`` (``E[v ⊙ Ḡv] = diag Ḡ``), clipped at 0.
    residual
        ``ρ`` (clipped at 0).
    event_shape
        Embedding shape ``E``.
    counts
        Passes used.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    trace: float
    trace_stderr: float
    diagonal: Tensor
    residual: float
    event_shape: tuple[int, ...]
    counts: PassCount

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def matrix(self) -> Tensor:
        """The dense ``d × d`` model ``V diag(λ) Vᵀ + ρ (I − V Vᵀ)`` (for small ``d``)."""
        v = self.eigenvectors
        spikes = v.T @ torch.diag(self.eigenvalues - self.residual) @ v
        return spikes + self.residual * torch.eye(self.dim, dtype=v.dtype)


def _mean_gram(op: JacobianOperator, v: Tensor) -> Tensor:
    """``Ḡ v_j`` for shared directions ``v[p, d]`` (the same direction at every point)."""
    return op.gram(v[:, None, :].expand(-1, op.num_points, -1).contiguous()).mean(1).double().cpu()


def average_gram(op: JacobianOperator, rank: int, *, iters: int = 10, oversample: int = 4, probes: int = 16,
                 seed: int = 0) -> GramEstimate:
    r"""Estimate the average Jacobian Gram ``Ḡ = (1/N) Σ_n J_nᵀ J_n`` over the operator's points.

    The points are typically (condition, fixed noise draw) pairs, so ``Ḡ`` is
    ``E_{c, z}[JᵀJ]``, whose quadratic form ``vᵀḠv = E‖J v‖²`` is the mean squared output change
    along ``v`` (to first order, the quality cost of noise along ``v``).

    * top-``rank`` eigenpairs: subspace iteration on ``Ḡ`` (``rank + oversample`` shared
      directions, seeded, QR each step) and Rayleigh–Ritz on ``Vᵀ Ḡ V``;
    * ``tr Ḡ`` and ``diag Ḡ``: Hutchinson with ``probes`` Rademacher probes per point,
      ``vᵀ J_nᵀ J_n v`` and ``v ⊙ J_nᵀ J_n v`` (both unbiased), averaged over probes and points.

    Cost: ``(iters + 1)·p·N + probes·N`` Gram products (each one forward and three backward
    passes in reverse mode).
    """
    rank = _check_int("rank", rank, 1)
    if rank > op.dim:
        raise ValueError(f"rank={rank} exceeds the embedding dimension {op.dim}")
    p = min(op.dim, rank + _check_int("oversample", oversample, 0))
    start = op.counts.copy()
    v = _orthonormal_columns(torch.randn((op.dim, p), generator=_generator(seed), dtype=torch.float64)).T
    for _ in range(_check_int("iters", iters, 0)):
        v = _orthonormal_columns(_mean_gram(op, v).T).T
    small = v @ _mean_gram(op, v).T
    evals, evecs = torch.linalg.eigh((small + small.T) / 2)
    order = evals.argsort(descending=True)[:rank]
    values, vectors = evals[order].clamp_min(0.0).cpu(), (evecs[:, order].T @ v).cpu()
    trace, stderr, diagonal = _hutchinson_gram(op, _check_int("probes", probes, 2), derive_seed(seed, 1))
    rest = op.dim - rank
    residual = max(0.0, (trace - float(values.sum())) / rest) if rest else 0.0
    return GramEstimate(values, vectors, trace, stderr, diagonal, residual, op.event_shape, op.counts - start)


def sketch_gram(op: JacobianOperator, rank: int, *, probes: int = 16, seed: int = 0) -> GramEstimate:
    r"""Estimate ``Ḡ = (1/N) Σ_n J_nᵀ J_n`` from vector-Jacobian products alone (no double backward).

    With the gradients ``∇_{n,i} = J_nᵀ w_{n,i} = ∇_u ⟨w_{n,i}, f(u)⟩`` at ``u = c_n``,
    ``w_{n,i} ~ N(0, I_O)``: ``E[∇_{n,i} ∇_{n,i}ᵀ] = J_nᵀ J_n``, so the sketch
    ``Ĝ = (1/(N m)) Σ_{n,i} ∇_{n,i} ∇_{n,i}ᵀ`` over ``m = probes`` cotangents per point is an unbiased
    estimate of ``Ḡ``, and so are its trace ``(1/(Nm)) Σ ‖∇_{n,i}‖²`` and diagonal
    ``(1/(Nm)) Σ ∇_{n,i} ⊙ ∇_{n,i}`` (output-space Hutchinson). The top-``rank`` eigenpairs are those of
    ``Ĝ`` (the SVD of the ``Nm × d`` matrix of these gradients): a randomized range finder for the row space of the ``J_n``,
    accurate when the spectrum decays fast, noisy otherwise (``Ĝ`` has rank ``≤ Nm``). The trace's
    standard error treats the ``Nm`` terms as i.i.d. (conservative: it includes the spread between
    points). Cost: ``N·m`` rows of one forward and one backward pass — the cheap alternative to
    :func:`average_gram` when the map is expensive.
    """
    rank = _check_int("rank", rank, 1)
    m = _check_int("probes", probes, 2)
    if rank > min(op.dim, m * op.num_points):
        raise ValueError(f"rank={rank} exceeds min(D={op.dim}, probes·N={m * op.num_points})")
    start = op.counts.copy()
    g = op.sketch(m, seed).double().cpu().reshape(-1, op.dim)
    total = g.shape[0]
    _, s, vh = torch.linalg.svd(g, full_matrices=False)
    values, squares = s[:rank] ** 2 / total, (g**2).sum(1)
    trace = float(squares.mean())
    rest = op.dim - rank
    residual = max(0.0, (trace - float(values.sum())) / rest) if rest else 0.0
    return GramEstimate(values, vh[:rank].clone(), trace, float(squares.std() / math.sqrt(total)),
                        (g**2).mean(0), residual, op.event_shape, op.counts - start)


def _hutchinson_gram(op: JacobianOperator, probes: int, seed: int) -> tuple[float, float, Tensor]:
    """``(tr Ḡ, its standard error, diag Ḡ)`` from Rademacher probes (one set per point)."""
    v = _rademacher((probes, op.num_points, op.dim), seed, op.points.dtype)
    gv = op.gram(v).double().cpu()
    quad = (v.double().cpu() * gv)  # [m, N, D]
    per_probe = quad.sum(-1).mean(1).numpy()  # vᵀḠv estimate per probe
    diagonal = quad.mean((0, 1)).clamp_min(0.0)
    return float(per_probe.mean()), float(per_probe.std(ddof=1) / math.sqrt(probes)), diagonal


# ============================================================================================
# Certificates
# ============================================================================================
@dataclass(frozen=True)
class NoiseCertificate:
    r"""A smoothing noise and the certificate it supports.

    For every ``‖δ‖₂ ≤ r`` (a shift of the condition embedding), the smoothed output laws obey
    ``TV(P_c, P_{c+δ}) ≤ τ(r) = 2Φ(r/(2 σ_cert)) − 1`` (data processing), where ``σ_cert`` is
    ``σ`` (isotropic), ``λ_min(Σ)^{1/2}`` (anisotropic: the inscribed ball of the ellipsoid) or
    ``σ_eff`` (per-step schedule). Every certificate of :mod:`smoothgen.certify` (Neyman–Pearson,
    W₁, Cohen) applies with ``sigma = sigma_cert``.

    Attributes
    ----------
    noise
        The noise object to smooth with (its ``event_shape`` may be ``(T, *E)`` for a schedule).
    kind
        ``"tv-ball"`` (isotropic), ``"tv-ellipsoid"`` (anisotropic ``Σ``), ``"tv-schedule"``
        (fresh draws per step), or ``"calibrated-wasserstein"`` / ``"calibrated-consistency"``
        (isotropic, σ chosen to meet :attr:`target`).
    sigma_cert
        The σ of the ℓ₂-ball certificate (see above).
    condition_shape
        Shape ``E`` of the condition embedding ``c`` the adversary moves.
    description
        One sentence on what is certified.
    target
        The calibration target met by the strategy, if any.
    radius
        The ℓ₂ radius certified at the target (``target.radius``), if any.
    details
        Strategy-specific numbers (calibration trace, spectrum, ...).
    """

    noise: Noise
    kind: str
    sigma_cert: float
    condition_shape: tuple[int, ...]
    description: str
    target: Target | None = None
    radius: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def tv_bound(self, radius: Any) -> Any:
        """``2Φ(r/(2σ_cert)) − 1``: TV bound for every ``‖δ‖₂ ≤ r``."""
        return certify.tv_bound(radius, self.sigma_cert)

    def certified_radius(self, tv_level: Any) -> Any:
        """Largest ``r`` with ``tv_bound(r) ≤ t``: ``2σ_cert Φ⁻¹((1 + t)/2)`` (``inf`` at ``t ≥ 1``)."""
        return certify.certified_radius(tv_level, self.sigma_cert, 1.0)

    def mahalanobis_tv_bound(self, mahalanobis_radius: Any) -> Any:
        """TV bound on the region of Mahalanobis radius ``R``: ``‖Σ^{-1/2}δ‖ ≤ R`` (``kind="tv-ellipsoid"``),
        else ``‖δ‖/σ_cert ≤ R``."""
        return certify.tv_bound_mahalanobis(mahalanobis_radius)

    def inscribed_radius(self, mahalanobis_radius: float) -> float:
        """ℓ₂ radius of the largest ball inside the certified region of Mahalanobis radius ``R``: ``R·σ_cert``.

        ``R`` must be ``>= 0`` (``inf``, the whole space, maps to ``inf``); a negative or NaN ``R``
        raises ``ValueError`` instead of returning a meaningless radius.
        """
        r = float(mahalanobis_radius)
        if math.isnan(r) or r < 0:
            raise ValueError(f"mahalanobis_radius must be >= 0 (inf allowed), got {mahalanobis_radius!r}")
        return r * self.sigma_cert

    def log_volume(self, mahalanobis_radius: float) -> float:
        """Log-volume of the certified region in condition space at Mahalanobis radius ``R``.

        Ellipsoid (``kind="tv-ellipsoid"``): :meth:`~smoothgen.noise.Noise.log_volume`. Otherwise the ball of radius
        ``R·σ_cert`` in ``d = prod(condition_shape)`` dimensions.
        """
        if self.kind == "tv-ellipsoid":
            return self.noise.log_volume(mahalanobis_radius)
        return GaussianNoise(self.sigma_cert, self.condition_shape).log_volume(mahalanobis_radius)

    def volume_radius(self, mahalanobis_radius: float) -> float:
        """Radius of the ℓ₂ ball with the same volume as the certified region: ``R·(det Σ)^{1/(2D)}``."""
        d = math.prod(self.condition_shape)
        unit = GaussianNoise(1.0, self.condition_shape).log_volume(1.0)
        return math.exp((self.log_volume(mahalanobis_radius) - unit) / d)


def noise_certificate(noise: Noise, condition_shape: Sequence[int] | None = None,
                      description: str = "") -> NoiseCertificate:
    """The certificate of smoothing with ``noise`` (any :class:`Noise`): ball if isotropic, else ellipsoid."""
    if not isinstance(noise, Noise):
        raise ValueError(f"noise must be a smoothgen.noise.Noise, got {type(noise).__name__}")
    shape = tuple(condition_shape) if condition_shape is not None else noise.event_shape
    if shape is None:
        raise ValueError("this noise has no event_shape: pass condition_shape")
    iso = isinstance(noise, GaussianNoise)
    kind = "tv-ball" if iso else "tv-ellipsoid"
    text = description or ("isotropic Gaussian: TV ≤ 2Φ(r/2σ) − 1 on the ℓ₂ ball" if iso else
                           "anisotropic Gaussian: TV ≤ 2Φ(R/2) − 1 on the ellipsoid ‖Σ^{-1/2}δ‖ ≤ R; "
                           "ℓ₂ ball of radius R·σ_min inside it")
    return NoiseCertificate(noise, kind, noise.sigma_min, shape, text)


def isotropic_certificate(sigma: float, condition_shape: Sequence[int],
                          dtype: torch.dtype = torch.float32) -> NoiseCertificate:
    """Certificate of ``GaussianNoise(σ)`` on conditions of shape ``condition_shape``."""
    return noise_certificate(GaussianNoise(sigma, tuple(condition_shape), dtype=dtype))


# ============================================================================================
# Global calibration and per-class tables
# ============================================================================================
@dataclass(frozen=True)
class Target:
    """A calibration target at radius ``r``: a certified statistic per condition and its level.

    ``kind="wasserstein"``: the certified ``W₁(P_c, P_{c+δ})`` over ``‖δ‖ ≤ r`` must be ``≤ level``.
    ``kind="consistency"``: the certified lower bound on ``P_{c+δ}(evaluator(Y) = class of c)``
    over ``‖δ‖ ≤ r`` must be ``≥ level``. Met when at least ``fraction`` of the conditions meet it.
    """

    kind: Literal["wasserstein", "consistency"]
    radius: float
    level: float
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("wasserstein", "consistency"):
            raise ValueError(f"kind must be 'wasserstein' or 'consistency', got {self.kind!r}")
        if not (math.isfinite(self.radius) and self.radius >= 0):
            raise ValueError(f"radius must be finite and >= 0, got {self.radius!r}")
        if not (math.isfinite(self.level) and self.level >= 0) or (self.kind == "consistency" and self.level > 1):
            raise ValueError(f"level must be >= 0 (and <= 1 for consistency), got {self.level!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction!r}")

    def met(self, values: Any) -> np.ndarray:
        """Per condition: does its certified value meet the level?"""
        v = np.asarray(values, dtype=float)
        return v <= self.level if self.kind == "wasserstein" else v >= self.level

    def passes(self, values: Any) -> bool:
        """Whether at least ``fraction`` of the conditions meet the level."""
        met = self.met(values)
        return bool(met.size > 0 and met.mean() >= self.fraction - 1e-12)


ConditionSampler = Callable[[float, int, int, int], Tensor]
"""``sampler(sigma, condition_index, n, seed) -> n smoothed outputs [n, *O]`` at that condition."""

CertifiedValues = Callable[[float, Sequence[int], int], np.ndarray]
"""``values(sigma, condition_indices, seed) -> certified statistic per condition`` (at the target radius)."""


def gaussian_sampler(base: Callable[[Tensor, torch.Generator], Tensor], conditions: Tensor,
                     batch_size: int = 64) -> ConditionSampler:
    """Sampler of ``SmoothedGenerator(base, GaussianNoise(σ))`` at ``conditions[index]`` (``[K, *E]``)."""
    if not isinstance(conditions, Tensor) or conditions.ndim < 2:
        raise ValueError("conditions must be a tensor [K, *E]")

    def sample(sigma: float, index: int, n: int, seed: int) -> Tensor:
        noise = GaussianNoise(sigma, tuple(conditions.shape[1:]), dtype=conditions.dtype)
        return SmoothedGenerator(base, noise, batch_size).sample(conditions[index], n, seed)

    return sample


def _condition_seed(seed: int, index: int) -> int:
    return derive_seed(derive_seed(seed, 7), int(index))


def wasserstein_values(sampler: ConditionSampler, distance: Callable[[Tensor, int], Any], *, radius: float,
                       n: int, alpha: float, diameter: float) -> CertifiedValues:
    """Certified W₁ at ``radius`` per condition: :func:`~smoothgen.certify.wasserstein_certificate` on
    ``distance(outputs, index)`` (distances of ``n`` smoothed outputs to a reference output chosen
    independently of them, in ``[0, diameter]``)."""

    def values(sigma: float, indices: Sequence[int], seed: int) -> np.ndarray:
        out = [certify.wasserstein_certificate(distance(sampler(sigma, i, n, _condition_seed(seed, i)), i),
                                               radius, sigma, alpha, diameter) for i in indices]
        return np.asarray(out, dtype=float)

    return values


def consistency_values(sampler: ConditionSampler, hit: Callable[[Tensor, int], Any], *, radius: float,
                       n: int, alpha: float) -> CertifiedValues:
    """Certified class-consistency at ``radius`` per condition: the lower end of
    :func:`~smoothgen.certify.np_bounds_mc` on ``hit(outputs, index) ∈ {0, 1}`` (1 when the evaluator assigns
    the output to the condition's class)."""

    def values(sigma: float, indices: Sequence[int], seed: int) -> np.ndarray:
        out = []
        for i in indices:
            h = np.asarray(hit(sampler(sigma, i, n, _condition_seed(seed, i)), i), dtype=float)
            out.append(certify.np_bounds_mc(h, radius, sigma, alpha, kind="binary").lower)
        return np.asarray(out, dtype=float)

    return values


def _check_grid(sigmas: Sequence[float]) -> np.ndarray:
    grid = np.asarray(sigmas, dtype=float)
    if grid.ndim != 1 or grid.size < 1 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError("the σ grid must be a non-empty 1-D sequence of positive finite numbers")
    if np.any(np.diff(grid) <= 0):
        raise ValueError("the σ grid must be strictly increasing")
    return grid


def smallest_passing(sigmas: Sequence[float], values: Any, target: Target) -> int | None:
    """Index of the smallest σ on the grid whose certified values ``values[g, :]`` pass ``target``.

    ``values`` has shape ``[G, K]`` (grid × conditions). ``None`` when no σ passes.
    """
    grid = _check_grid(sigmas)
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[0] != grid.size:
        raise ValueError(f"values must have shape [G={grid.size}, K], got {v.shape}")
    for g in range(grid.size):
        if target.passes(v[g]):
            return g
    return None


@dataclass(frozen=True)
class CalibrationResult:
    """Result of :func:`global_calibration`.

    Attributes
    ----------
    sigma
        The chosen σ (passes the target on the calibration conditions).
    certificate
        Its :class:`NoiseCertificate` (``kind="calibrated-<target kind>"``).
    trace
        ``[(σ, fraction of calibration conditions meeting the level), ...]`` in evaluation order.
    heldout_values
        Certified values on the held-out conditions (fresh samples, independent seed).
    heldout_fraction
        Fraction of held-out conditions meeting the level.
    """

    sigma: float
    certificate: NoiseCertificate
    trace: list[tuple[float, float]]
    heldout_values: np.ndarray
    heldout_fraction: float


def _scan(values: CertifiedValues, target: Target, grid: np.ndarray, indices: Sequence[int], seed: int,
          refine: int) -> tuple[float | None, list[tuple[float, float]]]:
    """Ascending grid scan, then ``refine`` geometric bisection steps below the first passing σ."""
    trace: list[tuple[float, float]] = []

    def passes(sigma: float) -> bool:
        v = values(sigma, indices, seed)
        trace.append((sigma, float(target.met(v).mean())))
        return target.passes(v)

    for g, sigma in enumerate(grid):
        if passes(float(sigma)):
            lo, hi = (float(grid[g - 1]) if g else None), float(sigma)
            for _ in range(refine if lo is not None else 0):
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if passes(mid) else (mid, hi)
            return hi, trace
    return None, trace


def global_calibration(values: CertifiedValues, target: Target, sigmas: Sequence[float],
                       calibration: Sequence[int], heldout: Sequence[int], condition_shape: Sequence[int], *,
                       seed: int = 0, refine: int = 0) -> CalibrationResult:
    r"""One σ for every input: the smallest σ that meets ``target`` on the calibration conditions.

    1. Scan the increasing grid ``sigmas``; at each σ compute the certified values on the
       calibration conditions (stream ``derive_seed(seed, 0)``, the same for every σ: common
       random numbers) and stop at the first σ that passes.
    2. Optionally ``refine`` steps of geometric bisection between the last failing and the first
       passing grid point; the returned σ is always one that was evaluated and passed.
    3. Re-certify at the chosen σ on the held-out conditions with fresh samples (stream
       ``derive_seed(seed, 1)``).

    Soundness: σ is a constant chosen before any test input is seen, so the smoothing
    certificate holds at every input; the held-out certificates are computed on samples
    independent of the calibration, so their confidence levels hold as stated. The calibration
    itself is a search (many looks at the calibration data) and carries no guarantee beyond
    "σ passed on the calibration set".

    Monotonicity caveat: the certified value need not be monotone in σ (more noise shrinks the
    TV term but spreads the outputs, and with it the data-dependent W₁ bound or the consistency).
    The scan returns the smallest *evaluated* σ that passes; a smaller σ between grid points may
    pass too, and bisection assumes pass/fail changes once between the two bracketing points.

    Raises
    ------
    ValueError
        If no σ on the grid passes (widen the grid or relax the target), or bad arguments.
    """
    grid = _check_grid(sigmas)
    if len(calibration) < 1 or len(heldout) < 1:
        raise ValueError("need at least one calibration and one held-out condition")
    sigma, trace = _scan(values, target, grid, calibration, derive_seed(seed, 0), _check_int("refine", refine, 0))
    if sigma is None:
        raise ValueError(f"no σ in [{grid[0]:.4g}, {grid[-1]:.4g}] meets the {target.kind} target on the "
                         "calibration conditions: widen the grid or relax the target (level / radius)")
    held = values(sigma, heldout, derive_seed(seed, 1))
    cert = replace(isotropic_certificate(sigma, condition_shape), kind=f"calibrated-{target.kind}", target=target,
                   radius=target.radius, details={"trace": trace},
                   description=f"global σ = {sigma:.4g} meets the {target.kind} target at r = {target.radius:g} "
                               "on the calibration conditions")
    return CalibrationResult(sigma, cert, trace, held, float(target.met(held).mean()))


def voronoi_margin(c: Tensor, centers: Tensor, index: int) -> float:
    r"""Distance from ``c`` to the boundary of the nearest-center cell of ``centers[index]``.

    For ``c`` in the cell of ``c_k`` (``k = index``), nearest-center lookup returns ``k`` at every
    ``c + δ`` with ``‖δ‖ < m``,

    .. math:: m = \min_{j \ne k} \frac{\|c - c_j\|^2 - \|c - c_k\|^2}{2\|c_k - c_j\|},

    the distance from ``c`` to the bisecting hyperplane of ``c_k`` and ``c_j``, and there is a
    ``δ`` of norm just above ``m`` where it does not. Negative when ``c`` is not in the cell.
    """
    if not isinstance(centers, Tensor) or centers.ndim < 2 or centers.shape[0] < 2:
        raise ValueError("centers must be a tensor [K >= 2, *E]")
    k = _check_int("index", index, 0)
    flat, x = centers.reshape(centers.shape[0], -1).double(), c.reshape(-1).double()
    d2 = ((x - flat) ** 2).sum(1)
    sep = (flat[k] - flat).norm(dim=1)
    others = torch.arange(flat.shape[0]) != k
    return float(((d2 - d2[k])[others] / (2 * sep[others])).min())


@dataclass(frozen=True)
class SigmaTable:
    r"""A σ per condition identity (class), fixed offline: ``M(c', k) = G(c' + σ_k ε, z)``.

    When it is valid. For a fixed identity ``k`` the mechanism ``c' ↦ Law M(c', k)`` is isotropic
    smoothing with σ_k, so ``TV(M(c, k), M(c + δ, k)) ≤ 2Φ(‖δ‖/(2σ_k)) − 1``. This needs ``k`` to be
    the **true** identity of the request, known to the system through a channel the adversary
    does not control (the class label the user asked for, a prompt-template id), not a function
    of the embedding it received: the adversary moves ``c`` to ``c + δ`` but the table is still
    read at ``k``. If instead ``k`` is inferred from the received embedding (e.g. nearest clean
    center), σ depends on the input; the certificate then holds at ``c`` only for radii below
    :func:`voronoi_margin` (where the lookup cannot change) and fails beyond it — see
    :meth:`inferred_certified_radius` and the tests.

    Attributes
    ----------
    sigmas
        ``{class id: σ_k}``.
    condition_shape
        Shape ``E`` of the embeddings.
    target
        The target each σ_k was calibrated for (if any).
    centers
        Clean embeddings ``[K, *E]`` indexed by class id (needed only for the margin).
    """

    sigmas: Mapping[int, float]
    condition_shape: tuple[int, ...]
    target: Target | None = None
    centers: Tensor | None = None

    def _sigma(self, class_id: int) -> float:
        if class_id not in self.sigmas:
            raise ValueError(f"class {class_id!r} is not in the table (classes: {sorted(self.sigmas)})")
        return self.sigmas[class_id]

    def noise(self, class_id: int, dtype: torch.dtype = torch.float32) -> GaussianNoise:
        """``GaussianNoise(σ_k)`` for the **true** class ``k`` of the request."""
        return GaussianNoise(self._sigma(class_id), self.condition_shape, dtype=dtype)

    def certificate(self, class_id: int) -> NoiseCertificate:
        """The isotropic certificate at σ_k (valid when ``class_id`` is the true identity)."""
        return replace(noise_certificate(self.noise(class_id)), target=self.target,
                       radius=None if self.target is None else self.target.radius,
                       description=f"per-class σ_{class_id} = {self._sigma(class_id):.4g}, indexed by the true class")

    def inferred_certified_radius(self, c: Tensor, class_id: int, tv_level: float) -> float:
        """Certified radius at TV ≤ ``tv_level`` if the class were inferred by nearest center:
        ``min(σ_k-radius, m)`` for the **open** ball ``‖δ‖ < radius`` (the lookup may change on the
        boundary itself), with the Voronoi margin ``m`` shrunk by a relative ``1e-9`` so that float64
        rounding cannot place it outside the cell (0 when ``c`` is not in the cell of ``class_id``)."""
        if self.centers is None:
            raise ValueError("the table has no centers: pass centers to build it")
        margin = voronoi_margin(c, self.centers, class_id)
        return max(0.0, min(float(self.certificate(class_id).certified_radius(tv_level)), safe_margin(margin)))


def safe_margin(margin: float) -> float:
    """A margin computed in float64, lowered by ``1e-9`` relative: certified balls stay inside the cell."""
    return margin - 1e-9 * abs(margin) - 1e-300 if margin > 0 else margin


@dataclass(frozen=True)
class CellSigma:
    r"""σ read off the cells of the received condition, for a projection front-end.

    ``σ(c') = min_l s[k_l(c')]``: every row ``c'_l`` (a class embedding: one row; a prompt: one per
    token) is snapped to its codeword ``k_l(c')`` and ``s`` is a table fixed offline (one σ per
    codeword, e.g. proportional to its half gap). The mechanism is
    ``c' ↦ G(h(c' + σ(c') ε))``.

    Why it is sound. Let ``m(c) = min_l`` (margin of row ``c_l`` in its cell). For ``‖δ‖ < m(c)``
    the lookup cannot change, so on that open ball the mechanism *is* smoothing at the fixed
    ``σ = σ(c)`` and every fixed-σ bound holds there. The concentration certificate never needs
    more: with ``p̲ ≤ P(A) ≤ Φ(m/σ)`` (``A`` lies inside the half-space of the nearest face), its
    identity radius ``σΦ⁻¹(p̲)`` is ``≤ m`` on the event (probability ``≥ 1 − α``) where ``p̲``
    is valid. Beyond ``m`` nothing is claimed (TV bound 1). :meth:`certificate` applies both caps.

    Attributes
    ----------
    indices
        The projection's index map ``[L, E] -> [L]`` (e.g. ``NearestEmbedding.indices``).
    margins
        ``(x [L, E], ids [L]) -> [L]`` signed distances to the cell boundaries (``NearestEmbedding.margins``).
    table
        ``[K]`` σ per codeword (finite, ``> 0`` where it can be read).
    """

    indices: Callable[[Tensor], Tensor]
    margins: Callable[[Tensor, Tensor], Tensor]
    table: Tensor

    def sigma(self, condition: Tensor) -> float:
        """``σ(c') = min_l s[k_l(c')]`` for one condition ``[L, E]`` (or ``[E]``)."""
        sigma = float(self.table[self.indices(condition).flatten()].min())
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"the table gives sigma={sigma} for this condition; every read entry must be finite and > 0")
        return sigma

    def certificate(self, condition: Tensor, count: int, n: int, radius: float, alpha: float,
                    diameter: float = 1.0) -> certify.ConcentrationCertificate:
        """:func:`smoothgen.certify.concentration_certificate` at ``σ(c)`` (``count`` of ``n`` draws
        ``c + σ(c) ε`` stayed in the cells of ``c``), valid for ``‖δ‖ < min(radius-ball, m(c))``:
        TV and W₁ bounds become ``1`` and ``D`` once ``radius ≥ m(c)``, the identity radius is capped at ``m(c)``."""
        rows = condition.reshape(-1, condition.shape[-1])
        ids = self.indices(rows)
        margin = safe_margin(float(self.margins(rows, ids).min()))
        cert = certify.concentration_certificate(count, n, radius, self.sigma(rows), alpha, diameter)
        outside = np.asarray(radius) >= margin
        tv = np.where(outside, 1.0, cert.tv)
        w1 = np.where(outside, float(diameter), cert.w1)
        return replace(cert, tv=tv if np.ndim(tv) else float(tv), w1=w1 if np.ndim(w1) else float(w1),
                       identity_radius=max(0.0, min(cert.identity_radius, margin)))


def table_from_grid(sigmas: Sequence[float], values: Any, target: Target, classes: Mapping[int, Sequence[int]],
                    condition_shape: Sequence[int], centers: Tensor | None = None) -> SigmaTable:
    """Per class, the smallest grid σ whose certified values on that class's conditions pass ``target``.

    ``values[g, i]``: certified value of condition ``i`` at ``sigmas[g]``. Classes with no passing σ
    are left out of the table (the system must refuse them or fall back to a larger grid).
    """
    grid = _check_grid(sigmas)
    v = np.asarray(values, dtype=float)
    table = {}
    for k, idx in classes.items():
        g = smallest_passing(grid, v[:, list(idx)], target)
        if g is not None:
            table[k] = float(grid[g])
    return SigmaTable(table, tuple(condition_shape), target, centers)


def per_class_table(values: CertifiedValues, target: Target, sigmas: Sequence[float],
                    classes: Mapping[int, Sequence[int]], condition_shape: Sequence[int], *, seed: int = 0,
                    refine: int = 0, centers: Tensor | None = None) -> SigmaTable:
    """Offline σ table: for each class, :func:`global_calibration`'s scan on that class's conditions.

    Computed from clean embeddings only (calibration stream ``derive_seed(seed, 0)``), before any
    request; see :class:`SigmaTable` for when reading it is sound. Classes with no passing σ are
    left out.
    """
    grid = _check_grid(sigmas)
    table = {}
    for k, idx in classes.items():
        sigma, _ = _scan(values, target, grid, list(idx), derive_seed(seed, 0), _check_int("refine", refine, 0))
        if sigma is not None:
            table[k] = sigma
    return SigmaTable(table, tuple(condition_shape), target, centers)


# ============================================================================================
# Anisotropic noise
# ============================================================================================
def _variance_weights(sensitivity: Tensor, multiplicity: Tensor, *, power: float, ridge: float,
                      max_ratio: float, normalize: str, sigma: float) -> Tensor:
    """Variances ``∝ (s + λ₀)^{-power}`` (``λ₀`` = ``ridge``), std ratio capped at ``max_ratio``, scaled so that the
    (multiplicity-weighted) geometric mean ("volume") or arithmetic mean ("trace") of the
    variances is ``σ²``."""
    w = (sensitivity.double().clamp_min(0.0) + ridge) ** (-power)
    w = torch.minimum(w, w.min() * max_ratio**2)
    total = float(multiplicity.sum())
    if normalize == "volume":
        log_mean = float((multiplicity * torch.log(w)).sum()) / total
        return w * (sigma**2 / math.exp(log_mean))
    return w * (sigma**2 / (float((multiplicity * w).sum()) / total))


def anisotropic_noise(gram: GramEstimate, sigma: float, *, form: Literal["lowrank", "diagonal"] = "lowrank",
                      power: float = 1.0, normalize: Literal["volume", "trace"] = "volume", max_ratio: float = 10.0,
                      ridge: float | None = None, dtype: torch.dtype = torch.float32) -> NoiseCertificate:
    r"""Anisotropic ``Σ`` shaped by the average Jacobian Gram ``Ḡ``: more noise where ``f`` is flat.

    Variance along an eigen-direction (``form="lowrank"``: the top eigenvectors of ``Ḡ`` and the
    isotropic rest, :class:`~smoothgen.noise.SpikedGaussianNoise`) or along a coordinate (``form="diagonal"``:
    ``diag Ḡ``, :class:`~smoothgen.noise.DiagonalGaussianNoise`) is ``∝ (λ + λ₀)^{-power}``.
    ``power = 1`` minimises the first-order quality cost ``E‖J ε‖² = tr(ḠΣ)`` at fixed
    ``log det Σ`` (Lagrange: ``Ḡ = μ Σ^{-1}``); ``power = 0`` is isotropic. The ratio of the
    largest to the smallest standard deviation is capped at ``max_ratio`` (capping the largest),
    and ``ridge`` ``λ₀`` (default 1 % of ``tr Ḡ / d``) keeps flat directions finite.

    Normalisation: ``"volume"`` makes ``det Σ = σ^{2d}`` (the certified ellipsoid has the volume of
    the σ-ball at equal ``R``), ``"trace"`` makes ``tr Σ = dσ²`` (equal noise energy).

    Certificate: ``TV ≤ 2Φ(R/2) − 1`` on the ellipsoid ``‖Σ^{-1/2}δ‖ ≤ R``; its inscribed ℓ₂
    radius is ``R·λ_min(Σ)^{1/2}`` and its log-volume
    ``(d/2)log π − log Γ(d/2+1) + d log R + ½ log det Σ``.
    """
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive finite, got {sigma!r}")
    if form not in ("lowrank", "diagonal") or normalize not in ("volume", "trace"):
        raise ValueError("form must be 'lowrank' or 'diagonal' and normalize 'volume' or 'trace'")
    if not (math.isfinite(power) and power >= 0) or not (math.isfinite(max_ratio) and max_ratio >= 1):
        raise ValueError(f"need power >= 0 and max_ratio >= 1, got {power!r}, {max_ratio!r}")
    gamma = 0.01 * max(gram.trace, 0.0) / gram.dim if ridge is None else float(ridge)
    if not (math.isfinite(gamma) and gamma >= 0) or (gamma == 0 and power > 0):
        raise ValueError("ridge must be > 0 (a zero Gram needs an explicit positive ridge)")
    opts = {"power": power, "ridge": gamma, "max_ratio": max_ratio, "normalize": normalize, "sigma": sigma}
    if form == "diagonal":
        var = _variance_weights(gram.diagonal, torch.ones(gram.dim, dtype=torch.float64), **opts)
        noise: Noise = DiagonalGaussianNoise(var.sqrt().reshape(gram.event_shape), dtype=dtype)
    else:
        k = gram.eigenvalues.numel()
        sens = torch.cat([gram.eigenvalues, torch.tensor([gram.residual], dtype=torch.float64)])
        mult = torch.cat([torch.ones(k, dtype=torch.float64), torch.tensor([float(gram.dim - k)])])
        var = _variance_weights(sens, mult, **opts)
        noise = SpikedGaussianNoise(float(var[-1].sqrt()), gram.eigenvectors.T, var[:k].sqrt(), gram.event_shape, dtype)
    details = {"form": form, "power": power, "normalize": normalize, "max_ratio": max_ratio, "ridge": gamma,
               "sigma_min": noise.sigma_min, "sigma_max": noise.sigma_max}
    return replace(noise_certificate(noise, gram.event_shape), details=details)


# ============================================================================================
# Noise schedule across denoising steps
# ============================================================================================
def _check_schedule(sigmas: Sequence[float]) -> np.ndarray:
    s = np.asarray(sigmas, dtype=float).reshape(-1)
    if s.size < 1 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("the schedule must be a non-empty sequence of positive finite σ_t")
    return s


def effective_sigma(sigmas: Sequence[float]) -> float:
    r"""``σ_eff = (Σ_t σ_t⁻²)^{-1/2}`` of a per-step schedule.

    The ``T`` noisy copies ``c + ε_t``, ``ε_t ~ N(0, σ_t² I)`` independent, form one Gaussian on
    ``R^{T·d}`` with mean ``(c, …, c)``; moving ``c`` by ``δ`` moves every block mean by ``δ``, a
    shift of Mahalanobis norm ``‖δ‖·(Σ_t σ_t⁻²)^{1/2} = ‖δ‖/σ_eff``. Hence, exactly,
    ``TV = 2Φ(‖δ‖/(2σ_eff)) − 1`` for the inputs and ``≤`` that for the outputs (data processing).
    ``σ_eff ≤ min_t σ_t``; ``T`` equal steps give ``σ/√T``.
    """
    s = _check_schedule(sigmas)
    return float(1.0 / math.sqrt(float(np.sum(s**-2.0))))


def schedule_for(sigma_eff: float, shape: Sequence[float]) -> np.ndarray:
    """The schedule ``σ_t ∝ shape_t`` whose :func:`effective_sigma` is ``sigma_eff``."""
    w = _check_schedule(shape)
    if not (math.isfinite(sigma_eff) and sigma_eff > 0):
        raise ValueError(f"sigma_eff must be positive finite, got {sigma_eff!r}")
    return w * (sigma_eff / effective_sigma(w))


def schedule_noise(sigmas: Sequence[float], condition_shape: Sequence[int],
                   dtype: torch.dtype = torch.float32) -> NoiseCertificate:
    r"""Fresh condition noise at each of ``T`` steps, as one noise over ``(T, *E)``.

    The noise is ``DiagonalGaussianNoise`` with scale ``σ_t`` on block ``t``; smooth the condition
    :func:`per_step_condition` ``(c, T)`` (``c`` repeated ``T`` times) with a base that takes one
    embedding per step ``[B, T, *E]``. Certificate in the condition space: ``TV ≤ 2Φ(r/(2σ_eff)) − 1``
    for ``‖δ‖ ≤ r`` (:func:`effective_sigma`), i.e. ``sigma_cert = σ_eff``.
    """
    s = _check_schedule(sigmas)
    shape = tuple(int(d) for d in condition_shape)
    scales = torch.tensor(s, dtype=torch.float64).reshape(-1, *([1] * len(shape))).expand(len(s), *shape)
    noise = DiagonalGaussianNoise(scales.contiguous(), dtype=dtype)
    eff = effective_sigma(s)
    text = (f"fresh noise at each of T={len(s)} steps: TV ≤ 2Φ(r/2σ_eff) − 1 with σ_eff = "
            f"(Σσ_t⁻²)^(-1/2) = {eff:.4g}")
    return NoiseCertificate(noise, "tv-schedule", eff, shape, text, details={"sigmas": s.tolist()})


def per_step_condition(c: Tensor, steps: int) -> Tensor:
    """``c[*E]`` repeated ``steps`` times: the ``[T, *E]`` condition for :func:`schedule_noise`."""
    if not isinstance(c, Tensor) or c.ndim < 1:
        raise ValueError("c must be a condition tensor [*E]")
    return c.unsqueeze(0).expand(_check_int("steps", steps, 1), *c.shape).contiguous()


class SharedDraw:
    """One draw for all steps: ``base(u[B, *E]) = step_base(u repeated T times [B, T, *E])``.

    Smoothing this with ``GaussianNoise(σ)`` is the shared-draw mechanism (certificate at σ), the
    comparison point of :func:`schedule_noise` at equal ``σ_eff``.
    """

    def __init__(self, step_base: Callable[[Tensor, torch.Generator], Tensor], steps: int) -> None:
        if not callable(step_base):
            raise ValueError("step_base must be callable as step_base(embeddings[B, T, *E], generator)")
        self.step_base, self.steps = step_base, _check_int("steps", steps, 1)

    def __call__(self, embeddings: Tensor, generator: torch.Generator) -> Tensor:
        per_step = embeddings.unsqueeze(1).expand(embeddings.shape[0], self.steps, *embeddings.shape[1:])
        return self.step_base(per_step.contiguous(), generator)


# ============================================================================================
# Counter-example: σ(x) chosen per input at test time
# ============================================================================================
def tv_distance(p: Any, q: Any) -> float:
    """``½ Σ_k |p_k − q_k|`` of two probability vectors."""
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("p and q must be probability vectors of the same length")
    return float(0.5 * np.abs(a - b).sum())


@dataclass(frozen=True)
class IntervalToy:
    r"""1-D base generator with exact smoothed laws: ``G(u) = k`` iff ``b_k ≤ u < b_{k+1}``.

    With ``b_0 = −∞``, ``b_K = +∞`` and sorted interior ``boundaries`` ``b_1 < … < b_{K−1}``, the
    smoothed law at ``x`` with noise σ is exactly
    ``P_x(k) = Φ((b_{k+1} − x)/σ) − Φ((b_k − x)/σ)``.
    """

    boundaries: tuple[float, ...]

    def __post_init__(self) -> None:
        b = np.asarray(self.boundaries, dtype=float)
        if b.ndim != 1 or b.size < 1 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError("boundaries must be a non-empty strictly increasing sequence of finite numbers")

    @property
    def num_outputs(self) -> int:
        return len(self.boundaries) + 1

    def label(self, x: float) -> int:
        """``G(x)``: the index of the interval containing ``x``."""
        return int(np.searchsorted(np.asarray(self.boundaries), x, side="right"))

    def probabilities(self, x: Any, sigma: Any) -> np.ndarray:
        """Exact ``P_x = Law(G(x + σε))`` over the ``K`` outputs: shape ``broadcast(x, σ).shape + (K,)``."""
        sig = np.asarray(sigma, dtype=float)
        if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
            raise ValueError(f"sigma must be positive finite, got {sigma!r}")
        edges = np.concatenate(([-np.inf], np.asarray(self.boundaries, dtype=float), [np.inf]))
        z = (edges - np.asarray(x, dtype=float)[..., None]) / sig[..., None]
        return np.diff(special.ndtr(z), axis=-1)


def naive_sigma_rule(toy: IntervalToy, kappa: float, sigmas: Sequence[float]) -> Callable[[float], float]:
    """**Unsound** test-time rule: at input ``x``, the largest grid σ with ``P_x(G(x)) ≥ κ``.

    It keeps the smoothed output faithful to the clean one at every input (its quality is ``κ``
    everywhere), and claims the isotropic certificate ``TV ≤ 2Φ(r/(2σ(x))) − 1`` — which is void,
    because σ depends on the input (see :func:`attack_claimed_certificate`). The smallest grid σ
    is used where none reaches ``κ``.
    """
    grid = _check_grid(sigmas)
    if not 0 < kappa < 1:
        raise ValueError(f"kappa must lie in (0, 1), got {kappa!r}")

    def rule(x: float) -> float:
        ok = toy.probabilities(x, grid)[:, toy.label(x)] >= kappa
        return float(grid[ok].max()) if ok.any() else float(grid[0])

    return rule


@dataclass(frozen=True)
class AttackResult:
    """Worst perturbation found by :func:`attack_claimed_certificate`.

    ``violation = true_tv − claimed_tv > 0`` means the claimed certificate is false at ``delta``.
    """

    x: float
    delta: float
    sigma_x: float
    sigma_moved: float
    true_tv: float
    claimed_tv: float
    violation: float


def attack_claimed_certificate(toy: IntervalToy, sigma_of: Callable[[float], float], x: float, radius: float,
                               num: int = 2001) -> AttackResult:
    r"""Search ``δ ∈ [−r, r]`` for the largest excess of the exact TV over the claimed bound.

    The mechanism smooths input ``u`` with ``σ(u) = sigma_of(u)``; it claims, at ``x``,
    ``TV(P_x, P_{x+δ}) ≤ 2Φ(|δ|/(2σ(x))) − 1``. For each ``δ`` on a grid of ``num`` points
    the exact ``TV(P_x^{σ(x)}, P_{x+δ}^{σ(x+δ)})`` (:meth:`IntervalToy.probabilities`) is compared
    with it. With a constant ``sigma_of`` the violation is ``≤ 0`` (up to rounding) for every δ.
    """
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be positive finite, got {radius!r}")
    sx = float(sigma_of(x))
    deltas = np.linspace(-radius, radius, _check_int("num", num, 2))
    moved = np.array([float(sigma_of(x + d)) for d in deltas])
    true = 0.5 * np.abs(toy.probabilities(x + deltas, moved) - toy.probabilities(x, sx)).sum(-1)
    claimed = np.asarray(certify.tv_bound(np.abs(deltas), sx))
    i = int(np.argmax(true - claimed))
    return AttackResult(float(x), float(deltas[i]), sx, float(moved[i]), float(true[i]), float(claimed[i]),
                        float(true[i] - claimed[i]))
