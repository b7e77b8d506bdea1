r"""The projection front-end in notebooks 05 and 06: its certificate attacked, its σ read off the cells.

Both parts use :class:`~smoothgen.models.frontends.NearestEmbedding` (snap each noisy row to its
nearest class / token embedding) and the concentration certificate: with ``p̲`` a lower bound on
``P(c + σε ∈ A)`` (``A``: every row stays in the cell of ``c``),

.. math:: P_{c+\delta}(\text{leave } A) \le 1 - \Phi(\Phi^{-1}(\underline p) - \|\delta\|/\sigma) \quad(= \text{the TV bound}),

and the output, a function of the snapped condition, is the clean one whenever the draw stays in ``A``.

* **Notebook 06** (:func:`cell_attack_rows`, :func:`cifar_cell_block`, :func:`ptb_cell_block`):
  PGD on the smooth union bound :func:`smoothgen.attacks.cell_exit_bound`, and the straight move
  towards the nearest face, each judged on fresh projections at ``c + δ`` against the bound above;
  end to end, the smoothed generator's class-consistency (CIFAR-10) and continuation (PTB) at the
  attacked condition against the same bound.
* **Notebook 05** (:func:`cell_sigma_block`): σ read off the received condition's cells
  (:class:`smoothgen.calibrate.CellSigma`), per class / per prompt, against one global σ; the
  calibration target is the *quality* cost ``P_c(\text{leave } A) \le q`` (which bounds the TV
  between the smoothed and the base output law at ``c``), and the radius is maximised under it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import special
from tqdm.auto import tqdm

from smoothgen import attacks as A
from smoothgen import certify
from smoothgen.calibrate import CellSigma
from smoothgen.experiments.common import trial
from smoothgen.models.frontends import FrontEndGenerator, NearestEmbedding
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import make_generator
from smoothgen.smoothing import SmoothedGenerator


def unit_noise(n: int, rows: int, dim: int, seed: int) -> torch.Tensor:
    """``[n, rows, dim]`` standard normal draws from their own seeded stream."""
    return torch.randn((n, rows, dim), generator=make_generator(seed, "cpu"))


def exit_estimate(front: NearestEmbedding, ids: torch.Tensor, point: torch.Tensor, sigma: float, n: int,
                  seed: int) -> A.Estimate:
    """Fraction of ``n`` fresh draws ``point + σξ`` that leave the cells of ``ids``, with its lower bound."""
    stay = front.hits(ids, unit_noise(n, len(ids), front.dim, seed), [sigma], points=point)[0]
    return A.proportion_estimate(np.r_[np.ones(n - stay), np.zeros(stay)])


def face_delta(front: NearestEmbedding, ids: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """``δ`` of norm ``radius`` moving the row with the smallest margin straight to its nearest face."""
    margins = front.margins(center, ids)
    row = int(margins.argmin())
    book = front.codebook.double()
    d2 = ((book - center[row].double()) ** 2).sum(1)
    d2[ids[row]] = math.inf
    direction = book[int(d2.argmin())] - book[ids[row]]
    delta = torch.zeros_like(center, dtype=torch.float64)
    delta[row] = radius * direction / direction.norm()
    return delta


def halfspace_exit(margin: float, radius: float, sigma: float) -> float:
    """Exit probability through the nearest face alone after a move of ``radius`` towards it,
    ``Φ(−(m − r)/σ)``: a floor for what the strongest attack must reach."""
    return float(special.ndtr(-(margin - radius) / sigma))


def strongest_delta(front: NearestEmbedding, ids: torch.Tensor, center: torch.Tensor, sigma: float, radius: float,
                    params: dict[str, Any], seed: int) -> tuple[str, torch.Tensor]:
    """The stronger of two moves: PGD on :func:`~smoothgen.attacks.cell_exit_bound` and the nearest-face move.

    "Stronger" is decided on an independent selection batch (``cell_n_fresh // 10`` draws, common to both
    candidates), never on the draws that judge it: the union bound PGD maximises over-counts draws that
    cross two faces at once, so it may prefer a corner that pushes fewer draws out than the nearest face.
    """
    objective = A.cell_exit_bound(front.codebook, ids, sigma)
    candidates = {
        "pgd": A.pgd(objective, center.double(), radius, generator=make_generator(seed, "cpu"),
                     steps=params["cell_pgd_steps"], restarts=params["cell_restarts"]).delta,
        "face": face_delta(front, ids, center, radius),
    }
    n = max(100, params["cell_n_fresh"] // 10)
    exits = {name: exit_estimate(front, ids, center.double() + delta, sigma, n, seed + 3).value
             for name, delta in candidates.items()}
    name = max(exits, key=exits.get)
    return name, candidates[name]


def cell_attack_rows(front: NearestEmbedding, ids: torch.Tensor, sigma: float, radii: list[float],
                     params: dict[str, Any], seed: int, **fields: Any) -> tuple[list[dict], dict[str, Any]]:
    """Certify the cells of ``ids`` (``cell_n_cert`` projections), attack at every radius and at 0.999 ×
    the identity radius, judge on ``cell_n_fresh`` fresh projections. Returns the trial rows and the
    certificate with the attacked ``δ`` at the identity radius."""
    center = front.codebook[ids]
    n_cert = params["cell_n_cert"]
    count = front.hits(ids, unit_noise(n_cert, len(ids), front.dim, seed), [sigma])[0]
    cert = certify.concentration_certificate(count, n_cert, 0.0, sigma, params["cell_alpha"])
    identity = 0.999 * cert.identity_radius
    margin = float(front.margins(center, ids).min())
    rows, kept = [], {"cert": cert, "delta": None, "identity_radius": cert.identity_radius}
    for kind, r in [*(("grid", x) for x in radii), ("identity", identity)]:
        if r <= 0:
            continue
        attack, delta = strongest_delta(front, ids, center, sigma, r, params, seed + 1)
        exit_ = exit_estimate(front, ids, center.double() + delta, sigma, params["cell_n_fresh"], seed + 2)
        bound = float(certify.concentration_tv(cert.p_lower, r, sigma))
        rows.append(trial(exit_, bound, **fields, certificate="cell-exit", attack=attack, witness="fresh projections",
                          norm="l2", radius=r, radius_kind=kind, sigma=sigma, restarts=params["cell_restarts"],
                          steps=params["cell_pgd_steps"], seed=seed, p_lower=cert.p_lower,
                          identity_radius=cert.identity_radius, nearest_face_exit=halfspace_exit(margin, r, sigma)))
        if kind == "identity":
            kept["delta"] = delta.to(center.dtype)
    return rows, kept


def cifar_cell_block(diffusion: Any, evaluator: torch.nn.Module, params: dict[str, Any]) -> tuple[list[dict], dict]:
    """Attack trials on every class's cell certificate, and end to end (class-consistency of the
    projection-smoothed generator at ``u_k`` and at the attacked ``u_k + δ``, common noise) for
    ``cifar_classes``."""
    book = diffusion.conditions()
    front = NearestEmbedding(book)
    half = half_nearest(front)
    sigma = params["cell_cifar_sigma_rel"] * float(half.min())
    rows, images = [], {}
    for k in tqdm(range(len(book)), desc="cifar cell attacks", leave=False):
        ids = torch.tensor([k])
        radii = [rel * float(half[k]) for rel in params["cell_cifar_radii_rel"]]
        part, kept = cell_attack_rows(front, ids, sigma, radii, params, params["seed"] + 101 * k, dataset="cifar10",
                                      condition=k, unit=float(half[k]))
        rows += part
        if k in params["cifar_classes"] and kept["delta"] is not None:
            row, shown = _cifar_end_to_end(diffusion, evaluator, front, k, sigma, kept, params)
            rows.append({**row, "unit": float(half[k])})
            images[k] = shown
    return rows, {"images": images, "sigma": sigma}


def _cifar_end_to_end(diffusion: Any, evaluator: torch.nn.Module, front: NearestEmbedding, k: int, sigma: float,
                      kept: dict[str, Any], params: dict[str, Any]) -> tuple[dict, dict]:
    """Class-consistency drop between ``u_k`` and ``u_k + δ`` (paired draws) against the TV bound."""
    center = front.codebook[k]
    smoothed = SmoothedGenerator(FrontEndGenerator(diffusion, front), GaussianNoise(sigma, event_shape=center.shape),
                                 params["cifar_batch_size"])
    n, seed = params["cell_n_images"], params["seed"] + 7 * k
    clean = smoothed.sample(center, n, seed=seed).cpu()
    moved = smoothed.sample(center + kept["delta"][0], n, seed=seed).cpu()
    with torch.inference_mode():
        hits = [(evaluator(x).argmax(1) == k).double() for x in (clean, moved)]
    r = float(kept["delta"].norm())
    bound = float(certify.concentration_tv(kept["cert"].p_lower, r, sigma))
    row = trial(A.mean_estimate((hits[0] - hits[1]).numpy()), bound, dataset="cifar10", condition=k,
                certificate="cell-exit (end to end: class-consistency drop)", attack="strongest",
                witness="paired fresh samples", norm="l2", radius=r, radius_kind="identity", sigma=sigma,
                restarts=params["cell_restarts"], steps=params["cell_pgd_steps"], seed=seed,
                p_lower=kept["cert"].p_lower, identity_radius=kept["identity_radius"],
                consistency_clean=float(hits[0].mean()), consistency_attacked=float(hits[1].mean()))
    return row, {"clean": clean[:8], "attacked": moved[:8], "radius": r}


def ptb_cell_block(lm: Any, pairs: list, params: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Attack trials on every prompt's cell certificate and, end to end, the projection-smoothed
    greedy continuation at the attacked prompt (fraction of draws that differ from the clean one)."""
    params = {**params, "cell_n_cert": params["cell_ptb_n"], "cell_n_fresh": params["cell_ptb_n"]}
    front, unit = NearestEmbedding(lm.token_embeddings()), lm.embedding_geometry()["nn_median"]
    sigma = params["cell_ptb_sigma_rel"] * unit
    rows, texts = [], []
    for i, prompt in enumerate(tqdm(pairs, desc="ptb cell attacks", leave=False)):
        ids = prompt.flatten()
        part, kept = cell_attack_rows(front, ids, sigma, [rel * unit for rel in params["cell_ptb_radii_rel"]], params,
                                      params["seed"] + 101 * i, dataset="ptb", condition=i, unit=unit)
        rows += part
        if kept["delta"] is None:
            continue
        row, text = _ptb_end_to_end(lm, front, ids, sigma, kept, params, i, unit)
        rows.append({**row, "unit": unit})
        texts.append(text)
    return rows, texts


def _ptb_end_to_end(lm: Any, front: NearestEmbedding, ids: torch.Tensor, sigma: float, kept: dict[str, Any],
                    params: dict[str, Any], i: int, unit: float) -> tuple[dict, dict]:
    """Fraction of projection-smoothed continuations at the attacked prompt that differ from the clean one
    (``unit``: the median nearest-token distance, for ``radius_rel``)."""
    center = lm.prompt_embeddings(ids)
    clean = lm(center[None], make_generator(0, "cpu"))[0].cpu()
    smoothed = SmoothedGenerator(FrontEndGenerator(lm, front), GaussianNoise(sigma, event_shape=center.shape),
                                 params["ptb_batch_size"])
    draws = smoothed.sample(center + kept["delta"], params["cell_n_texts"], seed=params["seed"] + 7 * i).cpu()
    differs = (draws != clean).any(1).double().numpy()
    r = float(kept["delta"].norm())
    bound = float(certify.concentration_tv(kept["cert"].p_lower, r, sigma))
    row = trial(A.proportion_estimate(differs), bound, dataset="ptb", condition=i,
                certificate="cell-exit (end to end: continuation changed)", attack="strongest",
                witness="fresh smoothed continuations", norm="l2", radius=r, radius_kind="identity", sigma=sigma,
                restarts=params["cell_restarts"], steps=params["cell_pgd_steps"], seed=params["seed"] + 7 * i,
                p_lower=kept["cert"].p_lower, identity_radius=kept["identity_radius"])
    majority = torch.mode(draws, dim=0).values
    return row, {"prompt": lm.vocab.decode(ids.tolist()), "clean": lm.vocab.decode(clean.tolist()),
                 "attacked_majority": lm.vocab.decode(majority.tolist()), "changed_fraction": float(differs.mean()),
                 "radius": r, "radius_rel": r / unit}


# ----------------------------------------------------------------------------- notebook 05: σ off the cells


def half_nearest(front: NearestEmbedding, chunk: int = 1024) -> torch.Tensor:
    """Half the distance from every codeword to its nearest other one (its margin in its own cell)."""
    book = front.codebook
    return torch.cat([front.margins(book[i : i + chunk], torch.arange(i, min(i + chunk, len(book))))
                      for i in range(0, len(book), chunk)])


def predicted_radius(exit_rate: np.ndarray, sigma: np.ndarray, scale: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The identity radius over ``scale`` that certification (``cell_n_cert`` draws, level α) would give if the
    exit probability were the calibration estimate: ``σΦ⁻¹(p̲)`` with ``p̲`` the Clopper–Pearson bound of
    ``(1 − exit)·n_cert`` stays."""
    n = params["cell_n_cert"]
    p_lower = certify.clopper_pearson_lower(np.round((1 - exit_rate) * n), n, params["cell_alpha"])
    return np.where(p_lower > 0.5, sigma * special.ndtri(np.clip(p_lower, 0.5, None)), 0.0) / scale


def choose(exits: np.ndarray, radii: np.ndarray, params: dict[str, Any]) -> int | None:
    """The grid index with the largest median predicted radius among those whose calibration exit estimate
    is ``≤ cell_max_exit`` on ``≥ cell_pass_fraction`` of the conditions (``[G, N]`` arrays), or ``None``."""
    ok = [g for g in range(exits.shape[0])
          if (exits[g] <= params["cell_max_exit"]).mean() >= params["cell_pass_fraction"]]
    return max(ok, key=lambda g: np.median(radii[g])) if ok else None


def calibration_exits(front: NearestEmbedding, conditions: list[torch.Tensor], sigmas: np.ndarray,
                      params: dict[str, Any]) -> np.ndarray:
    """``[G, N]`` exit rates of condition ``i`` at ``sigmas[:, i]`` from ``cell_n_cal`` draws (calibration stream)."""
    n = params["cell_n_cal"]
    out = np.zeros(sigmas.shape)
    for i, ids in enumerate(conditions):
        xi = unit_noise(n, len(ids), front.dim, params["seed"] + 13 * i)
        out[:, i] = 1 - np.asarray(front.hits(ids, xi, sigmas[:, i].tolist())) / n
    return out


def cell_sigma_rows(front: NearestEmbedding, conditions: list[torch.Tensor], scale: torch.Tensor, global_scale: float,
                    params: dict[str, Any], dataset: str, held_out: bool) -> pd.DataFrame:
    """σ tables (:class:`~smoothgen.calibrate.CellSigma`) chosen on calibration draws, certified on fresh ones.

    ``s[v]``: codeword ``v``'s half distance to its nearest other codeword; a condition's ``s_i`` is the
    smallest ``s`` among its rows. Strategies over the grid ``κ ∈ cell_kappas``: ``global`` (``σ = κ ·
    global_scale``), ``cells`` (``σ = κ · s``, one κ) and, where the conditions are the codewords themselves
    (CIFAR-10 classes), ``per-class`` (each class its own κ). Each choice (:func:`choose`) maximises the
    predicted radius under the quality target ``exit ≤ cell_max_exit``, on the first half of the
    conditions when ``held_out`` (else all, from their calibration draws); every condition is then
    certified on fresh draws (``cell_n_cert``)."""
    kappas = np.asarray(params["cell_kappas"], dtype=float)
    half = len(conditions) // 2 if held_out else len(conditions)
    s_i = np.array([float(scale[ids].min()) for ids in conditions])
    bases = {"global": np.full(len(conditions), global_scale), "cells": s_i}
    sigmas = {name: kappas[:, None] * b[None, :] for name, b in bases.items()}
    exits = {name: calibration_exits(front, conditions[:half], sig[:, :half], params) for name, sig in sigmas.items()}
    radii = {name: predicted_radius(exits[name], sigmas[name][:, :half], s_i[:half], params) for name in bases}
    chosen = {name: np.full(len(conditions), choose(exits[name], radii[name], params)) for name in bases}
    if not held_out:
        chosen["per-class"] = np.array([choose(exits["cells"][:, [i]], radii["cells"][:, [i]], params)
                                        for i in range(len(conditions))])
        bases["per-class"] = s_i
    rows = []
    for name, picks in chosen.items():
        if any(g is None for g in picks):
            continue
        if name == "cells":
            table = kappas[picks[0]] * scale.double()
        else:  # written at each condition's codewords; the others are never read
            table = torch.full((front.codebook.shape[0],), math.inf, dtype=torch.float64)
            for i, ids in enumerate(conditions):
                table[ids] = kappas[picks[i]] * bases[name][i]
        cell_sigma = CellSigma(front.indices, front.margins, table)
        for i, ids in enumerate(conditions):
            split = "all" if not held_out else ("calibration" if i < half else "held-out")
            rows.append({"dataset": dataset, "strategy": name, "condition": i, "kappa": kappas[picks[i]],
                         "split": split, "scale": s_i[i],
                         **_certified_row(front, cell_sigma, ids, params, seed=params["seed"] + 13 * i + 5)})
    return pd.DataFrame(rows)


def _certified_row(front: NearestEmbedding, table: CellSigma, ids: torch.Tensor, params: dict[str, Any],
                   seed: int) -> dict[str, Any]:
    """The condition's σ, its concentration certificate, and a ``1 − α`` upper bound on its exit probability."""
    center = front.codebook[ids]
    sigma, n = table.sigma(center), params["cell_n_cert"]
    count = front.hits(ids, unit_noise(n, len(ids), front.dim, seed), [sigma])[0]
    cert = table.certificate(center, count, n, 0.0, params["cell_alpha"])
    exit_upper = 1.0 - float(certify.clopper_pearson_lower(count, n, params["cell_alpha"]))
    return {"sigma": sigma, "count": count, "n": n, "p_lower": cert.p_lower, "identity_radius": cert.identity_radius,
            "margin": float(front.margins(center, ids).min()), "exit_upper": exit_upper,
            "meets_quality": exit_upper <= params["cell_max_exit"]}


def cell_sigma_block(cifar_book: torch.Tensor | None, lm: Any | None, pairs: list, params: dict[str, Any]) -> pd.DataFrame:
    """Both datasets (where given): CIFAR-10 classes (``s_k``: the half gap of class ``k``; calibrated and
    certified on independent draws of all ten) and PTB prompts (``s``: the smallest half nearest-token
    distance among the prompt's words; κ from the first half of the prompts, judged on the second).
    Radii in natural units: ``radius_rel`` over the half gap / the median nearest-token distance,
    ``word_swaps`` over the prompt's smallest nearest-token distance."""
    tables = []
    if cifar_book is not None:
        front = NearestEmbedding(cifar_book)
        half = half_nearest(front)
        table = cell_sigma_rows(front, [torch.tensor([k]) for k in range(len(cifar_book))], half, float(half.min()),
                                params, "cifar10", held_out=False)
        tables.append(table.assign(radius_rel=table["identity_radius"] / table["scale"], word_swaps=math.nan))
    if lm is not None:
        params = {**params, "cell_n_cert": params["cell_ptb_n"], "cell_n_cal": params["cell_ptb_n_cal"]}
        front, unit = NearestEmbedding(lm.token_embeddings()), lm.embedding_geometry()["nn_median"]
        table = cell_sigma_rows(front, [p.flatten() for p in pairs], half_nearest(front), unit / 2, params, "ptb",
                                held_out=True)
        tables.append(table.assign(radius_rel=table["identity_radius"] / unit,
                                   word_swaps=table["identity_radius"] / (2 * table["scale"])))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def cell_sigma_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and strategy, over the judged conditions (PTB: held-out prompts): κ, median and worst
    radius in natural units, and the fraction whose certified exit probability meets the quality target."""
    part = table[table["split"] != "calibration"]
    return part.groupby(["dataset", "strategy"]).agg(
        kappa_min=("kappa", "min"), kappa_max=("kappa", "max"), conditions=("condition", "size"), radius_rel_median=("radius_rel", "median"),
        radius_rel_worst=("radius_rel", "min"), word_swaps_median=("word_swaps", "median"),
        word_swaps_worst=("word_swaps", "min"), meets_quality=("meets_quality", "mean"),
        exit_upper_max=("exit_upper", "max")).reset_index()
