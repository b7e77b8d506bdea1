r"""Attacks in the condition-embedding space, and the protocol that tests certificates with them.

A certificate says: for every perturbation :math:`\|\delta\|_2 \le r` of the condition embedding
``c``, some shift of the smoothed generator's output law stays below a bound. This module builds the
strongest adversary we can afford and measures what it achieves.

PGD (:func:`pgd`, :func:`pgd_many`)
-----------------------------------
Projected gradient ascent on an objective ``f(c + δ)`` over the ball
:math:`B_p(r) = \{\delta: \|\delta\|_p \le r\}`, ``p ∈ {2, ∞}``:

.. math:: \delta_{t+1} = \Pi_{B_p(r)}\big(\delta_t + s_t\, d_t\big), \qquad
          d_t = \nabla f / \|\nabla f\|_2 \;(p = 2), \quad d_t = \operatorname{sign}\nabla f \;(p = \infty),

with the exact projections :math:`\Pi(\delta) = \delta \min(1, r/\|\delta\|_2)` and
:math:`\Pi(\delta) = \operatorname{clip}(\delta, -r, r)`. Iterates live in float64, so
``‖δ‖ ≤ r`` holds to float64 rounding; the objective sees ``(c + δ)`` cast to ``c``'s dtype.
Step sizes follow a schedule ``s_t = s_0 a(t)`` (``constant``: 1; ``cosine``:
``(1 + cos(π t / T))/2``; ``step``: halved at ``T/2`` and again at ``3T/4``); the default
``s_0 = 2r`` is APGD's first step (Croce & Hein 2020): early steps may cross the ball, the schedule
anneals them (on a linear ``G`` it finds the top singular direction to ~1e-5 in 50 cosine steps,
where Madry et al.'s constant ``2.5 r / T`` stalls at a few per cent). Restarts start uniformly
in the ball and run as one batch; the best iterate of every
restart is kept (so the result is never worse than any evaluated point). Early stopping: on a
``target`` value, or after ``patience`` steps without improvement.

Objectives (all maximised; ``Objective = Callable[[Tensor[B, *E]], Tensor[B]]``, row-separable)
-----------------------------------------------------------------------------------------------
*Base generator, generator noise held fixed* (deterministic DDIM from a fixed ``x_T``; greedy
decoding): :func:`output_change` ``‖G(u) − G(c)‖₂``, :func:`class_margin` (positive iff the
evaluator's class flips), :func:`sequence_margin` (positive iff the greedy continuation changes)
and :func:`continuation_nll` (a smooth surrogate).

*Smoothed generator*, by expectation over transformation with common random numbers
(:class:`CommonNoise`: ``n`` draws ``(ε_i, z_i)`` fixed for the whole attack and shared by ``c``
and ``c + δ``): :func:`smoothed_objective` with the statistics :func:`w1_shift` (empirical W₁,
exact OT, differentiable), :func:`mean_shift`, :func:`class_drop` (soft class-consistency drop)
and :func:`token_flip` (soft drop of the smoothed greedy decoder's token probability).

*Black box*: :func:`black_box_smoothed` attacks the smoothed objective with no gradient of the
generator at all, from the values of the noisy copies alone: Stein's lemma turns them into an
unbiased gradient estimate (:func:`stein_gradient`), which :func:`pgd_many` then follows. It is the
attack a user of a deployed smoothed generator can mount, and it cannot be fooled by a generator whose
gradients are uninformative.

Validation protocol
-------------------
An attack is judged on **fresh** samples, never on the ones it optimised. For each attacked
condition and radius we estimate the achieved shift with its Monte-Carlo standard error and
compare it with the certificate at that radius. Every achieved value estimates a quantity that
the certificate bounds (so a violation is evidence against the certificate, not an artefact):

* W₁: Kantorovich–Rubinstein duality gives :math:`W_1(P, Q) \ge \|E_Q Y - E_P Y\|_2` (the
  1-Lipschitz ``f(y) = ⟨u, y⟩`` along the mean shift); :func:`shift_norm_estimate` estimates it from
  fresh pairs ``Y'_i − Y_i`` (common noise) through an unbiased U-statistic of its square. The
  empirical W₁ of two fresh sample sets is biased **upwards** — in 3,072 pixel dimensions by far
  more than any certificate — so it is never used as "achieved".
* the certified mean band: the same estimator of ``‖E Y' − m‖`` against the farthest point of the
  band from ``m`` (:func:`farthest_in_box`).
* a ``[0, 1]`` statistic (class-consistency, a token's probability): :func:`proportion_estimate` of
  its fresh frequency at ``c + δ``, compared with the Neyman–Pearson bound.

:func:`is_violation` flags a trial when a one-sided lower confidence bound on the achieved value,
at level ``Φ(−z)`` with ``z = 2`` (:data:`VIOLATION_Z`, ≈ 2.3 %), exceeds the certificate:
``mean − z·stderr`` for averages (:func:`mean_estimate`), ``√(U − z s_U)`` for the mean-shift norm
(:func:`shift_norm_estimate`), the exact Clopper–Pearson bound for proportions
(:func:`proportion_estimate`; the plug-in standard error is 0 when every fresh draw agrees). A trial whose true value sits exactly at the certificate is
flagged with probability ≈ 2.3 %; every certificate may itself fail with its own ``α``. Trials
are tabulated with :data:`TRIAL_COLUMNS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special
from torch import Tensor

from smoothgen import certify
from smoothgen.metrics import wasserstein1_torch
from smoothgen.noise import Noise

__all__ = [
    "TRIAL_COLUMNS",
    "VIOLATION_Z",
    "AttackResult",
    "BatchAttackResult",
    "Breakdown",
    "CommonNoise",
    "Estimate",
    "black_box_smoothed",
    "breakdown_radius",
    "cell_exit_bound",
    "class_drop",
    "class_margin",
    "continuation_nll",
    "eot_outputs",
    "farthest_in_box",
    "first_on_grid",
    "is_violation",
    "mean_estimate",
    "mean_shift",
    "output_change",
    "pgd",
    "proportion_estimate",
    "pgd_many",
    "project",
    "sequence_margin",
    "shift_norm_estimate",
    "shifted",
    "smoothed_objective",
    "stein_gradient",
    "step_schedule",
    "token_flip",
    "toward_nearest",
    "w1_shift",
    "with_fixed_noise",
]

Norm = Literal["l2", "linf"]
Schedule = Literal["constant", "cosine", "step"]
Objective = Callable[[Tensor], Tensor]
"""``objective(points[B, *E]) -> values[B]``: row ``b``'s value depends on row ``b`` only."""
Statistic = Callable[[Tensor], Tensor]
"""``statistic(outputs[B, n, *O]) -> values[B]``: a differentiable summary of ``n`` draws per row."""

NORMS = ("l2", "linf")
SCHEDULES = ("constant", "cosine", "step")
VIOLATION_Z = 2.0
"""The violation test's one-sided level is ``Φ(−VIOLATION_Z)`` (≈ 2.3 %)."""
TRIAL_COLUMNS = ("dataset", "condition", "certificate", "attack", "witness", "norm", "radius", "sigma",
                 "restarts", "steps", "seed", "n_fresh", "achieved", "achieved_stderr", "achieved_lower",
                 "certified", "violation")
"""Columns of a trials table: one row per attack trial."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _check_centers(centers: Tensor) -> Tensor:
    if not isinstance(centers, Tensor) or not centers.is_floating_point() or centers.ndim < 2:
        raise ValueError("centers must be a floating tensor [N, *E] (one condition embedding per problem)")
    if centers.shape[0] < 1 or centers[0].numel() < 1:
        raise ValueError(f"centers must hold at least one non-empty embedding, got shape {tuple(centers.shape)}")
    if not bool(torch.isfinite(centers).all()):
        raise ValueError("centers contain NaN or inf; pass finite condition embeddings")
    return centers.detach()


def _check_radius(radius: float | Sequence[float] | Tensor, count: int, device: torch.device) -> Tensor:
    """The radius as a float64 tensor ``[count]`` (a scalar broadcasts); each entry finite and >= 0."""
    r = torch.as_tensor(radius, dtype=torch.float64).detach().to(device)
    if r.ndim == 0:
        r = r.expand(count)
    if r.shape != (count,) or not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise ValueError(f"radius must be a finite number >= 0 or {count} of them, got {radius!r}")
    return r.clone()


def _check_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator (see smoothgen.runtime.make_generator)")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the embeddings are on {device}")
    return generator


def _flat_norm(x: Tensor, norm: Norm, start: int) -> Tensor:
    flat = x.flatten(start)
    return flat.norm(dim=-1) if norm == "l2" else flat.abs().amax(dim=-1)


# --------------------------------------------------------------------------------------------
# projection, directions, schedule, initialisation
# --------------------------------------------------------------------------------------------
def project(delta: Tensor, radius: Tensor, norm: Norm) -> Tensor:
    """Exact Euclidean projection of ``delta[N, R, *E]`` onto the ``norm``-ball of ``radius[N]``.

    ℓ₂: ``δ · min(1, r / ‖δ‖₂)`` (rows with ``δ = 0`` are left as they are); ℓ∞: ``clip(δ, −r, r)``.
    """
    r = radius.view(-1, *([1] * (delta.ndim - 1)))
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, r), -r)
    norms = _flat_norm(delta, "l2", 2).view(*delta.shape[:2], *([1] * (delta.ndim - 2)))
    return delta * torch.clamp(r / norms.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)


def _direction(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent direction of unit ``norm``-length: ``∇f / ‖∇f‖₂`` or ``sign(∇f)`` (0 stays 0)."""
    if norm == "linf":
        return grad.sign()
    norms = _flat_norm(grad, "l2", 2).view(*grad.shape[:2], *([1] * (grad.ndim - 2)))
    return grad / norms.clamp_min(torch.finfo(grad.dtype).tiny)


def step_schedule(schedule: Schedule, steps: int) -> np.ndarray:
    """Relative step sizes ``a(t)``, ``t = 0..steps−1`` (see the module docstring)."""
    _check_choice("schedule", schedule, SCHEDULES)
    t = np.arange(_check_int("steps", steps, 1), dtype=float)
    if schedule == "constant":
        return np.ones_like(t)
    if schedule == "cosine":
        return 0.5 * (1.0 + np.cos(np.pi * t / steps))
    return 0.5 ** ((t >= steps / 2).astype(float) + (t >= 3 * steps / 4).astype(float))


def _initial_steps(step_size: float | Tensor | None, radius: Tensor) -> Tensor:
    """``s_0`` per problem: given, or ``2 r``."""
    if step_size is None:
        return 2.0 * radius
    eta = torch.as_tensor(step_size, dtype=torch.float64).to(radius.device)
    if not bool(torch.isfinite(eta).all()) or bool((eta <= 0).any()) or eta.ndim > 1:
        raise ValueError(f"step_size must be a positive number (or one per problem), got {step_size!r}")
    return eta.expand_as(radius).clone()


def _initial_delta(shape: tuple[int, ...], radius: Tensor, norm: Norm, generator: torch.Generator) -> Tensor:
    """Uniform draws in the ball ``[N, R, *E]``: ℓ₂ direction × ``r U^{1/d}``; ℓ∞ uniform in the cube."""
    dev, dim = radius.device, math.prod(shape[2:])
    r = radius.view(-1, *([1] * (len(shape) - 1)))
    if norm == "linf":
        return (2.0 * torch.rand(shape, generator=generator, device=dev, dtype=torch.float64) - 1.0) * r
    g = torch.randn(shape, generator=generator, device=dev, dtype=torch.float64)
    g = g / _flat_norm(g, "l2", 2).view(*shape[:2], *([1] * (len(shape) - 2))).clamp_min(1e-300)
    u = torch.rand(shape[:2], generator=generator, device=dev, dtype=torch.float64) ** (1.0 / dim)
    return g * u.view(*shape[:2], *([1] * (len(shape) - 2))) * r


# --------------------------------------------------------------------------------------------
# PGD
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchAttackResult:
    """Result of :func:`pgd_many` over ``N`` problems with ``R`` restarts each.

    Attributes
    ----------
    delta
        ``[N, *E]`` float64: the best perturbation of each problem (``‖δ‖ ≤ radius``).
    value
        ``[N]`` float64: the objective at ``c + delta``.
    history
        ``[steps_run + 1, N, R]``: the objective at every iterate of every restart.
    restart_values
        ``[N, R]``: the best value of each restart.
    radius
        ``[N]`` float64 radii; ``norm`` the ball's norm; ``steps_run`` gradient steps taken.
    """

    delta: Tensor
    value: Tensor
    history: Tensor
    restart_values: Tensor
    radius: Tensor
    norm: str
    steps_run: int

    def __getitem__(self, i: int) -> AttackResult:
        return AttackResult(self.delta[i], float(self.value[i]), self.history[:, i], self.restart_values[i],
                            float(self.radius[i]), self.norm, self.steps_run)


@dataclass(frozen=True)
class AttackResult:
    """Result of :func:`pgd` on one problem.

    Attributes
    ----------
    delta
        ``[*E]`` float64, the best perturbation found (``‖δ‖ ≤ radius``).
    value
        The objective at ``c + delta``.
    history
        ``[steps_run + 1, R]``: the objective at every iterate of every restart.
    restart_values
        ``[R]``: the best value of each restart.
    radius, norm, steps_run
        The ball and the number of gradient steps taken (fewer than ``steps`` after early stopping).
    """

    delta: Tensor
    value: float
    history: Tensor
    restart_values: Tensor
    radius: float
    norm: str
    steps_run: int


def _evaluate(objective: Callable[[Tensor], Tensor], centers: Tensor, delta: Tensor,
              need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Objective values ``[N, R]`` (float64) at ``c + δ`` and, if asked, their gradient in ``δ``."""
    d = delta.detach().requires_grad_(need_grad)
    with torch.set_grad_enabled(need_grad):
        points = (centers.to(torch.float64).unsqueeze(1) + d).to(centers.dtype)
        values = objective(points)
        if not isinstance(values, Tensor) or tuple(values.shape) != tuple(delta.shape[:2]):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"the objective must return one value per row {tuple(delta.shape[:2])}, got {got}")
        if not bool(torch.isfinite(values).all()):
            raise ValueError("the objective returned NaN or inf; check it is finite on the whole ball")
        if not need_grad:
            return values.detach().to(torch.float64), None
        if not values.requires_grad:
            raise ValueError("the objective is not differentiable in its input (its output has no grad_fn)")
        (grad,) = torch.autograd.grad(values.sum(), d)
    return values.detach().to(torch.float64), grad.nan_to_num(0.0)


def _stalled(top: Tensor, previous: Tensor, tol: float) -> bool:
    """True if no problem improved its best value by more than ``tol · max(1, |best|)``."""
    return not bool((top > previous + tol * previous.abs().clamp_min(1.0)).any())


def pgd_many(
    objective: Callable[[Tensor], Tensor],
    centers: Tensor,
    radius: float | Sequence[float] | Tensor,
    *,
    generator: torch.Generator,
    norm: Norm = "l2",
    steps: int = 50,
    restarts: int = 1,
    step_size: float | Tensor | None = None,
    schedule: Schedule = "cosine",
    patience: int | None = None,
    tol: float = 1e-4,
    target: float | None = None,
) -> BatchAttackResult:
    r"""PGD on ``N`` independent problems at once, ``R`` restarts each (see the module docstring).

    Parameters
    ----------
    objective
        ``objective(points[N, R, *E]) -> values[N, R]`` to **maximise**; value ``(n, j)`` must
        depend on ``points[n, j]`` only, and be differentiable in it.
    centers
        ``[N, *E]`` clean condition embeddings (finite floats).
    radius
        Ball radius ``r >= 0``: one number or one per problem.
    generator
        Draws the random starting points (on ``centers``' device); nothing else is random here.
    norm
        ``"l2"`` or ``"linf"``.
    steps, restarts
        Gradient steps (``>= 1``) and restarts per problem (``>= 1``).
    step_size
        ``s_0``, the first PGD step size (a number, or one per problem); default ``2 r``.
    schedule
        ``"constant"``, ``"cosine"`` or ``"step"``.
    patience, tol
        Stop once no problem's best value improved by more than ``tol · max(1, |best|)`` for
        ``patience`` consecutive steps (``None``: never).
    target
        Stop once every problem has a restart whose value exceeds ``target`` (``None``: never).

    Returns
    -------
    BatchAttackResult
        ``objective`` is evaluated ``steps_run + 1`` times (the last without a gradient).

    Raises
    ------
    ValueError
        Bad arguments, an objective whose output has the wrong shape, is not finite or not
        differentiable.
    """
    centers = _check_centers(centers)
    n_problems = centers.shape[0]
    r = _check_radius(radius, n_problems, centers.device)
    _check_choice("norm", norm, NORMS)
    shape_t = step_schedule(schedule, _check_int("steps", steps, 1))
    restarts = _check_int("restarts", restarts, 1)
    if patience is not None:
        _check_int("patience", patience, 1)
    eta = _initial_steps(step_size, r).view(-1, *([1] * centers.ndim))
    _check_generator(generator, centers.device)
    delta = _initial_delta((n_problems, restarts, *centers.shape[1:]), r, norm, generator)
    best_val = torch.full((n_problems, restarts), -math.inf, dtype=torch.float64, device=centers.device)
    best_delta, history, stall, t = delta.clone(), [], 0, 0
    for t in range(steps + 1):
        values, grad = _evaluate(objective, centers, delta, need_grad=t < steps)
        history.append(values)
        previous = best_val.amax(dim=1)
        better = values > best_val
        best_val = torch.where(better, values, best_val)
        best_delta[better] = delta[better]
        stall = stall + 1 if t > 0 and _stalled(best_val.amax(dim=1), previous, tol) else 0
        reached = target is not None and bool((best_val.amax(dim=1) > target).all())
        if grad is None or reached or (patience is not None and stall >= patience):
            break
        delta = project(delta + eta * float(shape_t[t]) * _direction(grad, norm), r, norm)
    top = best_val.argmax(dim=1)
    rows = torch.arange(n_problems, device=centers.device)
    return BatchAttackResult(best_delta[rows, top], best_val[rows, top], torch.stack(history), best_val,
                             r, norm, t)


def pgd(
    objective: Objective,
    center: Tensor,
    radius: float,
    *,
    generator: torch.Generator,
    norm: Norm = "l2",
    steps: int = 50,
    restarts: int = 1,
    step_size: float | None = None,
    schedule: Schedule = "cosine",
    patience: int | None = None,
    tol: float = 1e-4,
    target: float | None = None,
) -> AttackResult:
    """PGD on one condition ``center[*E]``: :func:`pgd_many` with ``N = 1``.

    ``objective(points[R, *E]) -> values[R]`` is called on all restarts at once. See
    :func:`pgd_many` for every other argument.
    """
    if not isinstance(center, Tensor) or center.ndim < 1:
        raise ValueError("center must be a tensor of shape E (one condition embedding, no batch dimension)")
    batched = lambda u: objective(u[0]).unsqueeze(0)  # noqa: E731
    result = pgd_many(batched, center.unsqueeze(0), radius, generator=generator, norm=norm, steps=steps,
                      restarts=restarts, step_size=step_size, schedule=schedule, patience=patience, tol=tol,
                      target=target)
    return result[0]


# --------------------------------------------------------------------------------------------
# objectives against the base generator (generator noise held fixed)
# --------------------------------------------------------------------------------------------
def with_fixed_noise(sample_from_noise: Callable[[Tensor, Tensor], Tensor], z: Tensor) -> Callable[[Tensor], Tensor]:
    """``u[B, *E] ↦ sample_from_noise(u, z)`` with the generator noise ``z[1 or B, *Z]`` held fixed.

    E.g. ``with_fixed_noise(diffusion.sample_from_noise, x_T)``: deterministic DDIM from ``x_T``,
    differentiable in the condition. A single row of ``z`` is broadcast to every row of ``u``.
    """
    if not callable(sample_from_noise) or not isinstance(z, Tensor) or z.ndim < 1:
        raise ValueError("need a callable sample_from_noise(u, z) and a tensor z [1 or B, *Z]")

    def fn(u: Tensor) -> Tensor:
        zz = z if z.shape[0] == u.shape[0] else z.expand(u.shape[0], *z.shape[1:])
        return sample_from_noise(u, zz)

    return fn


def output_change(fn: Callable[[Tensor], Tensor], center: Tensor) -> Objective:
    """``u ↦ ‖fn(u) − fn(c)‖₂`` over flattened outputs (``fn(c)`` computed once, without gradient)."""
    with torch.no_grad():
        reference = fn(center.unsqueeze(0)).detach()

    def objective(u: Tensor) -> Tensor:
        return (fn(u) - reference).flatten(1).to(torch.float64).norm(dim=1)

    return objective


def _margin(logits: Tensor, label: int | Tensor) -> Tensor:
    """``max_{k≠y} l_k − l_y`` over the last dimension (``label`` broadcasts against ``logits[..., 0]``)."""
    y = torch.as_tensor(label, device=logits.device).expand(logits.shape[:-1]).unsqueeze(-1)
    true = logits.gather(-1, y).squeeze(-1)
    others = logits.scatter(-1, y, float("-inf")).amax(dim=-1)
    return others - true


def class_margin(fn: Callable[[Tensor], Tensor], logits_fn: Callable[[Tensor], Tensor], label: int) -> Objective:
    """``u ↦ max_{k≠y} l_k − l_y`` with ``l = logits_fn(fn(u))``: positive iff the argmax class is not ``y``.

    The Carlini–Wagner margin: for the evaluator's class of a generated image, ``y`` = its class
    at the clean condition, so success (value > 0) means the attack flipped it.
    """
    return lambda u: _margin(logits_fn(fn(u)).to(torch.float64), label)


def _check_tokens(tokens: Tensor | Sequence[int]) -> Tensor:
    y = torch.as_tensor(tokens)
    if y.ndim != 1 or y.numel() < 1 or y.is_floating_point():
        raise ValueError(f"tokens must be a 1-D integer tensor [T] with T >= 1, got {y.dtype} {tuple(y.shape)}")
    return y.long()


def sequence_margin(teacher_logits: Callable[[Tensor], Tensor], tokens: Tensor | Sequence[int]) -> Objective:
    r"""``u ↦ max_t [max_{v≠y_t} l_{t,v} − l_{t,y_t}]`` with ``l = teacher_logits(u)`` ``[B, T, V]``.

    ``teacher_logits(u)[:, t]`` are the next-token logits after prompt ``u`` and the clean prefix
    ``y_{<t}`` (teacher forcing). Greedy decoding from ``u`` reproduces ``y_1..y_T`` iff every
    step's argmax is ``y_t`` given the clean prefix (induction on ``t``), so the value is positive
    iff the greedy continuation changes (up to exact ties): an exact success test, not a surrogate.
    """
    y = _check_tokens(tokens)
    return lambda u: _margin(teacher_logits(u).to(torch.float64), y.to(u.device)).amax(dim=-1)


def continuation_nll(teacher_logits: Callable[[Tensor], Tensor], tokens: Tensor | Sequence[int]) -> Objective:
    """``u ↦ −(1/T) Σ_t log softmax(l_t)[y_t]``: the clean continuation's mean NLL (smooth surrogate)."""
    y = _check_tokens(tokens)

    def objective(u: Tensor) -> Tensor:
        logp = F.log_softmax(teacher_logits(u).to(torch.float64), dim=-1)
        return -logp.gather(-1, y.to(u.device).expand(logp.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(dim=-1)

    return objective


# --------------------------------------------------------------------------------------------
# expectation over transformation against the smoothed generator
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommonNoise:
    """Fixed draws for expectation over transformation: ``eps[n, *E]`` and generator noise ``z[n, *Z]``.

    The same draws are used at ``c`` and at every ``c + δ`` the attack visits (common random
    numbers), so the attack sees a smooth, deterministic surrogate of the smoothed generator.
    """

    eps: Tensor
    z: Tensor | None = None

    @classmethod
    def draw(cls, noise: Noise, event_shape: Sequence[int], n: int, generator: torch.Generator,
             z_shape: Sequence[int] | None = None) -> CommonNoise:
        """``n`` smoothing draws from ``noise`` then, if ``z_shape`` is given, ``n`` standard normal ``z``."""
        eps = noise.sample((_check_int("n", n, 1), *event_shape), generator)
        z = None if z_shape is None else torch.randn((n, *z_shape), generator=generator, device=generator.device)
        return cls(eps, z)

    @property
    def n(self) -> int:
        return int(self.eps.shape[0])


def eot_outputs(fn: Callable[[Tensor, Tensor | None], Tensor], crn: CommonNoise, u: Tensor) -> Tensor:
    """``Y[b, i] = fn(u_b + ε_i, z_i)``: outputs ``[B, n, *O]`` of ``u[B, *E]`` under the fixed draws."""
    if tuple(u.shape[1:]) != tuple(crn.eps.shape[1:]):
        raise ValueError(f"points {tuple(u.shape)} do not match the noise draws {tuple(crn.eps.shape)}")
    batch, n = u.shape[0], crn.n
    points = (u.unsqueeze(1) + crn.eps.to(u.dtype)).flatten(0, 1)
    z = None if crn.z is None else crn.z.repeat(batch, *([1] * (crn.z.ndim - 1)))
    out = fn(points, z)
    return out.view(batch, n, *out.shape[1:])


def smoothed_objective(fn: Callable[[Tensor, Tensor | None], Tensor], crn: CommonNoise,
                       statistic: Statistic) -> Objective:
    """``u ↦ statistic(eot_outputs(fn, crn, u))``: an attack on the smoothed generator."""
    return lambda u: statistic(eot_outputs(fn, crn, u))


def w1_shift(clean: Tensor) -> Statistic:
    r"""``Y[B, n, *O] ↦ W₁(Y_b, clean)``: exact empirical W₁ (uniform weights, ℓ₂ ground metric).

    Scalar outputs use the 1-D formula :math:`\frac1n\sum_i |Y_{(i)} - X_{(i)}|` (sorted samples,
    equal sizes); others :func:`smoothgen.metrics.wasserstein1_torch` (POT, gradient through the
    optimal plan). ``clean[n, *O]`` are the outputs at ``c`` under the same draws.
    """
    ref = clean.detach()

    def statistic(y: Tensor) -> Tensor:
        if y.shape[1:] != ref.shape:
            raise ValueError(f"outputs {tuple(y.shape)} do not match the clean outputs {tuple(ref.shape)}")
        if ref[0].numel() == 1:
            a, b = y.flatten(1).to(torch.float64).sort(dim=1).values, ref.flatten().to(torch.float64).sort().values
            return (a - b).abs().mean(dim=1)
        return torch.stack([wasserstein1_torch(row, ref) for row in y])

    return statistic


def mean_shift(clean_mean: Tensor) -> Statistic:
    """``Y[B, n, *O] ↦ ‖(1/n) Σ_i Y_{b,i} − clean_mean‖₂``: the shift of the smoothed mean."""
    ref = clean_mean.detach().to(torch.float64)
    return lambda y: (y.to(torch.float64).mean(dim=1) - ref).flatten(1).norm(dim=1)


def class_drop(logits_fn: Callable[[Tensor], Tensor], label: int) -> Statistic:
    """``Y[B, n, *O] ↦ 1 − (1/n) Σ_i softmax(logits_fn(Y_{b,i}))_y``: the soft class-consistency drop."""

    def statistic(y: Tensor) -> Tensor:
        probs = F.softmax(logits_fn(y.flatten(0, 1)).to(torch.float64), dim=-1)[:, label]
        return 1.0 - probs.view(y.shape[0], y.shape[1]).mean(dim=1)

    return statistic


def token_flip(tokens: Tensor | Sequence[int]) -> Statistic:
    r"""``L[B, n, T, V] ↦ max_t (1/n) Σ_i (1 − softmax(L_{b,i,t})_{y_t})``.

    ``L`` are teacher-forced logits under the fixed draws (see :func:`sequence_margin`); the value
    is the soft probability that the weakest step of the smoothed greedy decoder does not emit
    ``y_t`` — what its sequence certificate bounds.
    """
    y = _check_tokens(tokens)

    def statistic(logits: Tensor) -> Tensor:
        p = F.softmax(logits.to(torch.float64), dim=-1)
        p_true = p.gather(-1, y.to(p.device).expand(p.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        return (1.0 - p_true).mean(dim=1).amax(dim=-1)

    return statistic


class _SteinMean(torch.autograd.Function):
    """``mean_k values[..., k]`` forward; the Stein estimate of its gradient in ``points`` backward."""

    @staticmethod
    def forward(ctx: Any, points: Tensor, values: Tensor, noise: Tensor, sigma: float) -> Tensor:
        ctx.save_for_backward(values, noise)
        ctx.sigma = sigma
        return values.mean(-1)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        values, noise = ctx.saved_tensors
        return grad_out.reshape(*grad_out.shape, *[1] * (noise.ndim - grad_out.ndim - 1)) \
            * stein_gradient(values, noise, ctx.sigma), None, None, None


def stein_gradient(values: Tensor, noise: Tensor, sigma: float) -> Tensor:
    r"""Score-function (Stein) estimate of :math:`\nabla_u \bar h(u)`, :math:`\bar h(u) = E\,h(u + \varepsilon)`,
    :math:`\varepsilon \sim N(0, \sigma^2 I)`, from the smoothing draws themselves:

    .. math:: \hat\nabla = \frac{1}{(n-1)\sigma^2} \sum_{k=1}^n \big(h_k - \bar h_n\big)\, \varepsilon_k,

    unbiased by Stein's lemma :math:`\nabla \bar h(u) = E[h(u + \varepsilon)\, \varepsilon] / \sigma^2` (the
    sample-mean baseline costs the factor ``(n − 1)/n``, which the denominator restores). It needs only
    the values ``h_k = h(u + ε_k)`` ``[..., n]`` and the draws ``ε_k`` ``[..., n, *E]``: no gradient of ``h``.

    Raises
    ------
    ValueError
        If fewer than two draws are given, the shapes do not match, or ``sigma <= 0``.
    """
    if values.ndim < 1 or values.shape[-1] < 2 or tuple(noise.shape[: values.ndim]) != tuple(values.shape):
        raise ValueError(f"need values [..., n >= 2] and noise [..., n, *E], got {tuple(values.shape)} and "
                         f"{tuple(noise.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    centred = values - values.mean(-1, keepdim=True)
    weights = centred.reshape(*centred.shape, *[1] * (noise.ndim - values.ndim))
    return (weights * noise).sum(values.ndim - 1) / ((values.shape[-1] - 1) * sigma**2)


def black_box_smoothed(h: Callable[[Tensor], Tensor], sigma: float, draws: int,
                       generator: torch.Generator) -> Objective:
    r"""The smoothed objective :math:`\bar h(u) = E\,h(u + \varepsilon)` of a **black-box** ``h`` as an
    objective for :func:`pgd_many`: each call draws ``draws`` fresh ``ε ~ N(0, σ²I)`` per point, evaluates
    ``h(points[..., None, :] + ε)`` ``-> [..., draws]`` without gradients, returns the mean, and
    back-propagates :func:`stein_gradient` instead of a gradient of ``h``. The attacker sees only the
    outputs of the noisy copies, as a user of the smoothed generator would; compose it with any
    differentiable function of the mean (e.g. its squared change) to attack that.
    """
    draws = _check_int("draws", draws, 2)

    def objective(points: Tensor) -> Tensor:
        noise = sigma * torch.randn((*points.shape[:2], draws, *points.shape[2:]), generator=generator,
                                    device=points.device, dtype=points.dtype)
        with torch.no_grad():
            values = h(points.detach().unsqueeze(2) + noise)
        return _SteinMean.apply(points, values.to(points.dtype), noise, sigma)

    return objective


def cell_exit_bound(codebook: Tensor, ids: Tensor | Sequence[int], sigma: float) -> Objective:
    r"""Log of the union bound on the probability that a noisy condition leaves its cells.

    ``u[B, L, E] ↦ log Σ_{l, v ≠ k_l} Φ(−d_{l,v}(u)/σ)``, with ``d_{l,v}`` the signed distance of
    row ``u_l`` to the bisector of ``u_{k_l}`` and ``u_v`` (``k = ids``): each term is the exact
    probability that ``u_l + σ ε_l`` crosses one face of its Voronoi cell, so the sum bounds
    ``1 − P(A)`` from above and is smooth in ``u``. The attack on a projection front-end maximises
    it (no Monte Carlo in the loop); what it achieves is judged on fresh projections
    (:meth:`smoothgen.models.frontends.NearestEmbedding.hits` at ``u + δ``).
    """
    book = _check_centers(codebook).to(torch.float64)
    k = _check_tokens(ids)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    own = book[k]
    sep = torch.cdist(own, book)
    mask = torch.zeros_like(sep, dtype=torch.bool)  # own codeword: no face
    mask[torch.arange(len(k)), k] = True
    half_sq = 0.5 * (book**2).sum(1)

    def objective(u: Tensor) -> Tensor:
        if u.shape[-2:] != own.shape:
            raise ValueError(f"points must be [B, {own.shape[0]}, {own.shape[1]}], got {tuple(u.shape)}")
        lift = u.to(torch.float64) @ book.T - half_sq
        gap = lift.gather(-1, k.to(u.device).expand(u.shape[:-1]).unsqueeze(-1)) - lift
        distance = gap / sep.to(u.device).masked_fill(mask.to(u.device), 1.0)
        log_cross = torch.special.log_ndtr(-distance / sigma).masked_fill(mask.to(u.device), -math.inf)
        return torch.logsumexp(log_cross.flatten(-2), dim=-1)

    return objective


# --------------------------------------------------------------------------------------------
# empirical breakdown radius of the base
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Breakdown:
    """Result of :func:`breakdown_radius`.

    Attributes
    ----------
    radius
        ``‖δ‖`` of the smallest successful perturbation found (``inf`` if none): an upper bound
        on the true breakdown radius, with ``delta`` as its witness.
    grid_radius
        The smallest grid radius at which PGD succeeded (``inf`` if none).
    delta
        The witness (``None`` if no success).
    tried
        ``(grid radius, success, best value)`` for every PGD run, in order.
    """

    radius: float
    grid_radius: float
    delta: Tensor | None
    tried: tuple[tuple[float, bool, float], ...]


def _refine(objective: Objective, center: Tensor, delta: Tensor, threshold: float, steps: int) -> Tensor:
    """Bisect the scale ``s ∈ (0, 1]`` of a successful ``δ``; return the smallest ``sδ`` seen to succeed."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        with torch.no_grad():
            value = objective((center.to(torch.float64) + mid * delta).to(center.dtype).unsqueeze(0))
        lo, hi = (lo, mid) if float(value[0]) > threshold else (mid, hi)
    return hi * delta


def breakdown_radius(
    objective: Objective,
    center: Tensor,
    radii: Sequence[float],
    *,
    generator: torch.Generator,
    threshold: float = 0.0,
    refine_steps: int = 4,
    scale_steps: int = 8,
    norm: Norm = "l2",
    **pgd_kwargs: object,
) -> Breakdown:
    """Smallest radius at which PGD makes ``objective > threshold`` (e.g. a margin: a flip).

    1. Bisection over the sorted grid ``radii`` (``⌈log₂ len⌉ + 1`` PGD runs, each stopped at its
       first success), assuming success is monotone in ``r`` — as it is for the true worst case;
    2. ``refine_steps`` more PGD runs bisecting the radius between the last failing and the first
       successful grid radius;
    3. ``scale_steps`` forward passes bisecting the scale ``s ∈ (0, 1]`` of the best successful ``δ``.

    Whatever PGD's luck, the returned radius is achieved by the returned ``δ`` (an upper bound on
    the true breakdown radius). ``pgd_kwargs`` go to :func:`pgd`.
    """
    grid = sorted(float(r) for r in radii)
    refine_steps, scale_steps = _check_int("refine_steps", refine_steps, 0), _check_int("scale_steps", scale_steps, 0)
    tried: list[tuple[float, bool, float]] = []
    hits: dict[float, Tensor] = {}

    def attempt(radius: float) -> Tensor | None:
        res = pgd(objective, center, radius, generator=generator, norm=norm, target=threshold, **pgd_kwargs)
        tried.append((radius, res.value > threshold, res.value))
        return res.delta if res.value > threshold else None

    def on_grid(radius: float) -> bool:
        delta = attempt(radius)
        if delta is not None:
            hits[radius] = delta
        return delta is not None

    high, _ = first_on_grid(on_grid, radii)
    if math.isinf(high):
        return Breakdown(math.inf, math.inf, None, tuple(tried))
    hi, best = grid.index(high), hits[high]
    low = 0.0 if hi == 0 else grid[hi - 1]  # the bisection ends next to the last failing grid radius
    for _ in range(refine_steps):
        mid = 0.5 * (low + high)
        found = attempt(mid)
        low, high, best = (low, mid, found) if found is not None else (mid, high, best)
    delta = _refine(objective, center, best, threshold, scale_steps)
    return Breakdown(float(_flat_norm(delta.unsqueeze(0), norm, 1)[0]), grid[hi], delta, tuple(tried))


def first_on_grid(succeeds: Callable[[float], bool], radii: Sequence[float]) -> tuple[float, int]:
    """Smallest radius of the sorted grid ``radii`` at which ``succeeds(r)`` holds, by bisection
    (``⌈log₂ len⌉ + 1`` calls, assuming success is monotone in ``r``); ``inf`` when the largest fails.

    Returns the radius and the number of calls made.
    """
    grid = sorted(float(r) for r in radii)
    if not grid or grid[0] <= 0 or not all(math.isfinite(r) for r in grid):
        raise ValueError(f"radii must be a non-empty grid of finite radii > 0, got {radii!r}")
    if not succeeds(grid[-1]):
        return math.inf, 1
    lo, hi, calls = -1, len(grid) - 1, 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi, calls = (lo, mid, calls + 1) if succeeds(grid[mid]) else (mid, hi, calls + 1)
    return grid[hi], calls


def toward_nearest(codebook: Tensor, ids: Tensor | Sequence[int], radius: float) -> Tensor:
    r"""The straight move toward other codebook rows: ``δ = r · D / ‖D‖_F`` with
    ``D_l = w_{v_l} − w_{k_l}``, ``k = ids`` and ``v_l = argmin_{v ≠ k_l} ‖w_v − w_{k_l}‖₂``.

    For a class embedding (``ids = [label]``) it heads for the nearest other class, for a prompt
    (``ids`` its tokens) it moves every token toward its nearest other token: the semantic
    direction an adversary would try first. Returns ``δ`` ``[len(ids), d]`` (float64, ``‖δ‖ = r``).
    """
    w = codebook.detach().to(torch.float64)
    k = torch.as_tensor(ids, device=w.device).long().reshape(-1)
    if w.ndim != 2 or w.shape[0] < 2 or k.numel() < 1 or int(k.min()) < 0 or int(k.max()) >= w.shape[0]:
        raise ValueError(f"need a codebook [V >= 2, d] and ids in [0, V), got {tuple(w.shape)} and {k.tolist()}")
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be finite and >= 0, got {radius!r}")
    dist = torch.cdist(w[k], w)
    dist[torch.arange(k.numel()), k] = math.inf
    direction = w[dist.argmin(dim=1)] - w[k]
    return radius * direction / direction.norm()


# --------------------------------------------------------------------------------------------
# validation protocol
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo estimate of an achieved shift.

    Attributes
    ----------
    value, stderr, n
        The estimate, its standard error and the sample size.
    lower
        One-sided lower confidence bound on the estimated quantity at level ``Φ(−z)`` (≈ 2.3 %
        for ``z = 2``); how it is computed depends on the estimator (:func:`mean_estimate`,
        :func:`shift_norm_estimate`, :func:`proportion_estimate`). :func:`is_violation` compares it
        with the certificate.
    """

    value: float
    stderr: float
    n: int
    lower: float


def _as_vector(x: Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=float)
    if arr.ndim != 1 or arr.size < 2 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a finite 1-D array of at least 2 values, got shape {arr.shape}")
    return arr


def _check_z(z: float) -> float:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 < z < math.inf:
        raise ValueError(f"z must be a positive number of standard errors, got {z!r}")
    return float(z)


def mean_estimate(values: Tensor | np.ndarray | Sequence[float], z: float = VIOLATION_Z) -> Estimate:
    """Sample mean, its standard error ``s / √n`` (``n − 1`` degrees of freedom), lower bound ``mean − z·se``."""
    x, z = _as_vector(values, "values"), _check_z(z)
    mean, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(mean, se, int(x.size), mean - z * se)


def proportion_estimate(indicators: Tensor | np.ndarray | Sequence[float], z: float = VIOLATION_Z) -> Estimate:
    r"""Proportion ``k/n`` of 0/1 ``indicators``, its standard error, and its exact lower bound.

    ``lower`` = :func:`smoothgen.certify.clopper_pearson_lower` ``(k, n, Φ(−z))``: unlike
    ``p̂ − z·se``, it stays valid when ``k ∈ {0, n}`` (where the plug-in standard error is 0).
    """
    x, z = _as_vector(indicators, "indicators"), _check_z(z)
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError("indicators must be 0/1 values")
    k, n = int(x.sum()), int(x.size)
    p = k / n
    lower = float(certify.clopper_pearson_lower(k, n, float(special.ndtr(-z))))
    return Estimate(p, math.sqrt(p * (1 - p) / n), n, lower)


def shifted(estimate: Estimate, offset: float, scale: float = 1.0) -> Estimate:
    """The estimate of ``scale · (X + offset)`` for a constant ``offset`` and ``scale > 0``."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    return Estimate(scale * (estimate.value + offset), scale * estimate.stderr, estimate.n,
                    scale * (estimate.lower + offset))


def _jackknife_u(d: Tensor) -> tuple[float, float]:
    """``U = mean_{i≠j} ⟨d_i, d_j⟩`` over the ``m`` rows of ``d`` (float64, flattened) and its jackknife standard error."""
    m = d.shape[0]
    total, sq = d.sum(dim=0), (d * d).sum(dim=1)
    s2, q = float(total @ total), float(sq.sum())
    u = (s2 - q) / (m * (m - 1))
    loo = (s2 - q - 2 * (d @ total) + 2 * sq) / ((m - 1) * (m - 2))  # U without row i
    return u, float(torch.sqrt((m - 1) / m * ((loo - loo.mean()) ** 2).sum()))


def shift_norm_estimate(differences: Tensor, z: float = VIOLATION_Z) -> Estimate:
    r"""Estimate ``‖E ΔY‖₂`` from ``m >= 3`` i.i.d. vectors ``differences[m, *O]`` (trailing dims flattened).

    :math:`U = \frac{1}{m(m-1)}\sum_{i\ne j}\langle \Delta Y_i, \Delta Y_j\rangle = \frac{\|\sum_i \Delta Y_i\|^2 - \sum_i\|\Delta Y_i\|^2}{m(m-1)}`
    is unbiased for :math:`\|E\,\Delta Y\|^2`; ``s_U`` is its jackknife standard error. Returned:
    ``value = √max(U, 0)``, ``lower = √max(U − z s_U, 0)`` (one-sided normal-approximation bound),
    ``stderr = s_U / (2 value)`` (delta method; ``√s_U`` when ``value = 0``).

    With ``ΔY_i = Y'_i − Y_i`` (fresh pairs, each side drawn from its law), :math:`\|E\,\Delta Y\| =
    \|E Y' - E Y\| \le W_1` (Kantorovich–Rubinstein with the 1-Lipschitz ``f(y) = ⟨u, y⟩``, ``u``
    the unit mean-shift direction): no witness has to be chosen, and the noise in the ``ΔY_i``
    does not inflate the estimate (unlike ``‖mean ΔY‖``, biased upwards by ``tr Cov / m``).
    """
    if not isinstance(differences, Tensor) or differences.ndim < 2 or differences.shape[0] < 3:
        raise ValueError("differences must be a tensor [m, ...] with m >= 3 rows")
    d = differences.detach().flatten(1).to(torch.float64)
    if not bool(torch.isfinite(d).all()):
        raise ValueError("differences contain NaN or inf")
    u, se = _jackknife_u(d)
    z = _check_z(z)
    value = math.sqrt(max(u, 0.0))
    stderr = se / (2 * value) if value > 0 else math.sqrt(se)
    return Estimate(value, stderr, int(d.shape[0]), math.sqrt(max(u - z * se, 0.0)))


def farthest_in_box(point: Tensor | np.ndarray, lower: Tensor | np.ndarray, upper: Tensor | np.ndarray) -> float:
    """``max {‖v − p‖₂ : lower ≤ v ≤ upper} = ‖max(|lower − p|, |upper − p|)‖₂`` (coordinate-wise max).

    If the certified mean band ``[lower, upper]`` contains the smoothed mean at ``c + δ``, its
    distance to ``p`` is at most this value: the certified side of a mean-shift test.
    """
    p, lo, hi = (np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=float).ravel()
                 for x in (point, lower, upper))
    if not (p.shape == lo.shape == hi.shape) or (lo > hi).any():
        raise ValueError("point, lower and upper must have the same size, and lower <= upper")
    return float(np.linalg.norm(np.maximum(np.abs(lo - p), np.abs(hi - p))))


def is_violation(lower: float | np.ndarray, certified: float | np.ndarray) -> bool | np.ndarray:
    """``lower > certified``: the achieved value's lower confidence bound (:attr:`Estimate.lower`) beats the certificate.

    ``certified = NaN`` (no certificate) is never a violation.
    """
    lo, c = np.asarray(lower, dtype=float), np.asarray(certified, dtype=float)
    out = np.where(np.isnan(c), False, lo > c)
    return bool(out) if out.ndim == 0 else out
