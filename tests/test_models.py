"""Tests of smoothgen.models: smoke training, checkpoints (sha256), adapters (generator protocol), presets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from smoothgen.data import Vocabulary, data_root, load_cifar10
from smoothgen.models import (
    CheckpointError, ClassifierBase, DiffusionGenerator, LMGenerator, load_classifier, load_diffusion, load_lm,
    read_card,
)
from smoothgen.models.checkpoints import CARD_KEYS, load_weights, save_checkpoint, sha256_file
from smoothgen.models.classifier import CifarResNet, ClassifierConfig, accuracy, random_crop_flip
from smoothgen.models.lm import LMConfig, build_lm, stream_perplexity
from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, ddim_scheduler, ddpm_scheduler
from smoothgen.models.train import DiffusionTask, LMTask, _pick, condition_noise, train
from smoothgen.models.train import main as train_main
from smoothgen.models.training import EpochSampler, lr_at, seeded_global_rng
from smoothgen.presets import TRAIN_PRESETS, get_train_preset
from smoothgen.runtime import make_generator

DATA = str(data_root())  # $SMOOTHGEN_DATA, else data/ in the repository (tests marked needs_data)
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
SHIPPED_NAMES = ("diffusion_cifar10", "lm_ptb", "classifier_cifar10", "classifier_cifar10_sigma0.12",
                 "classifier_cifar10_sigma0.25", "classifier_cifar10_sigma0.50")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    """Run this module's small models on one thread (restored afterwards): on a shared 2-core machine,
    two OpenMP threads wait on each other and small convolutions get ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smoke-train all three models once (classifier first: it is the diffusion evaluator)."""
    out = tmp_path_factory.mktemp("smoke_checkpoints")
    for kind in ("classifier", "lm", "diffusion"):
        train(kind, "smoke", out=out, device="cpu", data_root=DATA)
    return out


@pytest.fixture(scope="module")
def shipped_lm() -> LMGenerator:
    return load_lm(root=SHIPPED)


# ----------------------------------------------------------------------------- smoke training + checkpoints


@pytest.mark.needs_data("cifar10", "ptb")
@pytest.mark.parametrize("name", ["classifier_cifar10", "lm_ptb", "diffusion_cifar10"])
def test_smoke_training_writes_verified_checkpoint_and_card(smoke_dir: Path, name: str) -> None:
    card = read_card(name, smoke_dir)
    assert all(key in card for key in (*CARD_KEYS, "sha256"))
    assert card["sha256"] == sha256_file(smoke_dir / f"{name}.safetensors")
    assert card["steps"] == 3 and card["preset"] == "smoke"
    assert card["data_variant"] == ("official" if name == "lm_ptb" else "jpeg-q75-reencoding")
    assert card["metrics"], f"{name}: the card metrics were not computed"
    assert oct((smoke_dir / f"{name}.safetensors").stat().st_mode & 0o777) == "0o644"


@pytest.mark.needs_data("cifar10", "ptb")
def test_smoke_cards_carry_the_model_specific_metrics(smoke_dir: Path) -> None:
    assert 0 <= read_card("classifier_cifar10", smoke_dir)["metrics"]["test_accuracy"] <= 1
    lm = read_card("lm_ptb", smoke_dir)["metrics"]
    assert lm["valid_perplexity"] > 1 and lm["test_perplexity"] > 1 and lm["valid_predictions"] == 499
    diff = read_card("diffusion_cifar10", smoke_dir)
    assert {"class_consistency", "fid_evaluator_features", "fid_name"} <= set(diff["metrics"])
    assert diff["metrics"]["fid_name"] == "FID[evaluator-penultimate]"
    assert diff["default_guidance_scale"] in TRAIN_PRESETS["diffusion"]["smoke"]["sweep_scales"]


@pytest.mark.needs_data("cifar10", "ptb")
def test_smoke_checkpoints_load_through_the_public_loaders(smoke_dir: Path) -> None:
    assert isinstance(load_classifier(root=smoke_dir), CifarResNet)
    assert isinstance(load_lm(root=smoke_dir), LMGenerator)
    gen = load_diffusion(root=smoke_dir)
    assert gen.guidance_scale == read_card("diffusion_cifar10", smoke_dir)["default_guidance_scale"]


@pytest.mark.needs_data("cifar10", "ptb")
def test_corrupted_checkpoint_is_a_clear_error(smoke_dir: Path, tmp_path: Path) -> None:
    for suffix in (".json", ".safetensors"):
        shutil.copy(smoke_dir / f"classifier_cifar10{suffix}", tmp_path / f"classifier_cifar10{suffix}")
    weights = tmp_path / "classifier_cifar10.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 mismatch.*python -m smoothgen\.models\.train classifier"):
        load_classifier(root=tmp_path)


def test_missing_checkpoint_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"python -m smoothgen\.models\.train classifier --preset cpu --sigma 0\.25"):
        load_classifier(sigma=0.25, root=tmp_path)
    with pytest.raises(CheckpointError, match=r"train diffusion"):
        load_diffusion(root=tmp_path)


@pytest.mark.needs_data("cifar10", "ptb")
def test_checkpoints_root_follows_the_environment(smoke_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOOTHGEN_CHECKPOINTS", str(smoke_dir))
    assert load_classifier().card["preset"] == "smoke"


@pytest.mark.needs_data("cifar10", "ptb")
def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """A run stopped after step 1 (time budget 0) and resumed equals an uninterrupted run exactly."""
    kwargs = dict(device="cpu", data_root=DATA, skip_eval=True)
    train("classifier", "smoke", out=tmp_path / "straight", **kwargs)
    card = train("classifier", "smoke", out=tmp_path / "resumed", time_budget_s=0.0, **kwargs)
    assert card["steps"] == 1 and card["stopped_by_time_budget"]
    card = train("classifier", "smoke", out=tmp_path / "resumed", **kwargs)
    assert card["steps"] == 3
    a, _ = load_weights("classifier_cifar10", tmp_path / "straight")
    b, _ = load_weights("classifier_cifar10", tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.needs_data("cifar10", "ptb")
def test_command_line_eval_only_rewrites_metrics(smoke_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for suffix in (".json", ".safetensors"):
        shutil.copy(smoke_dir / f"classifier_cifar10{suffix}", tmp_path / f"classifier_cifar10{suffix}")
    assert train_main(["classifier", "--eval-only", "--out", str(tmp_path), "--device", "cpu", "--data-root", DATA]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["test_accuracy"] == read_card("classifier_cifar10", smoke_dir)["metrics"]["test_accuracy"]


def test_save_checkpoint_validates_the_card(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(torch.nn.Linear(2, 2), "x", {"architecture": "linear"}, root=tmp_path)


def test_tied_weights_and_float16_storage_roundtrip(tmp_path: Path) -> None:
    model = build_lm(LMConfig(vocab_size=50, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    card = {k: "x" for k in CARD_KEYS}
    save_checkpoint(model, "tiny", card, root=tmp_path, dtype=torch.float16)
    state, saved = load_weights("tiny", tmp_path)
    assert saved["tied_weights"] == {"lm_head.weight": "transformer.wte.weight"}
    assert saved["storage_dtype"] == "float16"
    for key, value in model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(state[key], expected), key


# ----------------------------------------------------------------------------- diffusion adapter


@pytest.fixture(scope="module")
def smoke_diffusion(smoke_dir: Path) -> DiffusionGenerator:
    return load_diffusion(root=smoke_dir, steps=3, guidance_scale=2.5)


@pytest.mark.needs_data("cifar10", "ptb")
def test_diffusion_protocol_shapes_range_and_seeds(smoke_diffusion: DiffusionGenerator) -> None:
    cond = smoke_diffusion.conditions()[[0, 3, 7]]
    a = smoke_diffusion(cond, make_generator(1, "cpu"))
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, smoke_diffusion(cond, make_generator(1, "cpu")))
    assert not torch.allclose(a, smoke_diffusion(cond, make_generator(2, "cpu")))


@pytest.mark.needs_data("cifar10", "ptb")
def test_diffusion_call_equals_differentiable_path_with_the_same_noise(smoke_diffusion: DiffusionGenerator) -> None:
    cond = smoke_diffusion.conditions()[:2]
    x_t = torch.randn((2, 3, 32, 32), generator=make_generator(5, "cpu"))
    sampled = smoke_diffusion(cond, make_generator(5, "cpu"))
    assert torch.allclose(sampled, smoke_diffusion.sample_from_noise(cond, x_t), atol=1e-6)


@pytest.mark.needs_data("cifar10", "ptb")
def test_batched_guidance_matches_the_formula_row_by_row(smoke_diffusion: DiffusionGenerator) -> None:
    """ε̂ = ε(∅) + w (ε(u) − ε(∅)) computed in one batched call equals two separate calls."""
    model, w = smoke_diffusion.model, smoke_diffusion.guidance_scale
    x, cond, t = torch.randn(2, 3, 32, 32), smoke_diffusion.conditions()[:2], torch.tensor(500)
    null = smoke_diffusion.null_embedding.expand(2, -1)
    with torch.no_grad():
        expected = model(x, t, null) + w * (model(x, t, cond) - model(x, t, null))
        assert torch.allclose(smoke_diffusion._guided_output(x, t, cond), expected, atol=1e-5)


@pytest.mark.needs_data("cifar10", "ptb")
def test_differentiable_path_has_gradients(smoke_diffusion: DiffusionGenerator) -> None:
    cond = smoke_diffusion.conditions()[:1].requires_grad_(True)
    smoke_diffusion.sample_from_noise(cond, torch.randn(1, 3, 32, 32)).sum().backward()
    assert cond.grad is not None and torch.isfinite(cond.grad).all() and cond.grad.abs().sum() > 0


@pytest.mark.needs_data("cifar10", "ptb")
def test_diffusion_embedding_geometry_matches_a_direct_computation(smoke_diffusion: DiffusionGenerator) -> None:
    u = smoke_diffusion.conditions().double()
    geo = smoke_diffusion.embedding_geometry()
    nearest = [min(float((u[i] - u[j]).norm()) for j in range(10) if j != i) for i in range(10)]
    assert geo["dim"] == u.shape[1] == smoke_diffusion.null_embedding.shape[0]
    assert math.isclose(geo["mean_norm"], float(u.norm(dim=1).mean()), rel_tol=1e-9)
    assert math.isclose(geo["nearest_other_min"], min(nearest), rel_tol=1e-9)
    assert math.isclose(geo["nearest_other_median"], sorted(nearest)[4] / 2 + sorted(nearest)[5] / 2, rel_tol=1e-9)


@pytest.mark.needs_data("cifar10", "ptb")
def test_diffusion_rejects_bad_embeddings(smoke_diffusion: DiffusionGenerator) -> None:
    with pytest.raises(ValueError, match=r"\[B, 64\]"):
        smoke_diffusion(torch.zeros(2, 3), make_generator(0, "cpu"))
    with pytest.raises(ValueError, match="guidance_scale"):
        DiffusionGenerator(smoke_diffusion.model, guidance_scale=-1.0)


# ----------------------------------------------------------------------------- LM adapter


def test_lm_greedy_from_clean_embeddings_equals_the_input_ids_path(shipped_lm: LMGenerator) -> None:
    ids = shipped_lm.vocab.encode("the company said it expects")
    gen = LMGenerator(shipped_lm.model, shipped_lm.vocab, steps=12)
    ours = gen(gen.prompt_embeddings(ids)[None], make_generator(0, "cpu"))[0]
    reference = shipped_lm.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12,
                                          do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert ours.tolist() == reference[0, len(ids):].tolist()


def test_lm_next_token_agrees_with_greedy_decoding(shipped_lm: LMGenerator) -> None:
    gen = LMGenerator(shipped_lm.model, shipped_lm.vocab, steps=6)
    prompt = gen.prompt_embeddings(gen.vocab.encode("stocks fell sharply"))[None].repeat(2, 1, 1)
    out = gen(prompt, make_generator(0, "cpu"))
    for t in range(6):
        assert torch.equal(gen.next_token(prompt, out[:, :t]), out[:, t])


def test_lm_sampling_is_seeded_and_valid(shipped_lm: LMGenerator) -> None:
    gen = LMGenerator(shipped_lm.model, shipped_lm.vocab, steps=8, mode="sample", temperature=1.0, top_k=50)
    prompt = gen.prompt_embeddings(gen.vocab.encode("the market"))[None].repeat(4, 1, 1)
    a = gen(prompt, make_generator(3, "cpu"))
    assert a.shape == (4, 8) and a.dtype == torch.int64 and int(a.min()) >= 0 and int(a.max()) < len(gen.vocab)
    assert torch.equal(a, gen(prompt, make_generator(3, "cpu")))
    assert not torch.equal(a, gen(prompt, make_generator(4, "cpu")))


def test_lm_top1_sampling_is_greedy(shipped_lm: LMGenerator) -> None:
    prompt = shipped_lm.prompt_embeddings(shipped_lm.vocab.encode("shares of"))[None]
    greedy = LMGenerator(shipped_lm.model, shipped_lm.vocab, steps=5)(prompt, make_generator(0, "cpu"))
    top1 = LMGenerator(shipped_lm.model, shipped_lm.vocab, steps=5, mode="sample", top_k=1)(prompt, make_generator(9, "cpu"))
    assert torch.equal(greedy, top1)


def test_lm_next_token_logits_are_differentiable(shipped_lm: LMGenerator) -> None:
    prompt = shipped_lm.prompt_embeddings([5, 6, 7])[None].requires_grad_(True)
    logits = shipped_lm.next_token_logits(prompt, torch.tensor([[8]]))
    assert logits.shape == (1, len(shipped_lm.vocab))
    logits[0, 0].backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


def test_lm_rejects_prompts_longer_than_the_context(shipped_lm: LMGenerator) -> None:
    with pytest.raises(ValueError, match="n_positions"):
        shipped_lm(torch.zeros(1, 125, shipped_lm.embedding_dim), make_generator(0, "cpu"))


def test_stream_perplexity_equals_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = build_lm(LMConfig(vocab_size=30, n_positions=8, n_embd=16, n_layer=1, n_head=2, dropout=0.0)).eval()
    tokens = torch.randint(0, 30, (21,))
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, 20, 8):  # windows of 8 tokens predicting the next token each, 20 predictions
            x = tokens[s : min(s + 8, 20)]
            logp = F.log_softmax(model(input_ids=x[None]).logits[0], dim=-1)
            nll -= float(logp[torch.arange(x.numel()), tokens[s + 1 : s + 1 + x.numel()]].sum())
            count += x.numel()
    result = stream_perplexity(model, tokens, context=8, batch_size=2)
    assert result["predictions"] == count == 20
    assert math.isclose(result["perplexity"], math.exp(nll / count), rel_tol=1e-5)


def test_lm_embedding_geometry_matches_a_direct_computation() -> None:
    torch.manual_seed(1)
    model = build_lm(LMConfig(vocab_size=40, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    vocab = Vocabulary(tuple(f"w{i}" for i in range(38)) + ("<eos>", "<unk>"))
    geo = LMGenerator(model, vocab).embedding_geometry(chunk=7)
    w = model.transformer.wte.weight.detach().double()
    d = torch.cdist(w, w) + torch.diag(torch.full((40,), float("inf"), dtype=torch.float64))
    nearest = d.min(1).values
    assert math.isclose(geo["nn_median"], float(torch.quantile(nearest, 0.5)), rel_tol=1e-9)
    assert math.isclose(geo["nn_min"], float(nearest.min()), rel_tol=1e-9)
    assert math.isclose(geo["mean_norm"], float(w.norm(dim=1).mean()), rel_tol=1e-9)


# ----------------------------------------------------------------------------- classifier


def test_classifier_normalises_inside_and_exposes_features() -> None:
    torch.manual_seed(0)
    model = CifarResNet(ClassifierConfig(widths=(8, 8, 16, 16))).eval()
    x = torch.rand(4, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (4, 16)
    mean, std = torch.tensor(model.config.mean).view(1, 3, 1, 1), torch.tensor(model.config.std).view(1, 3, 1, 1)
    assert torch.allclose(feats, model.body((x - mean) / std))
    assert torch.allclose(model(x), model.config.logit_scale * feats @ model.fc.weight.T)
    assert torch.equal(model.head(feats), model(x))  # one pass gives both features and logits
    assert torch.equal(ClassifierBase(model)(x, make_generator(0, "cpu")), model(x))
    with pytest.raises(ValueError, match="float images"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_random_crop_flip_without_padding_only_flips() -> None:
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, make_generator(0, "cpu"), pad=0)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 16


def test_random_crop_is_a_shifted_window_of_the_padded_image() -> None:
    x = torch.rand(8, 3, 32, 32)
    out = random_crop_flip(x, make_generator(1, "cpu"), pad=4)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(8):
        windows = [padded[i, :, a : a + 32, b : b + 32] for a in range(9) for b in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_accuracy_under_noise_needs_a_generator_and_is_seeded() -> None:
    model = CifarResNet(ClassifierConfig(widths=(8, 8, 16, 16))).eval()
    images, labels = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (20,))
    with pytest.raises(ValueError, match="generator"):
        accuracy(model, images, labels, sigma=0.25)
    a = accuracy(model, images, labels, 0.25, make_generator(0, "cpu"), batch_size=7)
    assert a == accuracy(model, images, labels, 0.25, make_generator(0, "cpu"), batch_size=7)


# ----------------------------------------------------------------------------- presets and schedule


def test_get_train_preset_overrides_without_mutating() -> None:
    params = get_train_preset("lm", "cpu", steps=7)
    assert params["steps"] == 7 and TRAIN_PRESETS["lm"]["cpu"]["steps"] != 7
    with pytest.raises(ValueError, match="unknown lm parameters"):
        get_train_preset("lm", "cpu", stepz=7)
    with pytest.raises(ValueError, match="unknown preset"):
        get_train_preset("lm", "tpu")


def test_epoch_sampler_visits_every_example_once_per_epoch() -> None:
    sampler = EpochSampler(n=10, batch_size=3, seed=4, device=torch.device("cpu"))
    epoch0 = torch.cat([sampler.indices(s) for s in range(3)])  # 3 batches per epoch, 1 example dropped
    assert epoch0.unique().numel() == 9 and not torch.equal(epoch0, torch.cat([sampler.indices(s) for s in range(3, 6)]))
    assert torch.equal(sampler.indices(1), EpochSampler(10, 3, 4, torch.device("cpu")).indices(1))


@pytest.mark.needs_data("cifar10", "ptb")
def test_training_noise_schedule_is_the_sampler_schedule() -> None:
    """The loss's ᾱ_t must be the DDPM/DDIM schedulers' ``alphas_cumprod`` (else sampling is off)."""
    task = DiffusionTask(get_train_preset("diffusion", "smoke"), torch.device("cpu"), 0, DATA)
    expected = ddpm_scheduler(task.config).alphas_cumprod
    assert torch.allclose(task.alphas_cumprod, expected, rtol=1e-6)
    assert torch.allclose(ddim_scheduler(task.config, 20).alphas_cumprod, expected)


def test_lr_schedule_warms_up_then_follows_the_cosine() -> None:
    p = {"lr": 1.0, "warmup_steps": 10, "steps": 110, "min_lr_frac": 0.1}
    assert lr_at(0, p) == pytest.approx(0.1) and lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(60, p) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, p) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- shipped checkpoints


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_checkpoint_passes_sha256_and_has_a_full_card(name: str) -> None:
    state, card = load_weights(name, SHIPPED)
    assert state and all(key in card for key in CARD_KEYS)
    assert (SHIPPED / f"{name}.safetensors").stat().st_size <= 20 * 2**20


def test_shipped_models_meet_their_card_targets() -> None:
    assert read_card("classifier_cifar10", SHIPPED)["metrics"]["test_accuracy"] >= 0.85
    assert read_card("lm_ptb", SHIPPED)["metrics"]["valid_perplexity"] <= 160
    assert read_card("diffusion_cifar10", SHIPPED)["metrics"]["class_consistency"] >= 0.5


@pytest.mark.needs_data("cifar10", "ptb")
def test_shipped_evaluator_classifies_test_images() -> None:
    test = load_cifar10("test", root=DATA)
    model = load_classifier(root=SHIPPED)
    assert accuracy(model, test.images[:500], test.labels[:500]) >= 0.8


# ----------------------------------------------------------------------------- plugged into the smoothing layer


@pytest.mark.needs_data("cifar10", "ptb")
def test_adapters_plug_into_the_smoothing_layer(smoke_diffusion: DiffusionGenerator, shipped_lm: LMGenerator) -> None:
    from smoothgen.noise import GaussianNoise
    from smoothgen.smoothing import SmoothedClassifier, SmoothedGenerator, SmoothedGreedyDecoder

    c = smoke_diffusion.conditions()[2]
    images = SmoothedGenerator(smoke_diffusion, GaussianNoise(0.5), batch_size=2).sample(c, n=3, seed=0)
    assert images.shape == (3, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
    model = CifarResNet(ClassifierConfig(widths=(8, 8, 16, 16))).eval()
    counts = SmoothedClassifier(ClassifierBase(model), GaussianNoise(0.25), num_classes=10, batch_size=8).counts(
        torch.rand(3, 32, 32), n=16, seed=0)
    assert counts.sum() == 16
    prompt = shipped_lm.prompt_embeddings(shipped_lm.vocab.encode("the company"))
    decoded = SmoothedGreedyDecoder(shipped_lm.next_token, GaussianNoise(1e-4), len(shipped_lm.vocab), batch_size=4)
    result = decoded.decode(prompt, steps=3, n0=4, n=8, alpha=0.05, seed=0)
    clean = LMGenerator(shipped_lm.model, shipped_lm.vocab, steps=3)(prompt[None], make_generator(0, "cpu"))[0]
    assert result.tokens.tolist() == clean.tolist()  # tiny noise: the smoothed greedy output is the clean one


# ----------------------------------------------------------------------------- noise-trained generators

_CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def noise_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smoke base checkpoints (diffusion and LM, no metrics) to fine-tune from."""
    out = tmp_path_factory.mktemp("noise_base")
    for kind in ("diffusion", "lm"):
        train(kind, "smoke", out=out, device="cpu", data_root=DATA, skip_eval=True)
    return out


def _copy_checkpoint(name: str, src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors", ".vocab.txt"):
        if (src / f"{name}{suffix}").is_file():
            shutil.copy(src / f"{name}{suffix}", dst / f"{name}{suffix}")


def _half_gap(table: torch.Tensor) -> float:
    u = table.double()
    d = torch.cdist(u, u) + torch.diag(torch.full((u.shape[0],), float("inf"), dtype=u.dtype))
    return float(d.min()) / 2


def _old_diffusion_loss(task: DiffusionTask, step: int, generator: torch.Generator) -> torch.Tensor:
    """DiffusionTask.loss as it was before the condition-noise option (reference)."""
    idx = task.sampler.indices(step)
    b, dev = idx.shape[0], task.images.device
    x0 = task.images[idx].float() / 127.5 - 1
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    drop = torch.rand(b, generator=generator, device=dev) < task.params["cond_dropout"]
    labels = torch.where(drop, task.config.null_index, task.labels[idx])
    t = torch.randint(0, task.config.num_train_timesteps, (b,), generator=generator, device=dev)
    noise = torch.randn(x0.shape, generator=generator, device=dev)
    a = task.alphas_cumprod[t].sqrt()[:, None, None, None]
    s = (1 - task.alphas_cumprod[t]).sqrt()[:, None, None, None]
    target = noise if task.config.prediction_type == "epsilon" else a * noise - s * x0
    pred = task.model(a * x0 + s * noise, t, task.model.embed(labels))
    return F.mse_loss(pred.float(), target)


def _old_lm_loss(task: LMTask, step: int, generator: torch.Generator) -> torch.Tensor:
    """LMTask.loss as it was before the condition-noise option (reference)."""
    L = task.params["seq_len"]
    epoch = step // task.sampler.steps_per_epoch
    offset = int(torch.randint(0, L, (1,), generator=make_generator(task.seed * 7919 + epoch, "cpu")))
    starts = offset + task.sampler.indices(step) * L
    chunk = task.tokens[starts[:, None] + torch.arange(L + 1, device=starts.device)]
    logits = task.model(input_ids=chunk[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())


@pytest.mark.needs_data("cifar10", "ptb")
@pytest.mark.parametrize("kind", ["diffusion", "lm"])
def test_noise_off_is_bit_identical_to_the_old_training_path(kind: str) -> None:
    """cond_noise_rel = 0: same initial weights, same loss bits, same generator state afterwards."""
    params = get_train_preset(kind, "smoke")
    assert params["cond_noise_rel"] == 0 and params["init_from"] is None
    with seeded_global_rng(0, _CPU):
        task = (DiffusionTask if kind == "diffusion" else LMTask)(params, _CPU, 0, DATA)
    with seeded_global_rng(0, _CPU):
        fresh = (ClassConditionalUNet(DiffusionConfig(**_pick(params, DiffusionConfig))) if kind == "diffusion"
                 else build_lm(LMConfig(vocab_size=len(task.vocab), **_pick(params, LMConfig)), task.vocab.eos_id))
    assert all(torch.equal(a, b) for a, b in zip(task.model.state_dict().values(), fresh.state_dict().values()))
    assert task.name == ("diffusion_cifar10" if kind == "diffusion" else "lm_ptb") and task.sigma_max == 0
    assert all(p.requires_grad for p in task.model.parameters())
    old_loss = _old_diffusion_loss if kind == "diffusion" else _old_lm_loss
    task.model.train()
    for step in (0, 1):
        g_new, g_old = make_generator(5, "cpu"), make_generator(5, "cpu")
        with seeded_global_rng(3, _CPU):  # dropout
            new = task.loss(step, g_new)
        with seeded_global_rng(3, _CPU):
            old = old_loss(task, step, g_old)
        assert torch.equal(new, old)
        assert torch.equal(g_new.get_state(), g_old.get_state())


def test_condition_noise_draws_one_level_per_example() -> None:
    noise, sigmas = condition_noise((64, 4096), 2.0, make_generator(0, "cpu"), "cpu")
    assert noise.shape == (64, 4096) and sigmas.shape == (64,)
    assert float(sigmas.min()) >= 0 and float(sigmas.max()) <= 2.0 and float(sigmas.max()) > 1.5
    ratio = noise.std(dim=1) / sigmas
    assert torch.allclose(ratio, torch.ones(64), atol=0.06)
    again, _ = condition_noise((64, 4096), 2.0, make_generator(0, "cpu"), "cpu")
    assert torch.equal(noise, again)
    seq, levels = condition_noise((8, 16, 512), 1.0, make_generator(1, "cpu"), "cpu")
    assert torch.allclose(seq.flatten(1).std(dim=1) / levels, torch.ones(8), atol=0.05)  # one level per sequence


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_reaches_the_unet_on_non_null_conditions_only() -> None:
    params = get_train_preset("diffusion", "smoke", cond_noise_rel=0.5, batch_size=256, cond_dropout=0.25)
    task = DiffusionTask(params, _CPU, 0, DATA)
    assert task.name == "diffusion_cifar10_noise" and not task.frozen  # no init_from: the table trains
    half_gap = _half_gap(task.model.class_embedding.weight.detach()[: task.config.num_classes])
    assert task.sigma_max == pytest.approx(0.5 * half_gap, rel=1e-9)
    seen: dict[str, torch.Tensor] = {}
    embed, forward = task.model.embed, task.model.forward

    def spy_embed(labels: torch.Tensor) -> torch.Tensor:
        seen["labels"] = labels
        return embed(labels)

    def spy_forward(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        seen.update(x_t=x_t, t=t, cond=cond)
        return forward(x_t, t, cond)

    task.model.embed, task.model.forward = spy_embed, spy_forward
    task.model.train()
    noisy_loss = task.loss(0, make_generator(0, "cpu"))
    labels, cond, x_t = seen["labels"], seen["cond"].detach(), seen["x_t"]
    residual = cond - task.model.class_embedding.weight.detach()[labels]
    null = labels == task.config.null_index
    assert 20 < int(null.sum()) < 110
    assert torch.equal(residual[null], torch.zeros_like(residual[null]))  # the CFG null condition stays clean
    row_std = residual[~null].pow(2).mean(dim=1).sqrt()
    assert float(row_std.max()) <= 1.3 * task.sigma_max and float(row_std.min()) < 0.2 * task.sigma_max
    rms = float(residual[~null].pow(2).mean().sqrt())
    assert rms == pytest.approx(task.sigma_max / math.sqrt(3), rel=0.15)  # E[σ²] = σ_max²/3 for σ ~ U[0, σ_max]
    task.sigma_max = 0.0  # same generator seed without noise: same batch, t and x_t, clean conditions
    clean_loss = task.loss(0, make_generator(0, "cpu"))
    assert torch.equal(seen["x_t"], x_t) and torch.equal(seen["labels"], labels)
    assert torch.equal(seen["cond"], task.model.class_embedding.weight[labels])
    assert not torch.equal(noisy_loss, clean_loss)


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_reaches_the_lm_token_embeddings_not_the_positions() -> None:
    params = get_train_preset("lm", "smoke", cond_noise_rel=0.5, batch_size=64)
    task = LMTask(params, _CPU, 0, DATA)
    assert task.name == "lm_ptb_noise"
    geometry = LMGenerator(task.model, task.vocab).embedding_geometry()
    assert task.sigma_max == pytest.approx(0.5 * geometry["nn_median"] / 2, rel=1e-9)
    seen: dict[str, torch.Tensor] = {}
    h1 = task.model.transformer.wte.register_forward_hook(lambda m, i, out: seen.update(tokens=out.detach()))
    h2 = task.model.transformer.drop.register_forward_pre_hook(lambda m, args: seen.update(hidden=args[0].detach()))
    try:
        task.model.train()
        task.loss(0, make_generator(0, "cpu"))
    finally:
        h1.remove(), h2.remove()
    L = params["seq_len"]
    positions = task.model.transformer.wpe.weight.detach()[:L]
    residual = seen["hidden"] - seen["tokens"] - positions
    per_seq = residual.flatten(1).pow(2).mean(dim=1).sqrt()
    assert float(per_seq.max()) <= 1.3 * task.sigma_max
    assert float(residual.pow(2).mean().sqrt()) == pytest.approx(task.sigma_max / math.sqrt(3), rel=0.2)


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_fine_tune_loads_init_weights_and_keeps_the_table(noise_base: Path) -> None:
    for kind, name in (("diffusion", "diffusion_cifar10"), ("lm", "lm_ptb")):
        base, base_card = load_weights(name, noise_base)
        params = get_train_preset(kind, "smoke", cond_noise_rel=0.5, init_from=name)
        task = (DiffusionTask if kind == "diffusion" else LMTask)(params, _CPU, 0, DATA, (noise_base,))
        state = task.model.state_dict()
        assert state.keys() == base.keys() and all(torch.equal(state[k], base[k]) for k in base), name
        assert task.frozen and task.init_info["sha256"] == base_card["sha256"]
        table = task.model.class_embedding.weight if kind == "diffusion" else task.model.transformer.wte.weight
        assert not table.requires_grad
        assert all(p is not table for group in task.optimizer.param_groups for p in group["params"])


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_smoke_fine_tunes_write_cards_with_the_noise_fields(noise_base: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "noise"
    for name in ("diffusion_cifar10", "lm_ptb"):
        _copy_checkpoint(name, noise_base, out)
    card = train("diffusion", "smoke", out=out, device="cpu", data_root=DATA, skip_eval=True,
                 overrides={"cond_noise_rel": 0.5, "init_from": "diffusion_cifar10"})
    base_state, base_card = load_weights("diffusion_cifar10", out)
    state, saved = load_weights("diffusion_cifar10_noise", out)  # sha256-verified
    assert card["name"] == "diffusion_cifar10_noise" and card["steps"] == 3 and saved["sha256"] == card["sha256"]
    noise = card["condition_noise"]
    half_gap = _half_gap(base_state["class_embedding.weight"][:10])
    assert noise["kind"] == "gaussian" and noise["cond_noise_rel"] == 0.5 and noise["embedding_frozen"]
    assert noise["unit_value"] == pytest.approx(half_gap) and noise["sigma_max"] == pytest.approx(0.5 * half_gap)
    assert card["init_from"]["name"] == "diffusion_cifar10" and card["init_from"]["sha256"] == base_card["sha256"]
    assert card["config"]["training"]["cond_noise_rel"] == 0.5 and card["cond_embedding_frozen"]
    assert all(key in card for key in (*CARD_KEYS, "hardware", "git_commit", "sha256"))
    assert torch.equal(state["class_embedding.weight"], base_state["class_embedding.weight"])  # frozen: same units
    assert not torch.equal(state["unet.conv_in.weight"], base_state["unet.conv_in.weight"])  # the rest trained
    assert load_diffusion("diffusion_cifar10_noise", root=out).card["condition_noise"]["sigma_max"] > 0

    args = ["lm", "--preset", "smoke", "--out", str(out), "--device", "cpu", "--data-root", DATA,
            "--init-from", "lm_ptb", "--cond-noise-rel", "0.5"]
    assert train_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "lm_ptb_noise" and printed["metrics"]["valid_perplexity"] > 1
    card = read_card("lm_ptb_noise", out)
    assert card["condition_noise"]["unit"].startswith("half_nn_median") and card["condition_noise"]["sigma_max"] > 0
    assert card["init_from"]["sha256"] == read_card("lm_ptb", out)["sha256"]
    assert "best_valid_perplexity_noisy" in card and "valid_perplexity_noisy" in card["validation_history"][-1]
    assert card["vocab_file"] == "lm_ptb_noise.vocab.txt"
    lm = load_lm("lm_ptb_noise", root=out)  # weights and vocabulary verified
    base_lm = load_lm("lm_ptb", root=out)
    assert torch.equal(lm.model.transformer.wte.weight, base_lm.model.transformer.wte.weight)
    assert train_main(["lm", "--eval-only", "--cond-noise-rel", "0.5", "--out", str(out), "--device", "cpu",
                       "--data-root", DATA]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "lm_ptb_noise"


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_fine_tune_without_freezing_trains_the_table(noise_base: Path, tmp_path: Path) -> None:
    _copy_checkpoint("diffusion_cifar10", noise_base, tmp_path)
    card = train("diffusion", "smoke", out=tmp_path, device="cpu", data_root=DATA, skip_eval=True,
                 overrides={"cond_noise_rel": 0.5, "init_from": "diffusion_cifar10", "freeze_cond_embedding": False})
    assert not card["cond_embedding_frozen"] and not card["condition_noise"]["embedding_frozen"]
    base, _ = load_weights("diffusion_cifar10", tmp_path)
    state, _ = load_weights("diffusion_cifar10_noise", tmp_path)
    assert not torch.equal(state["class_embedding.weight"], base["class_embedding.weight"])


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_training_resumes_exactly(tmp_path: Path) -> None:
    kwargs = dict(device="cpu", data_root=DATA, skip_eval=True, overrides={"cond_noise_rel": 0.5})
    train("diffusion", "smoke", out=tmp_path / "straight", **kwargs)
    card = train("diffusion", "smoke", out=tmp_path / "resumed", time_budget_s=0.0, **kwargs)
    assert card["steps"] == 1
    with pytest.raises(ValueError, match="cond_noise_rel=0.5, this run 0.25"):
        train("diffusion", "smoke", out=tmp_path / "resumed", device="cpu", data_root=DATA, skip_eval=True,
              overrides={"cond_noise_rel": 0.25})
    card = train("diffusion", "smoke", out=tmp_path / "resumed", **kwargs)
    assert card["steps"] == 3
    a, _ = load_weights("diffusion_cifar10_noise", tmp_path / "straight")
    b, _ = load_weights("diffusion_cifar10_noise", tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.needs_data("cifar10", "ptb")
def test_noise_bad_values_are_clear_errors(noise_base: Path, tmp_path: Path) -> None:
    kwargs = dict(out=tmp_path, device="cpu", data_root=DATA, skip_eval=True)
    for bad in (-0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="cond_noise_rel must be a finite number >= 0"):
            train("diffusion", "smoke", overrides={"cond_noise_rel": bad}, **kwargs)
    with pytest.raises(ValueError, match="init_from: no checkpoint 'nope'"):
        train("diffusion", "smoke", overrides={"cond_noise_rel": 0.5, "init_from": "nope"}, **kwargs)
    with pytest.raises(ValueError, match="init_from must be a checkpoint name"):
        train("lm", "smoke", overrides={"init_from": "../lm_ptb"}, **kwargs)
    with pytest.raises(ValueError, match="freeze_cond_embedding must be"):
        train("lm", "smoke", overrides={"freeze_cond_embedding": "yes"}, **kwargs)
    with pytest.raises(ValueError, match="output name of this run"):
        train("diffusion", "smoke", overrides={"cond_noise_rel": 0.5, "init_from": "diffusion_cifar10_noise"}, **kwargs)
    with pytest.raises(ValueError, match="unknown classifier parameters"):
        train("classifier", "smoke", overrides={"cond_noise_rel": 0.5}, **kwargs)
    _copy_checkpoint("diffusion_cifar10", noise_base, tmp_path)
    with pytest.raises(ValueError, match="not a language-model checkpoint"):
        train("lm", "smoke", overrides={"cond_noise_rel": 0.5, "init_from": "diffusion_cifar10"}, **kwargs)


def test_noise_validation_perplexity_is_paired_and_reduces_to_the_clean_one() -> None:
    from smoothgen.models.train import noisy_stream_perplexity

    torch.manual_seed(0)
    model = build_lm(LMConfig(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, dropout=0.0))
    tokens = torch.randint(0, 50, (300,), generator=make_generator(0, "cpu"))
    clean = stream_perplexity(model, tokens, context=16)["perplexity"]
    assert noisy_stream_perplexity(model, tokens, 16, 0.0) == pytest.approx(clean, rel=1e-6)
    noisy = noisy_stream_perplexity(model, tokens, 16, 5.0, seed=3)
    assert noisy == noisy_stream_perplexity(model, tokens, 16, 5.0, seed=3)  # same draws at every evaluation
    assert noisy != pytest.approx(clean, rel=1e-3)
