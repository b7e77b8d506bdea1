r"""Anytime-valid sequential certification: stop sampling as soon as the answer is known.

A fixed-``n`` certificate (Cohen et al. 2019 use ``n = 10⁵``) spends the same number of base
forward passes on every input, although most inputs are decided after a few hundred. Here the
draws arrive in rounds and, after each round (a *look*), a **confidence sequence** for the
top-class probability ``p`` decides whether to stop.

Confidence sequences
--------------------
A confidence sequence ``(L_k, U_k)`` at level ``α`` satisfies
:math:`P(\exists k:\ p \notin [L_k, U_k]) \le \alpha` — uniformly over the looks, so the bounds
stay valid at a **data-dependent stopping time** (any stopping rule, including the ones below).
Two constructions, both on the cumulative count ``S_k`` of successes after ``n_k`` draws:

* ``"union_cp"`` (default): one-sided Clopper–Pearson bounds at look ``k`` at level
  ``α_k = α·w_k`` with :math:`\sum_k w_k \le 1` (:class:`LookSchedule`). By the union bound
  :math:`P(\exists k: p < L_k) \le \sum_k \alpha_k \le \alpha` (same for ``U_k``). The default
  schedule looks at ``32, 64, …, 65 536, 100 000`` and spends half of ``α`` at the last look.
* ``"beta_mixture"``: Robbins' (1970) uniform-prior mixture martingale
  :math:`M_n(m) = B(S+1, n-S+1) / (m^S (1-m)^{n-S})`. Under ``p = m`` it is a non-negative
  martingale with ``M_0 = 1``, so by Ville's inequality :math:`P(\exists n: M_n(p) \ge 1/\alpha)
  \le \alpha`: the set :math:`\{m : M_n(m) < 1/\alpha\}` (an interval, :math:`\log M_n` is convex
  in ``m``) is a confidence sequence valid at **every** ``n``, whatever the look schedule.

Both are intersected over the looks (running max of ``L``, running min of ``U``), which keeps
the guarantee: on the event that every interval contains ``p``, so does their intersection.

The lower and the upper sequence are used at separate levels: ``alpha`` for ``L`` (the only side a
certificate rests on) and ``alpha_futility`` for ``U`` (which only decides when to give up early:
its failures cost a missed certificate, never a false one).

What is certified
-----------------
:func:`sequential_cohen` (and its vectorised twin :func:`sequential_cohen_paths`): ``n0`` selection
draws pick ``ĉ_A``; fresh estimation draws feed the confidence sequence for
``p_A = P(f(x + ε) = ĉ_A)``. At the stop, abstain if ``L < 1/2``, else certify ``R = σ Φ⁻¹(L)``.
**Guarantee**: with probability ``≥ 1 − α``, a non-abstaining answer satisfies
``g(x + δ) = ĉ_A`` for every ``‖δ‖₂ < R`` — the fixed-``n`` argument of Cohen et al. with the
Clopper–Pearson bound replaced by ``L`` at the stopping time. Modes:

* ``"decision"``: is radius ``r*`` certified? With ``q* = Φ(r*/σ)``, stop ``"certified"`` as soon as
  ``L ≥ q*``, ``"futile"`` as soon as ``U < q*``, else at the budget. ``P(certified ∧ σΦ⁻¹(p) <
  r*) ≤ α``; ``P(futile ∧ p ≥ q*) ≤ alpha_futility``.
* ``"radius"``: stop ``"converged"`` when the input is certified (``L ≥ 1/2``) and the radius the
  remaining budget could still add is at most ``tol·σ`` — the bound at the full budget ``n_max``
  (same method, last look's level) for the count ``p̃·n_max``, with ``p̃`` the point estimate
  ``S/n`` (``projection="estimate"``) or the optimistic end ``U`` (``"upper"``, stops later); stop
  ``"futile"`` when ``U < 1/2`` (abstention is certain); else at the budget. The stopping rule
  only sets the cost: the guarantee holds for any rule.

:func:`sequential_np_bounds` does the same for the Neyman–Pearson bounds of a ``[0, 1]`` statistic
(two-sided :func:`smoothgen.certify.mean_interval` at ``α_k`` per look, union bound), and
:func:`sequential_sequence_certificate` for smoothed greedy decoding (one sequential Cohen
certificate per step at level ``α/T``, union bound over the ``T`` steps).

Samplers
--------
A count sampler ``draw(k) -> counts[K]`` returns the class histogram of ``k`` **fresh** draws,
independent of every earlier call (:func:`classifier_sampler`, :func:`bernoulli_sampler`); a value
sampler ``draw(k) -> values[k]`` returns ``k`` fresh values of a ``[0, 1]`` statistic
(:func:`generator_sampler`); a step sampler ``draw(prefix, k) -> counts[V]`` does the same for the
next token after ``prefix`` (:func:`decoder_sampler`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import special

from smoothgen import certify
from smoothgen.runtime import DeviceLike
from smoothgen.smoothing import SmoothedClassifier, SmoothedGenerator, SmoothedGreedyDecoder, derive_seed

__all__ = [
    "LookSchedule", "SequentialCertificate", "SequentialNPBounds", "SequentialSequence",
    "beta_mixture_interval", "bernoulli_cs", "sequential_cohen", "sequential_cohen_paths",
    "sequential_np_bounds", "sequential_sequence_certificate", "simulate_bernoulli_paths",
    "bernoulli_sampler", "classifier_sampler", "generator_sampler", "decoder_sampler",
]

Method = Literal["union_cp", "beta_mixture"]
CountSampler = Callable[[int], Any]
ValueSampler = Callable[[int], Any]
StepSampler = Callable[[np.ndarray, int], Any]

_CONTINUE, _CERTIFIED, _FUTILE, _CONVERGED, _BUDGET = 0, 1, 2, 3, 4
_REASONS = np.array(["", "certified", "futile", "converged", "budget"])
_METHODS = ("union_cp", "beta_mixture")
_FIRST_STREAM = 2  # derive_seed streams 0 and 1 are Cohen's fixed-n selection and estimation


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _level(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < 0 or (float(value) == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# look schedule
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LookSchedule:
    r"""Cumulative sample sizes ``n_1 < … < n_K`` at which to look, and α-spending weights ``w_k``.

    Look ``k`` of a ``"union_cp"`` confidence sequence uses level ``α_k = α·w_k``; validity needs
    only :math:`\sum_k w_k \le 1` and that ``sizes`` and ``weights`` are fixed before sampling.

    Raises
    ------
    ValueError
        If ``sizes`` is not a strictly increasing integer array ``>= 1`` or ``weights`` is not a
        positive array of the same length summing to at most 1.
    """

    sizes: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        sizes, weights = np.asarray(self.sizes), np.asarray(self.weights, dtype=np.float64)
        if sizes.ndim != 1 or sizes.size < 1 or not np.issubdtype(sizes.dtype, np.integer) or sizes[0] < 1:
            raise ValueError(f"sizes must be a non-empty 1-D integer array with entries >= 1, got {sizes!r}")
        if (np.diff(sizes) <= 0).any():
            raise ValueError("sizes must be strictly increasing (cumulative sample sizes)")
        if weights.shape != sizes.shape or not np.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError("weights must be positive and finite, one per look")
        if weights.sum() > 1.0 + 1e-12:
            raise ValueError(f"weights must sum to at most 1 (union bound), got {weights.sum():.6g}")
        object.__setattr__(self, "sizes", sizes.astype(np.int64))
        object.__setattr__(self, "weights", weights)

    @classmethod
    def geometric(cls, n_max: int = 100_000, n_first: int = 32, growth: float = 2.0,
                  spending: Literal["final", "uniform", "polynomial"] = "final") -> LookSchedule:
        r"""Looks at ``round(n_first·growth^j)`` below ``n_max``, then ``n_max``.

        ``spending="final"`` (default): half of α at the last look, the other half shared equally
        by the ``K − 1`` earlier ones — an input that runs to the budget then loses little against
        the fixed-``n`` certificate (level α/2 instead of α), while early looks stay cheap.
        ``"uniform"``: ``w_k = 1/K``. ``"polynomial"``: ``w_k = 6/(π² k²)`` (front-loaded; sums to
        < 1 for any number of looks). ``K = 1`` always gets ``w = 1``.
        """
        n_max, n_first = _count("n_max", n_max), _count("n_first", n_first)
        growth = _positive("growth", growth)
        if growth <= 1.0 or n_first > n_max:
            raise ValueError(f"need growth > 1 and n_first <= n_max, got growth={growth}, n_first={n_first}")
        _choice("spending", spending, ("final", "uniform", "polynomial"))
        count = 1 + int(math.floor(math.log(n_max / n_first) / math.log(growth) + 1e-9))
        sizes = np.unique(np.round(n_first * growth ** np.arange(count)).astype(np.int64))
        sizes = np.append(sizes[sizes < n_max], n_max)
        return cls(sizes, _spending(sizes.size, spending))

    @classmethod
    def fixed(cls, n: int) -> LookSchedule:
        """One look at ``n``: the fixed-sample certificate (weight 1)."""
        return cls(np.array([_count("n", n)]), np.array([1.0]))

    @property
    def n_max(self) -> int:
        """The budget: the last look."""
        return int(self.sizes[-1])

    def alphas(self, alpha: float) -> np.ndarray:
        """``α_k = α·w_k`` per look."""
        return _level("alpha", alpha) * self.weights


def _spending(looks: int, spending: str) -> np.ndarray:
    """α-spending weights ``w_1..w_K`` (see :meth:`LookSchedule.geometric`)."""
    if looks == 1:
        return np.ones(1)
    if spending == "final":
        return np.append(np.full(looks - 1, 0.5 / (looks - 1)), 0.5)
    if spending == "uniform":
        return np.full(looks, 1.0 / looks)
    return 6.0 / (math.pi**2 * np.arange(1, looks + 1) ** 2)


# --------------------------------------------------------------------------------------------
# confidence sequences for a Bernoulli mean
# --------------------------------------------------------------------------------------------
def _bisect(h: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray, iters: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Shrink ``[lo, hi]`` around the sign change of ``h`` (``h(lo) <= 0 < h(hi)``, elementwise)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        up = h(mid) > 0
        lo, hi = np.where(up, lo, mid), np.where(up, mid, hi)
    return lo, hi


def _check_binomial(count: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    s, trials = np.broadcast_arrays(np.asarray(count, dtype=np.float64), np.asarray(n, dtype=np.float64))
    if (trials < 1).any() or (s < 0).any() or (s > trials).any() or (s != np.round(s)).any() or (trials != np.round(trials)).any():
        raise ValueError("need integers 0 <= count <= n and n >= 1")
    return s, trials


def _mixture_end(s: np.ndarray, trials: np.ndarray, alpha: float, side: str) -> np.ndarray:
    """One end of :func:`beta_mixture_interval` (bisection, rounded outwards)."""
    f = trials - s
    level = special.betaln(s + 1.0, f + 1.0) + math.log(alpha)
    inside = lambda m: special.xlogy(s, m) + special.xlog1py(f, -m) - level  # > 0 inside the CS  # noqa: E731
    p_hat = s / trials
    if side == "lower":
        return np.where(s > 0, _bisect(inside, np.zeros_like(p_hat), p_hat)[0], 0.0)
    return np.where(f > 0, _bisect(lambda m: -inside(m), p_hat, np.ones_like(p_hat))[1], 1.0)


def beta_mixture_interval(count: Any, n: Any, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Robbins' uniform-prior mixture confidence sequence for a Bernoulli mean, at ``(S, n)``.

    .. math:: \mathrm{CS}_n = \{m \in [0,1] : \log B(S+1, n-S+1) - S\log m - (n-S)\log(1-m)
              < \log(1/\alpha)\},

    :math:`P(\exists n \ge 1: p \notin \mathrm{CS}_n) \le \alpha` (Ville's inequality for the
    mixture martingale; see the module docstring). The left side is convex in ``m`` with its
    minimum ``≤ 0`` at ``p̂ = S/n`` (the binomial pmf at its maximiser is ``≥ 1/(n+1)``), so the
    set is an interval containing ``p̂``; its ends are found by bisection and rounded outwards.

    Parameters
    ----------
    count, n
        Successes ``S`` and trials ``n`` (integers, ``0 <= S <= n``, ``n >= 1``; broadcast).
    alpha
        Failure probability in ``(0, 1)`` (for both ends together).

    Returns
    -------
    (lower, upper)
        Arrays of the broadcast shape.
    """
    a = _level("alpha", alpha)
    s, trials = _check_binomial(count, n)
    return _mixture_end(s, trials, a, "lower"), _mixture_end(s, trials, a, "upper")


def _bounds(count: np.ndarray, n: Any, alpha_low: float, alpha_up: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """One look's (lower at ``alpha_low``, upper at ``alpha_up``) for ``count`` successes in ``n``."""
    count = np.asarray(count, dtype=np.float64)
    if method == "union_cp":
        lower = np.asarray(certify.clopper_pearson_lower(count, n, alpha_low))
        return lower, 1.0 - np.asarray(certify.clopper_pearson_lower(n - count, n, alpha_up))
    s, trials = _check_binomial(count, n)
    return _mixture_end(s, trials, alpha_low, "lower"), _mixture_end(s, trials, alpha_up, "upper")


def _check_paths(counts: Any, schedule: LookSchedule) -> np.ndarray:
    """Cumulative success counts ``[..., K]`` consistent with ``schedule.sizes``."""
    arr = np.asarray(counts)
    if arr.ndim < 1 or arr.shape[-1] != schedule.sizes.size or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"counts must be an integer array [..., K] with K = {schedule.sizes.size} looks, got {arr.dtype} {arr.shape}")
    steps = np.diff(arr, axis=-1, prepend=0)
    if (steps < 0).any() or (steps > np.diff(schedule.sizes, prepend=0)).any():
        raise ValueError("counts must be cumulative: non-decreasing, and each increment at most the draws added at that look")
    return arr.astype(np.int64)


def bernoulli_cs(counts: Any, schedule: LookSchedule, alpha: float, method: Method = "union_cp",
                 alpha_upper: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Running confidence sequence ``(L_k, U_k)`` from cumulative counts at the looks.

    ``counts[..., k]`` successes among the first ``schedule.sizes[k]`` i.i.d. Bernoulli(``p``)
    draws. ``L`` is the running maximum of the per-look lower bounds at level ``α``, ``U`` the
    running minimum of the upper bounds at level ``alpha_upper`` (default ``α``):
    :math:`P(\exists k: p < L_k) \le \alpha` and :math:`P(\exists k: p > U_k) \le \alpha_{upper}`
    (see the module docstring for ``method``).

    Returns
    -------
    (lower, upper)
        Arrays of the shape of ``counts``.
    """
    a = _level("alpha", alpha)
    a_up = a if alpha_upper is None else _level("alpha_upper", alpha_upper)
    _choice("method", method, _METHODS)
    paths = _check_paths(counts, schedule)
    if method == "beta_mixture":  # one level for every look: all looks at once
        lower, upper = _bounds(paths, schedule.sizes, a, a_up, method)
    else:
        looks = [_bounds(paths[..., k], int(n), a * w, a_up * w, method) for k, (n, w) in enumerate(zip(schedule.sizes, schedule.weights))]
        lower, upper = np.stack([b[0] for b in looks], axis=-1), np.stack([b[1] for b in looks], axis=-1)
    return np.maximum.accumulate(lower, axis=-1), np.minimum.accumulate(upper, axis=-1)


def simulate_bernoulli_paths(p: Any, schedule: LookSchedule, rng: np.random.Generator) -> np.ndarray:
    """Cumulative success counts ``[B, K]`` of i.i.d. Bernoulli(``p[b]``) streams at the looks."""
    probs = np.atleast_1d(np.asarray(p, dtype=np.float64))
    if probs.ndim != 1 or np.isnan(probs).any() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("p must be a 1-D array of probabilities in [0, 1]")
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed))")
    steps = rng.binomial(np.diff(schedule.sizes, prepend=0)[None, :], probs[:, None])
    return np.cumsum(steps, axis=1)


# --------------------------------------------------------------------------------------------
# sequential Cohen certify
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequentialCertificate:
    """Result of :func:`sequential_cohen` (scalars) or :func:`sequential_cohen_paths` (arrays).

    Unpacks as ``(prediction, radius)`` like :func:`smoothgen.certify.cohen_certify`.

    Attributes
    ----------
    prediction
        ``ĉ_A``, or ``-1`` (abstain) when ``p_lower < 1/2``.
    radius
        ``σ Φ⁻¹(p_lower)`` (``0.0`` when abstaining).
    certified
        Decision mode: whether ``radius >= target_radius`` (i.e. ``p_lower >= Φ(r*/σ)``); ``None``
        in radius mode.
    p_lower, p_upper
        The confidence sequence at the stop (running bounds).
    selected
        ``ĉ_A``, the class picked by the selection draws (also when abstaining).
    count, n
        Estimation successes and estimation draws used.
    passes
        Base forward passes: ``n0 + n``.
    looks
        Looks made (1-based).
    stopped
        ``"certified"``, ``"futile"``, ``"converged"`` or ``"budget"``.
    """

    prediction: Any
    radius: Any
    certified: Any
    p_lower: Any
    p_upper: Any
    selected: Any
    count: Any
    n: Any
    passes: Any
    looks: Any
    stopped: Any

    def __iter__(self) -> Iterator[Any]:
        return iter((self.prediction, self.radius))


@dataclass(frozen=True)
class _Rule:
    """The stopping rule shared by the lazy and the vectorised sequential Cohen."""

    sigma: float
    alpha: float
    alpha_futility: float
    schedule: LookSchedule
    mode: str
    threshold: float
    tol: float
    method: str
    projection: str

    def bounds(self, count: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        w = self.schedule.weights[k] if self.method == "union_cp" else 1.0
        return _bounds(count, int(self.schedule.sizes[k]), self.alpha * w, self.alpha_futility * w, self.method)

    def gain(self, lower: np.ndarray, upper: np.ndarray, count: np.ndarray, k: int) -> np.ndarray:
        """Radius (σ units) the full budget could add, projecting ``p̃`` (``U`` or ``S/n``) to ``n_max``."""
        n_max, last = self.schedule.n_max, self.schedule.sizes.size - 1
        p_tilde = upper if self.projection == "upper" else count / self.schedule.sizes[k]
        projected, _ = self.bounds(np.clip(np.floor(p_tilde * n_max + 0.5), 0, n_max), last)
        return _probit_radius(np.maximum(projected, lower)) - _probit_radius(lower)

    def stop(self, lower: np.ndarray, upper: np.ndarray, count: np.ndarray, k: int) -> np.ndarray:
        if self.mode == "decision":
            reason = np.where(lower >= self.threshold, _CERTIFIED, np.where(upper < self.threshold, _FUTILE, _CONTINUE))
        else:
            done = (lower >= 0.5) & (self.gain(lower, upper, count, k) <= self.tol)
            reason = np.where(upper < 0.5, _FUTILE, np.where(done, _CONVERGED, _CONTINUE))
        return np.where((reason == _CONTINUE) & (k == self.schedule.sizes.size - 1), _BUDGET, reason)

    def advance(self, lower: np.ndarray, upper: np.ndarray, count: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        """Running bounds after look ``k`` and the stop reason (0 = go on)."""
        low, up = self.bounds(count, k)
        lower, upper = np.maximum(lower, low), np.minimum(upper, up)
        return lower, upper, self.stop(lower, upper, count, k)


def _probit_radius(p: np.ndarray) -> np.ndarray:
    """``Φ⁻¹(p)`` for ``p >= 1/2``, else 0 (a radius in σ units)."""
    return np.where(p >= 0.5, special.ndtri(np.maximum(p, 0.5)), 0.0)


def _make_rule(sigma: float, alpha: float, schedule: LookSchedule | None, mode: str, target_radius: float | None,
               tol: float, alpha_futility: float | None, method: str, projection: str) -> _Rule:
    sigma, alpha = _positive("sigma", sigma), _level("alpha", alpha)
    schedule = LookSchedule.geometric() if schedule is None else schedule
    if not isinstance(schedule, LookSchedule):
        raise ValueError(f"schedule must be a LookSchedule (e.g. LookSchedule.geometric(n_max)), got {type(schedule).__name__}")
    mode = _choice("mode", mode, ("decision", "radius"))
    if (mode == "decision") != (target_radius is not None):
        raise ValueError("give target_radius (the radius r* to decide on) exactly when mode='decision'")
    threshold = 0.5 if target_radius is None else float(special.ndtr(_positive("target_radius", target_radius, True) / sigma))
    a_fut = alpha if alpha_futility is None else _level("alpha_futility", alpha_futility)
    return _Rule(sigma, alpha, a_fut, schedule, mode, threshold, _positive("tol", tol),
                 _choice("method", method, _METHODS), _choice("projection", projection, ("upper", "estimate")))


def _certificate(rule: _Rule, selected: Any, lower: np.ndarray, upper: np.ndarray, count: np.ndarray,
                 look: np.ndarray, reason: np.ndarray, n0: int) -> SequentialCertificate:
    """Assemble the result (arrays stay arrays, 0-d become Python scalars)."""
    n = rule.schedule.sizes[look]
    abstain = lower < 0.5
    radius = rule.sigma * _probit_radius(lower)
    certified = None if rule.mode == "radius" else _scalar(lower >= rule.threshold)
    prediction = np.where(abstain, certify.ABSTAIN, selected)
    return SequentialCertificate(_scalar(prediction), _scalar(radius), certified, _scalar(lower), _scalar(upper),
                                 _scalar(np.asarray(selected)), _scalar(count), _scalar(n), _scalar(n0 + n),
                                 _scalar(look + 1), _scalar(_REASONS[reason]))


def _scalar(x: Any) -> Any:
    arr = np.asarray(x)
    return arr.item() if arr.ndim == 0 else arr


def _run_paths(rule: _Rule, paths: np.ndarray) -> tuple[np.ndarray, ...]:
    """Apply the stopping rule to every row of ``paths [B, K]``; rows freeze at their stop."""
    rows = paths.shape[0]
    lower, upper = np.zeros(rows), np.ones(rows)
    reason, look = np.zeros(rows, dtype=np.int64), np.full(rows, paths.shape[1] - 1)
    for k in range(paths.shape[1]):
        active = reason == _CONTINUE
        if not active.any():
            break
        low, up, why = rule.advance(lower, upper, paths[:, k], k)
        lower, upper = np.where(active, low, lower), np.where(active, up, upper)
        look = np.where(active & (why != _CONTINUE), k, look)
        reason = np.where(active, why, reason)
    return lower, upper, paths[np.arange(rows), look], look, reason


def sequential_cohen_paths(counts: Any, sigma: float, alpha: float, *, schedule: LookSchedule | None = None,
                           mode: str = "radius", target_radius: float | None = None, tol: float = 0.05,
                           alpha_futility: float | None = None, method: Method = "union_cp",
                           projection: str = "estimate", n0: int = 100, selected: Any = 0) -> SequentialCertificate:
    """:func:`sequential_cohen` on precomputed paths, vectorised over inputs.

    ``counts[b, k]``: estimation successes of input ``b``'s selected class after
    ``schedule.sizes[k]`` draws (e.g. :func:`simulate_bernoulli_paths`); the draws after a row's
    stop are ignored, so the result equals the lazy procedure on the same draws. ``selected``:
    the selected class per row (default 0); ``n0`` only enters ``passes``. Other arguments and
    the guarantee as in :func:`sequential_cohen`. Returns arrays ``[B]``.
    """
    rule = _make_rule(sigma, alpha, schedule, mode, target_radius, tol, alpha_futility, method, projection)
    paths = np.atleast_2d(_check_paths(counts, rule.schedule))
    if paths.ndim != 2:
        raise ValueError(f"counts must have shape [B, K], got {paths.shape}")
    lower, upper, count, look, reason = _run_paths(rule, paths)
    picked = np.broadcast_to(np.asarray(selected, dtype=np.int64), (paths.shape[0],))
    return _certificate(rule, picked, lower, upper, count, look, reason, _count("n0", n0))


def _draw_counts(draw: CountSampler, k: int, classes: int | None) -> np.ndarray:
    """Call ``draw(k)`` and check that it returns a histogram ``[K]`` of ``k`` draws."""
    out = np.asarray(draw(k))
    if out.ndim != 1 or out.size < 1 or not np.issubdtype(out.dtype, np.integer) or (out < 0).any() or out.sum() != k:
        raise ValueError(f"draw({k}) must return non-negative integer class counts [K] summing to {k}, got {out.dtype} {out.shape}")
    if classes is not None and out.size != classes:
        raise ValueError(f"draw returned {out.size} classes after {classes}; the number of classes must not change")
    return out.astype(np.int64)


def sequential_cohen(draw: CountSampler, sigma: float, alpha: float, *, n0: int = 100,
                     schedule: LookSchedule | None = None, mode: str = "radius", target_radius: float | None = None,
                     tol: float = 0.05, alpha_futility: float | None = None, method: Method = "union_cp",
                     projection: str = "estimate") -> SequentialCertificate:
    r"""Cohen's CERTIFY with anytime-valid early stopping (see the module docstring).

    ``draw(n0)`` selects ``ĉ_A = argmax``; then at each look ``k`` the estimation histogram grows to
    ``schedule.sizes[k]`` fresh draws and the rule (``mode``) decides whether to stop.
    Guarantee: :math:`P(\text{not abstain} \wedge \exists \|\delta\|_2 < R:\ g(x+\delta) \ne
    \hat c_A) \le \alpha` where ``R = σ Φ⁻¹(p_lower)``; in decision mode
    ``P(certified ∧ σΦ⁻¹(p_A) < r*) ≤ α``.

    Parameters
    ----------
    draw
        Count sampler: ``draw(k)`` → class counts ``[K]`` of ``k`` fresh draws of ``f(x + ε)``.
    sigma
        Noise level of the certificate (``noise.sigma_min``), ``> 0``.
    alpha
        Failure probability in ``(0, 1)``.
    n0
        Selection draws (Cohen: 100).
    schedule
        Looks (default ``LookSchedule.geometric()``: 32, 64, …, 65 536, 100 000).
    mode
        ``"decision"`` (needs ``target_radius = r* >= 0``) or ``"radius"``.
    tol
        Radius mode: stop once the budget can add at most ``tol·σ``.
    alpha_futility
        Level of the upper sequence (early giving up); default ``alpha``.
    method
        ``"union_cp"`` or ``"beta_mixture"``.
    projection
        Radius mode: project the point ``"estimate"`` ``S/n`` or the optimistic ``"upper"`` end ``U``.

    Returns
    -------
    SequentialCertificate
        Unpacks as ``(prediction, radius)``.
    """
    rule = _make_rule(sigma, alpha, schedule, mode, target_radius, tol, alpha_futility, method, projection)
    if not callable(draw):
        raise ValueError("draw must be callable as draw(k) -> class counts of k fresh draws")
    n0 = _count("n0", n0)
    selection = _draw_counts(draw, n0, None)
    top = int(selection.argmax())
    counts, drawn = np.zeros_like(selection), 0
    lower, upper = np.zeros(()), np.ones(())
    for k, size in enumerate(rule.schedule.sizes):
        counts += _draw_counts(draw, int(size) - drawn, selection.size)
        drawn = int(size)
        lower, upper, reason = rule.advance(lower, upper, np.asarray(counts[top]), k)
        if reason != _CONTINUE:
            break
    return _certificate(rule, top, lower, upper, np.asarray(counts[top]), np.asarray(k), reason, n0)


# --------------------------------------------------------------------------------------------
# sequential Neyman–Pearson bounds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequentialNPBounds:
    """Result of :func:`sequential_np_bounds`; unpacks as ``(lower, upper)``.

    Attributes
    ----------
    lower, upper
        Bounds on ``E_{P_{c+δ}} h`` valid for every ``‖δ‖ <= radius``.
    mean_lower, mean_upper
        The confidence sequence for ``E_{P_c} h`` at the stop.
    mean
        Sample mean at the stop.
    certified
        Decision mode: whether ``lower >= threshold``; ``None`` in precision mode.
    n, looks, stopped
        Draws used, looks made, and why it stopped (``"certified"``, ``"futile"``, ``"converged"``,
        ``"budget"``).
    """

    lower: float
    upper: float
    mean_lower: float
    mean_upper: float
    mean: float
    certified: bool | None
    n: int
    looks: int
    stopped: str

    def __iter__(self) -> Iterator[float]:
        return iter((self.lower, self.upper))


def _draw_values(draw: ValueSampler, k: int) -> np.ndarray:
    out = np.asarray(draw(k), dtype=np.float64).reshape(-1)
    if out.size != k or np.isnan(out).any() or (out < 0).any() or (out > 1).any():
        raise ValueError(f"draw({k}) must return {k} values of the statistic in [0, 1] (rescale it first)")
    return out


def _np_reason(mode: str, low: float, high: float, radius: float, sigma: float, threshold: float | None, tol: float) -> int:
    """Stop reason from the NP images of the sequence's ends ``L = low`` and ``U = high``."""
    (low_l, up_l), (low_u, up_u) = certify.np_bounds(low, radius, sigma), certify.np_bounds(high, radius, sigma)
    if mode == "decision":
        return _CERTIFIED if low_l >= threshold else _FUTILE if low_u < threshold else _CONTINUE
    return _CONVERGED if max(low_u - low_l, up_u - up_l) <= tol else _CONTINUE


def _check_np_mode(mode: str, threshold: float | None) -> float | None:
    if _choice("mode", mode, ("decision", "precision")) == "precision":
        if threshold is not None:
            raise ValueError("threshold is only used with mode='decision'")
        return None
    if threshold is None or _positive("threshold", threshold, True) > 1.0:
        raise ValueError(f"mode='decision' needs a threshold in [0, 1], got {threshold!r}")
    return float(threshold)


def sequential_np_bounds(draw: ValueSampler, radius: float, sigma: float, alpha: float, *,
                         schedule: LookSchedule | None = None, kind: Literal["binary", "bounded"] = "bounded",
                         mode: str = "precision", threshold: float | None = None, tol: float = 0.01) -> SequentialNPBounds:
    r"""Neyman–Pearson bounds of a ``[0, 1]`` statistic with anytime-valid early stopping.

    At look ``k`` the two-sided interval ``[l_k, u_k]`` of :func:`smoothgen.certify.mean_interval`
    (``kind`` fixed in advance) at level ``α_k = α·w_k`` is intersected with the earlier ones into
    ``[L_k, U_k]``; by the union bound :math:`P(\exists k: p \notin [L_k, U_k]) \le \alpha`. At
    the stop, ``lower = Φ(Φ⁻¹(L) − r/σ)`` and ``upper = Φ(Φ⁻¹(U) + r/σ)``, which with
    probability ``≥ 1 − α`` contain :math:`\mathbb E_{P_{c+\delta}} h` for all ``‖δ‖ <= r``
    (:func:`smoothgen.certify.np_bounds` is increasing in ``p``). Modes:

    * ``"precision"``: stop when the remaining width of the sequence moves each bound by at
      most ``tol`` (``lower(U) − lower(L) <= tol`` and ``upper(U) − upper(L) <= tol``);
    * ``"decision"``: is ``lower >= threshold``? Stop ``"certified"`` once ``lower(L) >= threshold``,
      ``"futile"`` once ``lower(U) < threshold`` (it can then never be certified).

    Parameters
    ----------
    draw
        Value sampler: ``draw(k)`` → ``k`` fresh values of ``h`` in ``[0, 1]``.
    radius, sigma, alpha
        Threat radius ``r >= 0``, noise level ``> 0``, failure probability in ``(0, 1)``.
    schedule
        Looks (default ``LookSchedule.geometric()``).
    kind
        ``"binary"`` (Clopper–Pearson; values in {0, 1}) or ``"bounded"`` (Hoeffding ∧ empirical
        Bernstein).
    mode, threshold, tol
        See above; ``threshold`` in ``[0, 1]`` exactly when ``mode="decision"``.
    """
    r, s, a, tol = _positive("radius", radius, True), _positive("sigma", sigma), _level("alpha", alpha), _positive("tol", tol)
    schedule = LookSchedule.geometric() if schedule is None else schedule
    if not isinstance(schedule, LookSchedule) or not callable(draw):
        raise ValueError("need a LookSchedule and draw callable as draw(k) -> k values in [0, 1]")
    kind, threshold = _choice("kind", kind, ("binary", "bounded")), _check_np_mode(mode, threshold)
    values, low, high = np.empty(0), 0.0, 1.0
    for k, (size, a_k) in enumerate(zip(schedule.sizes, schedule.alphas(a))):
        values = np.concatenate([values, _draw_values(draw, int(size) - values.size)])
        lo_k, hi_k = certify.mean_interval(values, float(a_k), kind=kind)
        low, high = max(low, float(lo_k)), min(high, float(hi_k))
        reason = _np_reason(mode, low, high, r, s, threshold, tol)
        if reason != _CONTINUE:
            break
    lower, upper = certify.np_bounds(low, r, s)[0], certify.np_bounds(high, r, s)[1]
    certified = None if threshold is None else bool(lower >= threshold)
    stopped = str(_REASONS[reason if reason != _CONTINUE else _BUDGET])
    return SequentialNPBounds(float(lower), float(upper), low, high, float(values.mean()), certified, int(values.size), k + 1, stopped)


# --------------------------------------------------------------------------------------------
# sequential sequence certificate (smoothed greedy decoding)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequentialSequence:
    """Result of :func:`sequential_sequence_certificate`; unpacks as ``(tokens, radius)``.

    Attributes
    ----------
    tokens
        Emitted tokens ``[T']`` (``T' <= steps``: stop token, or decision mode gave up).
    steps
        One :class:`SequentialCertificate` per emitted token (level ``α/steps`` each).
    radius
        ``min_t R_t`` (``0.0`` if a step abstains): all of ``tokens`` is certified for ``‖δ‖ < radius``.
    certified
        Decision mode: every step certified at ``target_radius``; ``None`` in radius mode.
    passes
        Forward passes over all steps (selection + estimation).
    alpha_per_step
        ``α / steps``.
    """

    tokens: np.ndarray
    steps: tuple[SequentialCertificate, ...]
    radius: float
    certified: bool | None
    passes: int
    alpha_per_step: float

    def __iter__(self) -> Iterator[Any]:
        return iter((self.tokens, self.radius))


def sequential_sequence_certificate(draw: StepSampler, steps: int, sigma: float, alpha: float, *, n0: int = 100,
                                    schedule: LookSchedule | None = None, mode: str = "radius",
                                    target_radius: float | None = None, tol: float = 0.05,
                                    stop_token: int | None = None, method: Method = "union_cp") -> SequentialSequence:
    r"""Certified smoothed greedy decoding with a sequential Cohen certificate per step.

    Step ``t``: ``draw(prefix, n0)`` selects the emitted token ``y_t`` (its argmax), then
    :func:`sequential_cohen` at level ``α/steps`` certifies it from fresh ``draw(prefix, k)``
    calls. Guarantee (union bound over the ``steps`` steps, ``steps`` fixed before sampling): with
    probability ``≥ 1 − α``, for every ``‖δ‖₂ < radius`` the smoothed decoder at ``c + δ`` emits
    ``tokens`` (induction over the prefix, as in :func:`smoothgen.certify.sequence_certificate`).
    Decoding ends after ``stop_token`` and, in decision mode, at the first step not certified at
    ``target_radius`` (the sequence cannot be certified any more).
    """
    steps, a = _count("steps", steps), _level("alpha", alpha)
    if not callable(draw):
        raise ValueError("draw must be callable as draw(prefix, k) -> next-token counts of k fresh draws")
    prefix: list[int] = []
    certs: list[SequentialCertificate] = []
    for _ in range(steps):
        step_draw = lambda k, fixed=np.array(prefix, dtype=np.int64): draw(fixed, k)  # noqa: E731
        cert = sequential_cohen(step_draw, sigma, a / steps, n0=n0, schedule=schedule, mode=mode,
                                target_radius=target_radius, tol=tol, method=method)
        certs.append(cert)
        prefix.append(int(cert.selected))
        if (mode == "decision" and not cert.certified) or (stop_token is not None and prefix[-1] == stop_token):
            break
    radius = min(float(c.radius) for c in certs)
    certified = None if mode == "radius" else all(c.certified for c in certs)
    return SequentialSequence(np.array(prefix, dtype=np.int64), tuple(certs), radius, certified,
                              int(sum(c.passes for c in certs)), a / steps)


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------
def bernoulli_sampler(p: float, rng: np.random.Generator) -> CountSampler:
    """Simulated count sampler: class 0 with probability ``p``, else class 1 → counts ``[2]``."""
    prob = _positive("p", p, True)
    if prob > 1 or not isinstance(rng, np.random.Generator):
        raise ValueError("need p in [0, 1] and rng a numpy.random.Generator")
    def draw(k: int) -> np.ndarray:
        top = int(rng.binomial(k, prob))
        return np.array([top, k - top], dtype=np.int64)
    return draw


def classifier_sampler(smoothed: SmoothedClassifier, x: torch.Tensor, seed: int, device: DeviceLike = None) -> CountSampler:
    """Count sampler of a :class:`~smoothgen.smoothing.SmoothedClassifier` at ``x``.

    Call ``i`` (0-based) draws ``smoothed.counts(x, k, derive_seed(seed, 2 + i))``: independent
    streams, O(batch) memory, reproducible from ``seed``.
    """
    if not isinstance(smoothed, SmoothedClassifier):
        raise ValueError(f"smoothed must be a SmoothedClassifier, got {type(smoothed).__name__}")
    calls = itertools.count(_FIRST_STREAM)
    return lambda k: smoothed.counts(x, k, derive_seed(seed, next(calls)), device)


def generator_sampler(smoothed: SmoothedGenerator, c: torch.Tensor, statistic: Callable[[torch.Tensor], torch.Tensor],
                      seed: int, device: DeviceLike = None) -> ValueSampler:
    """Value sampler of ``statistic(G(c + ε, z))`` (``[b, *O] → [b]`` in [0, 1]) through ``map_reduce``.

    Call ``i`` uses stream ``derive_seed(seed, 2 + i)``; only the statistic leaves the batch.
    """
    if not isinstance(smoothed, SmoothedGenerator) or not callable(statistic):
        raise ValueError("need a SmoothedGenerator and a callable statistic(outputs[b, ...]) -> values[b]")
    calls = itertools.count(_FIRST_STREAM)
    return lambda k: smoothed.map_reduce(c, k, derive_seed(seed, next(calls)), statistic, device).double().cpu().numpy()


def decoder_sampler(decoder: SmoothedGreedyDecoder, prompt_embeds: torch.Tensor, seed: int, device: DeviceLike = None) -> StepSampler:
    """Step sampler of a :class:`~smoothgen.smoothing.SmoothedGreedyDecoder`: next-token counts given a prefix.

    ``draw(prefix, k)`` counts ``decoder.next_token(prompt + ε, prefix)`` over ``k`` fresh draws
    (a :class:`~smoothgen.smoothing.SmoothedClassifier` of the prompt; call ``i`` uses stream
    ``derive_seed(seed, 2 + i)``).
    """
    if not isinstance(decoder, SmoothedGreedyDecoder):
        raise ValueError(f"decoder must be a SmoothedGreedyDecoder, got {type(decoder).__name__}")
    calls = itertools.count(_FIRST_STREAM)
    target = prompt_embeds.device if device is None else torch.device(device)

    def draw(prefix: np.ndarray, k: int) -> np.ndarray:
        fixed = torch.as_tensor(np.asarray(prefix, dtype=np.int64), device=target).view(1, -1)
        step = lambda u, g: decoder.next_token(u, fixed.expand(u.shape[0], -1))  # noqa: E731
        classifier = SmoothedClassifier(step, decoder.noise, decoder.vocab_size, decoder.batch_size)
        return classifier.counts(prompt_embeds, k, derive_seed(seed, next(calls)), device)
    return draw
