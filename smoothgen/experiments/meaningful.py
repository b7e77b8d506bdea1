r"""Notebook 08: certified radii at the scale of a class gap and a word swap.

The same smoothing ``G(f(c + ε), z)`` with five choices of base and front-end ``f``:

* ``naive``: the shipped generator, no front-end (what notebooks 03/04 certify);
* ``projection``: :class:`~smoothgen.models.frontends.NearestEmbedding` (snap to the nearest class /
  vocabulary embedding); certified by :func:`smoothgen.certify.concentration_certificate` from the
  projections alone (no generator pass);
* ``soft``: :class:`~smoothgen.models.frontends.SoftPosteriorMean` with ``τ = σ²``;
* ``noise_trained`` and ``noise_trained+soft``: a checkpoint fine-tuned with noise on the condition
  (only where the preset names one).

Radii are given in natural units: CIFAR-10 over each class's own *half class gap* (half the distance
from ``u_k`` to its nearest other class embedding, the boundary a smoothed decision protects); PTB
over the median nearest-token distance, and in *word swaps* (the radius over the smallest
nearest-token distance among the prompt's words: moving one word onto its nearest neighbour costs
that much). What is certified:

* CIFAR-10 class identity: for ``projection`` the condition the generator receives is ``u_k``
  itself with probability ``> 1/2`` for every ``‖δ‖ < σΦ⁻¹(p̲)`` (``p̲`` from the projection counts);
  for the other methods the evaluator's verdict "class ``k``" on the smoothed output, Cohen's radius
  ``σΦ⁻¹(p̲)`` from the generated samples. W₁ (RMS pixels, ``D = 1``) at level ε: the concentration
  bound for ``projection``, the data-free ``D·TV`` bound otherwise (the data-dependent one equals it
  at these sample sizes, see notebook 03).
* PTB continuation identity (``steps`` tokens): ``projection`` as above (the greedy continuation is
  a function of the snapped prompt); the other methods count the draws whose whole continuation
  equals the clean base continuation (Cohen on the sequence-valued smoothed output).

Every certificate holds with probability ``≥ 1 − α`` each; the best configuration is the maximum
over the σ grid (union bound: ``len(grid) · α``), reported as such.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import special
from tqdm.auto import tqdm

from smoothgen import attacks as A
from smoothgen import certify, intervals, metrics
from smoothgen.data import load_cifar10, load_ptb
from smoothgen.experiments.attacks import ptb_breakdown
from smoothgen.experiments.cifar10 import evaluator_features, real_frechet
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.experiments.ptb import prompts, reference_nll
from smoothgen.models.classifier import load_classifier
from smoothgen.models.diffusion import load_diffusion
from smoothgen.models.frontends import FrontEndGenerator, NearestEmbedding, SoftPosteriorMean
from smoothgen.models.lm import load_lm
from smoothgen.noise import GaussianNoise
from smoothgen.results import write_json
from smoothgen.runtime import make_generator, resolve_device
from smoothgen.smoothing import SmoothedGenerator, sample_base

EXPERIMENT = "08_meaningful_radii"
RMS = math.sqrt(3 * 32 * 32)
LITERATURE_DDS_SECONDS = 121.0
"""Carlini et al. (2023): diffusion-denoised smoothing, seconds per certified CIFAR-10 image on an A100."""


@dataclass
class Models:
    """The generators of one dataset: shipped and (optionally) noise-trained, plus the codebook."""

    shipped: Any
    noise_trained: Any | None
    codebook: torch.Tensor


def front_end(method: str, codebook: torch.Tensor, sigma: float) -> Any:
    """The fixed front-end of ``method`` at noise level σ (``None``: identity)."""
    if method == "projection":
        return NearestEmbedding(codebook)
    if method.endswith("soft"):
        return SoftPosteriorMean(codebook, sigma**2)
    if method in ("naive", "noise_trained"):
        return None
    raise ValueError(f"unknown method {method!r}")


def generator_for(models: Models, method: str, sigma: float) -> Any:
    """Base adapter of ``method`` behind its front-end."""
    base = models.noise_trained if method.startswith("noise_trained") else models.shipped
    if base is None:
        raise ValueError(f"method {method!r} needs a noise-trained checkpoint; the preset names none")
    front = front_end(method, models.codebook, sigma)
    return base if front is None else FrontEndGenerator(base, front)


def cohen_radius(count: int, n: int, sigma: float, alpha: float) -> tuple[float, float]:
    """``(p̲, σΦ⁻¹(p̲))`` with ``p̲`` one-sided Clopper–Pearson; radius 0 when ``p̲ ≤ 1/2``."""
    p_lower = float(certify.clopper_pearson_lower(count, n, alpha))
    return p_lower, sigma * float(special.ndtri(p_lower)) if p_lower > 0.5 else 0.0


# ----------------------------------------------------------------------------- CIFAR-10


def class_gaps(codebook: torch.Tensor) -> pd.DataFrame:
    """Per class: its half gap (half the distance to the nearest other class) and that class."""
    dist = torch.cdist(codebook.double(), codebook.double())
    dist.fill_diagonal_(math.inf)
    nearest = dist.min(1)
    return pd.DataFrame({"class": range(len(codebook)), "half_gap": (nearest.values / 2).numpy(),
                         "nearest_class": nearest.indices.numpy()})


def cifar_projection(codebook: torch.Tensor, sigmas: list[float], gaps: pd.DataFrame,
                     params: dict[str, Any]) -> pd.DataFrame:
    """Concentration certificates of every class at every σ from ``n_projection`` projections each."""
    front, rows = NearestEmbedding(codebook), []
    for k in params["classes"]:
        start = time.perf_counter()
        g = make_generator(params["seed"] + 17 * k + 3, "cpu")
        xi = torch.randn((params["n_projection"], 1, codebook.shape[1]), generator=g, dtype=torch.float64)
        counts = front.hits(torch.tensor([k]), xi.to(codebook.dtype), sigmas)
        seconds = (time.perf_counter() - start) / len(sigmas)
        for sigma, count in zip(sigmas, counts):
            cert = certify.concentration_certificate(count, params["n_projection"], 0.0, sigma, params["alpha"])
            radius_w1 = certify.concentration_certified_radius(count, params["n_projection"], params["epsilon"],
                                                               sigma, params["alpha"])
            rows.append({"class": k, "sigma": sigma, "count": count, "n": params["n_projection"],
                         "p_lower": cert.p_lower, "class_radius": cert.identity_radius, "w1_radius": radius_w1,
                         "generator_passes": 0, "seconds": seconds})
    return pd.DataFrame(rows).merge(gaps, on="class")


def cifar_samples(models: Models, method: str, sigma: float, params: dict[str, Any]) -> torch.Tensor:
    """``n_quality`` images per class ``[K, n, 3, 32, 32]`` (the base itself at σ = 0)."""
    out = []
    for k in params["classes"]:
        c, seed = models.codebook[k], params["seed"] + 1000 * k
        if sigma == 0:
            out.append(sample_base(models.shipped, c, params["n_quality"], seed, params["batch_size"]).cpu())
            continue
        noise = GaussianNoise(sigma, event_shape=c.shape)
        smoothed = SmoothedGenerator(generator_for(models, method, sigma), noise, params["batch_size"])
        out.append(smoothed.sample(c, params["n_quality"], seed=seed).cpu())
    return torch.stack(out)


def _features(evaluator: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats = evaluator_features(evaluator, images)
    with torch.inference_mode():
        labels = evaluator.head(feats).argmax(1)
    return feats.double().cpu().numpy(), labels.cpu().numpy()


def cifar_config(models: Models, evaluator: torch.nn.Module, method: str, sigma: float, fd: intervals.Frechet,
                 base: np.ndarray | None, params: dict[str, Any]) -> tuple[dict, list[dict], np.ndarray, torch.Tensor]:
    """Quality (with intervals) and per-class verdict certificates of one (method, σ)."""
    start = time.perf_counter()
    images = cifar_samples(models, method, sigma, params)
    seconds = (time.perf_counter() - start) / len(params["classes"])
    feats, labels = _features(evaluator, images.flatten(0, 1))
    labels = labels.reshape(len(params["classes"]), -1)
    per_class = []
    for i, k in enumerate(params["classes"]):
        count = int((labels[i] == k).sum())
        p_lower, radius = cohen_radius(count, labels.shape[1], sigma, params["alpha"]) if sigma > 0 else (math.nan, 0.0)
        per_class.append({"class": k, "verdict_count": count, "verdict_p_lower": p_lower, "verdict_radius": radius,
                          "generator_passes": labels.shape[1], "seconds": seconds})
    hits = _hits(per_class)
    row = {"method": method, "sigma": sigma, "n_images": len(feats), "feature_space": "evaluator",
           **intervals.proportion(hits, labels.size, "class_consistency"),
           **intervals.fid(fd, feats, feats if base is None else base, params["bootstrap"], params["seed"])}
    return row, per_class, feats, images[:, : params["grid_samples"]]


def cifar_breakdown(diffusion: Any, evaluator: torch.nn.Module, gaps: pd.DataFrame,
                    params: dict[str, Any]) -> pd.DataFrame:
    """Base breakdown radius of "the evaluator sees class k" from one fixed ``x_T`` per class (PGD on the
    class margin through the DDIM sampler; ``0`` when the clean image is already misclassified)."""
    rows = []
    for k in tqdm(params["breakdown_classes"], desc="cifar breakdown", leave=False):
        g = make_generator(params["seed"] + 31 * k + 5, "cpu")
        x_t = torch.randn((1, 3, 32, 32), generator=g)
        fn, center = A.with_fixed_noise(diffusion.sample_from_noise, x_t), diffusion.conditions()[k]
        half_gap = float(gaps.loc[k, "half_gap"])
        with torch.inference_mode():
            clean_label = int(evaluator(fn(center[None])).argmax(1)[0])
        if clean_label != k:
            rows.append({"class": k, "base_breakdown_radius": 0.0, "half_gap": half_gap})
            continue
        out = A.breakdown_radius(A.class_margin(fn, evaluator, k), center,
                                 np.asarray(params["breakdown_grid_rel"]) * half_gap, generator=g,
                                 steps=params["breakdown_pgd_steps"], restarts=1, refine_steps=params["refine_steps"])
        rows.append({"class": k, "base_breakdown_radius": out.radius, "half_gap": half_gap})
    table = pd.DataFrame(rows)
    return table.assign(base_breakdown_rel=table["base_breakdown_radius"] / table["half_gap"])


def cifar_at_radius(diffusion: Any, codebook: torch.Tensor, gaps: pd.DataFrame, radii: dict[int, float],
                    params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Base images (one fixed ``x_T`` per class) at ``u_k`` and at ``u_k`` moved by the certified radius,
    and by the whole half gap, towards the nearest other class."""
    out: dict[str, list[torch.Tensor]] = {"clean": [], "certified": [], "half_gap": []}
    for k in params["classes"]:
        j, half = int(gaps.loc[k, "nearest_class"]), float(gaps.loc[k, "half_gap"])
        direction = (codebook[j] - codebook[k]) / (codebook[j] - codebook[k]).norm()
        x_t = torch.randn((1, 3, 32, 32), generator=make_generator(params["seed"] + 31 * k + 5, "cpu"))
        for name, r in (("clean", 0.0), ("certified", radii.get(k, 0.0)), ("half_gap", half)):
            with torch.inference_mode():
                out[name].append(diffusion.sample_from_noise((codebook[k] + r * direction)[None], x_t)[0])
    return {name: torch.stack(v) for name, v in out.items()}


def cifar_block(models: Models, evaluator: torch.nn.Module, params: dict[str, Any]) -> dict[str, Any]:
    """Every CIFAR-10 table of the notebook."""
    gaps = class_gaps(models.codebook)
    unit = float(gaps["half_gap"].min())
    test = load_cifar10("test")
    fd = real_frechet(evaluator, test.images[: params["n_real"]])
    base_row, base_cls, base_feats, base_grid = cifar_config(models, evaluator, "base", 0.0, fd, None, params)
    quality, per_class, grids = [{**base_row, "sigma_rel": 0.0}], [], {("base", 0.0): base_grid}
    features = {("base", 0.0): (base_feats, _hits(base_cls))}
    for method, grid_rel in params["cifar_grid"].items():
        for rel in grid_rel:
            row, cls, feats, grid = cifar_config(models, evaluator, method, rel * unit, fd, base_feats, params)
            quality.append({**row, "sigma_rel": rel})
            per_class += [{**c, "method": method, "sigma": rel * unit, "sigma_rel": rel} for c in cls]
            grids[(method, rel)], features[(method, rel)] = grid, (feats, _hits(cls))
    projection = cifar_projection(models.codebook, [r * unit for r in params["cifar_grid"]["projection"]], gaps, params)
    projection["sigma_rel"] = projection["sigma"] / unit
    return {"gaps": gaps, "unit": unit, "quality": pd.DataFrame(quality), "per_class": pd.DataFrame(per_class),
            "projection": projection, "grids": grids, "base_per_class": pd.DataFrame(base_cls), "variant": test.variant,
            "fd": fd, "features": features}


def _hits(per_class: list[dict]) -> int:
    """Images whose evaluator verdict is their condition's class, over every class of :func:`cifar_config`."""
    return int(sum(c["verdict_count"] for c in per_class))


def cifar_radii(block: dict[str, Any], params: dict[str, Any]) -> pd.DataFrame:
    """One row per (method, σ, class): the class-identity and W₁ radii in natural units."""
    per_class = block["per_class"].merge(block["gaps"], on="class")
    per_class["class_radius"] = per_class["verdict_radius"]
    per_class["w1_radius"] = [float(certify.certified_radius(params["epsilon"], s, 1.0)) for s in per_class["sigma"]]
    proj = block["projection"].assign(method="projection")
    proj = proj.merge(per_class[per_class["method"] == "projection"][["class", "sigma_rel", "verdict_radius"]],
                      on=["class", "sigma_rel"], how="left")
    table = pd.concat([per_class[per_class["method"] != "projection"], proj], ignore_index=True)
    table["class_radius_rel"] = table["class_radius"] / table["half_gap"]
    table["w1_radius_rel"] = table["w1_radius"] / table["half_gap"]
    return table


# ----------------------------------------------------------------------------- PTB


def nearest_token_distance(codebook: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    """``min_{v ≠ t} ‖u_v − u_t‖`` for each token ``t`` in ``ids``."""
    u = codebook.double()
    d2 = (u[ids] ** 2).sum(1, keepdim=True) + (u**2).sum(1) - 2 * u[ids] @ u.T
    d2[torch.arange(len(ids)), ids] = math.inf
    return d2.min(1).values.clamp_min(0).sqrt().numpy()


def ptb_prompt_config(models: Models, gen: Any, method: str, sigma: float, i: int, prompt: torch.Tensor,
                      reference: torch.Tensor, clean: torch.Tensor, params: dict[str, Any]) -> dict[str, Any]:
    """One prompt at one (method, σ) with that configuration's generator ``gen``: continuation draws,
    their match with the clean continuation, NLL."""
    center, seed = models.shipped.prompt_embeddings(prompt), params["seed"] + 1000 * i
    start = time.perf_counter()
    if sigma == 0:
        draws = clean.expand(params["n_generate"], -1)
    else:
        noise = GaussianNoise(sigma, event_shape=center.shape)
        draws = SmoothedGenerator(gen, noise, params["batch_size"]).sample(center, params["n_generate"], seed=seed).cpu()
    seconds = time.perf_counter() - start
    count = int((draws == clean).all(1).sum())
    p_lower, radius = cohen_radius(count, len(draws), sigma, params["alpha"]) if sigma > 0 else (math.nan, 0.0)
    texts = [models.shipped.vocab.decode(d.tolist()) for d in draws[: params["n_text"]]]
    nll = reference_nll(getattr(gen, "base", gen), prompt, reference, sigma, params["nll_draws"],
                        make_generator(seed + 5, "cpu"), front=getattr(gen, "front", None))
    return {"prompt_id": i, "method": method, "sigma": sigma, "match_count": count, "n": len(draws),
            "match_p_lower": p_lower, "continuation_radius": radius, "reference_nll": nll,
            "generator_passes": len(draws), "seconds": seconds, "texts": texts}


def ptb_projection(codebook: torch.Tensor, pairs: list, sigmas: list[float], params: dict[str, Any]) -> pd.DataFrame:
    """Concentration certificates of every prompt's continuation at every σ (projections only)."""
    front, rows = NearestEmbedding(codebook), []
    for i, (prompt, _) in enumerate(tqdm(pairs, desc="ptb projection", leave=False)):
        start = time.perf_counter()
        g = make_generator(params["seed"] + 17 * i + 3, "cpu")
        xi = torch.randn((params["n_projection_ptb"], prompt.numel(), codebook.shape[1]), generator=g)
        counts = front.hits(prompt, xi, sigmas)
        seconds = (time.perf_counter() - start) / len(sigmas)
        for sigma, count in zip(sigmas, counts):
            cert = certify.concentration_certificate(count, params["n_projection_ptb"], 0.0, sigma, params["alpha"])
            rows.append({"prompt_id": i, "sigma": sigma, "count": count, "n": params["n_projection_ptb"],
                         "p_lower": cert.p_lower, "continuation_radius": cert.identity_radius,
                         "generator_passes": 0, "seconds": seconds})
    return pd.DataFrame(rows)


def ptb_text_scores(rows: pd.DataFrame, clean_texts: list[str], certified_only: bool) -> dict[str, float]:
    """Stability BLEU-4 (draws vs the clean base continuation) and perplexity of the references."""
    use = rows[rows["continuation_radius"] > 0] if certified_only else rows
    preds = [t for texts in use["texts"] for t in texts]
    refs = [clean_texts[i] for i, texts in zip(use["prompt_id"], use["texts"]) for _ in texts]
    bleu = metrics.bleu(preds, refs) if preds else math.nan
    return {"stability_bleu4": bleu, "certified_prompts": int((rows["continuation_radius"] > 0).sum()),
            "reference_perplexity": math.exp(rows["reference_nll"].mean())}


def paired_bootstrap(rows: pd.DataFrame, base: pd.DataFrame, clean_texts: list[str], draws: int,
                     seed: int) -> dict[str, float]:
    """95 % intervals of stability BLEU-4 and of the perplexity ratio, resampling prompts (paired with the base)."""
    rng, ids = np.random.default_rng(seed), rows["prompt_id"].to_numpy()
    bleu, ratio = [], []
    by_id, base_nll = rows.set_index("prompt_id"), base.set_index("prompt_id")["reference_nll"]
    for _ in range(draws):
        pick = rng.choice(ids, len(ids))
        sample = by_id.loc[pick].reset_index()
        bleu.append(ptb_text_scores(sample, clean_texts, False)["stability_bleu4"])
        ratio.append(math.exp(sample["reference_nll"].mean() - base_nll.loc[pick].mean()))
    return {"stability_bleu4_low": float(np.nanpercentile(bleu, 2.5)),
            "stability_bleu4_high": float(np.nanpercentile(bleu, 97.5)),
            "perplexity_ratio_low": float(np.percentile(ratio, 2.5)),
            "perplexity_ratio_high": float(np.percentile(ratio, 97.5))}


def ptb_block(models: Models, params: dict[str, Any]) -> dict[str, Any]:
    """Every PTB table of the notebook."""
    lm, test = models.shipped, load_ptb("test")
    pairs = prompts(test.tokens, test.vocab.eos_id, params["prompt_len"], params["steps"], params["n_prompts"])
    unit = lm.embedding_geometry()["nn_median"]
    sigmas = [rel * unit for rel in params["ptb_sigma_rel"]]
    clean = lm(torch.stack([lm.prompt_embeddings(p) for p, _ in pairs]), make_generator(0, "cpu")).cpu()
    clean_texts = [lm.vocab.decode(c.tolist()) for c in clean]
    base = pd.DataFrame([ptb_prompt_config(models, lm, "base", 0.0, i, p, r, clean[i], params)
                         for i, (p, r) in enumerate(pairs)])
    projection = ptb_projection(models.codebook, pairs, sigmas, params)
    own = {"shipped": (clean, clean_texts)}
    per_prompt, quality = [], []
    for method in params["cifar_grid"]:
        for rel, sigma in zip(params["ptb_sigma_rel"], sigmas):
            gen = generator_for(models, method, sigma)
            ref, ref_texts = own_clean(models, method, pairs, own)
            rows = pd.DataFrame([ptb_prompt_config(models, gen, method, sigma, i, p, r, ref[i], params)
                                 for i, (p, r) in enumerate(tqdm(pairs, desc=f"{method} σ={rel}", leave=False))])
            if method == "projection":
                proj = projection[projection["sigma"] == sigma].set_index("prompt_id")
                rows["match_radius"] = rows["continuation_radius"]
                rows["continuation_radius"] = proj.loc[rows["prompt_id"], "continuation_radius"].to_numpy()
            scores = ptb_text_scores(rows, ref_texts, certified_only=True)
            quality.append({"method": method, "sigma_rel": rel, "sigma": sigma, **scores,
                            "perplexity_ratio": scores["reference_perplexity"] / math.exp(base["reference_nll"].mean()),
                            **paired_bootstrap(rows, base, ref_texts, params["bootstrap_text"], params["seed"])})
            per_prompt.append(rows.assign(sigma_rel=rel))
    table = pd.concat(per_prompt, ignore_index=True)
    nn = np.stack([nearest_token_distance(models.codebook, p) for p, _ in pairs])
    table["prompt_nn_min"] = nn.min(1)[table["prompt_id"]]
    table["radius_rel"] = table["continuation_radius"] / unit
    table["word_swaps"] = table["continuation_radius"] / table["prompt_nn_min"]
    return {"pairs": pairs, "clean": clean, "clean_texts": clean_texts, "unit": unit, "base": base,
            "projection": projection.assign(sigma_rel=projection["sigma"] / unit), "per_prompt": table,
            "quality": pd.DataFrame(quality), "variant": test.variant}


def own_clean(models: Models, method: str, pairs: list, cache: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """The clean greedy continuations of ``method``'s own base model (a noise-trained LM is measured
    against its own, not the shipped model's), computed once per base into ``cache``."""
    key = "noise_trained" if method.startswith("noise_trained") else "shipped"
    if key not in cache:
        lm = models.shipped
        out = models.noise_trained(torch.stack([lm.prompt_embeddings(p) for p, _ in pairs]), make_generator(0, "cpu"))
        cache[key] = out.cpu(), [lm.vocab.decode(c.tolist()) for c in out.cpu()]
    return cache[key]


def ptb_breakdowns(lm: Any, block: dict[str, Any], params: dict[str, Any]) -> pd.DataFrame:
    """Base breakdown radius (PGD on the continuation's margin) of every prompt, in natural units."""
    grid = np.asarray(params["breakdown_grid_rel"]) * block["unit"]
    knobs = {"seed": params["seed"], "ptb_base_pgd_steps": params["breakdown_pgd_steps"],
             "refine_steps": params["refine_steps"]}
    rows = [ptb_breakdown(lm, i, lm.prompt_embeddings(p), grid, knobs)[0]
            for i, (p, _) in enumerate(tqdm(block["pairs"][: params["n_breakdown_prompts"]], desc="ptb breakdown",
                                            leave=False))]
    table = pd.DataFrame(rows)
    return table.assign(base_breakdown_rel=table["base_breakdown_radius"] / block["unit"])


def ptb_at_radius(lm: Any, block: dict[str, Any], radii: pd.Series, count: int) -> pd.DataFrame:
    """Base continuations after moving each prompt's most fragile word towards its nearest neighbour
    by the certified radius (and all the way: the word swap)."""
    rows, book = [], lm.token_embeddings()
    for i, (prompt, _) in enumerate(block["pairs"][:count]):
        nn = nearest_token_distance(book, prompt)
        t = int(nn.argmin())
        d2 = ((book - book[prompt[t]]) ** 2).sum(1)
        d2[prompt[t]] = math.inf
        neighbour = int(d2.argmin())
        direction = (book[neighbour] - book[prompt[t]]) / float(nn[t])
        for name, r in (("certified", float(radii.get(i, 0.0))), ("word_swap", float(nn[t]))):
            moved = lm.prompt_embeddings(prompt).clone()
            moved[t] += r * direction
            out = lm(moved[None], make_generator(0, "cpu"))[0]
            rows.append({"prompt_id": i, "prompt": lm.vocab.decode(prompt.tolist()), "word": lm.vocab.decode([int(prompt[t])]),
                         "neighbour": lm.vocab.decode([neighbour]), "move": name, "radius": r,
                         "radius_rel": r / block["unit"], "continuation": lm.vocab.decode(out.tolist()),
                         "clean_continuation": block["clean_texts"][i]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- summary and run


def _best(radii: pd.DataFrame, quality: pd.DataFrame, ok: pd.Series, key: str) -> dict[str, Any]:
    """The (method, σ) with the largest median ``key`` among the configurations whose quality is ``ok``."""
    medians = radii.groupby(["method", "sigma_rel"])[key].median().rename("value").reset_index()
    allowed = quality[ok][["method", "sigma_rel"]]
    medians = medians.merge(allowed, on=["method", "sigma_rel"])
    if medians.empty:
        return {"value": None, "method": None, "sigma_rel": None}
    top = medians.loc[medians["value"].idxmax()]
    return {"value": float(top["value"]), "method": str(top["method"]), "sigma_rel": float(top["sigma_rel"])}


def summary(cifar: dict[str, Any], ptb: dict[str, Any], cifar_break: pd.DataFrame, ptb_break: pd.DataFrame,
            params: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The issue's target keys (fractions), each from the best configuration meeting its quality condition;
    again prefixed ``noise_trained_`` for the configurations without a projection front-end, and ``naive_``
    for the shipped generators without a front-end; plus the chosen method and σ of each, and the base
    models' median breakdown radii in the same units."""
    radii, cq, pq = cifar["radii"], cifar["quality"], ptb["quality"]
    out, choices = {}, []
    for prefix, keep in (("", lambda m: True), ("noise_trained_", lambda m: "projection" not in m),
                         ("naive_", lambda m: m == "naive")):
        cq_ok = (cq["class_consistency"] >= params["target_consistency"]) & (cq["fid_ratio"] <= params["target_fid_ratio"]) \
            & cq["method"].map(keep)
        cls = _best(radii, cq, cq_ok, "class_radius_rel")
        w1 = _best(radii, cq, cq_ok, "w1_radius_rel")
        pq_ok = (pq["stability_bleu4"] >= params["target_bleu"]) & (pq["perplexity_ratio"] <= params["target_ppl_ratio"]) \
            & pq["method"].map(keep)
        text = _best(ptb["per_prompt"], pq, pq_ok, "radius_rel")
        cc = cq.set_index(["method", "sigma_rel"]).loc[(cls["method"], cls["sigma_rel"])] if cls["method"] else None
        tq = pq.set_index(["method", "sigma_rel"]).loc[(text["method"], text["sigma_rel"])] if text["method"] else None
        cls_abs = _median_abs(radii, cls, "class_radius")
        txt_abs = _median_abs(ptb["per_prompt"], text, "continuation_radius")
        out.update({
            f"{prefix}cifar10_class_radius_frac_half_gap": cls["value"],
            f"{prefix}cifar10_class_consistency": None if cc is None else float(cc["class_consistency"]),
            f"{prefix}cifar10_fid_ratio": None if cc is None else float(cc["fid_ratio"]),
            f"{prefix}cifar10_w1_radius_frac_half_gap": w1["value"],
            f"{prefix}ptb_radius_frac_nearest_token": text["value"],
            f"{prefix}ptb_stability_bleu4": None if tq is None else float(tq["stability_bleu4"]),
            f"{prefix}ptb_perplexity_ratio": None if tq is None else float(tq["perplexity_ratio"]),
            f"{prefix}cifar10_smoothed_over_base_breakdown": _ratio(cls_abs, cifar_break["base_breakdown_radius"]),
            f"{prefix}ptb_smoothed_over_base_breakdown": _ratio(txt_abs, ptb_break["base_breakdown_radius"]),
        })
        choices += [{"prefix": prefix, "target": name, **best} for name, best in
                    (("cifar10_class", cls), ("cifar10_w1", w1), ("ptb_continuation", text))]
        out.update({f"{prefix}{name}_{field}": best[field] for name, best in
                    (("cifar10_class", cls), ("cifar10_w1", w1), ("ptb_continuation", text))
                    for field in ("method", "sigma_rel")})
    out.update({"cifar10_base_breakdown_frac_half_gap": float(cifar_break["base_breakdown_rel"].median()),
                "ptb_base_breakdown_frac_nearest_token": float(ptb_break["base_breakdown_rel"].median())})
    return out, pd.DataFrame(choices)


def _median_abs(table: pd.DataFrame, best: dict[str, Any], key: str) -> float | None:
    if best["method"] is None:
        return None
    rows = table[(table["method"] == best["method"]) & (table["sigma_rel"] == best["sigma_rel"])]
    return float(rows[key].median())


def _ratio(certified: float | None, breakdown: pd.Series) -> float | None:
    base = float(breakdown.median())
    return None if certified is None or not base > 0 or not math.isfinite(base) else certified / base


HEADLINE = {"cifar10": ("cifar10_class_radius_frac_half_gap", "cifar10_class_consistency", "cifar10_fid_ratio"),
            "ptb": ("ptb_radius_frac_nearest_token", "ptb_stability_bleu4", "ptb_perplexity_ratio")}
"""The headline keys of ``summary.json`` that :func:`cifar_seeds` and :func:`ptb_seeds` repeat over seeds (radius,
then quality)."""


def _cifar_radius(block: dict[str, Any], models: Models, method: str, sigma: float, per_class: list[dict],
                  params: dict[str, Any]) -> float:
    """Median certified class-identity radius over the half gap of one configuration."""
    gaps = block["gaps"]
    if method == "projection":
        radii = cifar_projection(models.codebook, [sigma], gaps, params)
        return float((radii["class_radius"] / radii["half_gap"]).median())
    merged = pd.DataFrame(per_class).merge(gaps, on="class")
    return float((merged["verdict_radius"] / merged["half_gap"]).median())


def cifar_roles(targets: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Each distinct CIFAR-10 configuration the text compares, by the target prefix that chose it: ``headline``,
    ``noise_trained_headline``, ``naive_headline`` (a configuration chosen twice keeps its first role)."""
    roles: dict[tuple[str, float], str] = {}
    for prefix in ("", "noise_trained_", "naive_"):
        method, rel = targets[f"{prefix}cifar10_class_method"], targets[f"{prefix}cifar10_class_sigma_rel"]
        if method is not None:
            roles.setdefault((method, rel), f"{prefix}headline")
    return {role: config for config, role in roles.items()}


def cifar_seeds(models: Models, evaluator: torch.nn.Module, block: dict[str, Any], targets: dict[str, Any],
                roles: dict[str, tuple[str, float]], params: dict[str, Any]) -> tuple[list[dict], dict[str, list]]:
    """Every configuration of :func:`cifar_roles` and the base, generated and certified again at each seed of
    ``headline_seeds``: the headline values per (role, seed), and each role's ``(features, hits)`` over all
    seeds (the grid's run first) for :func:`pooled_fid`."""
    pooled = {role: [block["features"][config]] for role, config in {"base": ("base", 0.0), **roles}.items()}
    rows = [{"dataset": "cifar10", "role": role, "method": method, "sigma_rel": rel, "headline_seed": params["seed"],
             **{key: targets[role.removesuffix("headline") + key] for key in HEADLINE["cifar10"]}}
            for role, (method, rel) in roles.items()]
    for seed in tqdm(params["headline_seeds"], desc="cifar10 headline seeds", leave=False):
        sub = {**params, "seed": seed}
        _, base_cls, base_feats, _ = cifar_config(models, evaluator, "base", 0.0, block["fd"], None, sub)
        pooled["base"].append((base_feats, _hits(base_cls)))
        for role, (method, rel) in roles.items():
            sigma = rel * block["unit"]
            row, per_class, feats, _ = cifar_config(models, evaluator, method, sigma, block["fd"], base_feats, sub)
            pooled[role].append((feats, _hits(per_class)))
            values = (_cifar_radius(block, models, method, sigma, per_class, sub), row["class_consistency"],
                      row["fid_ratio"])
            rows.append({"dataset": "cifar10", "role": role, "method": method, "sigma_rel": rel, "headline_seed": seed,
                         **dict(zip(HEADLINE["cifar10"], values))})
    return rows, pooled


def _ptb_seed(models: Models, block: dict[str, Any], method: str, rel: float,
              params: dict[str, Any]) -> tuple[float, float, float]:
    """Median continuation radius over the nearest-token unit, stability BLEU-4 and perplexity ratio of one
    configuration (against the main run's base: at σ = 0 nothing depends on the seed)."""
    sigma, pairs = rel * block["unit"], block["pairs"]
    ref, ref_texts = own_clean(models, method, pairs, {"shipped": (block["clean"], block["clean_texts"])})
    gen = generator_for(models, method, sigma)
    rows = pd.DataFrame([ptb_prompt_config(models, gen, method, sigma, i, p, r, ref[i], params)
                         for i, (p, r) in enumerate(pairs)])
    if method == "projection":
        rows["continuation_radius"] = ptb_projection(models.codebook, pairs, [sigma], params)["continuation_radius"]
    scores = ptb_text_scores(rows, ref_texts, certified_only=True)
    ratio = scores["reference_perplexity"] / math.exp(block["base"]["reference_nll"].mean())
    return float(rows["continuation_radius"].median() / block["unit"]), scores["stability_bleu4"], ratio


def ptb_seeds(models: Models, block: dict[str, Any], targets: dict[str, Any], params: dict[str, Any]) -> list[dict]:
    """The best PTB continuation configuration at the main seed and again at each seed of ``headline_seeds``."""
    method, rel = targets["ptb_continuation_method"], targets["ptb_continuation_sigma_rel"]
    if method is None:
        return []
    common = {"dataset": "ptb", "role": "headline", "method": method, "sigma_rel": rel}
    rows = [{**common, "headline_seed": params["seed"], **{k: targets[k] for k in HEADLINE["ptb"]}}]
    for seed in tqdm(params["headline_seeds"], desc="ptb headline seeds", leave=False):
        values = _ptb_seed(models, block, method, rel, {**params, "seed": seed})
        rows.append({**common, "headline_seed": seed, **dict(zip(HEADLINE["ptb"], values))})
    return rows


def seed_spread(seeds: pd.DataFrame) -> dict[str, Any]:
    """``<key>_seed_min`` / ``<key>_seed_max`` of every headline key over the seeds (rows of ``role ==
    "headline"``), and the number of seeds."""
    out: dict[str, Any] = {"headline_seeds": int(seeds["headline_seed"].nunique()) if len(seeds) else 0}
    for dataset, keys in HEADLINE.items():
        part = seeds[(seeds["dataset"] == dataset) & (seeds["role"] == "headline")] if len(seeds) else seeds
        for key in keys:
            out[f"{key}_seed_min"] = float(part[key].min()) if len(part) else None
            out[f"{key}_seed_max"] = float(part[key].max()) if len(part) else None
    return out


def pooled_fid(block: dict[str, Any], pooled: dict[str, list], roles: dict[str, tuple[str, float]],
               params: dict[str, Any]) -> pd.DataFrame:
    """FID and class-consistency of the base and of every configuration the text compares, on the images of
    all headline seeds pooled (``(1 + len(headline_seeds)) · n_quality`` per class) against the ``n_real``
    test images, with 95 % intervals (basic bootstrap over the images for FID and its ratio to the pooled
    base, Clopper–Pearson for class-consistency).

    The grid's FIDs use ``n_quality`` images per class, a size at which FID's upward bias can exceed the
    differences between configurations; the images of the seeds are independent draws of the same smoothed
    generator, so pooling them scores the compared configurations on many more images at no extra cost.
    """
    base = np.concatenate([feats for feats, _ in pooled["base"]])
    rows = []
    for role, parts in pooled.items():
        feats, hits = np.concatenate([f for f, _ in parts]), sum(h for _, h in parts)
        method, rel = roles.get(role, ("base", 0.0))
        rows.append({"role": role, "method": method, "sigma_rel": rel, "seeds": len(parts), "n_images": len(feats),
                     **intervals.proportion(hits, len(feats), "class_consistency"),
                     **intervals.fid(block["fd"], feats, base, params["bootstrap"], params["seed"])})
    return pd.DataFrame(rows)


def load_models(params: dict[str, Any], device: torch.device) -> tuple[Models, Models, torch.nn.Module]:
    """Shipped (and, where the preset names them, noise-trained) generators of both datasets."""
    diffusion = load_diffusion(device=device, steps=params["diffusion_steps"], guidance_scale=params["guidance_scale"])
    lm = load_lm(device=device, steps=params["steps"], mode="greedy")
    noisy_d = params["diffusion_noise_checkpoint"]
    noisy_l = params["lm_noise_checkpoint"]
    cifar = Models(diffusion, None if noisy_d is None else load_diffusion(
        noisy_d, device=device, steps=params["diffusion_steps"], guidance_scale=params["guidance_scale"]),
        diffusion.conditions())
    ptb = Models(lm, None if noisy_l is None else load_lm(noisy_l, device=device, steps=params["steps"]),
                 lm.token_embeddings())
    return cifar, ptb, load_classifier(None)


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 08: both datasets, every method on the σ grid, breakdowns, summary.json."""
    clock = Stopwatch()
    cifar_models, ptb_models, evaluator = load_models(params, resolve_device(params.get("device")))
    cifar = cifar_block(cifar_models, evaluator, params)
    cifar["radii"] = cifar_radii(cifar, params)
    ptb = ptb_block(ptb_models, params)
    cifar_break = cifar_breakdown(cifar_models.shipped, evaluator, cifar["gaps"], params)
    ptb_break = ptb_breakdowns(ptb_models.shipped, ptb, params)
    targets, choices = summary(cifar, ptb, cifar_break, ptb_break, params)
    roles = cifar_roles(targets)
    cifar_rows, pooled = cifar_seeds(cifar_models, evaluator, cifar, targets, roles, params)
    seeds = pd.DataFrame(cifar_rows + ptb_seeds(ptb_models, ptb, targets, params))
    targets.update(seed_spread(seeds))
    fid_large = pooled_fid(cifar, pooled, roles, params)
    best = choices.set_index(["prefix", "target"])
    cls = best.loc[("", "cifar10_class")]
    chosen = cifar["radii"][(cifar["radii"]["method"] == cls["method"]) & (cifar["radii"]["sigma_rel"] == cls["sigma_rel"])]
    images = cifar_at_radius(cifar_models.shipped, cifar_models.codebook, cifar["gaps"],
                             dict(zip(chosen["class"], chosen["class_radius"])), params)
    txt = best.loc[("", "ptb_continuation")]
    rows = ptb["per_prompt"][(ptb["per_prompt"]["method"] == txt["method"]) & (ptb["per_prompt"]["sigma_rel"] == txt["sigma_rel"])]
    texts = ptb_at_radius(ptb_models.shipped, ptb, rows.set_index("prompt_id")["continuation_radius"], params["n_texts_shown"])
    tables = {"cifar_gaps": cifar["gaps"], "cifar_quality": cifar["quality"], "cifar_radii": cifar["radii"],
              "cifar_breakdown": cifar_break, "ptb_quality": ptb["quality"],
              "ptb_per_prompt": ptb["per_prompt"].drop(columns="texts"), "ptb_projection": ptb["projection"],
              "ptb_breakdown": ptb_break, "ptb_at_radius": texts, "choices": choices, "cost": cost_table(cifar, ptb),
              "headline_seeds": seeds, "cifar_fid_large": fid_large}
    result = finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant=cifar["variant"], clock=clock,
                    diffusion_sha256=cifar_models.shipped.card["sha256"], lm_sha256=ptb_models.shipped.card["sha256"])
    write_json(Path(result.directory) / "summary.json",
               {**targets, "alpha": params["alpha"], "epsilon": params["epsilon"], "preset": params["preset"],
                "seed": params["seed"], "grid_configurations": {"cifar10": sum(map(len, params["cifar_grid"].values())),
                                       "ptb": len(params["cifar_grid"]) * len(params["ptb_sigma_rel"])},
                "noise_trained_checkpoints": [params["diffusion_noise_checkpoint"], params["lm_noise_checkpoint"]],
                "git_commit": result.meta.get("git_commit")})
    result.extras.update(grids=cifar["grids"], at_radius=images, targets=targets)
    return result


def cost_table(cifar: dict[str, Any], ptb: dict[str, Any]) -> pd.DataFrame:
    """Generator passes and seconds per certificate, by dataset and method (medians over conditions)."""
    rows = []
    for dataset, table in (("cifar10", cifar["radii"]), ("ptb", ptb["per_prompt"])):
        for method, group in table.groupby("method"):
            rows.append({"dataset": dataset, "method": method, "generator_passes": float(group["generator_passes"].median()),
                         "seconds": float(group["seconds"].median())})
    proj = ptb["projection"]
    rows.append({"dataset": "ptb", "method": "projection (certificate only)", "generator_passes": 0.0,
                 "seconds": float(proj["seconds"].median())})
    rows.append({"dataset": "cifar10", "method": "diffusion-denoised smoothing (literature, A100)",
                 "generator_passes": math.nan, "seconds": LITERATURE_DDS_SECONDS})
    return pd.DataFrame(rows)
