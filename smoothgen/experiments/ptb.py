r"""Notebook 04: smoothing the prompt embeddings of the PTB language model.

A prompt is the first ``k`` tokens of a Penn Treebank test sentence; its reference continuation
the next ``T`` tokens. The condition is the ``[k, d]`` matrix of the prompt's token embeddings;
SmoothGen adds ``N(0, σ² I)`` to it (σ relative to the mean token-embedding norm) and

* decodes greedily with the smoothed decoder (majority token per step over noisy prompts),
  certifying the whole emitted sequence (:func:`smoothgen.certify.sequence_certificate`);
* samples continuations (temperature sampling) for the data-dependent W₁ certificate under the
  normalised edit distance ``lev/T`` (a metric with diameter ``D = 1`` on length-``T`` sequences);
* scores the smoothed greedy output with BLEU/ROUGE against the **reference** continuation
  (quality) and against the **clean base** greedy output (stability), and the reference's
  perplexity given the noisy prompt.

Radii are also given in units of the median nearest-neighbour distance between token embeddings
(roughly: how many single-word swaps of the prompt a radius covers).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from smoothgen import certify, distributed, intervals, metrics
from smoothgen.data import load_ptb
from smoothgen.experiments.common import StudyResult, Stopwatch, finish
from smoothgen.models.lm import LMGenerator, load_lm
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import make_generator, resolve_device
from smoothgen.smoothing import SmoothedGenerator, SmoothedGreedyDecoder, medoid_index

EXPERIMENT = "04_ptb"
SHARDED = True
"""The prompts of each σ are split across torchrun ranks (:mod:`smoothgen.distributed`)."""


def prompts(tokens: torch.Tensor, eos_id: int, k: int, steps: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (prompt ``[k]``, reference ``[T]``) pairs from sentences with at least ``k + T`` words,
    spread evenly over the stream (deterministic)."""
    ends = torch.nonzero(tokens == eos_id).flatten().tolist()
    starts = [0] + [e + 1 for e in ends[:-1]]
    eligible = [(s, e) for s, e in zip(starts, ends) if e - s >= k + steps]
    if len(eligible) < count:
        raise ValueError(f"only {len(eligible)} sentences have {k + steps} words; ask for fewer prompts")
    chosen = np.linspace(0, len(eligible) - 1, count).round().astype(int)
    return [(tokens[eligible[i][0] : eligible[i][0] + k], tokens[eligible[i][0] + k : eligible[i][0] + k + steps])
            for i in chosen]


def reference_nll(lm: LMGenerator, prompt: torch.Tensor, reference: torch.Tensor, sigma: float,
                  draws: int, generator: torch.Generator, front: Any = None) -> float:
    """Mean NLL per token of the reference continuation given ``draws`` noisy copies of the prompt
    (passed through the fixed front-end ``front`` when one is given)."""
    embeds = lm.prompt_embeddings(prompt).expand(draws, -1, -1)
    if sigma > 0:
        embeds = embeds + sigma * torch.randn(embeds.shape, generator=generator, device=embeds.device)
    ref = reference.to(lm.device).expand(draws, -1)
    with torch.inference_mode():
        embeds = embeds if front is None else front(embeds)
        inputs = torch.cat([embeds, lm.model.transformer.wte(ref[:, :-1])], dim=1)
        logits = lm.model(inputs_embeds=inputs).logits[:, prompt.numel() - 1 :].float()
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ref.flatten()))


def smoothed_greedy(lm: LMGenerator, prompt: torch.Tensor, sigma: float, params: dict[str, Any], seed: int) -> Any:
    """Certified smoothed greedy decoding of one prompt (``None`` for σ = 0: the base greedy output)."""
    noise = GaussianNoise(sigma, event_shape=(prompt.numel(), lm.embedding_dim))
    decoder = SmoothedGreedyDecoder(lm.next_token, noise, len(lm.vocab), params["batch_size"])
    return decoder.decode(lm.prompt_embeddings(prompt), params["steps"], params["n0"], params["n"],
                          params["alpha"], seed=seed)


def w1_rows(sampler: LMGenerator, prompt: torch.Tensor, sigma: float, radii: np.ndarray,
            params: dict[str, Any], seed: int) -> list[dict[str, float]]:
    """Data-dependent W₁ certificate (normalised edit distance, D = 1) of sampled continuations."""
    smoothed = SmoothedGenerator(sampler, GaussianNoise(sigma, event_shape=(prompt.numel(), sampler.embedding_dim)),
                                 params["batch_size"])
    embeds = sampler.prompt_embeddings(prompt)
    pilot = smoothed.sample(embeds, params["n_pilot"], seed=seed + 1).cpu()
    reference = pilot[medoid_index(pilot.float(), _edit_metric)]
    samples = smoothed.sample(embeds, params["n_samples"], seed=seed).cpu()
    distances = metrics.pairwise_normalized_edit_distance(samples, reference[None]).flatten().numpy()
    return [{"radius": r, "w1_certificate": certify.wasserstein_certificate(distances, r, sigma, params["alpha"], 1.0),
             "w1_diameter_bound": certify.wasserstein_bound(r, sigma, 1.0),
             "mean_distance_to_reference": float(distances.mean())} for r in radii]


def _edit_metric(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return metrics.pairwise_normalized_edit_distance(a.long(), b.long()).to(a.dtype)


def run_prompt(lm: LMGenerator, sampler: LMGenerator, i: int, pair: tuple[torch.Tensor, torch.Tensor], base: str,
               sigma: float, radii: np.ndarray, params: dict[str, Any]) -> tuple[dict, list[dict]]:
    """One prompt at one σ, all its randomness from its own seed ``seed + 1000·i``: its row and W₁ rows."""
    (prompt, reference), seed = pair, params["seed"] + 1000 * i
    nll = reference_nll(lm, prompt, reference, sigma, params["nll_draws"], make_generator(seed + 2, lm.device))
    row = {"prompt_id": i, "prompt": lm.vocab.decode(prompt.tolist()), "reference": lm.vocab.decode(reference.tolist()),
           "base": base, "reference_nll": nll}
    if sigma == 0:
        return {**row, "smoothed": base, "sequence_radius": math.nan}, []
    decoding = smoothed_greedy(lm, prompt, sigma, params, seed)
    cert = decoding.certificate
    row.update(smoothed=lm.vocab.decode(decoding.tokens.tolist()), sequence_radius=cert.radius,
               first_step_radius=float(cert.step_radii[0]), abstained_steps=int(cert.abstained.sum()))
    return row, [{"prompt_id": i, **r} for r in w1_rows(sampler, prompt, sigma, radii, params, seed)]


def run_sigma(lm: LMGenerator, sampler: LMGenerator, pairs: list, sigma: float, radii: np.ndarray,
              params: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """One σ over all prompts (split across torchrun ranks, :mod:`smoothgen.distributed`): per-prompt rows
    and W₁ rows."""
    base = lm(torch.stack([lm.prompt_embeddings(p) for p, _ in pairs]), make_generator(params["seed"], lm.device)).cpu()
    done = distributed.map_items(
        lambda i, pair: run_prompt(lm, sampler, i, pair, lm.vocab.decode(base[i].tolist()), sigma, radii, params),
        pairs, desc=f"σ={sigma:.3g}")
    return [row for row, _ in done], [w for _, rows in done for w in rows]


def add_semantic(table: pd.DataFrame, encoder: metrics.SentenceEncoder) -> pd.DataFrame:
    """Per prompt, the sentence-embedding cosine similarity of the smoothed output with the reference and
    with the base output (:func:`smoothgen.metrics.semantic_similarity`)."""
    smoothed = table["smoothed"].tolist()
    return table.assign(**{f"semantic_vs_{target}": metrics.semantic_similarity(smoothed, table[target].tolist(), encoder)
                           for target in ("reference", "base")})


def text_scores(table: pd.DataFrame) -> dict[str, float]:
    """Corpus BLEU-4 and BLEU-2, mean ROUGE and mean semantic similarity of the smoothed outputs against
    the references (quality) and against the clean base outputs (stability), distinct-1/2 of the outputs
    (diversity), and the perplexity of the references. :func:`run` bootstraps them over the prompts
    (95 % intervals, :func:`smoothgen.intervals.bootstrap_all`)."""
    preds, scores = table["smoothed"].tolist(), {}
    for target in ("reference", "base"):
        refs = table[target].tolist()
        scores.update({f"bleu_vs_{target}": metrics.bleu(preds, refs, smooth=True),
                       f"bleu2_vs_{target}": metrics.bleu(preds, refs, n_gram=2, smooth=True),
                       f"semantic_vs_{target}": float(table[f"semantic_vs_{target}"].mean())})
        scores.update({f"{k}_vs_{target}": v for k, v in metrics.rouge(preds, refs).items()})
    scores.update(distinct_1=metrics.distinct_n(preds, 1), distinct_2=metrics.distinct_n(preds, 2),
                  reference_perplexity=math.exp(table["reference_nll"].mean()))
    return scores


def run(params: dict[str, Any]) -> StudyResult:
    """Run notebook 04 over the σ grid (σ = 0 is the unsmoothed base model)."""
    clock = Stopwatch()
    device = resolve_device(params.get("device"))
    lm = load_lm(device=device, steps=params["steps"], mode="greedy")
    sampler = LMGenerator(lm.model, lm.vocab, steps=params["steps"], mode="sample",
                          temperature=params["temperature"], top_k=params["top_k"])
    test = load_ptb("test")
    pairs = prompts(test.tokens, test.vocab.eos_id, params["prompt_len"], params["steps"], params["n_prompts"])
    geometry = lm.embedding_geometry()
    radii = np.asarray(params["radii_rel"]) * geometry["nn_median"]
    per_prompt, w1_tables, quality, encoder = [], [], [], metrics.SentenceEncoder(device)
    for rel in params["sigma_rel"]:
        sigma = rel * geometry["mean_norm"]
        rows, w1 = run_sigma(lm, sampler, pairs, sigma, radii, params)
        table = add_semantic(pd.DataFrame(rows).assign(sigma_rel=rel, sigma=sigma), encoder)
        per_prompt.append(table)
        if w1:
            w1_tables.append(pd.DataFrame(w1).assign(sigma_rel=rel, sigma=sigma))
        scores = intervals.bootstrap_all(lambda idx: text_scores(table.iloc[idx]), len(table), params["bootstrap"],
                                         params["seed"])
        quality.append({"sigma_rel": rel, "sigma": sigma, "n_prompts": len(table), **scores,
                        "median_sequence_radius": float(table["sequence_radius"].median())})
    w1_table = pd.concat(w1_tables, ignore_index=True)
    w1_table["radius_rel"] = w1_table["radius"] / geometry["nn_median"]
    tables = {"geometry": pd.DataFrame([geometry]), "per_prompt": pd.concat(per_prompt, ignore_index=True),
              "quality": pd.DataFrame(quality), "w1": w1_table}
    return finish(EXPERIMENT, params, tables, seed=params["seed"], data_variant=test.variant, clock=clock,
                  checkpoint_sha256=lm.card["sha256"])
