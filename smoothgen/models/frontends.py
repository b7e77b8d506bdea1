r"""Condition front-ends: fixed maps applied to the noisy condition before the base generator.

A front-end ``f`` turns a generator ``G`` into ``G_f(x, z) = G(f(x), z)``. ``f`` is chosen
before any input is seen (its codebook and temperature are fixed), so ``G_f`` is just another
generator and every certificate of :mod:`smoothgen.certify` applies to it unchanged.

- :class:`NearestEmbedding` (projection): ``h(x) = u_{k(x)}``, ``k(x) = argmin_k ‖x − u_k‖₂``,
  applied to the last axis (each token row of a prompt separately). The output of ``G_h`` is
  constant on each Voronoi cell, which is what
  :func:`smoothgen.certify.concentration_certificate` uses: certifying it needs only the cell
  of each noisy draw, no generator pass (:meth:`NearestEmbedding.hits`).
- :class:`SoftPosteriorMean`: ``m(x) = Σ_k w_k(x) u_k``, ``w = softmax(−‖x − u_k‖² / (2τ))`` —
  the posterior mean of the clean embedding under a uniform prior over the codebook when
  ``x = u + N(0, τ I)``. With ``τ = σ²`` (the smoothing noise) the softmax runs over squared
  distances at temperature ``2σ²``, i.e. over logits ``(x·u_k − ‖u_k‖²/2)/σ²``. A smooth map; as
  ``τ → 0`` it tends to the projection. Not constant on any set, so it gets only the general
  certificates.
- :class:`FrontEndGenerator`: wraps an adapter (:class:`~smoothgen.models.diffusion.DiffusionGenerator`,
  :class:`~smoothgen.models.lm.LMGenerator`, ...) in the generator protocol; every other attribute
  (``conditions``, ``embedding_geometry``, ``vocab``, ...) is the base adapter's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["FrontEnd", "FrontEndGenerator", "NearestEmbedding", "SoftPosteriorMean"]

_TIE_MARGIN = 1e-4
"""Rows whose two best float32 scores differ by less than this are re-ranked in float64."""


class FrontEnd(Protocol):
    """A fixed map of condition embeddings ``[..., E] -> [..., E]``."""

    def __call__(self, x: Tensor) -> Tensor: ...


def _check_codebook(codebook: Tensor) -> Tensor:
    if not isinstance(codebook, Tensor) or codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError("codebook must be a float tensor [K, E] with K >= 1 rows")
    if not codebook.is_floating_point() or not torch.isfinite(codebook).all():
        raise ValueError("codebook must be floating point and finite")
    return codebook.detach().clone()


def _check_input(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"embeddings must be a float tensor [..., {dim}], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")


class NearestEmbedding:
    """Projection front-end: snap every row ``x[..., :]`` to its nearest codebook row (ℓ₂).

    Exact: scores ``x·u_k − ‖u_k‖²/2`` are ranked in float32 in chunks, and rows whose two best
    scores are within ``1e-4`` are re-ranked in float64. Ties go to the lower index.

    Parameters
    ----------
    codebook
        ``[K, E]`` embeddings (class embeddings, or a vocabulary's token embeddings).
    chunk_rows
        Rows scored at once (memory ``chunk_rows × K`` floats).
    """

    def __init__(self, codebook: Tensor, chunk_rows: int = 4096) -> None:
        self.codebook = _check_codebook(codebook)
        self.chunk_rows = int(chunk_rows)
        self._half_sq = 0.5 * (self.codebook.double() ** 2).sum(1)

    @property
    def dim(self) -> int:
        return int(self.codebook.shape[1])

    def _rank(self, flat: Tensor) -> Tensor:
        book = self.codebook.to(flat.device)
        half_sq = self._half_sq.to(flat.device)
        scores = flat.float() @ book.float().T - half_sq.float()
        top = scores.topk(min(2, book.shape[0]), dim=1)
        best = top.indices[:, 0]
        if book.shape[0] > 1:
            close = (top.values[:, 0] - top.values[:, 1]) < _TIE_MARGIN
            if close.any():
                exact = flat[close].double() @ book.double().T - half_sq
                best[close] = exact.argmax(dim=1)
        return best

    def indices(self, x: Tensor) -> Tensor:
        """Index ``k(x) = argmin_k ‖x − u_k‖₂`` of every row: ``[..., E] -> [...]`` (int64)."""
        _check_input(x, self.dim)
        flat = x.reshape(-1, self.dim)
        with torch.no_grad():
            parts = [self._rank(flat[i : i + self.chunk_rows]) for i in range(0, flat.shape[0], self.chunk_rows)]
        return torch.cat(parts).reshape(x.shape[:-1])

    def __call__(self, x: Tensor) -> Tensor:
        """The snapped embeddings ``u_{k(x)}``, same shape, dtype and device as ``x``."""
        return self.codebook.to(device=x.device, dtype=x.dtype)[self.indices(x)]

    def margins(self, x: Tensor, ids: Tensor) -> Tensor:
        r"""Signed distance of every row of ``x [L, E]`` to the boundary of the cell of ``ids [L]``:

        .. math:: m_l = \min_{v \ne k_l} \frac{\|x_l - u_v\|^2 - \|x_l - u_{k_l}\|^2}{2\|u_{k_l} - u_v\|}

        (float64; positive inside the cell, the largest ``ρ`` with ``k(x_l + δ) = k_l`` for all
        ``‖δ‖ < ρ``). At a codeword it is half its distance to the nearest other one.
        """
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        _check_input(x, self.dim)
        if x.ndim != 2 or x.shape[0] != ids.numel():
            raise ValueError(f"x must be [{ids.numel()}, {self.dim}] to match ids, got {tuple(x.shape)}")
        book, xd = self.codebook.double().to(x.device), x.double()
        own = book[ids.to(x.device)]
        lift = xd @ book.T - self._half_sq.to(x.device)
        gap = (lift.gather(1, ids[:, None].to(x.device)) - lift)
        sep = torch.cdist(own, book)
        gap[torch.arange(ids.numel()), ids] = math.inf
        return (gap / sep.clamp_min(torch.finfo(torch.float64).tiny)).amin(1)

    def hits(self, center_ids: Tensor, unit_noise: Tensor, sigmas: Sequence[float],
             points: Tensor | None = None) -> list[int]:
        """For each σ, how many draws ``x + σ ξ_i`` snap to ``center_ids`` in every row.

        ``center_ids [L]`` indexes the codebook (a class: ``L = 1``; a prompt: its tokens);
        ``points [L, E]`` is ``x`` (default: the codewords ``u_{center}`` themselves; an attacked
        condition ``u + δ`` otherwise); ``unit_noise [n, L, E]`` holds standard normal ``ξ_i``. One
        matrix product serves every σ (``x·u_k + σ ξ·u_k``), so the draws are common to all σ. A
        draw counts only if all ``L`` rows land in the cells of ``center_ids`` (the event ``A`` of
        the concentration certificate).
        """
        ids = torch.as_tensor(center_ids, dtype=torch.long).flatten()
        if unit_noise.ndim != 3 or unit_noise.shape[1:] != (ids.numel(), self.dim):
            raise ValueError(f"unit_noise must be [n, {ids.numel()}, {self.dim}], got {tuple(unit_noise.shape)}")
        if any(not (math.isfinite(s) and s > 0) for s in sigmas):
            raise ValueError(f"every sigma must be finite and > 0, got {list(sigmas)}")
        book = self.codebook.to(unit_noise.device)
        if points is not None:
            _check_input(points, self.dim)
            if points.shape != (ids.numel(), self.dim):
                raise ValueError(f"points must be [{ids.numel()}, {self.dim}], got {tuple(points.shape)}")
        center = book[ids.to(book.device)] if points is None else points.to(book.device, torch.float64)
        rows = max(1, self.chunk_rows // ids.numel())
        counts = [0] * len(sigmas)
        with torch.no_grad():
            base = (center.double() @ book.double().T - self._half_sq.to(book.device)).float()
            for i in range(0, unit_noise.shape[0], rows):
                xi = unit_noise[i : i + rows]
                proj = (xi.reshape(-1, self.dim).float() @ book.float().T).view(*xi.shape[:2], -1)
                for j, s in enumerate(sigmas):
                    counts[j] += self._count_hits(center, base + s * proj, xi, ids, s)
        return counts

    def _count_hits(self, center: Tensor, scores: Tensor, xi: Tensor, ids: Tensor, sigma: float) -> int:
        """Draws whose every row keeps its own index (float32 margins, float64 where they are close)."""
        rows = torch.arange(ids.numel(), device=scores.device)
        own = scores[:, rows, ids.to(scores.device)]
        scores[:, rows, ids.to(scores.device)] = float("-inf")
        margin = own - scores.amax(2)
        inside = (margin > 0).all(1)
        unsure = (margin.abs() < _TIE_MARGIN).any(1)
        if unsure.any():
            exact = self.indices(center.to(xi.dtype) + sigma * xi[unsure])
            inside[unsure] = (exact == ids.to(exact.device)).all(1)
        return int(inside.sum())


class SoftPosteriorMean:
    r"""Soft front-end: the posterior mean ``Σ_k w_k(x) u_k``, ``w = softmax(−‖x − u_k‖²/(2τ))``.

    The Bayes posterior mean of the clean embedding when ``x = u + N(0, τ I)`` and ``u`` is
    uniform over the codebook; choose ``τ = σ²`` for smoothing noise ``N(0, σ² I)`` (the
    temperature of the softmax over squared distances is then ``2σ²``).

    Parameters
    ----------
    codebook
        ``[K, E]`` embeddings.
    variance
        ``τ > 0``, fixed before any input is seen.
    chunk_rows
        Rows processed at once.
    """

    def __init__(self, codebook: Tensor, variance: float, chunk_rows: int = 4096) -> None:
        if not (isinstance(variance, (int, float)) and math.isfinite(variance) and variance > 0):
            raise ValueError(f"variance must be a finite number > 0 (e.g. sigma**2), got {variance!r}")
        self.codebook = _check_codebook(codebook)
        self.variance = float(variance)
        self.chunk_rows = int(chunk_rows)

    @property
    def dim(self) -> int:
        return int(self.codebook.shape[1])

    def weights(self, x: Tensor) -> Tensor:
        """Posterior weights ``[..., K]`` (float64)."""
        _check_input(x, self.dim)
        book = self.codebook.to(x.device).double()
        logits = (x.double() @ book.T - 0.5 * (book**2).sum(1)) / self.variance
        return logits.softmax(dim=-1)

    def __call__(self, x: Tensor) -> Tensor:
        """``m(x)``, same shape, dtype and device as ``x``."""
        _check_input(x, self.dim)
        flat = x.reshape(-1, self.dim)
        book = self.codebook.to(x.device).double()
        with torch.no_grad():
            parts = [self.weights(flat[i : i + self.chunk_rows]) @ book for i in range(0, flat.shape[0], self.chunk_rows)]
        return torch.cat(parts).reshape(x.shape).to(x.dtype)


class FrontEndGenerator:
    """``G_f(x, z) = G(f(x), z)``: a base adapter behind a fixed front-end, in the generator protocol.

    Calls, per-step embeddings ``[B, T, E]`` (diffusion) and the LM's ``next_token`` /
    ``next_token_logits`` pass through ``front`` first; every other attribute is the base's.
    """

    def __init__(self, base: Any, front: FrontEnd) -> None:
        if not callable(base) or not callable(front):
            raise ValueError("base and front must be callable")
        self.base, self.front = base, front

    def __call__(self, embeddings: Tensor, generator: torch.Generator) -> Tensor:
        return self.base(self.front(embeddings), generator)

    def next_token(self, prompt_embeds: Tensor, prefix: Tensor) -> Tensor:
        return self.base.next_token(self.front(prompt_embeds), prefix)

    def next_token_logits(self, prompt_embeds: Tensor, prefix: Tensor) -> Tensor:
        return self.base.next_token_logits(self.front(prompt_embeds), prefix)

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "front"):
            raise AttributeError(name)
        return getattr(self.base, name)
