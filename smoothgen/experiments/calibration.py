r"""Notebook 05: adaptive noise with sound certificates — quality vs certified radius, per strategy.

Two tasks share one protocol.

* **CIFAR-10**: the class-conditional diffusion model; a condition is a class embedding. Quality:
  class-consistency (the evaluator's accuracy on generated images of the conditioned class),
  FID[evaluator-penultimate] and IS[evaluator] of the pooled samples. Certificate: certified
  class-consistency ``≥ κ`` at radius ``r`` (Neyman–Pearson lower bound on the evaluator's verdict,
  :func:`smoothgen.certify.np_bounds_mc`); a cell's certified radius is the largest such ``r``:
  ``σ_cert·(Φ⁻¹(p̲) − Φ⁻¹(κ))`` with ``p̲`` the Clopper–Pearson lower end.
* **PTB**: the LM with greedy decoding; a condition is a prompt's token embeddings ``[k, d]``.
  Quality: BLEU / ROUGE-L of the continuations against the **clean** greedy continuation
  (stability) and ROUGE-L against the reference text. Certificate: certified *stability*
  ``≥ κ`` at radius ``r``, the Neyman–Pearson lower bound on the probability that the continuation
  stays within normalised edit distance ``tol`` of the clean one (a ``{0, 1}`` statistic of the
  output, so the same bound as for CIFAR-10 applies).

Strategies (noise factories of one scale ``s``, σ = ``s ×`` mean embedding norm):
``isotropic`` (``N(0, σ²I)``), ``anisotropic-lowrank`` / ``anisotropic-diagonal`` (``Σ`` shaped by the
average Jacobian Gram of calibration conditions, volume-normalised to ``det Σ = σ^{2D}``, ℓ₂
certificate through ``σ_min``), ``schedule`` (CIFAR only: fresh draws at each of ``T`` DDIM steps
with ``σ_t = σ√T``, so ``σ_eff = σ``), and ``per-class table`` (one isotropic σ per condition).

Protocol. Conditions are split into calibration and held-out halves (``split="conditions"``), or every
condition serves both with independent sample streams (``split="samples"``). Each strategy's scale for a
target radius ``r`` is chosen on the calibration conditions (calibration stream of samples) as the
smallest grid scale meeting the target on at least a fraction ``target_fraction`` of them
(:func:`smoothgen.calibrate.smallest_passing`);
the per-class table chooses one σ per held-out condition from that condition's own calibration
stream. Everything is then evaluated on the held-out conditions with fresh samples (evaluation
stream): quality, and the fraction of held-out conditions whose certificate meets the target.

The noise schedule across denoising steps feeds the diffusion adapter per-step embeddings
``[B, T, E]`` (one noisy condition per DDIM step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import special
from torch import Tensor
from tqdm.auto import tqdm

from smoothgen import calibrate as cal
from smoothgen import certify, intervals, metrics
from smoothgen.data import load_cifar10, load_ptb
from smoothgen.experiments import frontends
from smoothgen.experiments.cifar10 import evaluator_features, real_frechet
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.experiments.ptb import prompts as ptb_prompts
from smoothgen.models.classifier import CifarResNet, ClassifierConfig, load_classifier
from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, DiffusionGenerator, load_diffusion
from smoothgen.models.lm import LMConfig, LMGenerator, build_lm, load_lm
from smoothgen.models.training import seeded_global_rng
from smoothgen.runtime import make_generator, resolve_device
from smoothgen.smoothing import SmoothedGenerator, derive_seed, sample_base

EXPERIMENT = "05_adaptive_noise"


# ============================================================================================
# Tasks: what a cell is, how it is certified and scored
# ============================================================================================
@dataclass
class Cell:
    """Samples of one (strategy, scale, condition, stream): the outputs, the per-sample hits
    (1 when the output is consistent / stable, else 0) and the σ of the certificate."""

    outputs: Tensor
    stat: np.ndarray
    sigma_cert: float


@dataclass
class Task:
    """One dataset's side of the protocol (see the module docstring)."""

    name: str
    level: float
    alpha: float
    unit: float
    yardstick: float
    calibration: list[int]
    heldout: list[int]
    strategies: dict[str, Callable[[float], cal.NoiseCertificate]]
    sample: Callable[[cal.NoiseCertificate, int, int, int], Cell]
    quality: Callable[[list[tuple[int, Cell]]], dict[str, float]]
    primary: str
    quality_columns: list[str]
    base: Callable[[int, int, int], Cell]
    scales: list[float]
    target_radii_rel: list[float]
    n_cal: int
    n_eval: int
    info: dict[str, Any] = field(default_factory=dict)

    def value(self, cell: Cell, radius: float) -> float:
        """Certified lower bound at ``radius`` on the probability of a hit (consistent / stable output)."""
        return float(certify.np_bounds_mc(cell.stat, radius, cell.sigma_cert, self.alpha, kind="binary").lower)

    def radius(self, cell: Cell) -> float:
        """Largest radius whose certified hit probability is ``≥ κ``: ``σ_cert·(Φ⁻¹(p̲) − Φ⁻¹(κ))``,
        ``p̲`` the Clopper–Pearson lower end (the inverse of :func:`smoothgen.certify.np_bounds`)."""
        low, _ = certify.mean_interval(cell.stat, self.alpha, kind="binary")
        return max(0.0, cell.sigma_cert * float(special.ndtri(low) - special.ndtri(self.level)))


def _split(conditions: Sequence[int], split: str) -> tuple[list[int], list[int]]:
    """Calibration and held-out conditions. ``split="conditions"``: alternate (even positions calibrate, odd
    ones are held out: the choice must carry over to unseen conditions); ``"samples"``: every condition in
    both, the held-out evaluation drawing fresh samples from an independent stream (the choice is made
    on all conditions)."""
    items = list(conditions)
    if split == "conditions":
        return items[0::2], items[1::2]
    if split == "samples":
        return items, items
    raise ValueError(f"split must be 'conditions' or 'samples', got {split!r}")


# ============================================================================================
# CIFAR-10
# ============================================================================================
def _tiny_cifar(params: dict[str, Any], device: torch.device) -> tuple[DiffusionGenerator, CifarResNet]:
    """Randomly initialised small models (smoke path: no checkpoint needed)."""
    with seeded_global_rng(params["seed"], device):
        unet = ClassConditionalUNet(DiffusionConfig(block_out_channels=(8, 8, 8), norm_num_groups=8)).to(device)
        evaluator = CifarResNet(ClassifierConfig(widths=(8, 8, 16, 16))).to(device).eval()
    return DiffusionGenerator(unet, steps=params["steps"], guidance_scale=params["guidance_scale"] or 1.0), evaluator


def _cifar_models(params: dict[str, Any], device: torch.device) -> tuple[DiffusionGenerator, CifarResNet]:
    if params["models"] == "tiny":
        return _tiny_cifar(params, device)
    diffusion = load_diffusion(device=device, steps=params["steps"], guidance_scale=params["guidance_scale"])
    return diffusion, load_classifier(None, device=device)


def diffusion_gram(diffusion: DiffusionGenerator, conditions: Tensor, params: dict[str, Any]) -> cal.GramEstimate:
    """Average Jacobian Gram of ``u ↦ image`` over calibration classes × fixed ``x_T`` draws."""
    draws = params["gram_draws"]
    points = conditions.repeat_interleave(draws, dim=0)
    generator = make_generator(derive_seed(params["seed"], 5), diffusion.device)
    x_t = torch.randn((points.shape[0], 3, 32, 32), generator=generator, device=diffusion.device)
    f = cal.with_fixed_randomness(diffusion.sample_from_noise, x_t)
    op = cal.JacobianOperator(f, points, max_rows=max(points.shape[0], params["gram_max_rows"]))
    return _gram(op, params["gram_rank"], params)


def _gram(op: cal.JacobianOperator, rank: int, params: dict[str, Any]) -> cal.GramEstimate:
    """``Ḡ`` by subspace iteration (``gram_method="subspace"``) or by a VJP sketch (``"sketch"``)."""
    if params["gram_method"] == "sketch":
        return cal.sketch_gram(op, rank, probes=params["gram_probes"], seed=params["seed"])
    return cal.average_gram(op, rank, iters=params["gram_iters"], oversample=params["gram_oversample"],
                            probes=params["gram_probes"], seed=params["seed"])


def _anisotropic(gram: cal.GramEstimate, unit: float, form: str, params: dict[str, Any]) -> Callable[[float], Any]:
    def make(scale: float) -> cal.NoiseCertificate:
        return cal.anisotropic_noise(gram, scale * unit, form=form, power=params["power"],
                                     max_ratio=params["max_ratio"], normalize="volume")
    return make


def _cifar_quality(fd: intervals.Frechet, evaluator: CifarResNet, params: dict[str, Any]) -> Callable:
    """Class-consistency (exact Clopper–Pearson interval over the pooled images), FID and IS in the
    evaluator's feature space (bootstrap intervals over the images; :mod:`smoothgen.intervals`)."""
    def quality(cells: list[tuple[int, Cell]]) -> dict[str, float]:
        images = torch.cat([c.outputs for _, c in cells])
        hits = np.concatenate([c.stat for _, c in cells])
        feats = evaluator_features(evaluator, images)
        with torch.inference_mode():
            probs = evaluator.head(feats).softmax(1).double().cpu().numpy()
        draws, seed = params["bootstrap"], params["seed"]
        return {**intervals.proportion(int(hits.sum()), len(hits), "class_consistency"),
                **intervals.fid(fd, feats.double().cpu().numpy(), None, draws, seed, "fid_evaluator"),
                **intervals.inception_score(probs, draws, seed, "is_evaluator")}
    return quality


@dataclass
class CifarSampler:
    """Smoothed images of one class and the evaluator's verdict on them (hit = the conditioned class)."""

    diffusion: DiffusionGenerator
    evaluator: CifarResNet
    conditions: Tensor
    batch_size: int

    def _cell(self, images: Tensor, k: int, sigma_cert: float) -> Cell:
        with torch.inference_mode():
            labels = self.evaluator(images.to(self.diffusion.device)).argmax(1).cpu()
        return Cell(images, (labels == k).numpy().astype(float), sigma_cert)

    def sample(self, cert: cal.NoiseCertificate, k: int, n: int, seed: int) -> Cell:
        """``n`` images of class ``k`` smoothed by ``cert.noise`` (per-step base for a schedule)."""
        per = cert.kind == "tv-schedule"
        cond = cal.per_step_condition(self.conditions[k], self.diffusion.num_steps) if per else self.conditions[k]
        return self._cell(SmoothedGenerator(self.diffusion, cert.noise, self.batch_size).sample(cond, n, seed).cpu(), k,
                          cert.sigma_cert)

    def base(self, k: int, n: int, seed: int) -> Cell:
        """``n`` images of class ``k`` from the unsmoothed model."""
        images = sample_base(self.diffusion, self.conditions[k], n, seed, self.batch_size)
        return self._cell(images.cpu(), k, math.inf)


def cifar_task(params: dict[str, Any], device: torch.device) -> Task:
    """The CIFAR-10 task: models, strategies, sampler and quality (see the module docstring)."""
    diffusion, evaluator = _cifar_models(params, device)
    test = load_cifar10("test")
    fd = real_frechet(evaluator, test.images[: params["n_real"]])
    geometry = diffusion.embedding_geometry()
    sampler = CifarSampler(diffusion, evaluator, diffusion.conditions(), params["batch_size"])
    calibration, heldout = _split(params["classes"], params["split"])
    unit, steps, shape = geometry["mean_norm"], diffusion.num_steps, (diffusion.embedding_dim,)
    clock = Stopwatch()
    gram = diffusion_gram(diffusion, sampler.conditions[calibration], params)
    strategies = _pick({
        "isotropic": lambda s: cal.isotropic_certificate(s * unit, shape),
        "anisotropic-lowrank": _anisotropic(gram, unit, "lowrank", params),
        "anisotropic-diagonal": _anisotropic(gram, unit, "diagonal", params),
        "schedule": lambda s: cal.schedule_noise([s * unit * math.sqrt(steps)] * steps, shape),
    }, params["cifar_strategies"])
    return Task("cifar10", params["kappa"], params["alpha"], unit, geometry["nearest_other_min"] / 2,
                calibration, heldout, strategies, sampler.sample, _cifar_quality(fd, evaluator, params),
                "class_consistency", _with_intervals(["class_consistency", "fid_evaluator", "is_evaluator"]), sampler.base,
                params["cifar_scales"], params["cifar_target_radii_rel"], params["cifar_n_cal"], params["cifar_n_eval"],
                info={"gram": gram, "gram_time": clock.elapsed, "geometry": geometry, "variant": test.variant,
                      "guidance_scale": diffusion.guidance_scale, "dim": diffusion.embedding_dim,
                      "codebook": diffusion.conditions()})


def _with_intervals(columns: list[str]) -> list[str]:
    """Each quality column followed by its 95 % interval's ``_low`` and ``_high`` columns."""
    return [name for column in columns for name in (column, f"{column}_low", f"{column}_high")]


def _pick(strategies: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The strategies named in ``names`` (``isotropic`` is required: it is the global-σ and table baseline)."""
    unknown = sorted(set(names) - set(strategies))
    if unknown or "isotropic" not in names:
        raise ValueError(f"strategies must include 'isotropic' and come from {sorted(strategies)}; got {list(names)}")
    return {name: strategies[name] for name in names}


# ============================================================================================
# PTB
# ============================================================================================
def _ptb_model(params: dict[str, Any], device: torch.device, vocab: Any) -> LMGenerator:
    if params["models"] == "tiny":
        config = LMConfig(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2, dropout=0.0)
        with seeded_global_rng(params["seed"], device):
            model = build_lm(config, eos_id=vocab.eos_id).to(device)
        return LMGenerator(model, vocab, steps=params["ptb_steps"], mode="greedy")
    return load_lm(device=device, steps=params["ptb_steps"], mode="greedy")


def lm_gram(lm: LMGenerator, embeds: Tensor, params: dict[str, Any]) -> cal.GramEstimate:
    """Average Gram of the first continuation step's log-probabilities in the prompt embeddings."""
    empty = torch.empty((0,), dtype=torch.long, device=lm.device)
    f = lambda u: torch.log_softmax(lm.next_token_logits(u, empty.expand(u.shape[0], 0)), dim=-1)  # noqa: E731
    op = cal.JacobianOperator(f, embeds, max_rows=max(embeds.shape[0], params["gram_max_rows"]))
    return _gram(op, params["ptb_gram_rank"], params)


def _ptb_quality(lm: LMGenerator, clean: Tensor, references: list[str], params: dict[str, Any]) -> Callable:
    """Corpus BLEU and mean ROUGE-L against the clean continuation, mean ROUGE-L against the reference and
    the exact-match rate, each with a 95 % bootstrap interval over the prompts: a resampled prompt brings
    all its samples (they are not independent). A resample's means come from the prompts' sums and its
    BLEU from their summed BLEU statistics (:func:`smoothgen.metrics.bleu_statistics`), so no text is
    scored twice."""
    def quality(cells: list[tuple[int, Cell]]) -> dict[str, float]:
        bleu, sums, counts = [], [], []
        for p, cell in cells:
            preds = [lm.vocab.decode(row.tolist()) for row in cell.outputs]
            base, refs = [lm.vocab.decode(clean[p].tolist())] * len(preds), [references[p]] * len(preds)
            bleu.append(metrics.bleu_statistics(preds, base))
            sums.append(len(preds) * np.array([metrics.rouge(preds, base)["rougeL"], metrics.rouge(preds, refs)["rougeL"],
                                               np.mean([a == b for a, b in zip(preds, base)])]))
            counts.append(len(preds))
        bleu_stats, sums, counts = np.array(bleu), np.array(sums), np.array(counts)

        def scores(idx: np.ndarray) -> dict[str, float]:
            mean = sums[idx].sum(0) / counts[idx].sum()
            return {"bleu_vs_clean": metrics.bleu_from_statistics(bleu_stats[idx].sum(0), smooth=True),
                    "rougeL_vs_clean": float(mean[0]), "rougeL_vs_reference": float(mean[1]),
                    "exact_match_clean": float(mean[2])}
        return intervals.bootstrap_all(scores, len(cells), params["bootstrap"], params["seed"])
    return quality


@dataclass
class PtbSampler:
    """Smoothed greedy continuations of one prompt; hit = within edit distance ``tolerance`` of the clean one."""

    lm: LMGenerator
    embeds: Tensor
    clean: Tensor
    tolerance: float
    batch_size: int

    def _cell(self, tokens: Tensor, p: int, sigma_cert: float) -> Cell:
        dist = metrics.pairwise_normalized_edit_distance(tokens, self.clean[p][None]).flatten().numpy()
        return Cell(tokens, (dist <= self.tolerance).astype(float), sigma_cert)

    def sample(self, cert: cal.NoiseCertificate, p: int, n: int, seed: int) -> Cell:
        """``n`` greedy continuations of prompt ``p`` smoothed by ``cert.noise``."""
        smoothed = SmoothedGenerator(self.lm, cert.noise, self.batch_size)
        return self._cell(smoothed.sample(self.embeds[p], n, seed).cpu(), p, cert.sigma_cert)

    def base(self, p: int, n: int, seed: int) -> Cell:
        """The clean continuation of prompt ``p``, ``n`` times (greedy decoding is deterministic)."""
        return self._cell(self.clean[p].expand(n, -1), p, math.inf)


def ptb_task(params: dict[str, Any], device: torch.device) -> Task:
    """The PTB task: LM, prompts, strategies, sampler and quality (see the module docstring)."""
    test = load_ptb("test")
    lm = _ptb_model(params, device, test.vocab)
    pairs = ptb_prompts(test.tokens, test.vocab.eos_id, params["prompt_len"], params["ptb_steps"], params["n_prompts"])
    embeds = torch.stack([lm.prompt_embeddings(p) for p, _ in pairs])
    clean = lm(embeds, make_generator(params["seed"], lm.device)).cpu()
    sampler = PtbSampler(lm, embeds, clean, params["ptb_tolerance"], params["batch_size"])
    geometry = lm.embedding_geometry()
    calibration, heldout = _split(range(len(pairs)), params["split"])
    unit, shape = geometry["mean_norm"], tuple(embeds.shape[1:])
    clock = Stopwatch()
    gram = lm_gram(lm, embeds[calibration], params)
    strategies = _pick({
        "isotropic": lambda s: cal.isotropic_certificate(s * unit, shape),
        "anisotropic-lowrank": _anisotropic(gram, unit, "lowrank", params),
        "anisotropic-diagonal": _anisotropic(gram, unit, "diagonal", params),
    }, params["ptb_strategies"])
    quality = _ptb_quality(lm, clean, [test.vocab.decode(r.tolist()) for _, r in pairs], params)
    return Task("ptb", params["kappa"], params["alpha"], unit, geometry["nn_median"], calibration, heldout,
                strategies, sampler.sample, quality, "bleu_vs_clean",
                _with_intervals(["bleu_vs_clean", "rougeL_vs_clean", "rougeL_vs_reference", "exact_match_clean"]), sampler.base,
                params["ptb_scales"], params["ptb_target_radii_rel"], params["ptb_n_cal"], params["ptb_n_eval"],
                info={"gram": gram, "gram_time": clock.elapsed, "geometry": geometry, "variant": test.variant,
                      "dim": int(math.prod(shape)), "lm": lm, "prompts": [p for p, _ in pairs]})


# ============================================================================================
# The protocol: sweep, frontier, calibrated comparison
# ============================================================================================
def sweep(task: Task, params: dict[str, Any]) -> dict[tuple[str, str, int, int], Cell]:
    """All cells: ``(stream, strategy, scale index, condition) -> Cell``.

    Calibration stream: every strategy on the calibration conditions, and the isotropic noise on
    the held-out conditions (for the per-class table). Evaluation stream: every strategy on the
    held-out conditions. Seeds depend on (stream, scale index, condition) only: strategies share
    common random numbers.
    """
    cells = {}
    jobs = [("calibration", s, task.calibration, task.n_cal) for s in task.strategies]
    if task.heldout != task.calibration:
        jobs += [("calibration", "isotropic", task.heldout, task.n_cal)]
    jobs += [("evaluation", s, task.heldout, task.n_eval) for s in task.strategies]
    for stream, strategy, conditions, n in tqdm(jobs, desc=f"{task.name} sweep", leave=False):
        base_seed = derive_seed(params["seed"], 1 if stream == "evaluation" else 0)
        for g, scale in enumerate(task.scales):
            cert = task.strategies[strategy](scale)
            for k in conditions:
                cells[(stream, strategy, g, k)] = task.sample(cert, k, n, derive_seed(base_seed, 1000 * k + g))
    return cells


def _radius_columns(task: Task, cert: cal.NoiseCertificate, params: dict[str, Any]) -> dict[str, float]:
    """Data-free radii at TV ≤ ``tv_level``: ℓ₂ (inscribed) and the volume-equivalent ball."""
    mahal = float(certify.certified_radius(params["tv_level"], 1.0, 1.0))
    return {"sigma_cert": cert.sigma_cert, "sigma_max": cert.noise.sigma_max,
            "radius_tv": cert.inscribed_radius(mahal) / task.yardstick,
            "radius_tv_volume": cert.volume_radius(mahal) / task.yardstick}


def frontier(task: Task, cells: dict, params: dict[str, Any]) -> pd.DataFrame:
    """Held-out quality and certified radii per (strategy, scale), plus the unsmoothed base."""
    rows = []
    for strategy, make in task.strategies.items():
        for g, scale in enumerate(task.scales):
            group = [(k, cells[("evaluation", strategy, g, k)]) for k in task.heldout]
            radii = np.array([task.radius(c) for _, c in group]) / task.yardstick
            rows.append({"strategy": strategy, "scale_rel": scale, **_radius_columns(task, make(scale), params),
                         "radius_min": float(radii.min()), "radius_median": float(np.median(radii)),
                         **task.quality(group)})
    seed = derive_seed(params["seed"], 1)
    base = [(k, task.base(k, task.n_eval, derive_seed(seed, 1000 * k))) for k in task.heldout]
    rows.append({"strategy": "base (no noise)", "scale_rel": 0.0, "radius_min": 0.0, "radius_median": 0.0,
                 **task.quality(base)})
    return pd.DataFrame(rows).assign(dataset=task.name)


def _values(task: Task, cells: dict, stream: str, strategy: str, conditions: list[int], radius: float) -> np.ndarray:
    """Certified values ``[G, K]`` at ``radius`` on a stream."""
    return np.array([[task.value(cells[(stream, strategy, g, k)], radius) for k in conditions]
                     for g in range(len(task.scales))])


def _calibrated_row(task: Task, cells: dict, strategy: str, target: cal.Target) -> dict:
    """One strategy's scale chosen on the calibration conditions, evaluated on the held-out ones."""
    cal_values = _values(task, cells, "calibration", strategy, task.calibration, target.radius)
    g = cal.smallest_passing(task.scales, cal_values, target)
    row = {"strategy": strategy, "chosen": "none" if g is None else f"{task.scales[g]:g}"}
    if g is None:
        return {**row, "heldout_pass": math.nan, "served": 0.0, "certified_fraction": 0.0}
    held = [task.value(cells[("evaluation", strategy, g, k)], target.radius) for k in task.heldout]
    group = [(k, cells[("evaluation", strategy, g, k)]) for k in task.heldout]
    passed = float(target.met(held).mean())
    return {**row, "heldout_pass": passed, "served": 1.0, "certified_fraction": passed, **task.quality(group)}


def _table_row(task: Task, cells: dict, target: cal.Target) -> dict:
    """Per-class σ table from each held-out condition's own calibration stream, evaluated on fresh samples."""
    scales = np.asarray(task.scales)
    values = _values(task, cells, "calibration", "isotropic", task.heldout, target.radius)
    table = cal.table_from_grid(scales * task.unit, values, target, {k: [i] for i, k in enumerate(task.heldout)},
                                (task.info["dim"],))
    served = [k for k in task.heldout if k in table.sigmas]
    row = {"strategy": "per-class table", "served": len(served) / len(task.heldout),
           "chosen": " ".join(f"{k}:{table.sigmas[k] / task.unit:g}" for k in served) or "none"}
    if not served:
        return {**row, "heldout_pass": math.nan, "certified_fraction": 0.0}
    index = {k: int(np.argmin(np.abs(scales * task.unit - table.sigmas[k]))) for k in served}
    group = [(k, cells[("evaluation", "isotropic", index[k], k)]) for k in served]
    passed = float(target.met([task.value(c, target.radius) for _, c in group]).mean())
    return {**row, "heldout_pass": passed, "certified_fraction": passed * row["served"], **task.quality(group)}


def calibrated(task: Task, cells: dict, params: dict[str, Any]) -> pd.DataFrame:
    """For each target radius: every strategy's calibrated choice and its held-out quality."""
    rows = []
    for rel in task.target_radii_rel:
        target = cal.Target("consistency", radius=rel * task.yardstick, level=task.level,
                            fraction=params["target_fraction"])
        for strategy in task.strategies:
            rows.append({"target_radius_rel": rel, **_calibrated_row(task, cells, strategy, target)})
        rows.append({"target_radius_rel": rel, **_table_row(task, cells, target)})
    table = pd.DataFrame(rows).assign(dataset=task.name)
    table = table.reindex(columns=list(dict.fromkeys([*table.columns, *task.quality_columns])))
    table.loc[table["strategy"] == "isotropic", "strategy"] = "isotropic (global σ)"
    return table


def wins(table: pd.DataFrame, primary: dict[str, str], min_certified: float) -> pd.DataFrame:
    """Per dataset and target radius: the best held-out quality among strategies whose certificate
    meets the target on at least a fraction ``min_certified`` of **all** held-out conditions
    (refused conditions count as not certified), with its margin over the runner-up and over the
    global σ. The per-class table's quality averages only the conditions it serves."""
    rows = []
    for (dataset, rel), group in table.groupby(["dataset", "target_radius_rel"], sort=True):
        column = primary[dataset]
        ok = group[group["certified_fraction"] >= min_certified - 1e-12].dropna(subset=[column])
        ok = ok.sort_values(column, ascending=False)
        row = {"dataset": dataset, "target_radius_rel": rel, "metric": column, "eligible": len(ok)}
        if len(ok):
            best = ok.iloc[0]
            glob = ok[ok["strategy"] == "isotropic (global σ)"][column]
            row.update(winner=best["strategy"], best=best[column],
                       margin_runner_up=best[column] - ok.iloc[1][column] if len(ok) > 1 else math.nan,
                       margin_vs_global=best[column] - glob.iloc[0] if len(glob) else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def versus_isotropic(front: pd.DataFrame, primary: dict[str, str]) -> pd.DataFrame:
    """Each strategy's held-out quality minus the isotropic quality at the **same** data-free radius.

    For every frontier point of a non-isotropic strategy, the isotropic frontier's quality is
    interpolated linearly at the same radius (no extrapolation outside the isotropic radius range),
    once for the ℓ₂ radius (``radius_tv``) and once for the volume-equivalent radius
    (``radius_tv_volume``, only for ellipsoids: for a ball both radii agree). ``delta > 0``: the
    strategy is better at equal radius.
    """
    rows = []
    for dataset, part in front.groupby("dataset"):
        metric = primary[dataset]
        iso = part[part["strategy"] == "isotropic"].sort_values("radius_tv")
        others = part[~part["strategy"].isin(["isotropic", "base (no noise)"])]
        low, high = iso["radius_tv"].min() * (1 - 1e-9), iso["radius_tv"].max() * (1 + 1e-9)
        for kind in ("radius_tv", "radius_tv_volume"):
            for _, row in others.iterrows():
                r = row[kind]
                ball = math.isclose(row["radius_tv"], row["radius_tv_volume"], rel_tol=1e-9)
                if not low <= r <= high or (kind == "radius_tv_volume" and ball):
                    continue
                ref = float(np.interp(r, iso["radius_tv"], iso[metric]))
                rows.append({"dataset": dataset, "strategy": row["strategy"], "scale_rel": row["scale_rel"],
                             "radius_kind": kind, "radius": r, "metric": metric, "quality": row[metric],
                             "isotropic_quality": ref, "delta": row[metric] - ref})
    return pd.DataFrame(rows)


def sensitivity_table(task: Task) -> pd.DataFrame:
    """Spectrum of the average Jacobian Gram and its cost in passes."""
    gram: cal.GramEstimate = task.info["gram"]
    mean_eig = gram.trace / gram.dim
    rows = [{"dataset": task.name, "index": i + 1, "eigenvalue": float(v), "relative_to_mean": float(v) / mean_eig}
            for i, v in enumerate(gram.eigenvalues)]
    rows.append({"dataset": task.name, "index": "rest", "eigenvalue": gram.residual,
                 "relative_to_mean": gram.residual / mean_eig})
    summary = {"trace": gram.trace, "trace_stderr": gram.trace_stderr, "dim": gram.dim,
               "forward_rows": gram.counts.forward, "backward_rows": gram.counts.backward,
               "calls": gram.counts.calls, "wall_s": task.info["gram_time"]}
    return pd.DataFrame(rows).assign(**summary)


# ============================================================================================
# Counter-example
# ============================================================================================
def counterexample(params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The naive per-input σ(x) on the 1-D interval toy: attack results, one δ-curve, and the
    per-class table read by true vs inferred class."""
    toy = cal.IntervalToy(tuple(params["toy_boundaries"]))
    grid = np.geomspace(*params["toy_sigma_range"], params["toy_sigma_points"])
    rule = cal.naive_sigma_rule(toy, params["toy_kappa"], grid)
    r = params["toy_radius"]
    rows = []
    for x in params["toy_inputs"]:
        naive = cal.attack_claimed_certificate(toy, rule, x, r)
        fixed = cal.attack_claimed_certificate(toy, lambda u, s=rule(x): s, x, r)
        rows += [{"mechanism": "naive σ(x)", **vars(naive)}, {"mechanism": "fixed σ = σ(x)", **vars(fixed)}]
    x0 = params["toy_inputs"][0]
    s0 = rule(x0)
    curve = []
    for d in np.linspace(-r, r, params["toy_curve_points"]):
        p0 = toy.probabilities(x0, s0)
        curve.append({"delta": d, "claimed_tv": float(certify.tv_bound(abs(d), s0)),
                      "true_tv_naive": cal.tv_distance(p0, toy.probabilities(x0 + d, rule(x0 + d))),
                      "true_tv_fixed": cal.tv_distance(p0, toy.probabilities(x0 + d, s0)),
                      "sigma_naive": rule(x0 + d)})
    return pd.DataFrame(rows), pd.DataFrame(curve), _lookup_demo(toy, params)


def _lookup_demo(toy: cal.IntervalToy, params: dict[str, Any]) -> pd.DataFrame:
    """Per-class table, classes at the two sides of the toy's first boundary: true vs inferred class."""
    b = toy.boundaries[0]
    centers = torch.tensor([[b - 1.0], [b + 1.0]], dtype=torch.float64)
    sigmas = dict(enumerate(params["toy_table_sigmas"]))
    nearest = lambda u: sigmas[0] if u < b else sigmas[1]  # noqa: E731
    rows = []
    for x in params["toy_table_inputs"]:
        margin = cal.voronoi_margin(torch.tensor([x], dtype=torch.float64), centers, 0)
        for radius in (0.999 * margin, params["toy_radius"]):
            for name, rule in (("true class", lambda u: sigmas[0]), ("inferred class", nearest)):
                res = cal.attack_claimed_certificate(toy, rule, x, radius)
                rows.append({"lookup": name, "x": x, "margin": margin, "radius": radius,
                             "true_tv": res.true_tv, "claimed_tv": res.claimed_tv, "violation": res.violation})
    return pd.DataFrame(rows)


# ============================================================================================
# Entry point
# ============================================================================================
def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 05: both tasks (as listed in ``params["tasks"]``) and the counter-example."""
    clock = Stopwatch()
    device = resolve_device(params.get("device"))
    builders = {"cifar10": cifar_task, "ptb": ptb_task}
    frontiers, calibrations, sensitivities, geometry, variants = [], [], [], [], []
    primary, tasks = {}, {}
    for name in params["tasks"]:
        task = tasks[name] = builders[name](params, device)
        cells = sweep(task, params)
        frontiers.append(frontier(task, cells, params))
        calibrations.append(calibrated(task, cells, params))
        sensitivities.append(sensitivity_table(task))
        geometry.append({"dataset": name, "yardstick": task.yardstick, "unit": task.unit,
                         **{k: v for k, v in task.info["geometry"].items()}})
        variants.append(f"{name}: {task.info['variant']}")
        primary[name] = task.primary
    attack, curve, lookup = counterexample(params)
    cell_sigma = frontends.cell_sigma_block(tasks["cifar10"].info["codebook"] if "cifar10" in tasks else None,
                                       tasks["ptb"].info["lm"] if "ptb" in tasks else None,
                                       tasks["ptb"].info["prompts"] if "ptb" in tasks else [], params)
    calibration = pd.concat(calibrations, ignore_index=True)
    front = pd.concat(frontiers, ignore_index=True)
    tables = {"frontier": front, "versus_isotropic": versus_isotropic(front, primary), "calibrated": calibration,
              "wins": wins(calibration, primary, params["target_fraction"]),
              "sensitivity": pd.concat(sensitivities, ignore_index=True),
              "geometry": pd.DataFrame(geometry), "counterexample": attack, "counterexample_curve": curve,
              "table_lookup": lookup, "cell_sigma": cell_sigma,
              "cell_sigma_summary": frontends.cell_sigma_summary(cell_sigma)}
    return finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant="; ".join(variants) or None,
                  clock=clock, models=params["models"])
