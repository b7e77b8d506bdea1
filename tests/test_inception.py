"""Tests for the standard Inception FID / IS of smoothgen.metrics: weights lookup, checksum, safe loading,
the evaluator fallback and the recorded feature space. Fully offline: every weights file is made here.

torch-fidelity's real network is used where torch-fidelity imports (``test_real_torch_fidelity_network``);
everywhere else ``TinyInception`` stands in for it, with the same constructor, the same loading call and
the same outputs, so that SmoothGen's own code is what these tests check.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from smoothgen import metrics as M
from smoothgen.runtime import make_generator

pytestmark = pytest.mark.timeout(60)

SIDE_EFFECTS: list[str] = []


class TinyInception(nn.Module):
    """Stands in for torch-fidelity's ``FeatureExtractorInceptionV3``: same constructor, uint8 input,
    ``(pool features, unbiased logits)`` output, and it loads what it is given as torch-fidelity 0.4 does,
    with ``torch.load(weights_only=False)``."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: object = None) -> None:
        super().__init__()
        assert features_list == ["2048", "logits_unbiased"]
        assert feature_extractor_weights_path is not None, "torch-fidelity would download the weights"
        self.conv, self.fc = nn.Conv2d(3, 12, 3, stride=2), nn.Linear(12, 7)
        self.source = feature_extractor_weights_path
        self.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        pool = torch.tanh(self.conv((x.float() - 128) / 128)).mean(dim=(2, 3))
        return pool, pool @ self.fc.weight.T

    @staticmethod
    def random_state(seed: int) -> dict[str, torch.Tensor]:
        gen = make_generator(seed, "cpu")
        shapes = {"conv.weight": (12, 3, 3, 3), "conv.bias": (12,), "fc.weight": (7, 12), "fc.bias": (7,)}
        return {key: torch.randn(shape, generator=gen) for key, shape in shapes.items()}


class TinyEvaluator(nn.Module):
    """A classifier with a ``features`` method, like the CIFAR-10 evaluator."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 6, 3, stride=2), nn.Linear(6, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def record_side_effect(tag: str) -> None:
    SIDE_EFFECTS.append(tag)


class Payload:
    """Unpickling it would run code: it calls ``record_side_effect``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return record_side_effect, ("unpickled",)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(seed: int, n: int = 16, shift: float = 0.0) -> torch.Tensor:
    return (torch.rand(n, 3, 8, 8, generator=make_generator(seed, "cpu")) * 0.8 + shift).clamp(0, 1)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No weights anywhere, an empty hub cache, a fresh notice memory, and no network."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    hub = tmp_path / "hub"
    monkeypatch.delenv(M.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(M, "_NOTICES_GIVEN", set())
    return hub


@pytest.fixture
def tiny_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A TinyInception weights file, its digest as the expected one, TinyInception as torch-fidelity's network."""
    path = tmp_path / "tiny-inception.pth"
    torch.save(TinyInception.random_state(0), path)
    monkeypatch.setattr(M, "INCEPTION_WEIGHTS_SHA256", _sha256(path))
    monkeypatch.setattr(M, "_inception_class", lambda: TinyInception)
    return path


def _reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """‖μx − μy‖² + tr Σx + tr Σy − 2 tr (Σx^½ Σy Σx^½)^½, by symmetric eigendecompositions."""
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(cx)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.clip(np.linalg.eigvalsh(root @ cy @ root), 0, None)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(cx) + np.trace(cy) - 2 * np.sqrt(middle).sum())


def _tiny_outputs(images: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    net = TinyInception("reference", ["2048", "logits_unbiased"], buffer)
    with torch.no_grad():
        pool, logits = net((images * 255).round().to(torch.uint8))
    return pool.double().numpy(), logits.double().numpy()


# ----------------------------------------------------------------------------- the Inception space


def test_inception_space_matches_an_independent_fid_and_is(tiny_weights, monkeypatch):
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(tiny_weights))
    real, fake = _images(1), _images(2, shift=0.2)
    quality = M.image_quality(real, fake, splits=1)
    assert quality.space == "inception" and M.resolve_feature_space() == "inception"
    assert (quality.fid.name, quality.fid.feature, quality.fid.num_samples) == ("FID", "inception-v3", (16, 16))
    assert (quality.inception_score.name, quality.inception_score.feature) == ("IS", "inception-v3")
    state = TinyInception.random_state(0)
    (real_pool, _), (fake_pool, fake_logits) = _tiny_outputs(real, state), _tiny_outputs(fake, state)
    assert quality.fid.value == pytest.approx(_reference_fid(real_pool, fake_pool), rel=1e-6)
    p = np.exp(fake_logits - fake_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    kl = (p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()
    assert quality.inception_score.value == pytest.approx(np.exp(kl), rel=1e-6)
    row = quality.as_dict()
    assert (row["feature_space"], row["fid_name"], row["is_name"]) == ("inception", "FID", "IS")
    assert M.require_one_space([row["feature_space"]] * 3) == "inception"


def test_fid_is_zero_on_itself_and_symmetric_and_is_at_least_one(tiny_weights):
    a, b = _images(3), _images(4, shift=0.2)
    same = M.image_quality(a, a, weights_path=tiny_weights, splits=4)
    ab = M.image_quality(a, b, weights_path=tiny_weights, splits=4)
    ba = M.image_quality(b, a, weights_path=tiny_weights, splits=4)
    assert {same.space, ab.space, ba.space} == {"inception"}
    assert ab.fid.value > 1e-3 and abs(same.fid.value) < 1e-9 * ab.fid.value
    assert ab.fid.value == pytest.approx(ba.fid.value, rel=1e-9)
    assert min(ab.inception_score.value, ba.inception_score.value) >= 1.0
    assert ab.inception_score.std is not None


def test_the_network_gets_checked_tensors_in_memory_never_the_file(tiny_weights):
    net = M.load_inception(tiny_weights)
    assert isinstance(net.source, io.BytesIO) and not net.training
    assert torch.equal(net.conv.weight, TinyInception.random_state(0)["conv.weight"])


def test_a_file_holding_more_than_tensors_is_refused_unopened(tmp_path, monkeypatch, tiny_weights):
    evil = tmp_path / "evil.pth"
    torch.save({**TinyInception.random_state(0), "payload": Payload()}, evil)
    monkeypatch.setattr(M, "INCEPTION_WEIGHTS_SHA256", _sha256(evil))
    SIDE_EFFECTS.clear()
    with pytest.raises(M.InceptionWeightsError, match="objects other than tensors"):
        M.load_inception(evil)
    assert SIDE_EFFECTS == []


def test_a_tampered_file_is_refused_naming_the_file_both_digests_and_the_fix(tiny_weights, monkeypatch):
    expected = M.INCEPTION_WEIGHTS_SHA256
    data = bytearray(tiny_weights.read_bytes())
    data[-100] ^= 0xFF
    tiny_weights.write_bytes(bytes(data))
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(tiny_weights))
    for call in (M.inception_weights, M.load_inception, lambda: M.image_quality(_images(1), _images(2))):
        with pytest.raises(M.InceptionWeightsError) as err:
            call()
        message = str(err.value)
        assert str(tiny_weights) in message and expected in message and _sha256(tiny_weights) in message
        assert M.INCEPTION_WEIGHTS_ENV in message and M.INCEPTION_WEIGHTS_URL in message


def test_the_reference_digest_carries_the_file_name_prefix():
    assert M.INCEPTION_WEIGHTS_URL.endswith("/weights-inception-2015-12-05-6726825d.pth")
    assert len(M.INCEPTION_WEIGHTS_SHA256) == 64 and M.INCEPTION_WEIGHTS_SHA256.startswith("6726825d")


# ----------------------------------------------------------------------------- where the weights come from


def test_weights_are_looked_up_by_argument_then_environment_then_hub_cache(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(M, "_inception_class", lambda: TinyInception)
    files = {}
    for name in ("arg", "env", "hub"):
        files[name] = tmp_path / name / "pt_inception-2015-12-05-6726825d.pth"
        files[name].parent.mkdir()
        torch.save(TinyInception.random_state(len(files)), files[name])
    checkpoints = offline / "checkpoints"
    checkpoints.mkdir(parents=True)
    files["hub"] = files["hub"].rename(checkpoints / files["hub"].name)  # pytorch-fid's name for the same bytes
    for expected, setup in (("hub", {}), ("env", {"env": True}), ("arg", {"env": True, "arg": True})):
        if setup.get("env"):
            monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(files["env"]))
        monkeypatch.setattr(M, "INCEPTION_WEIGHTS_SHA256", _sha256(files[expected]))
        assert M.inception_weights(files["arg"] if setup.get("arg") else None) == files[expected]
        assert M.inception_available(files["arg"] if setup.get("arg") else None)


def test_a_named_path_that_is_missing_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    assert M.inception_available() is False
    with pytest.raises(M.InceptionWeightsError, match=r"\$SMOOTHGEN_INCEPTION_WEIGHTS names .*absent\.pth"):
        M.image_quality(_images(1), _images(2), evaluator=TinyEvaluator())
    quality = M.image_quality(_images(1), _images(2), evaluator=TinyEvaluator(), space="evaluator")
    assert quality.space == "evaluator"  # the evaluator space never looks for the weights


def test_download_false_never_touches_the_network(monkeypatch):
    calls = []
    monkeypatch.setattr(M, "_download_weights", lambda destination: calls.append(destination))
    assert M.inception_weights() is None and M.inception_available() is False
    assert M.resolve_feature_space() == "evaluator"
    assert M.image_quality(_images(1), _images(2), evaluator=TinyEvaluator(), download=False).space == "evaluator"
    with pytest.raises(M.InceptionWeightsError, match="not found"):
        M.load_inception()
    assert calls == []


def test_download_true_fetches_the_official_url_into_the_hub_cache_and_checks_it(offline, tiny_weights, monkeypatch):
    fetched = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        fetched.append((url, hash_prefix))
        Path(dst).write_bytes(tiny_weights.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    target = offline / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert M.inception_weights(download=True) == target and target.read_bytes() == tiny_weights.read_bytes()
    assert fetched == [(M.INCEPTION_WEIGHTS_URL, M.INCEPTION_WEIGHTS_SHA256)]
    assert M.image_quality(_images(1), _images(2), download=True, splits=2).space == "inception"
    assert len(fetched) == 1  # found in the cache the second time


# ----------------------------------------------------------------------------- the evaluator fallback


def test_without_weights_the_evaluator_space_is_used_with_one_notice(caplog, capsys):
    evaluator, real, fake = TinyEvaluator(), _images(5), _images(6, shift=0.2)
    caplog.set_level(logging.WARNING, logger="smoothgen.metrics")
    first = M.image_quality(real, fake, evaluator=evaluator, splits=4)
    second = M.image_quality(real, fake, evaluator=evaluator, splits=4)
    notices = [r for r in caplog.records if r.name == "smoothgen.metrics"]
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING
    assert M.INCEPTION_WEIGHTS_ENV in notices[0].getMessage() and M.INCEPTION_WEIGHTS_URL in notices[0].getMessage()
    assert capsys.readouterr() == ("", "")
    assert first.space == second.space == "evaluator"
    assert (first.fid.name, first.inception_score.name) == ("FID[evaluator-penultimate]", "IS[evaluator]")
    direct_fid = M.frechet_distance(real, fake, evaluator.features, "evaluator-penultimate")
    direct_is = M.inception_score(fake, evaluator, "evaluator", splits=4)
    assert first.fid == direct_fid and first.inception_score == direct_is
    assert first.as_dict()["feature_space"] == "evaluator"


def test_unmet_requests_are_clear_errors():
    with pytest.raises(RuntimeError, match="Inception-v3 features are unavailable.*weights were not found"):
        M.image_quality(_images(1), _images(2), space="inception")
    with pytest.raises(ValueError, match="needs? evaluator="):
        M.image_quality(_images(1), _images(2))
    with pytest.raises(ValueError, match="space must be"):
        M.resolve_feature_space("pixels")  # type: ignore[arg-type]


def test_tables_never_mix_feature_spaces():
    assert M.require_one_space(["evaluator", "evaluator"]) == "evaluator"
    for rows in (["inception", "evaluator"], [], ["pixels"]):
        with pytest.raises(ValueError, match="one feature space"):
            M.require_one_space(rows)


# ----------------------------------------------------------------------------- torch-fidelity's own network


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_torch_fidelity_network(tmp_path, monkeypatch):
    """A weights file with the real keys and shapes (random values), through torch-fidelity's network."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="torch-fidelity not installed")
    assert fe.URL_INCEPTION_V3 == M.INCEPTION_WEIGHTS_URL
    with monkeypatch.context() as patch:  # build the architecture without loading (or downloading) weights
        patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    for module in net.modules():  # scale-preserving weights, so that the features do not vanish
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(M, "INCEPTION_WEIGHTS_SHA256", _sha256(path))
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(path))
    a, b = _images(7, n=2), _images(8, n=2, shift=0.2)
    pool, logits = M.load_inception()(M._to_uint8(a))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and float(pool.std()) > 0
    # One FID only: torchmetrics' eigvals of a 2048 x 2048 product takes seconds on a CPU. Self-distance,
    # symmetry and the exact values are checked on TinyInception above; here, the real network's wiring.
    quality = M.image_quality(a, b, splits=1)
    assert quality.space == "inception" and quality.fid.num_samples == (2, 2)
    assert math.isfinite(quality.fid.value) and quality.fid.value > 0 and quality.inception_score.value >= 1.0
