"""Tests for smoothgen.metrics: closed forms, independent references, naming and validation."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from smoothgen import metrics as M
from smoothgen.runtime import make_generator

K = 10  # classes of the synthetic classifier


def _random_conv_features(seed: int) -> nn.Module:
    """A fixed random conv net [B, 3, H, W] -> [B, 32], weights drawn from a seeded generator."""
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.Tanh(), nn.Conv2d(16, 32, 3, stride=2), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    gen = make_generator(seed, "cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


class _OneHotClassifier(nn.Module):
    """Reads the class k from pixel [0, 0, 0] (= k / (K - 1)) and returns confident logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (x[:, 0, 0, 0] * (K - 1)).round().long()
        return 60.0 * nn.functional.one_hot(k, K).double()


class _UniformClassifier(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], K)


def _class_images(labels: torch.Tensor) -> torch.Tensor:
    images = torch.zeros(labels.shape[0], 1, 2, 2)
    images[:, 0, 0, 0] = labels / (K - 1)
    return images


def _levenshtein(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(300, 3, 16, 16, generator=make_generator(0, "cpu"))


@pytest.fixture(scope="module")
def conv() -> nn.Module:
    return _random_conv_features(1)


# ----------------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero_and_named_for_its_features(images, conv):
    result = M.frechet_distance(images, images, conv, "randconv")
    with torch.no_grad():
        scale = float(torch.cov(conv(images).T.double()).trace())
    assert abs(result.value) < 1e-9 * scale
    assert result.name == "FID[randconv]" and result.feature == "randconv"
    assert result.num_samples == (300, 300)


def test_fid_matches_an_independent_scipy_computation(images, conv):
    fake = (images + 0.1 * torch.randn(images.shape, generator=make_generator(2, "cpu"))).clamp(0, 1)
    with torch.no_grad():
        fr, ff = conv(images).double().numpy(), conv(fake).double().numpy()
    s_r, s_f = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_r @ s_f).real
    expected = np.sum((fr.mean(0) - ff.mean(0)) ** 2) + np.trace(s_r + s_f - 2 * covmean)
    assert M.frechet_distance(images, fake, conv, "randconv", batch_size=64).value == pytest.approx(expected, rel=1e-6)


def test_fid_grows_monotonically_with_noise(images, conv):
    gen = make_generator(3, "cpu")
    noise = torch.randn(images.shape, generator=gen)
    values = [M.frechet_distance(images, (images + s * noise).clamp(0, 1), conv, "randconv").value
              for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[0] > 0


def test_fid_uint8_input_equals_float_input_and_preprocess_is_applied(images, conv):
    as_uint8 = (images * 255).round().to(torch.uint8)
    as_float = as_uint8.float() / 255
    other = images.flip(0)[:200]
    assert M.frechet_distance(as_uint8, other, conv, "randconv").value == pytest.approx(
        M.frechet_distance(as_float, other, conv, "randconv").value, rel=1e-9)
    blind = M.frechet_distance(images, torch.zeros_like(images), conv, "randconv", preprocess=lambda x: x * 0)
    assert abs(blind.value) < 1e-12


def test_feature_module_runs_in_eval_mode_and_keeps_its_mode(images):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()).train()
    stats = net[1].running_mean.clone()
    M.frechet_distance(images[:50], images[50:100], net, "bn-net")
    M.frechet_distance(images[:50], images[50:100], net.forward, "bn-net-method")  # bound method: same module
    assert net.training and torch.equal(net[1].running_mean, stats)


def test_inception_path_unavailable_is_a_clear_error(images, conv, monkeypatch, tmp_path):
    assert M.inception_available(tmp_path / "missing.pth") is False
    monkeypatch.setattr(M, "inception_available", lambda weights_path=None: False)
    with pytest.raises(RuntimeError, match="Inception-v3 features are unavailable"):
        M.frechet_distance(images, images, "inception")
    with pytest.raises(RuntimeError, match="Inception-v3 features are unavailable"):
        M.inception_score(images, "inception")
    with pytest.raises(ValueError, match="reserved"):
        M.frechet_distance(images, images, conv, "inception-v3")


class _RecordingInception(nn.Module):
    """Stands in for torch-fidelity's Inception network (no weights here) to check SmoothGen's glue."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the network a device
        self.batches: list[torch.Tensor] = []

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches.append(imgs)
        pool = imgs.flatten(1).double()
        return pool, pool[:, :2]


def test_inception_path_feeds_rounded_uint8_and_names_plain_fid(monkeypatch, tmp_path):
    net, asked = _RecordingInception(), []
    monkeypatch.setattr(M, "inception_available", lambda weights_path=None: True)
    monkeypatch.setattr(M, "load_inception", lambda weights_path=None, **kw: asked.append(weights_path) or net)
    real = torch.full((4, 3, 2, 2), 0.999)
    result = M.frechet_distance(real, torch.zeros(3, 3, 2, 2), "inception", inception_weights=tmp_path / "w.pth")
    assert (result.name, result.feature, result.num_samples) == ("FID", "inception-v3", (4, 3))
    assert asked == [tmp_path / "w.pth"]
    first, second = net.batches
    assert first.dtype == torch.uint8 and int(first.max()) == 255 and int(second.max()) == 0  # rounded, not truncated
    assert result.value == pytest.approx(12 * 255**2)  # both covariances 0: FID = |mu_r - mu_f|^2 over 12 features


# ----------------------------------------------------------------------------- IS and class consistency


def test_inception_score_closed_forms_and_naming():
    labels = torch.arange(1000) % K
    imgs = _class_images(labels)
    uniform = M.inception_score(imgs, _UniformClassifier(), "uniform")
    assert uniform.value == pytest.approx(1.0, abs=1e-9) and uniform.name == "IS[uniform]"
    confident = M.inception_score(imgs, _OneHotClassifier(), "evaluator", splits=1)
    assert confident.value == pytest.approx(K, abs=1e-6) and confident.std is None
    split = M.inception_score(imgs, _OneHotClassifier(), "evaluator", splits=10)
    assert 9.0 < split.value <= K + 1e-9 and split.std > 0  # random splits are not perfectly balanced


def test_inception_score_is_seeded_and_leaves_global_rng_alone():
    imgs = _class_images(torch.arange(500) % K)
    state = torch.random.get_rng_state()
    a = M.inception_score(imgs, _OneHotClassifier(), "evaluator", splits=5, seed=7)
    b = M.inception_score(imgs, _OneHotClassifier(), "evaluator", splits=5, seed=7)
    c = M.inception_score(imgs, _OneHotClassifier(), "evaluator", splits=5, seed=8)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == b and a.value != c.value


def test_class_consistency_counts_agreements():
    labels = torch.arange(200) % K
    imgs = _class_images(labels)
    assert M.class_consistency(imgs, labels, _OneHotClassifier(), batch_size=33) == 1.0
    assert M.class_consistency(imgs, (labels + 1) % K, _OneHotClassifier()) == 0.0
    half = torch.where(torch.arange(200) < 100, labels, (labels + 1) % K)
    assert M.class_consistency(imgs, half, _OneHotClassifier()) == 0.5


# ----------------------------------------------------------------------------- text metrics


def test_bleu_identical_is_one_and_a_changed_word_matches_the_hand_value():
    pred = "the cat sat on the mat today"
    assert M.bleu([pred, "a b c d e"], [pred, "a b c d e"]) == pytest.approx(1.0, abs=1e-7)
    # p1..p4 = 6/7, 4/6, 2/5, 1/4; equal lengths so BP = 1
    expected = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert M.bleu([pred], ["the cat sat on a mat today"]) == pytest.approx(expected, abs=1e-6)
    assert M.bleu([pred], [["the dog sat", pred]]) == pytest.approx(1.0, abs=1e-7)


def test_bleu_statistics_add_over_groups_and_give_bleu_of_the_union():
    rng = np.random.default_rng(3)
    words = "the of a in to market stock said year company".split()
    preds = [list(rng.choice(words, rng.integers(4, 14))) for _ in range(30)]
    refs = [" ".join(w if rng.random() < 0.8 else "cat" for w in p) for p in preds]  # about one word in five changed
    preds = [" ".join(p) for p in preds]
    groups = [M.bleu_statistics(preds[i : i + 5], refs[i : i + 5]) for i in range(0, 30, 5)]
    for smooth in (False, True):
        whole = M.bleu(preds, refs, smooth=smooth)
        assert 0.0 < whole < 1.0
        assert M.bleu_from_statistics(sum(groups), smooth) == pytest.approx(whole, abs=1e-6)
        pick = [0, 0, 3, 5]  # a bootstrap resample repeats groups: same as scoring the repeated texts
        texts_p = [t for g in pick for t in preds[5 * g : 5 * g + 5]]
        texts_r = [t for g in pick for t in refs[5 * g : 5 * g + 5]]
        assert M.bleu_from_statistics(sum(groups[g] for g in pick), smooth) == \
            pytest.approx(M.bleu(texts_p, texts_r, smooth=smooth), abs=1e-6)
    short = M.bleu_statistics(["a b c d e"], ["a b c d f"])  # hand counts: c, r, m_1..4, l_1..4
    np.testing.assert_array_equal(short, [5, 5, 4, 3, 2, 1, 5, 4, 3, 2])
    assert M.bleu_from_statistics(M.bleu_statistics(["a b c d"], ["e f g h"])) == 0.0
    brevity = M.bleu_from_statistics(M.bleu_statistics(["a b c d"], ["a b c d e f"]))  # BP = exp(1 - 6/4)
    assert brevity == pytest.approx(math.exp(-0.5)) and brevity == pytest.approx(M.bleu(["a b c d"], ["a b c d e f"]))
    with pytest.raises(ValueError, match="stats must be"):
        M.bleu_from_statistics(np.ones(5))


def test_rouge_identical_and_hand_value():
    same = M.rouge(["the cat <unk> sat N"], ["the cat <unk> sat N"])
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    other = M.rouge(["the cat sat"], ["a dog sat"])
    assert other == pytest.approx({"rouge1": 1 / 3, "rouge2": 0.0, "rougeL": 1 / 3}, abs=1e-6)


def test_text_metrics_need_no_nltk_data_and_no_network(monkeypatch, tmp_path):
    import nltk
    from torchmetrics.text import ROUGEScore

    downloads: list[object] = []

    def no_download(*args: object, **kwargs: object) -> None:
        downloads.append(args)
        raise ValueError("download attempted")

    def no_connect(*args: object, **kwargs: object) -> None:
        raise OSError("network attempted")

    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk, "download", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    assert M.rouge(["a b c"], ["a b d"])["rouge1"] == pytest.approx(2 / 3, abs=1e-6)
    assert M.bleu(["a b c d"], ["a b c d"]) == pytest.approx(1.0)
    assert downloads == []
    with pytest.raises(OSError):  # control: rougeLsum would need the punkt_tab download
        ROUGEScore(rouge_keys=("rougeLsum",))(["a b. c d."], ["a b. c d."])
    assert len(downloads) == 1


def test_perplexity_hand_values_and_torchmetrics_agreement():
    V = 37
    targets = torch.randint(0, V, (2, 5), generator=make_generator(4, "cpu"))
    assert M.perplexity(torch.zeros(2, 5, V), targets) == pytest.approx(V, rel=1e-12)
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    assert M.perplexity(logits, torch.tensor([[0, 2]])) == pytest.approx((0.5 * 0.8) ** -0.5, rel=1e-6)
    assert M.perplexity(logits, torch.tensor([[-100, 2]]), ignore_index=-100) == pytest.approx(1 / 0.8, rel=1e-6)
    from torchmetrics.text import Perplexity

    rand = torch.randn(3, 6, V, generator=make_generator(5, "cpu"))
    ref = Perplexity()
    ref.update(rand, targets.repeat(2, 2)[:3, :6])
    assert M.perplexity(rand, targets.repeat(2, 2)[:3, :6]) == pytest.approx(float(ref.compute()), rel=1e-5)


# ----------------------------------------------------------------------------- edit distance


def test_normalized_edit_distance_known_cases():
    assert M.normalized_edit_distance([1, 2, 3], [1, 2, 4]) == pytest.approx(1 / 3)
    kitten, sitting = [5, 1, 6, 6, 2, 7], [3, 1, 6, 6, 1, 7, 8]
    assert M.normalized_edit_distance(kitten, sitting) == pytest.approx(3 / 7)
    assert M.normalized_edit_distance([], []) == 0.0
    assert M.normalized_edit_distance([1, 2], []) == 1.0
    assert M.normalized_edit_distance(torch.tensor([4, 4]), [4, 4]) == 0.0


def test_pairwise_edit_distance_matches_reference_on_ragged_sequences():
    gen = make_generator(6, "cpu")
    lengths = torch.randint(0, 9, (70,), generator=gen).tolist()
    seqs = [torch.randint(0, 3, (n,), generator=gen).tolist() for n in lengths]
    a, b = seqs[:40], seqs[40:]
    got = M.pairwise_normalized_edit_distance(a, b)
    ref = torch.tensor([[_levenshtein(u, v) / max(len(u), len(v), 1) for v in b] for u in a], dtype=torch.float64)
    assert torch.equal(got, ref)
    fixed = torch.randint(0, 4, (20, 6), generator=gen)
    assert torch.equal(M.pairwise_normalized_edit_distance(fixed, fixed[:5]),
                       M.pairwise_normalized_edit_distance(fixed.tolist(), fixed[:5].tolist()))


# ----------------------------------------------------------------------------- Wasserstein-1


def test_w1_of_a_translated_cloud_is_the_shift_length():
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(400, 1))
    assert M.wasserstein1(x1, x1 + 0.7) == pytest.approx(0.7, abs=1e-12)
    x5, v = rng.normal(size=(300, 5)), np.array([0.3, -1.0, 0.5, 2.0, 0.1])
    assert M.wasserstein1(x5, x5 + v) == pytest.approx(np.linalg.norm(v), abs=1e-12)  # W1 >= |mean shift|, attained


def test_w1_between_gaussians_and_sliced_consistency():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(1000, 1)), rng.normal(1.5, 1.0, size=(1000, 1))
    exact = M.wasserstein1(a, b)
    assert exact == pytest.approx(1.5, abs=0.1)  # W1(N(0,1), N(m,1)) = |m|
    assert M.wasserstein1(a, b, method="sliced", n_projections=3) == pytest.approx(exact, abs=1e-10)  # 1-D: equal


def test_sliced_w1_is_order_one_and_below_exact():
    rng = np.random.default_rng(2)
    x, v, d = rng.normal(size=(200, 5)), np.array([0.3, -1.0, 0.5, 2.0, 0.1]), 5
    sliced = M.wasserstein1(x, x + v, method="sliced", n_projections=4000, seed=3)
    mean_abs_cos = math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))  # E|theta_1| on S^{d-1}
    assert sliced == pytest.approx(mean_abs_cos * np.linalg.norm(v), abs=0.02)  # p=2 would give |v|/sqrt(d)
    y = rng.normal(size=(150, 5)) * 2
    assert M.wasserstein1(x, y, method="sliced", seed=0) <= M.wasserstein1(x, y)
    assert M.wasserstein1(x, y, method="sliced", seed=0) == M.wasserstein1(x, y, method="sliced", seed=0)


def test_w1_precomputed_and_callable_costs():
    cost = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert M.wasserstein1(cost, metric="precomputed") == 0.0
    assert M.wasserstein1(np.array([[3.0, 1.0], [1.0, 5.0]]), metric="precomputed") == pytest.approx(1.0)
    x, y = np.zeros((2, 2)), np.ones((3, 2))
    l1 = M.wasserstein1(x, y, metric=lambda p, q: np.abs(p[:, None] - q[None]).sum(-1))
    assert l1 == pytest.approx(2.0)


def test_w1_torch_value_and_gradient():
    x = torch.randn(60, 3, 2, 2, dtype=torch.float64, generator=make_generator(8, "cpu"), requires_grad=True)
    shift = 0.1
    w = M.wasserstein1_torch(x, x.detach() + shift)
    assert float(w.detach()) == pytest.approx(shift * math.sqrt(12), rel=1e-10)
    (grad,) = torch.autograd.grad(w, x)
    assert torch.allclose(grad, torch.full_like(grad, -1 / (60 * math.sqrt(12))))  # d/dx_i of mean |x_i - y_i|
    same = M.wasserstein1_torch(x, x.detach())
    (grad0,) = torch.autograd.grad(same, x)
    assert torch.isfinite(grad0).all() and float(same.detach()) < 1e-6


def test_sample_w1_ground_metrics_are_named():
    imgs = 0.1 + 0.8 * torch.rand(40, 3, 4, 4, dtype=torch.float64, generator=make_generator(9, "cpu"))
    pix = M.sample_wasserstein1(imgs, imgs + 0.05, "pixel-l2")
    assert pix.name == "W1[pixel-l2]" and pix.value == pytest.approx(0.05 * math.sqrt(48), rel=1e-9)
    assert M.sample_wasserstein1((imgs * 255).round().to(torch.uint8), imgs.float(), "pixel-l2").value < 0.01
    conv, big = _random_conv_features(2), torch.rand(30, 3, 16, 16, generator=make_generator(11, "cpu"))
    feat = M.sample_wasserstein1(big, big.flip(-1), "feature-l2", feature=conv, feature_name="randconv")
    assert feat.name == "W1[feature-l2:randconv]" and feat.value > 0
    sl = M.sample_wasserstein1(imgs, imgs, "pixel-l2", method="sliced")
    assert sl.name == "SW1[pixel-l2]" and sl.value < 1e-9
    toks = torch.randint(0, 50, (30, 8), generator=make_generator(10, "cpu"))
    changed = toks.clone()
    changed[:, 3] = 50  # one substitution per sequence of length 8
    tok = M.sample_wasserstein1(toks, changed, "token-edit")
    assert tok.name == "W1[token-edit]" and tok.value == pytest.approx(1 / 8)


# ----------------------------------------------------------------------------- validation


def _imgs(n: int, size: int = 8) -> torch.Tensor:
    return torch.full((n, 3, size, size), 0.5)



@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: M.frechet_distance(_imgs(5) * 4, _imgs(5), c, "f"), r"\[0, 1\]"),
        (lambda c: M.frechet_distance(torch.full((5, 3, 8, 8), float("nan")), _imgs(5), c, "f"), "NaN"),
        (lambda c: M.frechet_distance(_imgs(5)[:, 0], _imgs(5), c, "f"), "shape"),
        (lambda c: M.frechet_distance(_imgs(1), _imgs(5), c, "f"), "at least 2"),
        (lambda c: M.frechet_distance(_imgs(5), _imgs(5, 9), c, "f"), "differ in shape"),
        (lambda c: M.frechet_distance(_imgs(5), _imgs(5), c), "feature_name"),
        (lambda c: M.frechet_distance(torch.zeros(5, 3, 8, 8, dtype=torch.long), _imgs(5), c, "f"), "uint8"),
        (lambda c: M.frechet_distance(_imgs(5), _imgs(5), lambda x: x.sum(), "scalar"), r"\[B, D\]"),
        (lambda c: M.inception_score(_imgs(5), c, "f", splits=6), "splits"),
        (lambda c: M.class_consistency(_imgs(5), [0, 1], c), "integer labels"),
        (lambda c: M.class_consistency(_imgs(2), [0, 99], c), "lie in"),
        (lambda c: M.bleu(["a b"], ["a b", "c"]), "equally long"),
        (lambda c: M.bleu(["a b"], ["a b"]), "lower n_gram"),
        (lambda c: M.bleu("a b c d", ["a b c d"]), "list of strings"),
        (lambda c: M.rouge([], []), "non-empty"),
        (lambda c: M.perplexity(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), r"\[B, T, V\]"),
        (lambda c: M.perplexity(torch.zeros(1, 2, 3), torch.tensor([[0, 3]])), "lie in"),
        (lambda c: M.perplexity(torch.zeros(1, 2, 3), torch.tensor([[-1, -1]]), ignore_index=-1), "no target"),
        (lambda c: M.perplexity(torch.full((1, 2, 3), float("inf")), torch.tensor([[0, 1]])), "NaN or inf"),
        (lambda c: M.wasserstein1(np.zeros((0, 2)), np.zeros((3, 2))), "empty"),
        (lambda c: M.wasserstein1(np.array([[np.nan]]), np.zeros((3, 1))), "NaN"),
        (lambda c: M.wasserstein1(np.zeros((2, 2)), np.zeros((3, 3))), "dimension"),
        (lambda c: M.wasserstein1(np.zeros(3), np.zeros(3)), r"\[n, d\]"),
        (lambda c: M.wasserstein1(-np.ones((2, 2)), metric="precomputed"), "non-negative"),
        (lambda c: M.wasserstein1(np.zeros((2, 1)), np.zeros((2, 1)), method="sinkhorn"), "method"),
        (lambda c: M.wasserstein1(np.zeros((2, 1)), np.zeros((2, 1)), metric="cosine", method="sliced"), "euclidean"),
        (lambda c: M.wasserstein1(np.zeros((6000, 1)), np.zeros((6000, 1))), "sliced"),
        (lambda c: M.wasserstein1_torch(torch.zeros(0, 2), torch.zeros(3, 2)), "empty"),
        (lambda c: M.sample_wasserstein1([[1, 2]], [[1]], "token-edit", method="sliced"), "exact"),
        (lambda c: M.sample_wasserstein1(_imgs(3, 2), _imgs(3, 2), "feature-l2"), "feature"),
        (lambda c: M.sample_wasserstein1(_imgs(3, 2), _imgs(3, 2), "cosine"), "ground"),
        (lambda c: M.pairwise_normalized_edit_distance([[1.5, 2.0]], [[1]]), "integer"),
        (lambda c: M.pairwise_normalized_edit_distance([], [[1]]), "at least one"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(call, match, conv):
    with pytest.raises(ValueError, match=match):
        call(conv)


def test_semantic_similarity_ranks_a_paraphrase_above_an_unrelated_sentence() -> None:
    from smoothgen.metrics import SentenceEncoder, semantic_similarity

    encoder = SentenceEncoder()
    emb = encoder(["the cat sat on the mat", "stocks fell sharply"])
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1)
    sims = semantic_similarity(["the cat sat on the mat"] * 3,
                               ["the cat sat on the mat", "a cat was sitting on a mat", "stocks fell sharply"], encoder)
    assert sims[0] == pytest.approx(1.0, abs=1e-6) and sims[0] > sims[1] > sims[2]
    with pytest.raises(ValueError, match="as many predictions"):
        semantic_similarity(["a"], ["a", "b"], encoder)


def test_distinct_n_counts_repeated_n_grams() -> None:
    from smoothgen.metrics import distinct_n

    assert distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)
    assert distinct_n(["a b c", "d e f"], 1) == 1.0 and np.isnan(distinct_n(["a"], 2))
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a"], 0)
