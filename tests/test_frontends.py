"""Condition front-ends: exact projection, hit counting, posterior mean, and the wrapper's protocol."""

from __future__ import annotations

import math

import pytest
import torch

from smoothgen import certify
from smoothgen.models.frontends import FrontEndGenerator, NearestEmbedding, SoftPosteriorMean
from smoothgen.noise import GaussianNoise
from smoothgen.smoothing import SmoothedGenerator


def _codebook(k: int = 50, e: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, e, generator=torch.Generator().manual_seed(seed))


def _brute(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.reshape(-1, book.shape[1]).double(), book.double()).argmin(1).reshape(x.shape[:-1])


def test_projection_is_the_exact_nearest_neighbour() -> None:
    book = _codebook()
    x = torch.randn(7, 33, 16, generator=torch.Generator().manual_seed(1))
    front = NearestEmbedding(book, chunk_rows=10)
    assert torch.equal(front.indices(x), _brute(x, book))
    assert torch.equal(front(x), book[_brute(x, book)])
    assert front(x).shape == x.shape and front(x).dtype == x.dtype


def test_projection_breaks_near_ties_exactly() -> None:
    book = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    eps = 1e-9  # far below float32 resolution at this scale: the float64 re-ranking decides
    x = torch.tensor([[0.5 - eps, 3.0], [0.5 + eps, 3.0]], dtype=torch.float64)
    assert NearestEmbedding(book).indices(x).tolist() == [0, 1]


def test_hits_count_the_draws_that_stay_in_every_cell() -> None:
    book = _codebook(k=30, e=8)
    ids = torch.tensor([3, 17, 3])
    xi = torch.randn(500, 3, 8, generator=torch.Generator().manual_seed(2))
    front = NearestEmbedding(book, chunk_rows=64)
    sigmas = [0.1, 0.4, 0.8]
    expected = [int((_brute(book[ids] + s * xi, book) == ids).all(1).sum()) for s in sigmas]
    assert front.hits(ids, xi, sigmas) == expected
    assert expected[0] > expected[-1]  # the test sees both regimes: most stay, many leave


def test_hits_at_an_attacked_point_match_brute_force() -> None:
    book = _codebook(k=30, e=8)
    ids = torch.tensor([3, 17])
    point = book[ids] + 0.3 * torch.randn(2, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    xi = torch.randn(400, 2, 8, generator=torch.Generator().manual_seed(6))
    sigmas = [0.2, 0.6]
    expected = [int((_brute(point + s * xi.double(), book) == ids).all(1).sum()) for s in sigmas]
    assert NearestEmbedding(book).hits(ids, xi, sigmas, points=point) == expected


def test_margins_are_the_distances_to_the_cell_boundaries() -> None:
    book = _codebook(k=12, e=5).double()
    front = NearestEmbedding(book)
    nn = torch.cdist(book, book).fill_diagonal_(math.inf).min(1).values
    assert torch.allclose(front.margins(book, torch.arange(12)), nn / 2)
    x = book[4] + 0.05 * torch.randn(5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    m = float(front.margins(x[None], torch.tensor([4]))[0])
    directions = torch.randn(3000, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    assert (_brute(x + 0.999 * m * directions, book) == 4).all()  # the open ball stays in the cell
    gaps = torch.cdist(x[None], book)[0] ** 2 - float(((x - book[4]) ** 2).sum())
    j = int(torch.where(torch.arange(12) == 4, math.inf, gaps / (2 * (book - book[4]).norm(dim=1))).argmin())
    normal = (book[j] - book[4]) / (book[j] - book[4]).norm()
    assert int(_brute((x + 1.001 * m * normal)[None], book)[0]) != 4  # and just beyond it, it does not
    assert float(front.margins(book[j][None], torch.tensor([4]))[0]) < 0  # outside the cell: negative


def test_projected_generator_output_is_constant_on_a_cell() -> None:
    book = _codebook(k=5, e=4)
    linear = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    gen = FrontEndGenerator(lambda u, g: u @ linear, NearestEmbedding(book))
    x = book[2] + 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(4))
    out = gen(x, torch.Generator())
    assert torch.allclose(out, (book[2] @ linear).expand_as(out))


def test_concentration_certificate_holds_for_a_projected_linear_generator() -> None:
    """Exact check: for G(u) = u·w behind the projection, P(output = G(u_k)) moves by at most the certified TV."""
    book = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    sigma, n, alpha = 0.8, 4000, 0.01
    gen = FrontEndGenerator(lambda u, g: u[:, :1], NearestEmbedding(book))
    xi = torch.randn(n, 1, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    count = NearestEmbedding(book).hits(torch.tensor([0]), xi, [sigma])[0]
    radius = 1.0
    cert = certify.concentration_certificate(count, n, radius, sigma, alpha)
    smoothed = SmoothedGenerator(gen, GaussianNoise(sigma, event_shape=(2,), dtype=torch.float64), 1000)
    for direction in ([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]):
        moved = book[0] + radius * torch.tensor(direction, dtype=torch.float64)
        clean = (smoothed.sample(book[0], 20_000, seed=6) == 0).double().mean()
        shifted = (smoothed.sample(moved, 20_000, seed=7) == 0).double().mean()
        assert abs(float(clean - shifted)) <= cert.tv + 4 * math.sqrt(0.25 / 20_000)
    assert cert.tv < certify.tv_bound(radius, sigma)


def test_soft_front_end_is_the_bayes_posterior_mean() -> None:
    book = _codebook(k=6, e=3)
    tau = 0.7
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(8))
    like = torch.exp(-((x[:, None, :] - book[None]) ** 2).sum(-1) / (2 * tau))
    posterior = like / like.sum(1, keepdim=True)
    soft = SoftPosteriorMean(book, tau)
    assert torch.allclose(soft.weights(x).float(), posterior, atol=1e-6)
    assert torch.allclose(soft(x), posterior @ book, atol=1e-5)


def test_soft_front_end_tends_to_the_projection() -> None:
    book = _codebook(k=8, e=4)
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(SoftPosteriorMean(book, 1e-6)(x), NearestEmbedding(book)(x), atol=1e-5)
    assert not torch.allclose(SoftPosteriorMean(book, 10.0)(x), NearestEmbedding(book)(x), atol=1e-2)


def test_wrapper_passes_the_lm_calls_and_attributes_through() -> None:
    class Base:
        vocab_size = 11

        def __call__(self, e: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return e

        def next_token(self, e: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
            return e.sum((1, 2))

        def next_token_logits(self, e: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
            return e.flatten(1)

    book = _codebook(k=4, e=2)
    gen = FrontEndGenerator(Base(), NearestEmbedding(book))
    x = book[[1, 3]][None] + 0.01
    assert torch.equal(gen.next_token(x, torch.empty(1, 0)), book[[1, 3]].sum()[None])
    assert torch.equal(gen.next_token_logits(x, torch.empty(1, 0)), book[[1, 3]].flatten()[None])
    assert gen.vocab_size == 11


@pytest.mark.parametrize("call, match", [
    (lambda: NearestEmbedding(torch.zeros(0, 3)), "codebook"),
    (lambda: NearestEmbedding(torch.tensor([[float("nan"), 0.0]])), "finite"),
    (lambda: NearestEmbedding(torch.zeros(2, 3)).indices(torch.zeros(4, 2)), r"\[\.\.\., 3\]"),
    (lambda: NearestEmbedding(torch.zeros(2, 3)).indices(torch.full((1, 3), float("nan"))), "NaN"),
    (lambda: NearestEmbedding(torch.zeros(2, 3)).indices(torch.zeros(1, 3, dtype=torch.long)), "floating"),
    (lambda: NearestEmbedding(torch.eye(3)).hits(torch.tensor([0]), torch.zeros(5, 1, 3), [0.0]), "sigma"),
    (lambda: NearestEmbedding(torch.eye(3)).hits(torch.tensor([0, 1]), torch.zeros(5, 1, 3), [0.1]), "unit_noise"),
    (lambda: SoftPosteriorMean(torch.eye(3), 0.0), "variance"),
    (lambda: FrontEndGenerator(None, NearestEmbedding(torch.eye(2))), "callable"),
])
def test_bad_input_is_a_clear_error(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_seed_spread_reports_the_range_of_each_headline_key_over_seeds() -> None:
    import pandas as pd

    from smoothgen.experiments.meaningful import HEADLINE, seed_spread

    seeds = pd.DataFrame([{"dataset": "cifar10", "role": role, "headline_seed": s, **{k: v for k in HEADLINE["cifar10"]}}
                          for s, v, role in ((0, 0.8, "headline"), (1, 0.7, "headline"), (2, 0.9, "headline"),
                                             (1, 0.1, "noise_trained_headline"))])
    out = seed_spread(seeds)
    assert out["headline_seeds"] == 3
    assert out["cifar10_class_radius_frac_half_gap_seed_min"] == 0.7 and out["cifar10_fid_ratio_seed_max"] == 0.9
    assert out["ptb_radius_frac_nearest_token_seed_min"] is None  # no PTB configuration qualified
