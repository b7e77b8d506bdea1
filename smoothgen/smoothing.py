"""Smoothed generators, classifiers and greedy decoders: noise + batching + aggregation.

A base conditional generator ``G(u, z)`` maps a batch of condition embeddings ``u`` and its own
randomness ``z`` (drawn from a passed ``torch.Generator``) to outputs. The smoothed generator at a
condition ``c`` outputs ``P_c = Law(G(c + ε, z))``, ``ε ~ N(0, Σ)`` (a :mod:`smoothgen.noise` object).

Engine (shared by every class here)
-----------------------------------
- ``n`` draws are made in ``ceil(n / batch_size)`` batches: for each batch, the noise is drawn in
  place into a fresh ``(b, *E)`` buffer (dtype ``noise.dtype``), ``c`` is added, and the base is
  called once, all under ``torch.inference_mode()``; no Python work per sample.
- One ``torch.Generator`` = ``make_generator(seed, device)`` drives both the noise and the base's
  randomness, sequentially: noise of batch 1, base of batch 1, noise of batch 2, ...
- **Reproducibility contract**: a result is a deterministic function of
  ``(c, n, seed, batch_size, device)`` on CPU. It *does* depend on ``batch_size`` (the base draws its
  randomness per call, so a different split consumes the generator differently): the law of the
  output does not, its realisation does. Rows of full batches are prefix-stable:
  ``sample(c, n, s)[:m] == sample(c, m, s)`` whenever ``m`` is a multiple of ``batch_size``.
- Streaming statistics (``map_reduce``, ``mean``, classifier counts) keep only O(batch) outputs alive.
- ``device=None`` means the condition's device; the generator, the noise and the base run there; the
  only device→host copy is the final one (classifier counts).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from smoothgen import certify
from smoothgen.noise import Noise
from smoothgen.runtime import DeviceLike, make_generator

Metric = Callable[[Tensor, Tensor], Tensor]
"""Pairwise distances: ``metric(a[A, *O], b[B, *O]) -> Tensor[A, B]``."""


class Generator(Protocol):
    """A base conditional generator: ``base(embeddings[B, *E], generator) -> outputs[B, *O]``.

    Images are float tensors in [0, 1]; texts are token-id tensors. All randomness must be drawn
    from ``generator`` (its device is where the call runs).
    """

    def __call__(self, embeddings: Tensor, generator: torch.Generator) -> Tensor: ...


class Classifier(Protocol):
    """A base classifier: ``f(inputs[B, *E], generator) -> labels[B]`` (integer) or ``scores[B, K]``.

    Float scores are turned into labels by ``argmax`` over the last dimension. A deterministic
    classifier simply ignores ``generator``; a generator followed by an evaluator is a classifier too.
    """

    def __call__(self, inputs: Tensor, generator: torch.Generator) -> Tensor: ...


NextToken = Callable[[Tensor, Tensor], Tensor]
"""Greedy base step: ``next_token(prompt_embeds[B, k, d], prefix[B, t] long) -> tokens[B] long``."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_count(name: str, value: int) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_alpha(alpha: float) -> float:
    """Return ``alpha`` if it lies in the open interval (0, 1), else raise ``ValueError``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _check_noise(noise: Noise) -> Noise:
    if not isinstance(noise, Noise):
        raise ValueError(
            f"noise must be a smoothgen.noise.Noise (e.g. GaussianNoise(sigma)), got {type(noise).__name__}"
        )
    return noise


def _prepare_condition(c: Tensor, noise: Noise, device: DeviceLike) -> Tensor:
    """Validate a condition embedding ``c[*E]`` and return it on ``device`` in ``noise.dtype``.

    Raises
    ------
    ValueError
        If ``c`` is not a floating tensor with >= 1 dims, holds NaN/inf, or its shape differs
        from the noise's ``event_shape``.
    """
    if not isinstance(c, Tensor) or not c.is_floating_point() or c.ndim < 1:
        raise ValueError("the condition must be a floating tensor of shape event_shape (no batch dimension)")
    noise.check_event_shape(c.shape)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("the condition embedding contains NaN or inf; pass a finite embedding")
    target = c.device if device is None else torch.device(device)
    return c.detach().to(device=target, dtype=noise.dtype)


def derive_seed(seed: int, stream: int) -> int:
    """A seed for an independent random stream ``stream`` derived from ``seed`` (SeedSequence).

    Used for Cohen's separate selection (stream 0) and estimation (stream 1) draws.
    """
    for name, value in (("seed", seed), ("stream", stream)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    state = np.random.SeedSequence(int(seed), spawn_key=(int(stream),)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """``[batch_size, ..., batch_size, rest]`` summing to ``n``."""
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def _noisy(c: Tensor, rows: int, noise: Noise, generator: torch.Generator) -> Tensor:
    """``rows`` noisy copies of ``c``: noise drawn in place into a fresh buffer, then ``+ c``."""
    buf = torch.empty((rows, *c.shape), dtype=c.dtype, device=c.device)
    return noise.sample_(buf, generator).add_(c)


def sample_base(base: Generator, c: Tensor, n: int, seed: int, batch_size: int = 64) -> Tensor:
    """``n`` outputs of the **unsmoothed** base at the fixed condition ``c`` (the σ = 0 reference).

    ``base(c repeated b times, generator)`` over batches of ``batch_size`` rows, one generator seeded
    ``seed`` on ``c``'s device driving the base's own randomness, under ``torch.inference_mode``.
    """
    _check_count("n", n)
    _check_count("batch_size", batch_size)
    generator = make_generator(seed, c.device)
    with torch.inference_mode():
        batches = [_check_rows(base(c.expand(rows, *c.shape), generator), rows, "the base")
                   for rows in _batch_sizes(n, batch_size)]
    return torch.cat(batches)


def _check_rows(out: Tensor, rows: int, who: str) -> Tensor:
    if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != rows:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{who} returned {shape} for a batch of {rows} inputs; it must return {rows} rows")
    return out


# --------------------------------------------------------------------------------------------
# aggregations on a samples tensor
# --------------------------------------------------------------------------------------------
def _check_samples(samples: Tensor) -> Tensor:
    if not isinstance(samples, Tensor) or samples.ndim < 1 or samples.shape[0] < 1:
        raise ValueError("samples must be a tensor of shape (n, *output_shape) with n >= 1")
    return samples


def aggregate_mean(samples: Tensor) -> Tensor:
    """The seed's smoothed output ``ŷ = (1/n) Σ_i y_i`` over ``samples[n, *O]`` (float64 sum).

    Returned in the samples' dtype when floating, else float32.
    """
    s = _check_samples(samples)
    dtype = s.dtype if s.is_floating_point() else torch.float32
    return (s.sum(0, dtype=torch.float64) / s.shape[0]).to(dtype)


def aggregate_median(samples: Tensor) -> Tensor:
    """Coordinate-wise median of ``samples[n, *O]``.

    Floating outputs: the average of the two middle order statistics for even ``n`` (the
    convention of ``numpy.median``). Integer outputs (token ids): the lower median
    ``y_(⌈n/2⌉)``, so the result is an actual value of that coordinate.
    """
    s = _check_samples(samples)
    n = s.shape[0]
    ordered = s.sort(dim=0).values
    lower = ordered[(n - 1) // 2]
    if not s.is_floating_point():
        return lower
    return (lower + ordered[n // 2]) / 2


def l2_distances(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``‖a_i − b_j‖₂`` over flattened outputs, in float64: ``[A, B]``."""
    return torch.cdist(a.flatten(1).to(torch.float64), b.flatten(1).to(torch.float64))


def medoid_index(samples: Tensor, metric: Metric = l2_distances, chunk_size: int = 256) -> int:
    """Index of the medoid: ``argmin_i Σ_j ρ(y_i, y_j)`` (first index on ties).

    Distances are computed ``chunk_size`` rows at a time, so memory is O(chunk_size · n).
    ``metric(a[A, *O], b[B, *O])`` must return the ``[A, B]`` matrix of distances.
    """
    s = _check_samples(samples)
    chunk = _check_count("chunk_size", chunk_size)
    n = s.shape[0]
    totals = torch.empty(n, dtype=torch.float64, device=s.device)
    for start in range(0, n, chunk):
        block = metric(s[start : start + chunk], s)
        if tuple(block.shape) != (min(chunk, n - start), n):
            raise ValueError(f"metric must return an [A, B] distance matrix, got shape {tuple(block.shape)}")
        totals[start : start + chunk] = block.sum(dim=1, dtype=torch.float64)
    return int(totals.argmin())


def medoid(samples: Tensor, metric: Metric = l2_distances, chunk_size: int = 256) -> Tensor:
    """The medoid sample ``samples[medoid_index(samples, metric)]`` (see :func:`medoid_index`)."""
    return samples[medoid_index(samples, metric, chunk_size)]


def suggest_batch_size(base: Generator, c: Tensor, noise: Noise, *, memory_fraction: float = 0.25,
                       max_batch: int = 8192, probe: int = 8) -> int:
    """A batch size for ``base`` whose working memory fits ``memory_fraction`` of the free memory.

    One probe call of ``probe`` rows measures the memory per row: on CUDA the peak of
    ``torch.cuda.max_memory_allocated`` during the call (exact for the caching allocator); on the
    CPU, where torch keeps no such counter, ``64 ×`` the bytes of one input plus one output row
    (a stated heuristic for the activations). Free memory is ``torch.cuda.mem_get_info`` or the
    available physical pages. Returns ``min(max_batch, max(1, ⌊fraction · free / per_row⌋))``.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must lie in (0, 1], got {memory_fraction!r}")
    c = _prepare_condition(c, noise, None)
    generator = make_generator(0, c.device)
    cuda = c.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(c.device)
        torch.cuda.reset_peak_memory_stats(c.device)
        start = torch.cuda.memory_allocated(c.device)
    with torch.inference_mode():
        inputs = _noisy(c, probe, noise, generator)
        out = base(inputs, generator)
    if cuda:
        per_row = (torch.cuda.max_memory_allocated(c.device) - start) / probe
        free = torch.cuda.mem_get_info(c.device)[0]
    else:
        per_row = 64 * (inputs[0].nbytes + out[0].nbytes)
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(min(max_batch, max(1, memory_fraction * free // max(per_row, 1))))


def _collect(batches: Iterator[Tensor], n: int) -> Tensor:
    """Copy a stream of ``[b, *S]`` batches into one preallocated ``[n, *S]`` tensor.

    Only one batch is alive at a time, so memory is the result plus one batch (concatenating a
    list would keep every batch until the end).
    """
    out: Tensor | None = None
    start = 0
    for batch in batches:
        if out is None:
            out = torch.empty((n, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        out[start : start + batch.shape[0]].copy_(batch)
        start += batch.shape[0]
    return out


# --------------------------------------------------------------------------------------------
# smoothed generator
# --------------------------------------------------------------------------------------------
class SmoothedGenerator:
    """Randomized smoothing of a conditional generator: ``P_c = Law(G(c + ε, z))``, ``ε ~ noise``.

    Parameters
    ----------
    base
        A :class:`Generator`.
    noise
        A :class:`smoothgen.noise.Noise` (its ``dtype`` is the dtype of the embeddings given to ``base``).
    batch_size
        Rows per base call (>= 1), or ``"auto"``: chosen from the free memory by
        :func:`suggest_batch_size` at the first call. See the module docstring for how results
        depend on it.

    Raises
    ------
    ValueError
        If ``base`` is not callable, ``noise`` is not a Noise, or ``batch_size < 1``.
    """

    def __init__(self, base: Generator, noise: Noise, batch_size: int | str = 64) -> None:
        if not callable(base):
            raise ValueError("base must be callable as base(embeddings, generator)")
        self.base = base
        self.noise = _check_noise(noise)
        self.batch_size = batch_size if batch_size == "auto" else _check_count("batch_size", batch_size)

    def _rows(self, c: Tensor) -> int:
        """The batch size, chosen by :func:`suggest_batch_size` at first use when it is ``"auto"``."""
        if self.batch_size == "auto":
            self.batch_size = suggest_batch_size(self.base, c, self.noise)
        return self.batch_size

    def _stream(
        self, c: Tensor, n: int, seed: int, device: DeviceLike, fn: Callable[[Tensor], Any] | None
    ) -> Iterator[Any]:
        """Validate now, then lazily yield ``fn(base(c + ε, generator))`` (or the raw outputs) per batch."""
        n = _check_count("n", n)
        c = _prepare_condition(c, self.noise, device)
        return self._batches(c, n, make_generator(seed, c.device), fn)

    def _batches(
        self, c: Tensor, n: int, generator: torch.Generator, fn: Callable[[Tensor], Any] | None
    ) -> Iterator[Any]:
        for rows in _batch_sizes(n, self._rows(c)):
            with torch.inference_mode():
                out = _check_rows(self.base(_noisy(c, rows, self.noise, generator), generator), rows, "base")
                result = out if fn is None else fn(out)
            del out
            yield result

    def iter_batches(self, c: Tensor, n: int, seed: int, device: DeviceLike = None) -> Iterator[Tensor]:
        """Lazily yield the ``n`` outputs as batches ``[b, *O]`` (inference tensors).

        Stopping the iteration early stops sampling: this is the hook for sequential methods.
        """
        return self._stream(c, n, seed, device, None)

    def sample(self, c: Tensor, n: int, seed: int, device: DeviceLike = None) -> Tensor:
        """Draw ``n`` outputs ``G(c + ε_i, z_i)``: a ``[n, *O]`` tensor (one preallocated buffer)."""
        return _collect(self.iter_batches(c, n, seed, device), n)

    def map_reduce(
        self, c: Tensor, n: int, seed: int, fn: Callable[[Tensor], Tensor], device: DeviceLike = None
    ) -> Tensor:
        """``cat_b fn(outputs_b)``: apply ``fn`` to each output batch ``[b, *O]`` and keep only its result.

        ``fn`` must return a tensor with ``b`` rows (e.g. a distance per output); memory is
        O(batch) in the outputs plus the size of ``fn``'s results. Same samples as :meth:`sample`.
        """
        if not callable(fn):
            raise ValueError("fn must be callable on a batch of outputs")
        wrapped = lambda out: _check_rows(fn(out), out.shape[0], "fn")  # noqa: E731
        return _collect(self._stream(c, n, seed, device, wrapped), n)

    def mean(self, c: Tensor, n: int, seed: int, device: DeviceLike = None) -> Tensor:
        """The smoothed mean ``ŷ = (1/n) Σ_i y_i`` as a running float64 sum (O(batch) memory).

        Equals ``aggregate_mean(sample(c, n, seed))`` up to summation order; dtype as there.
        """
        total: Tensor | None = None
        dtype = torch.float32
        for part in self._stream(c, n, seed, device, lambda out: (out.sum(0, dtype=torch.float64), out.dtype)):
            total = part[0] if total is None else total + part[0]
            dtype = part[1] if part[1].is_floating_point else torch.float32
        return (total / n).to(dtype)

    def median(self, c: Tensor, n: int, seed: int, device: DeviceLike = None) -> Tensor:
        """Coordinate-wise median of ``n`` samples (see :func:`aggregate_median`; needs the samples)."""
        return aggregate_median(self.sample(c, n, seed, device))

    def medoid(
        self,
        c: Tensor,
        n: int,
        seed: int,
        metric: Metric = l2_distances,
        device: DeviceLike = None,
        chunk_size: int = 256,
    ) -> Tensor:
        """The medoid of ``n`` samples under ``metric`` (see :func:`medoid_index`)."""
        return medoid(self.sample(c, n, seed, device), metric, chunk_size)


# --------------------------------------------------------------------------------------------
# counting (smoothed classifiers and decoder steps)
# --------------------------------------------------------------------------------------------
def _labels(out: Tensor) -> Tensor:
    """Integer labels from a classifier's output: int ``[B]`` as is, float ``[B, K]`` by argmax."""
    if out.is_floating_point() and out.ndim == 2:
        return out.argmax(dim=1)
    if not out.is_floating_point() and not out.is_complex() and out.ndim == 1:
        return out.long()
    raise ValueError(
        f"a classifier must return integer labels [B] or float scores [B, K], got {out.dtype} {tuple(out.shape)}"
    )


def _count_labels(
    label_fn: Callable[[Tensor, torch.Generator], Tensor],
    c: Tensor,
    noise: Noise,
    n: int,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """Histogram (int64, on ``c``'s device) of ``label_fn(c + ε, generator)`` over ``n`` batched draws.

    Out-of-range labels are tallied on the device and reported after the loop (no per-batch sync).
    """
    counts = torch.zeros(num_classes, dtype=torch.int64, device=c.device)
    invalid = torch.zeros((), dtype=torch.int64, device=c.device)
    for rows in _batch_sizes(n, batch_size):
        with torch.inference_mode():
            labels = _check_rows(label_fn(_noisy(c, rows, noise, generator), generator), rows, "the base")
        invalid += ((labels < 0) | (labels >= num_classes)).sum()
        counts.index_add_(0, labels.clamp(0, num_classes - 1), torch.ones_like(labels))
    if int(invalid) > 0:
        raise ValueError(f"the base returned {int(invalid)} labels outside [0, {num_classes}); check num_classes")
    return counts


class SmoothedClassifier:
    """Cohen et al. (2019) smoothed classifier ``g(x) = argmax_k P(f(x + ε) = k)``, ``ε ~ noise``.

    Radii are ℓ₂ radii: Cohen's certificate in whitened coordinates certifies the open ellipsoid
    ``‖Σ^{-1/2} δ‖ < Φ⁻¹(p̲)``, reported as its inscribed ball ``noise.sigma_min · Φ⁻¹(p̲)``
    (``= σ Φ⁻¹(p̲)`` for isotropic noise); divide by ``noise.sigma_min`` for the Mahalanobis radius.

    Parameters
    ----------
    base_classifier
        A :class:`Classifier`.
    noise
        A :class:`smoothgen.noise.Noise`.
    num_classes
        ``K >= 1``; labels must lie in ``[0, K)``.
    batch_size
        Rows per base call (>= 1).
    """

    def __init__(self, base_classifier: Classifier, noise: Noise, num_classes: int, batch_size: int = 64) -> None:
        if not callable(base_classifier):
            raise ValueError("base_classifier must be callable as f(inputs, generator)")
        self.base_classifier = base_classifier
        self.noise = _check_noise(noise)
        self.num_classes = _check_count("num_classes", num_classes)
        self.batch_size = _check_count("batch_size", batch_size)

    def _counts(self, x: Tensor, n: int, seed: int, device: DeviceLike) -> Tensor:
        x = _prepare_condition(x, self.noise, device)
        generator = make_generator(seed, x.device)
        label_fn = lambda u, g: _labels(self.base_classifier(u, g))  # noqa: E731
        n = _check_count("n", n)
        return _count_labels(label_fn, x, self.noise, n, self.num_classes, self.batch_size, generator)

    def counts(self, x: Tensor, n: int, seed: int, device: DeviceLike = None) -> np.ndarray:
        """Class counts ``[K]`` (int64, summing to ``n``) of ``f(x + ε_i)`` over ``n`` draws, O(batch) memory."""
        return self._counts(x, n, seed, device).cpu().numpy()

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, seed: int, device: DeviceLike = None) -> Any:
        """Cohen's CERTIFY: ``n0`` selection draws (stream ``derive_seed(seed, 0)``) pick ``ĉ_A``;
        ``n`` fresh estimation draws (stream ``derive_seed(seed, 1)``) give ``p̲_A`` (one-sided
        Clopper–Pearson at level ``1 − α``); abstain (−1) if ``p̲_A < ½``, else radius
        ``sigma_min · Φ⁻¹(p̲_A)``. Returns :func:`smoothgen.certify.cohen_certify`'s result
        (unpacks as ``(prediction, radius)``). With probability ≥ 1 − α a non-abstaining answer is
        ``g(x + δ)`` for every ``‖δ‖₂ < radius`` (strict: at ``‖δ‖₂ = radius`` the top class may tie).
        """
        alpha = _check_alpha(alpha)
        selection = self.counts(x, _check_count("n0", n0), derive_seed(seed, 0), device)
        estimation = self.counts(x, _check_count("n", n), derive_seed(seed, 1), device)
        return certify.cohen_certify(selection, estimation, sigma=self.noise.sigma_min, alpha=alpha)

    def predict(self, x: Tensor, n: int, alpha: float, seed: int, device: DeviceLike = None) -> int:
        """Cohen's PREDICT: the top class of ``n`` draws if a two-sided binomial test of the top two
        counts rejects at level ``α``, else −1 (:func:`smoothgen.certify.cohen_predict`). With
        probability ≥ 1 − α a non-abstaining answer equals ``g(x)``.
        """
        alpha = _check_alpha(alpha)
        return int(certify.cohen_predict(self.counts(x, n, seed, device), alpha=alpha))


# --------------------------------------------------------------------------------------------
# smoothed greedy decoding
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmoothedDecoding:
    """Result of :meth:`SmoothedGreedyDecoder.decode`.

    Attributes
    ----------
    tokens
        ``[T]`` emitted tokens (the selection majority at each step, given the emitted prefix).
    selection_counts, estimation_counts
        ``[T, V]`` per-step token counts from the ``n0`` selection and ``n`` estimation draws.
    certificate
        :func:`smoothgen.certify.sequence_certificate`'s result (per-step radii, sequence radius).
    """

    tokens: np.ndarray
    selection_counts: np.ndarray
    estimation_counts: np.ndarray
    certificate: Any


class SmoothedGreedyDecoder:
    """Greedy decoding of an LM whose prompt embeddings are smoothed, with a certified sequence.

    Step ``t`` is a smoothed classifier of the prompt embedding given the emitted prefix
    ``y_<t``: ``g_t(p) = argmax_v P(next_token(p + ε, y_<t) = v)``. The emitted token ``y_t`` is
    the majority of ``n0`` selection draws; ``n`` fresh estimation draws (independent stream)
    certify it. ``sequence_certificate`` combines the steps (Cohen at level ``α/T`` each, union
    bound): with probability ≥ 1 − α, ``y_1..y_T`` is the smoothed greedy output for every
    perturbation with ``‖δ‖₂ <`` the sequence radius (strict, as in Cohen et al.; ℓ₂ radii as in
    :class:`SmoothedClassifier`).

    Parameters
    ----------
    next_token
        ``next_token(prompt_embeds[B, k, d], prefix[B, t] long) -> tokens[B] long``.
    noise
        A :class:`smoothgen.noise.Noise` over ``[k, d]`` prompt embeddings.
    vocab_size
        ``V >= 1``.
    batch_size
        Rows per ``next_token`` call (>= 1).
    """

    def __init__(self, next_token: NextToken, noise: Noise, vocab_size: int, batch_size: int = 64) -> None:
        if not callable(next_token):
            raise ValueError("next_token must be callable as next_token(prompt_embeds, prefix)")
        self.next_token = next_token
        self.noise = _check_noise(noise)
        self.vocab_size = _check_count("vocab_size", vocab_size)
        self.batch_size = _check_count("batch_size", batch_size)

    def _step_counts(self, prompt: Tensor, prefix: Tensor, n: int, generator: torch.Generator) -> Tensor:
        label_fn = lambda u, g: self.next_token(u, prefix.expand(u.shape[0], -1))  # noqa: E731
        return _count_labels(label_fn, prompt, self.noise, n, self.vocab_size, self.batch_size, generator)

    def decode(
        self,
        prompt_embeds: Tensor,
        steps: int,
        n0: int,
        n: int,
        alpha: float,
        seed: int,
        device: DeviceLike = None,
        stop_token: int | None = None,
    ) -> SmoothedDecoding:
        """Decode up to ``steps`` tokens from the smoothed prompt ``prompt_embeds[k, d]`` and certify them.

        Selection draws use ``derive_seed(seed, 0)``, estimation draws ``derive_seed(seed, 1)``
        (two generators, each continued across steps). Decoding stops after ``stop_token`` if it is
        emitted; the union bound still uses ``T = steps`` (fixed before sampling), so the
        certificate stays valid. Raises ``ValueError`` on bad input (``steps, n0, n < 1``,
        ``α ∉ (0, 1)``, NaN/inf or mis-shaped prompt, ``stop_token`` outside the vocabulary).
        """
        steps, n0, n = _check_count("steps", steps), _check_count("n0", n0), _check_count("n", n)
        alpha = _check_alpha(alpha)
        valid_stop = isinstance(stop_token, (int, np.integer)) and 0 <= stop_token < self.vocab_size
        if stop_token is not None and not valid_stop:
            raise ValueError(f"stop_token must be None or a token id in [0, {self.vocab_size}), got {stop_token!r}")
        if not isinstance(prompt_embeds, Tensor) or prompt_embeds.ndim != 2:
            raise ValueError("prompt_embeds must be a [k, d] tensor (one prompt, no batch dimension)")
        prompt = _prepare_condition(prompt_embeds, self.noise, device)
        g_sel = make_generator(derive_seed(seed, 0), prompt.device)
        g_est = make_generator(derive_seed(seed, 1), prompt.device)
        prefix = torch.empty((1, 0), dtype=torch.long, device=prompt.device)
        selection, estimation = [], []
        for _ in range(steps):
            selection.append(self._step_counts(prompt, prefix, n0, g_sel))
            estimation.append(self._step_counts(prompt, prefix, n, g_est))
            prefix = torch.cat([prefix, selection[-1].argmax().view(1, 1)], dim=1)
            if stop_token is not None and int(prefix[0, -1]) == stop_token:
                break
        return self._certify(prefix[0], selection, estimation, alpha, steps)

    def _certify(
        self, tokens: Tensor, selection: list[Tensor], estimation: list[Tensor], alpha: float, steps: int
    ) -> SmoothedDecoding:
        """Move the per-step counts to the host once and call ``sequence_certificate``."""
        sel, est = torch.stack(selection).cpu().numpy(), torch.stack(estimation).cpu().numpy()
        toks = tokens.cpu().numpy()
        sigma = self.noise.sigma_min
        cert = certify.sequence_certificate(sel, est, sigma=sigma, alpha=alpha, tokens=toks, num_steps=steps)
        return SmoothedDecoding(toks, sel, est, cert)
