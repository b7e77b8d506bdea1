"""Tests for smoothgen.attacks: PGD, objectives, breakdown radius, validation protocol."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from scipy import special, stats

from smoothgen import attacks as A
from smoothgen import certify
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import make_generator


def gen(seed: int = 0) -> torch.Generator:
    return make_generator(seed, "cpu")


def random_mlp(seed: int, d: int = 10, out: int = 5):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(32, d, generator=g, dtype=torch.float64)
    w2 = torch.randn(out, 32, generator=g, dtype=torch.float64) / 5
    return lambda u: torch.tanh(u @ w1.T) @ w2.T


# ------------------------------------------------------------------------------------------
# PGD finds known worst cases
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_pgd_finds_top_singular_direction_of_a_linear_generator(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 10, generator=g, dtype=torch.float64)
    c = torch.randn(10, generator=g, dtype=torch.float64)
    r = 0.7
    _, s, vh = torch.linalg.svd(a)
    res = A.pgd(A.output_change(lambda u: u @ a.T, c), c, r, generator=gen(seed), steps=100, restarts=2)
    assert res.value == pytest.approx(r * float(s[0]), rel=1e-3)  # max_{‖δ‖≤r} ‖Aδ‖ = r·s_max
    assert float(res.delta.norm()) == pytest.approx(r, rel=1e-9)
    cosine = float(res.delta @ vh[0]) / r
    assert abs(cosine) == pytest.approx(1.0, abs=2e-2)  # the top right-singular direction
    assert res.history.shape == (res.steps_run + 1, 2)
    assert res.value == pytest.approx(float(res.history.max()))


def test_linf_pgd_finds_the_dual_norm_worst_case() -> None:
    w = torch.tensor([0.5, -2.0, 0.0, 1.5, -0.1], dtype=torch.float64)
    c = torch.zeros(5, dtype=torch.float64)
    res = A.pgd(lambda u: u @ w, c, 0.3, generator=gen(), norm="linf", steps=20, restarts=3)
    assert res.value == pytest.approx(0.3 * float(w.abs().sum()), rel=1e-12)  # r·‖w‖₁
    nz = w != 0
    torch.testing.assert_close(res.delta[nz], 0.3 * w[nz].sign())
    assert float(res.delta.abs().max()) <= 0.3


def test_pgd_many_solves_independent_problems_in_one_batch() -> None:
    g = torch.Generator().manual_seed(5)
    ws = torch.randn(50, 8, generator=g, dtype=torch.float64)
    radii = torch.rand(50, generator=g, dtype=torch.float64) + 0.1
    centers = torch.randn(50, 8, generator=g, dtype=torch.float64)
    res = A.pgd_many(lambda u: ((u - centers[:, None]) * ws[:, None]).sum(-1), centers, radii, generator=gen(),
                     steps=30, restarts=2)
    torch.testing.assert_close(res.value, radii * ws.norm(dim=1))  # max_{‖δ‖≤r} wᵀδ = r‖w‖₂
    torch.testing.assert_close(res.delta, radii[:, None] * ws / ws.norm(dim=1, keepdim=True))
    assert res.history.shape == (res.steps_run + 1, 50, 2)


# ------------------------------------------------------------------------------------------
# the norm ball is respected exactly
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_point_the_objective_sees_lies_in_the_ball(norm: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    centers = (3 * torch.randn(20, 10, generator=g, dtype=torch.float64)).to(dtype)
    radii = torch.rand(20, generator=g, dtype=torch.float64) * 2
    radii[0] = 0.0
    f = random_mlp(2)
    seen = []

    def objective(u: torch.Tensor) -> torch.Tensor:
        seen.append((u.detach().double() - centers.double()[:, None]))
        return f(u.double()).pow(2).sum(-1)

    res = A.pgd_many(objective, centers, radii, generator=gen(), norm=norm, steps=25, restarts=3,
                     step_size=5 * float(radii.max()), schedule="constant")
    size = (lambda x: x.flatten(2).norm(dim=-1)) if norm == "l2" else (lambda x: x.flatten(2).abs().amax(-1))
    slack = 1e-12 if dtype == torch.float64 else 1e-6  # float32: rounding of c + δ itself
    for points in seen:
        assert bool((size(points) <= radii[:, None] + slack).all())
    returned = res.delta.norm(dim=1) if norm == "l2" else res.delta.abs().amax(dim=1)
    assert bool((returned <= radii * (1 + 1e-12)).all())
    assert float(res.delta[0].abs().max()) == 0.0


def test_projection_is_the_exact_euclidean_projection() -> None:
    g = torch.Generator().manual_seed(3)
    delta = 3 * torch.randn(4, 2, 6, generator=g, dtype=torch.float64)
    r = torch.tensor([0.5, 1.0, 100.0, 0.0], dtype=torch.float64)
    p = A.project(delta, r, "l2")
    inside = delta.norm(dim=-1) <= r[:, None]
    torch.testing.assert_close(p[inside], delta[inside])  # points inside are kept
    outside = ~inside
    expected = delta * (r[:, None] / delta.norm(dim=-1))[..., None]
    torch.testing.assert_close(p[outside], expected[outside])  # the rest scaled to the sphere
    q = A.project(delta, r, "linf")
    torch.testing.assert_close(q, torch.maximum(torch.minimum(delta, r.view(-1, 1, 1)), -r.view(-1, 1, 1)))


# ------------------------------------------------------------------------------------------
# toy generators with exact certificates: no attack exceeds them (1,000 trials, one batch)
# ------------------------------------------------------------------------------------------
def _toy_batch(trials: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Probit toys Y = Φ(aᵀu + s z): random directions, ‖a‖ ∈ [0.2, 4], s ∈ {0, 0.05, 0.5}, radii ∈ [0.05, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(trials, dim, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=1, keepdim=True) * (0.2 + 3.8 * torch.rand(trials, 1, generator=g, dtype=torch.float64))
    s = torch.tensor([0.0, 0.05, 0.5], dtype=torch.float64)[torch.randint(0, 3, (trials,), generator=g)]
    c = torch.randn(trials, dim, generator=g, dtype=torch.float64) * 0.3
    r = 0.05 + 1.45 * torch.rand(trials, generator=g, dtype=torch.float64)
    return {"a": a, "s": s, "c": c, "r": r}


def test_no_attack_beats_exact_toy_certificates_over_1000_trials() -> None:
    toys, sigma, n = _toy_batch(1000, 8, seed=0), 0.5, 64
    a, s, c, r = toys["a"], toys["s"], toys["c"], toys["r"]
    g = gen(11)
    eps = sigma * torch.randn(1000, n, 8, generator=g, dtype=torch.float64)
    z = torch.randn(1000, n, generator=g, dtype=torch.float64)
    latent_noise = (eps * a[:, None]).sum(-1) + s[:, None] * z  # [N, n]: aᵀε_i + s z_i (common draws)
    y = lambda u: torch.special.ndtr((u * a[:, None]).sum(-1)[..., None] + latent_noise[:, None])  # [N, R, n]
    clean = y(c[:, None])[:, 0].sort(dim=1).values
    w1 = lambda u: (y(u).sort(dim=-1).values - clean[:, None]).abs().mean(-1)  # exact 1-D empirical W₁
    res = A.pgd_many(w1, c, r, generator=g, steps=20, restarts=2)

    tau = torch.sqrt((a.norm(dim=1) * sigma) ** 2 + s**2)
    mu, mu_adv = (c * a).sum(1), ((c + res.delta) * a).sum(1)
    k = torch.sqrt(1 + tau**2)
    exact_w1 = (special.ndtr((mu_adv / k).numpy()) - special.ndtr((mu / k).numpy()))
    shift = a.norm(dim=1) * r  # the worst case moves aᵀu by ±‖a‖r
    worst_w1 = np.maximum(special.ndtr(((mu + shift) / k).numpy()) - special.ndtr((mu / k).numpy()),
                          special.ndtr((mu / k).numpy()) - special.ndtr(((mu - shift) / k).numpy()))
    bound = certify.wasserstein_bound(r.numpy(), sigma, 1.0)
    assert (np.abs(exact_w1) <= worst_w1 + 1e-12).all()
    assert (worst_w1 <= bound + 1e-12).all()  # no trial beats D·TV
    assert np.median(np.abs(exact_w1) / worst_w1) > 0.99  # and the attack is near the worst case
    exact_tv = special.erf((((res.delta * a).sum(1)).abs() / tau).numpy() / (2 * math.sqrt(2)))
    assert (exact_tv <= certify.tv_bound(r.numpy(), sigma) + 1e-12).all()
    tail_c, tail_adv = special.ndtr((mu / tau).numpy()), special.ndtr((mu_adv / tau).numpy())
    low, high = certify.np_bounds(tail_c, r.numpy(), sigma)
    assert ((low - 1e-12 <= tail_adv) & (tail_adv <= high + 1e-12)).all()  # Neyman–Pearson range holds


# ------------------------------------------------------------------------------------------
# reproducibility and early stopping
# ------------------------------------------------------------------------------------------
def test_same_seed_same_attack_and_other_seed_other_start() -> None:
    f, c = random_mlp(4), torch.zeros(10, dtype=torch.float64)
    obj = lambda u: f(u)[:, 0]  # noqa: E731
    one = A.pgd(obj, c, 1.0, generator=gen(3), steps=15, restarts=4)
    two = A.pgd(obj, c, 1.0, generator=gen(3), steps=15, restarts=4)
    other = A.pgd(obj, c, 1.0, generator=gen(4), steps=15, restarts=4)
    assert torch.equal(one.delta, two.delta) and torch.equal(one.history, two.history)
    assert not torch.equal(one.history[0], other.history[0])


def test_target_and_patience_stop_early() -> None:
    c = torch.zeros(4, dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    res = A.pgd(lambda u: u @ w, c, 1.0, generator=gen(), steps=100, target=0.5)
    assert res.steps_run < 100 and res.value > 0.5
    flat = A.pgd(lambda u: 0.0 * u.sum(-1) + 1.0, c, 1.0, generator=gen(), steps=100, patience=3)
    assert flat.steps_run == 3 and flat.value == 1.0


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_step_schedules(schedule: str) -> None:
    s = A.step_schedule(schedule, 8)
    assert s.shape == (8,) and s[0] == 1.0 and (np.diff(s) <= 0).all()
    expected = {"constant": np.ones(8), "cosine": 0.5 * (1 + np.cos(np.pi * np.arange(8) / 8)),
                "step": np.array([1, 1, 1, 1, 0.5, 0.5, 0.25, 0.25])}[schedule]
    np.testing.assert_allclose(s, expected)


# ------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------
def test_class_margin_is_positive_iff_the_class_flips() -> None:
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = torch.randn(200, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    margin = A.class_margin(lambda x: x, lambda x: x @ w.T, label=2)(u)
    assert torch.equal(margin > 0, (u @ w.T).argmax(1) != 2)


def test_sequence_margin_is_positive_iff_greedy_decoding_changes() -> None:
    # a toy "LM": next-token logits W[t] (p + e[prefix sum]) — teacher forcing and greedy decoding agree
    g = torch.Generator().manual_seed(0)
    weights, emb = torch.randn(3, 5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    step = lambda p, prefix, t: (p + emb[prefix].sum(1)) @ weights[t].T  # noqa: E731  p [B, 4], prefix [B, t]

    def greedy(p: torch.Tensor) -> torch.Tensor:
        out = torch.empty((p.shape[0], 0), dtype=torch.long)
        for t in range(3):
            out = torch.cat([out, step(p, out, t).argmax(1, keepdim=True)], 1)
        return out

    clean = greedy(torch.zeros(1, 4, dtype=torch.float64))[0]
    teacher = lambda p: torch.stack([step(p, clean[:t].expand(p.shape[0], t), t) for t in range(3)], 1)  # noqa: E731
    u = 2 * torch.randn(500, 4, generator=g, dtype=torch.float64)
    changed = (greedy(u) != clean).any(1)
    assert 0 < int(changed.sum()) < 500
    assert torch.equal(A.sequence_margin(teacher, clean)(u) > 0, changed)
    nll = A.continuation_nll(teacher, clean)(u)
    expected = -torch.log_softmax(teacher(u), -1).gather(-1, clean.expand(500, 3)[..., None]).squeeze(-1).mean(1)
    torch.testing.assert_close(nll, expected)


def test_eot_outputs_use_common_draws() -> None:
    noise = GaussianNoise(0.3, dtype=torch.float64)
    crn = A.CommonNoise.draw(noise, (3,), 7, gen(2), z_shape=(2,))
    fn = lambda x, z: torch.cat([x.sum(1, keepdim=True), z], 1)  # noqa: E731
    u = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = A.eot_outputs(fn, crn, u)
    assert out.shape == (4, 7, 3)
    for b in range(4):
        torch.testing.assert_close(out[b], fn(u[b] + crn.eps, crn.z))


def test_w1_shift_is_the_exact_empirical_w1_and_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    clean, y = torch.rand(16, 3, generator=g, dtype=torch.float64), torch.rand(2, 16, 3, generator=g, dtype=torch.float64)
    got = A.w1_shift(clean)(y)
    for b in range(2):
        expected = ot.emd2(np.full(16, 1 / 16), np.full(16, 1 / 16), ot.dist(y[b].numpy(), clean.numpy(), "euclidean"))
        assert float(got[b]) == pytest.approx(expected, rel=1e-9)
    one_d = A.w1_shift(clean[:, :1])(y[:, :, :1])
    for b in range(2):
        assert float(one_d[b]) == pytest.approx(ot.wasserstein_1d(y[b, :, 0].numpy(), clean[:, 0].numpy(), p=1), rel=1e-9)
    x = y.clone().requires_grad_(True)
    A.w1_shift(clean)(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_smoothed_statistics_match_their_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 10, 4, generator=g, dtype=torch.float64)
    ref = torch.rand(4, dtype=torch.float64)
    torch.testing.assert_close(A.mean_shift(ref)(y), (y.mean(1) - ref).norm(dim=1))
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    expected = 1 - torch.softmax(y @ w.T, -1)[..., 1].mean(1)
    torch.testing.assert_close(A.class_drop(lambda x: x @ w.T, 1)(y), expected)
    logits = torch.randn(3, 10, 2, 6, generator=g, dtype=torch.float64)
    tokens = torch.tensor([4, 0])
    p = torch.softmax(logits, -1)
    expected = torch.stack([1 - p[:, :, 0, 4].mean(1), 1 - p[:, :, 1, 0].mean(1)], 1).amax(1)
    torch.testing.assert_close(A.token_flip(tokens)(logits), expected)


# ------------------------------------------------------------------------------------------
# breakdown radius
# ------------------------------------------------------------------------------------------
def test_breakdown_radius_of_a_linear_classifier_is_its_distance_to_the_boundary() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    label = int((c @ w.T).argmax())
    logits = c @ w.T
    true = min(float((logits[label] - logits[k]) / (w[label] - w[k]).norm()) for k in range(4) if k != label)
    grid = np.linspace(0.05, 3 * true, 12)
    out = A.breakdown_radius(A.class_margin(lambda x: x, lambda x: x @ w.T, label), c, grid, generator=gen(),
                             steps=30, restarts=2, refine_steps=8)
    assert out.radius >= true - 1e-9  # a witness can never beat the true boundary distance
    assert out.radius == pytest.approx(true, rel=2e-3)
    assert int(((c + out.delta) @ w.T).argmax()) != label
    assert len(out.tried) <= math.ceil(math.log2(12)) + 1 + 8
    never = A.breakdown_radius(A.class_margin(lambda x: x, lambda x: x @ w.T, label), c, [true / 10], generator=gen(),
                               steps=10)
    assert never.radius == math.inf and never.delta is None


# ------------------------------------------------------------------------------------------
# validation protocol
# ------------------------------------------------------------------------------------------
def test_estimates_and_violation_rule() -> None:
    est = A.mean_estimate([1.0, 2.0, 3.0, 6.0])
    se = np.std([1, 2, 3, 6], ddof=1) / 2
    assert est.value == 3.0 and est.stderr == pytest.approx(se) and est.n == 4
    assert est.lower == pytest.approx(3.0 - A.VIOLATION_Z * se)
    moved = A.shifted(est, -0.5, 2.0)
    assert (moved.value, moved.lower) == pytest.approx((5.0, 2 * (est.lower - 0.5))) and moved.stderr == 2 * est.stderr
    assert A.is_violation(0.8, 0.7) and not A.is_violation(0.6, 0.7) and not A.is_violation(5.0, float("nan"))
    np.testing.assert_array_equal(A.is_violation(np.array([1.0, 0.5]), 0.6), [True, False])


def test_proportion_lower_bound_is_exact_clopper_pearson_and_valid_at_the_edges() -> None:
    level = special.ndtr(-A.VIOLATION_Z)
    est = A.proportion_estimate([1, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    assert est.value == 0.8 and est.lower == pytest.approx(float(stats.beta.ppf(level, 8, 3)))
    all_hits = A.proportion_estimate(np.ones(16))
    assert all_hits.stderr == 0.0 and all_hits.lower == pytest.approx(level ** (1 / 16))  # (p̲)^16 = level
    assert A.proportion_estimate(np.zeros(16)).lower == 0.0
    # coverage: the lower bound exceeds the true p at most at its level (20,000 binomial draws)
    k = np.random.default_rng(0).binomial(20, 0.3, size=20_000)
    lowers = certify.clopper_pearson_lower(k, 20, level)
    assert float(np.mean(lowers > 0.3)) <= level
    with pytest.raises(ValueError, match="0/1"):
        A.proportion_estimate([0.5, 1.0])


def test_farthest_point_of_a_box() -> None:
    g = np.random.default_rng(0)
    p, lo = g.normal(size=4), g.normal(size=4)
    hi = lo + g.uniform(0, 1, size=4)
    corners = np.array(np.meshgrid(*[[lo[i], hi[i]] for i in range(4)])).reshape(4, -1).T
    assert A.farthest_in_box(p, lo, hi) == pytest.approx(float(np.linalg.norm(corners - p, axis=1).max()))


def test_shift_norm_estimate_is_the_u_statistic_with_its_jackknife() -> None:
    d = torch.randn(9, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    flat = d.flatten(1)
    pairs = [(i, j) for i in range(9) for j in range(9) if i != j]
    u = float(np.mean([float(flat[i] @ flat[j]) for i, j in pairs]))

    def u_without(k: int) -> float:
        return float(np.mean([float(flat[i] @ flat[j]) for i, j in pairs if k not in (i, j)]))

    loo = np.array([u_without(k) for k in range(9)])
    se = math.sqrt(8 / 9 * ((loo - loo.mean()) ** 2).sum())
    est = A.shift_norm_estimate(d, z=1.5)
    assert est.value == pytest.approx(math.sqrt(u)) and est.n == 9
    assert est.lower == pytest.approx(math.sqrt(max(u - 1.5 * se, 0.0)))
    assert est.stderr == pytest.approx(se / (2 * math.sqrt(u)))


def test_shift_norm_estimate_is_unbiased_in_square_and_its_lower_bound_covers() -> None:
    # ‖E D‖ = 1 in 50 dimensions with unit noise: mean of U ≈ 1 and the lower bound rarely exceeds 1
    g = torch.Generator().manual_seed(1)
    mu = torch.zeros(50, dtype=torch.float64)
    mu[0] = 1.0
    squares, above = [], 0
    for _ in range(1000):
        est = A.shift_norm_estimate(mu + torch.randn(40, 50, generator=g, dtype=torch.float64))
        squares.append(est.value**2)  # max(U, 0); U < 0 is rare here
        above += est.lower > 1.0
    assert abs(np.mean(squares) - 1.0) < 0.05
    assert above / 1000 <= 0.05  # nominal Φ(−2) ≈ 0.023
    naive = (mu + torch.randn(40, 50, generator=g, dtype=torch.float64)).mean(0).norm()
    assert float(naive) > 1.2  # ‖mean D‖ is inflated by the noise, which U removes


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"radius": -1.0}, "radius"), ({"radius": float("nan")}, "radius"), ({"norm": "l1"}, "norm"),
    ({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"), ({"schedule": "linear"}, "schedule"),
    ({"step_size": -0.1}, "step_size"), ({"patience": 0}, "patience"), ({"generator": None}, "generator"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"radius": 1.0, "generator": gen(), **kwargs}
    with pytest.raises(ValueError, match=match):
        A.pgd(lambda u: u.sum(-1), torch.zeros(3), **args)


def test_bad_objectives_raise() -> None:
    c = torch.zeros(3)
    with pytest.raises(ValueError, match="one value per row"):
        A.pgd(lambda u: u.sum(), c, 1.0, generator=gen())
    with pytest.raises(ValueError, match="NaN or inf"):
        A.pgd(lambda u: u.sum(-1) * float("nan"), c, 1.0, generator=gen())
    with pytest.raises(ValueError, match="not differentiable"):
        A.pgd(lambda u: torch.ones(u.shape[0]), c, 1.0, generator=gen())
    with pytest.raises(ValueError, match="centers"):
        A.pgd(lambda u: u.sum(-1), torch.tensor([float("inf"), 0.0]), 1.0, generator=gen())
    with pytest.raises(ValueError, match="radii"):
        A.breakdown_radius(lambda u: u.sum(-1), c, [], generator=gen())
    with pytest.raises(ValueError, match="tokens"):
        A.sequence_margin(lambda u: u, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="m >= 3"):
        A.shift_norm_estimate(torch.ones(2, 4))


# ------------------------------------------------------------------------------------------
# the experiment's pieces (random tiny models: no checkpoint needed)
# ------------------------------------------------------------------------------------------
def tiny_lm(steps: int = 4):
    from smoothgen.data import Vocabulary
    from smoothgen.models.lm import LMConfig, LMGenerator, build_lm
    from smoothgen.models.training import seeded_global_rng

    vocab = Vocabulary(("<eos>", "<unk>", *[f"w{i}" for i in range(18)]))
    with seeded_global_rng(0, torch.device("cpu")):
        model = build_lm(LMConfig(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2, dropout=0.0))
    return LMGenerator(model, vocab, steps=steps)


def test_teacher_logits_match_next_token_logits_and_flag_greedy_changes() -> None:
    from smoothgen.experiments.attacks import teacher_logits

    lm = tiny_lm()
    center = lm.prompt_embeddings([3, 7, 9])
    clean = lm(center[None], gen())[0]
    logits = teacher_logits(lm, clean)
    u = center + 0.5 * torch.randn((300, *center.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher = logits(u[:4])
        for t in range(4):
            torch.testing.assert_close(teacher[:, t], lm.next_token_logits(u[:4], clean[:t].expand(4, t)),
                                       rtol=1e-4, atol=1e-5)
        changed = (lm(u, gen()) != clean).any(1)
        flagged = A.sequence_margin(logits, clean)(u) > 0
    assert 0 < int(changed.sum()) < 300 and torch.equal(flagged, changed)


SMOKE = {
    "seed": 0, "device": "cpu", "models": "random", "random_arch": "smoke", "alpha": 0.001, "violation_z": 2.0,
    "refine_steps": 0, "toy_dim": 8, "toy_sigma": 0.5, "toy_restarts": 2, "toy_pgd_steps": 10, "toy_n_eot": 64,
    "toy_n_cert": 2000, "toy_trials": 200, "cifar_sigma_rel": 0.1, "cifar_guidance_scale": None, "cifar_restarts": 1,
    "cifar_classes": [0], "cifar_radii_rel": [0.005, 0.04], "cifar_breakdown_grid_rel": [0.005, 0.1],
    "cifar_pgd": {"class_consistency": [0], "mean_shift": [0]}, "cifar_n_breakdown": 8,
    "cifar_smoothed_grid_rel": [0.1, 1.0], "ptb_smoothed_grid_rel": [0.05, 0.5], "ptb_black_box_draws": 4,
    "cifar_black_box": [0], "cifar_black_box_draws": 4, "cifar_sample_steps": 2, "cifar_batch_size": 16,
    "cifar_n_cert": 16, "cifar_n_pilot": 4, "cifar_n_fresh": 8,
    "cifar_n_eot": 2, "cifar_pgd_steps": 2, "cifar_base_noises": 1, "cifar_base_pgd_steps": 2, "ptb_prompt_len": 5,
    "ptb_sigma_rel": 0.25, "ptb_restarts": 1, "ptb_prompts": 1, "ptb_steps": 3, "ptb_radii_rel": [0.25, 1.0],
    "ptb_breakdown_grid_rel": [0.1, 1.6], "ptb_n0": 4, "ptb_n": 16, "ptb_n_eot": 4, "ptb_pgd_steps": 2,
    "ptb_n_fresh": 16, "ptb_batch_size": 32, "ptb_base_pgd_steps": 2, "preset": "smoke", "notebook": "06_attacks",
    "cell_alpha": 0.001, "cell_cifar_sigma_rel": 0.25, "cell_cifar_radii_rel": [0.5], "cell_ptb_sigma_rel": 0.1,
    "cell_ptb_radii_rel": [0.1], "cell_pgd_steps": 3, "cell_restarts": 1, "cell_n_cert": 2000, "cell_n_fresh": 2000,
    "cell_ptb_n": 200, "cell_ptb_prompts": 1, "cell_n_images": 4, "cell_n_texts": 8,
}


@pytest.fixture
def one_thread():
    """Run on one intra-op thread (two threads on a busy 2-core machine slow the UNet down ~6×)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.needs_data("ptb")
def test_experiment_runs_on_random_tiny_models_and_writes_the_trials_table(tmp_path, monkeypatch, one_thread) -> None:
    import pandas as pd

    from smoothgen.experiments import attacks as experiment

    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path))
    result = experiment.run(dict(SMOKE))
    trials = pd.read_csv(tmp_path / "06_attacks" / "smoke" / "trials.csv")
    assert set(A.TRIAL_COLUMNS) <= set(trials.columns)
    assert set(trials["dataset"]) == {"toy-probit", "cifar10", "ptb"}
    # toys: two attacks (white-box EOT, black-box Stein) x two certificates; CIFAR-10 per radius: class PGD (1
    # certificate), mean-shift PGD (2), black-box class attack (1) and the straight move (3); PTB per radius:
    # white-box, black-box, straight move
    assert len(trials) == 2 * 2 * 200 + 2 * (1 + 2 + 1 + 3) + 2 * 3
    assert set(trials.loc[trials["dataset"] == "cifar10", "attack"]) == {
        "pgd-eot-class_consistency", "pgd-eot-mean_shift", "stein-black-box", "toward-nearest-class"}
    black = trials[(trials["dataset"] == "cifar10") & (trials["attack"] == "stein-black-box")]
    assert set(black["certificate"]) == {"class_consistency"} and (black["delta_norm"] <= black["radius"] + 1e-9).all()
    assert set(trials.loc[trials["dataset"] == "ptb", "attack"]) == {"pgd-eot-token", "stein-black-box",
                                                                     "toward-nearest-token"}
    assert not trials[["achieved", "achieved_stderr", "achieved_lower", "certified"]].isna().any().any()
    assert (trials["achieved_lower"] <= trials["achieved"] + 1e-12).all()
    assert not trials["violation"].any()
    toy = trials[trials["dataset"] == "toy-probit"]
    assert (toy["achieved"] <= toy["worst_case"] + 1e-12).all() and (toy["achieved_stderr"] == 0).all()
    bound = toy[toy["certificate"] == "wasserstein_bound"]
    assert (bound["worst_case"] <= bound["certified"] + 1e-12).all()
    assert set(result["breakdown"]["dataset"]) == {"cifar10", "ptb"}
    assert set(result["summary"]["certificate"]) == {"wasserstein_bound", "wasserstein", "mean_band",
                                                     "class_consistency", "token_np"}
    images = result.extras["images"]
    assert len(images["attacked_samples"]) == 2 * 4 and images["center_samples"][0].shape == (8, 3, 32, 32)
    smoothed = result["smoothed_breakdown"]
    assert list(smoothed["dataset"]) == ["cifar10", "ptb"] and not smoothed["violation"].any()
    assert (smoothed["smoothed_certified_radius"] <= smoothed["smoothed_breakdown_radius"]).all()
    assert len(result["texts"]) == 1
    cell = result["cell_trials"]
    assert set(cell["dataset"]) == {"cifar10", "ptb"} and not cell["violation"].any()


def test_first_on_grid_bisects_to_the_smallest_success_and_counts_its_calls() -> None:
    grid = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    calls = []
    radius, n = A.first_on_grid(lambda r: calls.append(r) or r >= 0.5, grid)
    assert radius == 0.8 and n == len(calls) <= 4
    assert A.first_on_grid(lambda r: False, grid) == (math.inf, 1)
    assert A.first_on_grid(lambda r: True, grid)[0] == 0.1
    with pytest.raises(ValueError, match="radii"):
        A.first_on_grid(lambda r: True, [0.0, 1.0])


def test_toward_nearest_moves_each_row_toward_its_nearest_other_row_with_the_given_norm() -> None:
    book = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]], dtype=torch.float64)
    delta = A.toward_nearest(book, [0], 0.5)
    assert torch.allclose(delta, torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    both = A.toward_nearest(book, [2, 3], 2.0)  # 2 -> 0 (dist 3 < sqrt 10) and 3 -> 0 (dist 2): D = [[0, -3], [2, 0]]
    expected = torch.tensor([[0.0, -3.0], [2.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(both, 2.0 * expected / expected.norm()) and float(both.norm()) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ids"):
        A.toward_nearest(book, [4], 1.0)
    with pytest.raises(ValueError, match="radius"):
        A.toward_nearest(book, [0], -1.0)


# ----------------------------------------------------------------------------- the projection front-end's cells
def test_cell_exit_bound_is_exact_for_two_cells_and_an_upper_bound_otherwise() -> None:
    two = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    objective = A.cell_exit_bound(two, [0], 0.5)
    u = torch.tensor([[[0.3, 1.0]]], dtype=torch.float64)
    assert math.exp(float(objective(u)[0])) == pytest.approx(special.ndtr(-(1.0 - 0.3) / 0.5), rel=1e-12)
    book = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    sigma, ids = 0.6, torch.tensor([2, 5])
    point = book[ids] + 0.1
    xi = torch.randn(200_000, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nearest = torch.cdist((point + sigma * xi).reshape(-1, 3), book).argmin(1).reshape(-1, 2)
    exit_mc = float((nearest != ids).any(1).double().mean())
    bound = math.exp(float(A.cell_exit_bound(book, ids, sigma)(point[None])[0]))
    assert exit_mc > 0.01 and bound >= exit_mc - 4 * math.sqrt(exit_mc / 200_000)


def test_pgd_on_the_cell_exit_bound_finds_the_nearest_face() -> None:
    book = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0], [-3.0, 0.0]], dtype=torch.float64)
    r, sigma = 0.6, 0.3
    out = A.pgd(A.cell_exit_bound(book, [0], sigma), book[:1], r, generator=make_generator(0, "cpu"), steps=40,
                restarts=2)
    assert out.delta.norm() == pytest.approx(r, rel=1e-6)
    assert torch.allclose(out.delta[0] / r, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-3)


def test_stein_gradient_is_unbiased_for_a_linear_and_a_quadratic_function() -> None:
    g = torch.Generator().manual_seed(0)
    w, u, sigma, n = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.3, 0.1, -0.2],
                                                                                        dtype=torch.float64), 0.7, 200_000
    noise = sigma * torch.randn(n, 3, generator=g, dtype=torch.float64)
    est = A.stein_gradient((u + noise) @ w, noise, sigma)
    assert torch.allclose(est, w, atol=0.03)
    quad = ((u + noise) ** 2).sum(-1)  # E|u + eps|^2 has gradient 2u
    assert torch.allclose(A.stein_gradient(quad, noise, sigma), 2 * u, atol=0.05)
    with pytest.raises(ValueError, match="n >= 2"):
        A.stein_gradient(torch.zeros(1), torch.zeros(1, 3), sigma)
    with pytest.raises(ValueError, match="sigma"):
        A.stein_gradient(torch.zeros(4), torch.zeros(4, 3), 0.0)


def test_black_box_attack_finds_the_worst_direction_of_a_smoothed_half_space() -> None:
    """h = 1{<w, x> > 0} has no useful gradient; its smoothing Phi(<w, u>/sigma) is maximised over the ball
    at delta = r w/|w|. The Stein-gradient PGD finds that direction from the indicator's values alone."""
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([[3.0, -4.0, 0.0, 0.0]], dtype=torch.float64) / 5
    h = lambda x: ((x * w[:, None, None]).sum(-1) > 0).to(x.dtype)  # noqa: E731  [N, R, draws, E] -> [N, R, draws]
    objective = A.black_box_smoothed(h, sigma=0.5, draws=512, generator=g)
    center = torch.zeros(1, 4, dtype=torch.float64)
    res = A.pgd_many(objective, center, 0.4, generator=g, steps=30, restarts=2)
    cosine = float((res.delta[0] @ w[0]) / res.delta[0].norm())
    assert cosine > 0.95 and float(res.delta[0].norm()) == pytest.approx(0.4, rel=1e-6)


class _BrightnessGenerator(torch.nn.Module):
    """Stub conditional image generator: brightness Φ(<w, e> + 0.3 x_T) from a fresh x_T per image."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, embeddings: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.inference_mode():
            x_t = torch.randn(embeddings.shape[0], 3, 32, 32, generator=generator, dtype=torch.float64)
            return torch.special.ndtr((embeddings.double() @ self.w)[:, None, None, None] + 0.3 * x_t)


def test_cifar_black_box_attack_finds_the_darkening_direction_from_images_alone() -> None:
    """The evaluator calls bright images class 0, so the drop of class 0 grows fastest along −w. The black-box
    objective sees only generated images: its Stein gradient leads PGD to δ ≈ −r w/‖w‖, and no gradient
    ever reaches the generator's parameters."""
    from types import SimpleNamespace

    from smoothgen.experiments import attacks as experiment

    w = torch.tensor([0.0, 0.6, -0.8, 0.0], dtype=torch.float64)
    stub = _BrightnessGenerator(w.clone())
    def evaluator(images: torch.Tensor) -> torch.Tensor:  # bright: class 0
        return 8 * torch.stack([images.mean((1, 2, 3)) - 0.5, 0.5 - images.mean((1, 2, 3))], 1)

    models = SimpleNamespace(diffusion=stub, evaluator=evaluator)
    cond = SimpleNamespace(label=0, sigma=0.3)
    g = torch.Generator().manual_seed(3)
    objective = experiment.black_box_drop(models, cond, draws=64, generator=g)
    points = torch.zeros(1, 2, 4, dtype=torch.float64, requires_grad=True)
    value = objective(points)
    assert value.shape == (1, 2) and ((value > 0) & (value < 1)).all()
    value.sum().backward()
    assert stub.w.grad is None and torch.isfinite(points.grad).all() and points.grad.abs().sum() > 0
    res = A.pgd_many(objective, torch.zeros(1, 4, dtype=torch.float64), 0.5, generator=g, steps=20, restarts=2)
    cosine = float((res.delta[0] @ -w) / res.delta[0].norm())
    assert cosine > 0.95 and float(res.delta[0].norm()) == pytest.approx(0.5, rel=1e-6)
