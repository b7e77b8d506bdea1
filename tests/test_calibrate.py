"""Tests of smoothgen.calibrate: sensitivity against exact Jacobians, every strategy's certificate
against toys with exact answers (worst-case search over δ), and the unsound per-input σ as a
counter-example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from smoothgen import calibrate as cal
from smoothgen import certify
from smoothgen.noise import DiagonalGaussianNoise, GaussianNoise, SpikedGaussianNoise
from smoothgen.smoothing import SmoothedGenerator, derive_seed

F64 = torch.float64


# ----------------------------------------------------------------------------- fixtures
def _orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q


def _linear_map(sv: list[float], d: int, seed: int = 0) -> tuple[torch.Tensor, callable]:
    """``f(u) = A u`` with singular values ``sv`` (so J = A everywhere)."""
    o = len(sv)
    a = _orthogonal(o, seed) @ torch.diag(torch.tensor(sv, dtype=F64)) @ _orthogonal(d, seed + 1)[:, :o].T
    return a, lambda u: u @ a.T


def _quadratic_map(d: int, o: int, seed: int = 0) -> tuple[callable, callable]:
    """``f(u)_i = (A u)_i + uᵀ B_i u`` and its exact Jacobian ``J(c) = A + 2 [(B_i^s c)ᵀ]_i``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(o, d, generator=g, dtype=F64)
    b = torch.randn(o, d, d, generator=g, dtype=F64) * 0.5
    sym = (b + b.transpose(1, 2)) / 2

    def f(u: torch.Tensor) -> torch.Tensor:
        return u @ a.T + torch.einsum("bi,oij,bj->bo", u, b, u)

    def jac(c: torch.Tensor) -> torch.Tensor:
        return a + 2 * torch.einsum("oij,j->oi", sym, c)

    return f, jac


def _points(n: int, d: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------- sensitivity
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_products_match_exact_jacobian_of_quadratic_map(mode: str) -> None:
    f, jac = _quadratic_map(5, 4)
    pts = _points(3, 5)
    op = cal.JacobianOperator(f, pts, mode=mode, max_rows=6)  # 2 directions per call
    v, w = _points(4, 15, seed=8).reshape(4, 3, 5), _points(4, 12, seed=9).reshape(4, 3, 4)
    jvp, vjp, gram = op.jvp(v), op.vjp(w), op.gram(v)
    for n in range(3):
        j = jac(pts[n])
        torch.testing.assert_close(jvp[:, n], v[:, n] @ j.T)
        torch.testing.assert_close(vjp[:, n], w[:, n] @ j)
        torch.testing.assert_close(gram[:, n], v[:, n] @ (j.T @ j))
    assert op.counts.calls >= 2 * 3  # chunked: 4 directions at 2 per call, three products


def test_pass_counts_are_exact() -> None:
    _, f = _linear_map([3.0, 2.0, 1.0], 6)
    op = cal.JacobianOperator(f, _points(2, 6))
    spec = cal.top_singular(op, 2, iters=5, oversample=1)
    p, n = 3, 2  # vectors, points
    assert spec.counts == cal.PassCount(forward=5 * p * n + p * n, forward_ad=0,
                                        backward=3 * 5 * p * n + 2 * p * n, calls=6)
    fwd = cal.JacobianOperator(f, _points(2, 6), mode="forward")
    hutch = cal.frobenius_sq(fwd, probes=7)
    assert hutch.counts == cal.PassCount(forward=0, forward_ad=14, backward=0, calls=1)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_top_singular_values_and_vectors_of_linear_map(mode: str) -> None:
    sv = [5.0, 3.0, 2.0, 1.0, 0.5]
    a, f = _linear_map(sv, 7)
    spec = cal.top_singular(cal.JacobianOperator(f, _points(2, 7), mode=mode), 3, iters=40, seed=1)
    torch.testing.assert_close(spec.values, torch.tensor([sv[:3]] * 2, dtype=F64), rtol=1e-9, atol=1e-9)
    right = torch.linalg.svd(a).Vh[:3]
    for n in range(2):
        overlap = (spec.vectors[n] @ right.T).abs()
        torch.testing.assert_close(overlap, torch.eye(3, dtype=F64), atol=1e-7, rtol=0)


def test_top_singular_per_point_of_quadratic_map() -> None:
    f, jac = _quadratic_map(6, 5, seed=2)
    pts = _points(3, 6, seed=4)
    spec = cal.top_singular(cal.JacobianOperator(f, pts), 2, iters=25, oversample=4, seed=5)
    for n in range(3):
        exact = torch.linalg.svdvals(jac(pts[n]))[:2]
        torch.testing.assert_close(spec.values[n], exact, rtol=1e-6, atol=1e-8)


def test_hutchinson_frobenius_within_its_tolerance() -> None:
    f, jac = _quadratic_map(8, 6, seed=5)
    pts = _points(2, 8, seed=6)
    probes = 400
    est = cal.frobenius_sq(cal.JacobianOperator(f, pts), probes=probes, seed=11)
    for n in range(2):
        m = jac(pts[n]).T @ jac(pts[n])
        exact = float(torch.trace(m))
        sd = math.sqrt(2 * (float((m**2).sum()) - float((torch.diag(m) ** 2).sum())) / probes)
        assert abs(est.estimate[n] - exact) <= 4 * sd
        assert 0.5 * sd <= est.stderr[n] <= 2 * sd  # the reported error matches the Rademacher variance


def test_hutchinson_is_exact_for_a_diagonal_gram() -> None:
    f = lambda u: u * torch.tensor([1.0, 2.0, 3.0], dtype=F64)  # noqa: E731  (JᵀJ diagonal: zero variance)
    est = cal.frobenius_sq(cal.JacobianOperator(f, _points(1, 3)), probes=3)
    assert est.estimate[0] == pytest.approx(14.0, abs=1e-12) and est.stderr[0] == pytest.approx(0.0, abs=1e-12)


def test_average_gram_matches_exact_mean_of_jtj() -> None:
    d, probes = 6, 300
    f, jac = _quadratic_map(d, 4, seed=7)
    pts = _points(5, d, seed=8)
    gram = cal.average_gram(cal.JacobianOperator(f, pts), rank=3, iters=60, probes=probes, seed=2)
    mats = [jac(p).T @ jac(p) for p in pts]
    exact = sum(mats) / len(mats)
    evals = torch.linalg.eigvalsh(exact).flip(0)
    torch.testing.assert_close(gram.eigenvalues, evals[:3], rtol=1e-6, atol=1e-8)
    assert abs(gram.trace - float(torch.trace(exact))) <= 4 * gram.trace_stderr + 1e-9
    # diag Hutchinson: each coordinate is a mean of probes·N terms with variance Σ_{l≠j} (G_n)_{jl}²
    var = sum((m**2).sum(1) - torch.diag(m) ** 2 for m in mats) / (len(mats) ** 2 * probes)
    assert bool(((gram.diagonal - torch.diag(exact)).abs() <= 5 * var.sqrt() + 1e-9).all())
    model = gram.matrix()
    v = gram.eigenvectors
    torch.testing.assert_close(v @ model @ v.T, torch.diag(gram.eigenvalues), atol=1e-8, rtol=0)


def test_fixed_randomness_tiles_draws_per_point() -> None:
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    f = cal.with_fixed_randomness(lambda u, zz: u * zz, z)
    op = cal.JacobianOperator(f, _points(2, 2))
    v = torch.ones(3, 2, 2, dtype=F64)
    torch.testing.assert_close(op.jvp(v), z.expand(3, 2, 2))
    with pytest.raises(ValueError, match="multiple"):
        f(torch.zeros(3, 2, dtype=F64))


def test_sensitivity_of_tiny_diffusion_sampler() -> None:
    """The DDIM sampler with fixed x_T is differentiable in the class embedding (reverse mode)."""
    from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, DiffusionGenerator

    torch.manual_seed(0)  # weight init of the tiny model only
    config = DiffusionConfig(block_out_channels=(8, 8, 8), norm_num_groups=8, num_train_timesteps=50)
    model = ClassConditionalUNet(config)
    gen = DiffusionGenerator(model.double(), steps=1, guidance_scale=2.0)
    x_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.3
    f = cal.with_fixed_randomness(gen.sample_from_noise, x_t)
    op = cal.JacobianOperator(f, gen.conditions()[:2].double())
    v = torch.randn(1, 2, gen.embedding_dim, generator=torch.Generator().manual_seed(2), dtype=F64)
    w = torch.randn(1, 2, 3 * 32 * 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    jv, jtw = op.jvp(v), op.vjp(w)
    # adjoint identity ⟨w, Jv⟩ = ⟨Jᵀw, v⟩ (the sampler casts its images to float32)
    torch.testing.assert_close((w * jv).sum(), (v * jtw).sum(), rtol=1e-5, atol=0)
    h = 1e-4  # float32 images (rounding ~1e-7/h) and clamp kinks (O(h)) both stay small at this step
    with torch.no_grad():
        fd = (f(op.points + h * v[0]) - f(op.points - h * v[0])).reshape(2, -1).double() / (2 * h)
    assert float((jv[0] - fd).norm() / jv[0].norm()) < 5e-3


def test_lm_logits_forward_and_reverse_modes_agree() -> None:
    from smoothgen.models.lm import LMConfig, build_lm

    torch.manual_seed(0)
    lm = build_lm(LMConfig(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2, dropout=0.0)).double().eval()
    f = lambda u: lm(inputs_embeds=u).logits[:, -1]  # noqa: E731
    pts = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(4), dtype=F64)
    v = torch.randn(2, 2, 48, generator=torch.Generator().manual_seed(5), dtype=F64)
    rev = cal.JacobianOperator(f, pts, mode="reverse").jvp(v)
    fwd = cal.JacobianOperator(f, pts, mode="forward").jvp(v)
    torch.testing.assert_close(rev, fwd)


def test_sensitivity_bad_input() -> None:
    f = lambda u: u  # noqa: E731
    with pytest.raises(ValueError, match="points"):
        cal.JacobianOperator(f, torch.zeros(3))
    with pytest.raises(ValueError, match="mode"):
        cal.JacobianOperator(f, torch.zeros(2, 3), mode="sideways")
    with pytest.raises(ValueError, match="max_rows"):
        cal.JacobianOperator(f, torch.zeros(4, 3), max_rows=2)
    op = cal.JacobianOperator(f, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape"):
        op.jvp(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="exceeds"):
        cal.top_singular(op, 4)
    with pytest.raises(ValueError, match="probes"):
        cal.frobenius_sq(op, probes=1)


# ----------------------------------------------------------------------------- exact toys
def _threshold_tv(a: torch.Tensor, b: float, c: torch.Tensor, cov: torch.Tensor, deltas: torch.Tensor) -> np.ndarray:
    """Exact TV of ``1[aᵀ(x + ε) > b]`` between ``x = c`` and ``x = c + δ`` for ``ε ~ N(0, cov)``."""
    s = math.sqrt(float(a @ cov @ a))
    p0 = special.ndtr((float(a @ c) - b) / s)
    return np.abs(special.ndtr(((c + deltas) @ a - b).numpy() / s) - p0)


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x / x.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- global calibration
def _probit_sampler(a: torch.Tensor, conditions: torch.Tensor) -> cal.ConditionSampler:
    """Base ``G(u) = 1[aᵀu > 0]`` (deterministic) as a smoothed sampler."""
    base = lambda u, g: (u @ a > 0).to(F64)[:, None]  # noqa: E731
    return cal.gaussian_sampler(base, conditions, batch_size=4096)


def test_global_calibration_consistency_target_is_minimal_and_certified() -> None:
    a = torch.tensor([1.0, 0.0], dtype=F64)
    conditions = torch.tensor([[m, 0.3 * i] for i, m in enumerate([0.8, 1.0, 1.2, 0.9, 1.1, 1.3])], dtype=F64)
    target = cal.Target("consistency", radius=0.2, level=0.6)
    sampler = _probit_sampler(a, conditions)
    values = cal.consistency_values(sampler, lambda y, i: y[:, 0].numpy(), radius=target.radius, n=2000, alpha=0.01)
    grid = np.geomspace(0.02, 2.0, 25)
    res = cal.global_calibration(values, target, grid, [0, 1, 2], [3, 4, 5], (2,), seed=3)
    g = int(np.searchsorted(grid, res.sigma))
    assert res.sigma == pytest.approx(grid[g]) and g > 0
    assert res.trace[-1][1] == 1.0 and res.trace[-2][1] < 1.0  # the previous grid point failed
    assert res.certificate.kind == "calibrated-consistency" and res.certificate.radius == 0.2
    # soundness on held-out conditions: certified lower bound <= exact worst case over the ball
    for value, i in zip(res.heldout_values, [3, 4, 5]):
        c = conditions[i]
        worst = min(special.ndtr(float((c + 0.2 * d) @ a) / res.sigma) for d in _sphere(400, 2, i))
        exact_worst = special.ndtr((float(c @ a) - 0.2) / res.sigma)
        assert worst >= exact_worst - 1e-12 and value <= exact_worst
    assert res.heldout_fraction == 1.0


def test_global_calibration_refine_returns_an_evaluated_passing_sigma() -> None:
    calls: list[float] = []

    def values(sigma: float, indices, seed):  # certified W1 falls with σ: passes for σ >= 0.37
        calls.append(sigma)
        return np.full(len(indices), 0.37 / sigma * 0.1)

    target = cal.Target("wasserstein", radius=0.1, level=0.1)
    res = cal.global_calibration(values, target, [0.1, 0.2, 0.4, 0.8], [0], [1], (3,), refine=8)
    assert 0.37 <= res.sigma < 0.372 and res.sigma in calls
    with pytest.raises(ValueError, match="widen the grid"):
        cal.global_calibration(values, target, [0.1, 0.2], [0], [1], (3,))


def test_global_calibration_wasserstein_target_holds_on_probit_generator() -> None:
    a = torch.tensor([2.0, 0.0, 0.0], dtype=F64)
    conditions = torch.tensor([[0.1, 0, 0], [0.3, 1, 0], [-0.2, 0, 1], [0.0, 1, 1]], dtype=F64)
    base = lambda u, g: torch.special.ndtr(u @ a)[:, None]  # noqa: E731
    sampler = cal.gaussian_sampler(base, conditions, batch_size=4096)
    ref = {i: float(torch.special.ndtr(conditions[i] @ a)) for i in range(4)}  # deterministic reference
    dist = lambda y, i: (y[:, 0] - ref[i]).abs().numpy()  # noqa: E731
    target = cal.Target("wasserstein", radius=0.05, level=0.08)
    values = cal.wasserstein_values(sampler, dist, radius=0.05, n=4000, alpha=0.01, diameter=1.0)
    res = cal.global_calibration(values, target, np.geomspace(0.05, 5, 30), [0, 1], [2, 3], (3,), seed=1)
    for value, i in zip(res.heldout_values, [2, 3]):
        mu, tau, m = float(conditions[i] @ a), 2.0 * res.sigma, 2.0 * 0.05
        means = [special.ndtr(x / math.sqrt(1 + tau**2)) for x in (mu - m, mu, mu + m)]
        assert value >= max(means[1] - means[0], means[2] - means[1])  # exact worst-case W1 (stochastic order)


def test_smallest_passing_and_target_semantics() -> None:
    t = cal.Target("consistency", radius=0.1, level=0.5, fraction=0.5)
    assert t.passes([0.6, 0.4]) and not t.passes([0.4, 0.4])
    assert cal.smallest_passing([0.1, 0.2, 0.3], [[0.1, 0.2], [0.6, 0.1], [0.9, 0.9]], t) == 1
    assert cal.smallest_passing([0.1, 0.2], [[0.1, 0.2], [0.1, 0.1]], t) is None
    with pytest.raises(ValueError, match="increasing"):
        cal.smallest_passing([0.2, 0.1], [[0.1], [0.1]], t)
    with pytest.raises(ValueError, match="kind"):
        cal.Target("fid", radius=0.1, level=0.5)


# ----------------------------------------------------------------------------- per-class table
def test_per_class_table_matches_grid_version_and_differs_by_class() -> None:
    a = torch.tensor([1.0, 0.0], dtype=F64)
    conditions = torch.tensor([[0.5, 0], [0.6, 1], [2.0, 0], [2.2, 1]], dtype=F64)
    classes = {0: [0, 1], 1: [2, 3]}
    target = cal.Target("consistency", radius=0.3, level=0.5)
    values = cal.consistency_values(_probit_sampler(a, conditions), lambda y, i: y[:, 0].numpy(),
                                    radius=0.3, n=1000, alpha=0.01)
    grid = np.geomspace(0.05, 3.0, 20)
    table = cal.per_class_table(values, target, grid, classes, (2,), seed=4)
    seed0 = derive_seed(4, 0)  # the calibration stream per_class_table uses
    grid_values = np.stack([values(float(s), range(4), seed0) for s in grid])
    assert cal.table_from_grid(grid, grid_values, target, classes, (2,)).sigmas == table.sigmas
    assert set(table.sigmas) == {0, 1}
    assert table.certificate(1).tv_bound(0.3) == pytest.approx(certify.tv_bound(0.3, table.sigmas[1]))
    assert table.noise(0).sigma == table.sigmas[0]
    with pytest.raises(ValueError, match="not in the table"):
        table.noise(7)


def test_table_indexed_by_true_class_is_sound_but_inferred_class_is_not() -> None:
    """1-D: class centers −1 and +1, σ_0 = 1, σ_1 = 0.05. Base: the interval toy with boundary 0."""
    toy = cal.IntervalToy((0.0,))
    sigma = {0: 1.0, 1: 0.05}
    centers = torch.tensor([[-1.0], [1.0]], dtype=F64)
    x = -0.3  # true class 0
    true_class = cal.attack_claimed_certificate(toy, lambda u: sigma[0], x, radius=1.0)
    assert true_class.violation <= 1e-12
    nearest = lambda u: sigma[0] if u < 0 else sigma[1]  # noqa: E731  (class inferred from the received input)
    margin = cal.voronoi_margin(torch.tensor([x], dtype=F64), centers, 0)
    assert margin == pytest.approx(0.3)
    inside = cal.attack_claimed_certificate(toy, nearest, x, radius=margin * 0.999)
    beyond = cal.attack_claimed_certificate(toy, nearest, x, radius=1.0)
    assert inside.violation <= 1e-12
    assert beyond.violation > 0.3 and beyond.sigma_moved == sigma[1]
    table = cal.SigmaTable(sigma, (1,), centers=centers)
    r_true = float(table.certificate(0).certified_radius(0.5))
    assert table.inferred_certified_radius(torch.tensor([x], dtype=F64), 0, 0.5) == pytest.approx(min(r_true, 0.3))


def test_voronoi_margin_is_the_distance_to_the_cell_boundary() -> None:
    centers = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    c = centers[2] + 0.2
    m = cal.voronoi_margin(c, centers, 2)
    nearest = lambda x: int(((centers - x) ** 2).sum(1).argmin())  # noqa: E731
    assert m > 0
    assert all(nearest(c + m * 0.999 * d) == 2 for d in _sphere(2000, 3, 1))
    j = min((j for j in range(5) if j != 2), key=lambda j: (float(((c - centers[j]) ** 2).sum()) - float(
        ((c - centers[2]) ** 2).sum())) / float((centers[2] - centers[j]).norm()))
    normal = (centers[j] - centers[2]) / (centers[j] - centers[2]).norm()
    assert nearest(c + m * 1.001 * normal) != 2


# ----------------------------------------------------------------------------- anisotropic
def _ball_log_volume(r: float, d: int) -> float:
    return 0.5 * d * math.log(math.pi) - math.lgamma(d / 2 + 1) + d * math.log(r)


@pytest.mark.parametrize("make", [
    lambda s: DiagonalGaussianNoise(torch.full((4,), s, dtype=F64)),
    lambda s: SpikedGaussianNoise(s, _orthogonal(4, 0)[:, :2], torch.tensor([s, s], dtype=F64)),
])
def test_anisotropic_certificate_reduces_to_isotropic(make) -> None:
    sigma = 0.7
    cert, iso = cal.noise_certificate(make(sigma)), cal.isotropic_certificate(sigma, (4,))
    assert cert.kind == "tv-ellipsoid" and iso.kind == "tv-ball"
    for r in (0.1, 0.5, 2.0):
        assert cert.tv_bound(r) == pytest.approx(certify.tv_bound(r, sigma), abs=1e-15)
        assert cert.inscribed_radius(r) == pytest.approx(r * sigma)
        assert cert.log_volume(r) == pytest.approx(_ball_log_volume(r * sigma, 4))
        assert cert.log_volume(r) == pytest.approx(iso.log_volume(r))
        assert cert.volume_radius(r) == pytest.approx(r * sigma)
    assert cert.certified_radius(0.3) == pytest.approx(iso.certified_radius(0.3))


def test_anisotropic_noise_power_zero_is_isotropic() -> None:
    _, f = _linear_map([4.0, 1.0], 5)
    gram = cal.average_gram(cal.JacobianOperator(f, _points(2, 5)), rank=2, iters=20, probes=8)
    for form in ("lowrank", "diagonal"):
        cert = cal.anisotropic_noise(gram, 0.3, form=form, power=0.0)
        assert cert.noise.sigma_min == pytest.approx(0.3) and cert.noise.sigma_max == pytest.approx(0.3)


def test_anisotropic_shape_normalisation_and_quality_cost() -> None:
    sv = [6.0, 3.0]
    a, f = _linear_map(sv, 8, seed=5)
    gram = cal.average_gram(cal.JacobianOperator(f, _points(3, 8)), rank=2, iters=30, probes=32)
    exact_gram = a.T @ a
    iso_cost = 0.5**2 * float(torch.trace(exact_gram))
    for form in ("lowrank", "diagonal"):
        vol = cal.anisotropic_noise(gram, 0.5, form=form, power=1.0, normalize="volume", max_ratio=5.0)
        cov = vol.noise.covariance()
        assert float(torch.linalg.slogdet(cov).logabsdet) == pytest.approx(8 * math.log(0.25))
        assert vol.noise.sigma_max / vol.noise.sigma_min <= 5.0 + 1e-9
        assert float(torch.trace(exact_gram @ cov)) < iso_cost  # less first-order quality cost at equal volume
        tr = cal.anisotropic_noise(gram, 0.5, form=form, normalize="trace")
        assert float(torch.trace(tr.noise.covariance())) == pytest.approx(8 * 0.25)
    low = cal.anisotropic_noise(gram, 0.5, form="lowrank", max_ratio=5.0).noise
    top = torch.linalg.eigh(exact_gram).eigenvectors[:, -1]
    assert float(top @ low.covariance() @ top) < 0.25 < float(low.isotropic) ** 2  # less noise where sensitive


def test_ellipsoid_certificate_holds_under_worst_case_search() -> None:
    """Threshold base ``1[aᵀu > b]``: exact TV at every δ on the ellipsoid ‖Σ^{-1/2}δ‖ = R."""
    d = 4
    noise = SpikedGaussianNoise(1.5, _orthogonal(d, 2)[:, :2], torch.tensor([0.2, 0.6]), dtype=F64)
    cert = cal.noise_certificate(noise)
    cov = noise.covariance()
    root = torch.linalg.cholesky(cov)
    c = torch.zeros(d, dtype=F64)
    for seed in range(4):
        a = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=F64)
        s = math.sqrt(float(a @ cov @ a))
        for radius in (0.3, 1.0, 2.5):
            b = radius * s / 2  # puts P_c at Φ(−R/2): the bound is attained along Σa
            deltas = radius * _sphere(4000, d, seed) @ root.T  # ‖Σ^{-1/2}δ‖ = R
            tv = _threshold_tv(a, b, c, cov, torch.cat([deltas, radius * (cov @ a)[None] / s]))
            bound = cert.mahalanobis_tv_bound(radius)
            assert tv.max() <= bound + 1e-12
            assert tv.max() == pytest.approx(bound, abs=1e-9)  # tight
            ball = cert.inscribed_radius(radius) * _sphere(4000, d, seed + 10)
            assert _threshold_tv(a, b, c, cov, ball).max() <= cert.tv_bound(cert.inscribed_radius(radius)) + 1e-12


# ----------------------------------------------------------------------------- schedule
def test_effective_sigma_against_numerical_tv_of_product_gaussians() -> None:
    sig = [0.5, 1.0, 2.0]
    eff = cal.effective_sigma(sig)
    assert eff == pytest.approx((0.5**-2 + 1 + 0.25) ** -0.5)
    # (i) E = 1, T = 2: grid integration of ½∫|p − q| over R²
    s2, delta = np.array([0.6, 1.1]), 0.7
    t = np.linspace(-9, 9, 2401)
    x, y = np.meshgrid(t, t, indexing="ij")
    logp = -0.5 * ((x / s2[0]) ** 2 + (y / s2[1]) ** 2)
    logq = -0.5 * (((x - delta) / s2[0]) ** 2 + ((y - delta) / s2[1]) ** 2)
    norm = 1 / (2 * math.pi * s2.prod())
    tv_grid = 0.5 * np.abs(np.exp(logp) - np.exp(logq)).sum() * norm * (t[1] - t[0]) ** 2
    assert tv_grid == pytest.approx(certify.tv_bound(delta, cal.effective_sigma(s2)), abs=1e-5)
    # (ii) E = 2, T = 3: Monte Carlo of TV = P(L > 0) − Q(L > 0), L the log-likelihood ratio
    rng = np.random.default_rng(0)
    d = np.array([0.3, -0.4])
    scale = np.repeat(np.array(sig), 2).reshape(3, 2)
    n = 400_000
    xp = rng.standard_normal((n, 3, 2)) * scale
    xq = rng.standard_normal((n, 3, 2)) * scale + d
    llr = lambda z: (((z - d) ** 2 - z**2) / (2 * scale**2)).sum((1, 2))  # noqa: E731  log p/q
    tv_mc = (llr(xp) > 0).mean() - (llr(xq) > 0).mean()
    exact = certify.tv_bound(float(np.linalg.norm(d)), eff)
    assert tv_mc == pytest.approx(exact, abs=4 * math.sqrt(2 * 0.25 / n))


def test_schedule_certificate_holds_and_is_attained_on_threshold_toy() -> None:
    """Step base ``1[Σ_t a_tᵀu_t > b]`` under per-step noise: exact TV over the ball ‖δ‖ ≤ r."""
    sig = np.array([0.4, 0.9, 1.7, 0.6])
    cert = cal.schedule_noise(sig, (3,), dtype=F64)
    assert cert.sigma_cert == pytest.approx(cal.effective_sigma(sig)) and cert.kind == "tv-schedule"
    cov_blocks = torch.tensor(sig**2, dtype=F64)
    base_a = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    for weights in (sig**-2.0, np.ones(4), np.array([1.0, 0.0, 3.0, -1.0])):
        a_t = torch.tensor(weights, dtype=F64)[:, None] * base_a  # [T, E]
        s = math.sqrt(float((cov_blocks[:, None] * a_t**2).sum()))
        shift_dir = a_t.sum(0)
        for r in (0.2, 1.0):
            b = r * float(shift_dir.norm()) / 2  # worst case: P_c at Φ(−shift/2s)
            deltas = r * torch.cat([_sphere(3000, 3, 5), (shift_dir / shift_dir.norm())[None]])
            tv = np.abs(special.ndtr((deltas @ shift_dir - b).numpy() / s) - special.ndtr(-b / s))
            assert tv.max() <= cert.tv_bound(r) + 1e-12
            if np.allclose(weights, sig**-2.0):
                assert tv.max() == pytest.approx(cert.tv_bound(r), abs=1e-9)  # a_t ∝ σ_t⁻² attains it


def test_schedule_noise_draws_fresh_per_step_and_shared_draw_repeats() -> None:
    sig = cal.schedule_for(0.5, [1.0, 2.0, 4.0])
    assert cal.effective_sigma(sig) == pytest.approx(0.5)
    cert = cal.schedule_noise(sig, (2,), dtype=F64)
    c = torch.tensor([1.0, -1.0], dtype=F64)
    seen = []
    step_base = lambda u, g: (seen.append(u.clone()), u.sum((1, 2))[:, None])[1]  # noqa: E731
    SmoothedGenerator(step_base, cert.noise, batch_size=50_000).sample(cal.per_step_condition(c, 3), 50_000, seed=0)
    noisy = seen[0] - c
    torch.testing.assert_close(noisy.std(0), torch.tensor(sig, dtype=F64)[:, None].expand(3, 2), rtol=0.02, atol=0)
    assert abs(float(torch.corrcoef(noisy[:, :, 0].T)[0, 1])) < 0.02  # independent across steps
    seen.clear()
    SmoothedGenerator(cal.SharedDraw(step_base, 3), GaussianNoise(0.5, dtype=F64), batch_size=10).sample(c, 10, seed=0)
    assert seen[0].shape == (10, 3, 2) and bool((seen[0][:, 0] == seen[0][:, 2]).all())
    with pytest.raises(ValueError, match="positive"):
        cal.effective_sigma([1.0, 0.0])


# ----------------------------------------------------------------------------- counter-example
def test_naive_per_input_sigma_violates_its_claimed_certificate() -> None:
    toy = cal.IntervalToy((0.0,))
    rule = cal.naive_sigma_rule(toy, kappa=0.99, sigmas=np.geomspace(0.01, 10, 301))
    x = -0.5
    assert toy.probabilities(x, rule(x))[toy.label(x)] >= 0.99
    res = cal.attack_claimed_certificate(toy, rule, x, radius=1.0)
    assert res.violation > 0.1 and res.true_tv > res.claimed_tv
    assert res.sigma_moved < res.sigma_x  # σ large at x, small at the moved input
    # exact check of the reported numbers
    px, pm = toy.probabilities(x, res.sigma_x), toy.probabilities(x + res.delta, res.sigma_moved)
    assert res.true_tv == pytest.approx(cal.tv_distance(px, pm))
    assert res.claimed_tv == pytest.approx(certify.tv_bound(abs(res.delta), res.sigma_x))


@pytest.mark.parametrize("x", [-2.0, -0.5, 0.1, 0.7, 3.0])
def test_constant_sigma_never_violates_on_interval_toy(x: float) -> None:
    toy = cal.IntervalToy((-1.0, 0.0, 0.5, 2.0))
    for sigma in (0.05, 0.4, 3.0):
        assert cal.attack_claimed_certificate(toy, lambda u: sigma, x, radius=2.0, num=801).violation <= 1e-12


def test_interval_toy_probabilities_are_exact() -> None:
    toy = cal.IntervalToy((-1.0, 1.0))
    p = toy.probabilities(0.2, 0.5)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(special.ndtr(-2.4)) and p[2] == pytest.approx(1 - special.ndtr(1.6))
    assert [toy.label(v) for v in (-3, -1, 0, 1, 5)] == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="increasing"):
        cal.IntervalToy((1.0, 0.0))


def test_per_step_diffusion_conditioning() -> None:
    """The adapter's per-step hook: T identical rows (the shared draw) reproduce the [B, E] call
    exactly, a different embedding at one step changes the images, wrong shapes are refused."""
    from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, DiffusionGenerator

    torch.manual_seed(0)  # weight init of the tiny model only
    config = DiffusionConfig(block_out_channels=(8, 8, 8), norm_num_groups=8, num_train_timesteps=50)
    gen = DiffusionGenerator(ClassConditionalUNet(config), steps=3, guidance_scale=2.0)
    assert gen.num_steps == 3
    emb = gen.conditions()[:2]
    shared = cal.SharedDraw(gen, gen.num_steps)(emb, torch.Generator().manual_seed(5))
    torch.testing.assert_close(shared, gen(emb, torch.Generator().manual_seed(5)), rtol=0, atol=0)
    per_step = cal.per_step_condition(emb[0], gen.num_steps).unsqueeze(0).clone()
    per_step[0, 1] = gen.conditions()[5]
    moved = gen(per_step, torch.Generator().manual_seed(5))
    assert float((moved - shared[:1]).abs().max()) > 1e-4
    x_t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gen.sample_from_noise(per_step, x_t), moved)
    for bad in (torch.zeros(2, 4, 32), torch.zeros(2, 3, 31), torch.zeros(2, 32, 3), torch.zeros(32)):
        with pytest.raises(ValueError, match="per-step"):
            gen(bad, torch.Generator())


def test_sketch_gram_is_unbiased_and_finds_the_top_subspace() -> None:
    sv = [6.0, 3.0, 0.3, 0.2]
    a, f = _linear_map(sv, 6, seed=3)
    probes, n = 3000, 2
    op = cal.JacobianOperator(f, _points(n, 6))
    gram = cal.sketch_gram(op, rank=2, probes=probes, seed=1)
    assert gram.counts == cal.PassCount(forward=probes * n, forward_ad=0, backward=probes * n, calls=1)
    exact = a.T @ a
    assert abs(gram.trace - float(torch.trace(exact))) <= 4 * gram.trace_stderr
    torch.testing.assert_close(gram.eigenvalues, torch.tensor([36.0, 9.0], dtype=F64), rtol=0.08, atol=0)
    top = torch.linalg.eigh(exact).eigenvectors[:, -2:]
    overlap = torch.linalg.svdvals(gram.eigenvectors @ top)  # cosines of the principal angles
    assert float(overlap.min()) > 0.99
    # diagonal: mean of Nm terms (Jᵀw)_j², each with variance 2 (JᵀJ)_jj²
    sd = (2 * torch.diag(exact) ** 2 / (probes * n)).sqrt()
    assert bool(((gram.diagonal - torch.diag(exact)).abs() <= 5 * sd).all())
    with pytest.raises(ValueError, match="rank"):
        cal.sketch_gram(op, rank=7, probes=2)


# ----------------------------------------------------------------------------- σ read off the cells
def _cells(book: torch.Tensor) -> tuple:
    from smoothgen.models.frontends import NearestEmbedding

    front = NearestEmbedding(book)
    return front, cal.CellSigma(front.indices, front.margins, torch.tensor([0.4, 0.8, 0.8], dtype=F64))


def test_cell_sigma_is_read_off_the_received_condition() -> None:
    book = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=F64)
    _, table = _cells(book)
    assert table.sigma(torch.tensor([0.2, 0.1], dtype=F64)) == 0.4
    assert table.sigma(torch.tensor([2.9, 0.0], dtype=F64)) == 0.8
    assert table.sigma(torch.tensor([[0.1, 0.0], [2.9, 0.0]], dtype=F64)) == 0.4  # a prompt: the smallest


def test_cell_sigma_certificate_claims_nothing_beyond_the_margin() -> None:
    book = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=F64)
    _, table = _cells(book)
    cert = table.certificate(book[0], 100_000, 100_000, np.array([1.0, 1.5, 2.0]), 0.001)
    assert cert.tv[0] < 1 and cert.tv[1] == 1.0 and cert.tv[2] == 1.0  # margin of u_0: 1.5
    assert cert.w1[2] == 1.0 and cert.identity_radius < 1.5


def test_cell_sigma_certificate_holds_under_the_face_attack_over_seeds() -> None:
    """Two cells: the exit probability after a move of r towards the face is Φ(−(m − r)/σ) exactly;
    over 1,000 certification samples it stays below the certified bound in at least 1 − α of them."""
    book = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=F64)
    front, _ = _cells(torch.cat([book, torch.tensor([[0.0, 40.0]], dtype=F64)]))
    table = cal.CellSigma(front.indices, front.margins, torch.tensor([0.6, 0.6, 0.6], dtype=F64))
    p, alpha, n = special.ndtr(1.5 / 0.6), 0.01, 2000
    counts = np.random.default_rng(0).binomial(n, p, size=1000)
    held = []
    for count in counts:
        cert = table.certificate(book[0], int(count), n, 0.0, alpha)
        r = 0.999 * cert.identity_radius
        bound = float(table.certificate(book[0], int(count), n, r, alpha).tv)
        held.append(special.ndtr(-(1.5 - r) / 0.6) <= bound + 1e-12 and cert.identity_radius <= 1.5)
    assert np.mean(held) >= 1 - alpha - 3 * math.sqrt(alpha / 1000)


def test_inferred_radius_stays_strictly_inside_the_margin() -> None:
    centers = torch.tensor([[0.0], [1.0]], dtype=F64)
    table = cal.SigmaTable({0: 10.0}, (1,), centers=centers)
    radius = table.inferred_certified_radius(torch.tensor([0.0], dtype=F64), 0, 0.9)
    assert 0 < radius < cal.voronoi_margin(torch.tensor([0.0], dtype=F64), centers, 0) == 0.5


def test_split_alternates_conditions_or_uses_every_condition_for_both_streams() -> None:
    from smoothgen.experiments.calibration import _split

    assert _split(range(5), "conditions") == ([0, 2, 4], [1, 3])
    assert _split(range(3), "samples") == ([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="split"):
        _split(range(3), "classes")
