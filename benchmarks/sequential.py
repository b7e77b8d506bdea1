"""Sequential vs fixed-n Cohen certification: forward passes, decisions, radii.

Per input, one stream of estimation draws up to n = 10⁵; the fixed-n certificate (Cohen: ``n0 =
100`` + ``n = 10⁵`` passes, α = 0.001) uses all of it, the sequential one the prefix it needs (same
draws, so differences are the method's). Sources of the streams:

* ``--paths-file F``: **real draws** recorded on a GPU (``classifier_paths_cuda.json``: the shipped
  noise-trained classifier, σ = 0.25, on every 20th CIFAR-10 test image; top-class counts at the
  default looks);
* ``--p-file F``: top-class frequencies recorded on a GPU, streams simulated (numpy);
* ``--source classifier`` (``auto``: when checkpoint and data exist): top-class frequencies of the
  same classifier computed here on CPU (``--images`` images × ``--draws`` draws; a frequency of 1
  stands for every ``p`` above about ``1 − 3/draws`` and is simulated as ``p = 1``);
* ``--source synthetic``: :func:`smoothgen.experiments.overhead.cohen_like_p`, a mixture matched to
  the certified-accuracy curve of Cohen et al. (2019, CIFAR-10, σ = 0.25).

Reported: decision mode (r* = ρσ for each ``--rho``) pass reduction (median over inputs of fixed
passes / sequential passes) and agreement with the fixed-n decision; radius mode pass reduction
and the radius loss (fixed − sequential, in σ) as a distribution, also per range of ``p``. Targets
(issue 9): decision ≥ 10× at ≥ 99 % agreement; radius ≥ 3× at ≤ 0.05σ median loss.

Usage: ``python benchmarks/sequential.py [--paths-file F | --p-file F | --source ...] [--tag _x]`` (seconds
to a minute; ``--source classifier`` adds a few CPU minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from scipy import special

import _common
from smoothgen import certify
from smoothgen.experiments.overhead import cohen_like_p
from smoothgen.sequential import LookSchedule, bernoulli_sampler, sequential_cohen, sequential_cohen_paths, simulate_bernoulli_paths

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def classifier_p(images: int, draws: int, sigma: float, seed: int) -> tuple[np.ndarray, str]:
    """Top-class frequencies of the shipped σ-classifier over ``draws`` noisy copies of test images."""
    import torch

    from smoothgen.data import load_cifar10
    from smoothgen.models.classifier import ClassifierBase
    from smoothgen.noise import GaussianNoise
    from smoothgen.smoothing import SmoothedClassifier

    torch.set_num_threads(1)
    model, desc = _common.classifier_model(sigma)
    test = load_cifar10("test")
    smoothed = SmoothedClassifier(ClassifierBase(model), GaussianNoise(sigma, (3, 32, 32)), 10, batch_size=250)
    stride = max(1, len(test.labels) // images)
    p = []
    for i in range(0, stride * images, stride):
        counts = smoothed.counts(test.images[i].float() / 255, draws, seed=seed + i)
        p.append(counts.max() / draws)  # the class Cohen's selection would pick, and its frequency
    return np.array(p), f"{desc}: top-class frequency over {draws} draws on {images} CIFAR-10 test images ({test.variant})"


def load_inputs(args: argparse.Namespace, schedule: LookSchedule, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """``(p, paths [B, K], description)``: real paths from a file, or paths simulated from a p distribution."""
    if args.paths_file:
        info = json.loads(open(args.paths_file).read())
        if info["schedule"] != schedule.sizes.tolist():
            raise ValueError(f"the paths were recorded at looks {info['schedule']}, not {schedule.sizes.tolist()}")
        paths = np.array(info["paths"], dtype=np.int64)
        return paths[:, -1] / schedule.n_max, paths, (
            f"{info['model']}: REAL draws, n0 = {info['n0']} + 10⁵ per image, {len(paths)} images ({info['images']}; "
            f"computed on {info['device']}); p = final top-class frequency")
    if args.p_file:
        info = json.loads(open(args.p_file).read())
        p = rng.choice(np.array(info["top_counts"]) / info["draws"], size=args.inputs)
        source = (f"{info['model']}: top-class frequency over {info['draws']} draws on {len(info['top_counts'])} images "
                  f"({info['images']}; computed on {info['device']}); streams simulated")
    elif args.source in ("auto", "classifier") and _classifier_available(args.source):
        p_real, source = classifier_p(args.images, args.draws, args.sigma, args.seed)
        p = rng.choice(p_real, size=args.inputs)
    else:
        p, source = cohen_like_p(args.inputs, rng), "synthetic mixture matched to Cohen et al. (2019) CIFAR-10 σ=0.25 (see docstring)"
    return p, simulate_bernoulli_paths(p, schedule, rng), source


def _classifier_available(source: str) -> bool:
    try:
        from smoothgen.data import load_cifar10
        load_cifar10("test")
        return _common.classifier_model()[1].startswith("shipped")
    except (FileNotFoundError, ValueError) as err:
        if source == "classifier":
            raise
        print(f"(classifier source unavailable: {err}; using the synthetic mixture)")
        return False


def distribution(x: np.ndarray) -> dict[str, float]:
    return {f"q{int(q * 100)}": float(np.quantile(x, q)) for q in QUANTILES} | {"mean": float(np.mean(x))}


def decision_rows(paths: np.ndarray, args: argparse.Namespace, schedule: LookSchedule) -> list[dict[str, Any]]:
    fixed_lower = np.asarray(certify.clopper_pearson_lower(paths[:, -1], args.n, args.alpha))
    fixed_passes = args.n0 + args.n
    rows = []
    for rho in args.rho:
        cert = sequential_cohen_paths(paths, args.sigma, args.alpha, schedule=schedule, mode="decision",
                                      target_radius=rho * args.sigma, n0=args.n0)
        fixed = fixed_lower >= special.ndtr(rho)
        reduction = fixed_passes / cert.passes
        rows.append({"r_over_sigma": rho, "pass_reduction_median": float(np.median(reduction)),
                     "pass_reduction_total": float(fixed_passes * len(reduction) / cert.passes.sum()),
                     "agreement": float(np.mean(cert.certified == fixed)), "certified_fixed": float(fixed.mean()),
                     "certified_sequential": float(cert.certified.mean()),
                     "seq_only": int(np.sum(cert.certified & ~fixed)), "fixed_only": int(np.sum(~cert.certified & fixed)),
                     "passes": distribution(cert.passes.astype(float))})
    return rows


def radius_rows(paths: np.ndarray, p: np.ndarray, args: argparse.Namespace, schedule: LookSchedule) -> list[dict[str, Any]]:
    fixed_lower = np.asarray(certify.clopper_pearson_lower(paths[:, -1], args.n, args.alpha))
    fixed_radius = np.where(fixed_lower >= 0.5, special.ndtri(np.maximum(fixed_lower, 0.5)), 0.0)  # σ units
    rows = []
    for method in ("union_cp", "beta_mixture"):
        for projection in ("estimate", "upper"):
            for tol in args.tol:
                cert = sequential_cohen_paths(paths, args.sigma, args.alpha, schedule=schedule, tol=tol, method=method,
                                              projection=projection, n0=args.n0)
                loss = fixed_radius - cert.radius / args.sigma
                reduction = (args.n0 + args.n) / cert.passes
                rows.append({"method": method, "projection": projection, "tol": tol,
                             "pass_reduction_median": float(np.median(reduction)),
                             "pass_reduction_total": float((args.n0 + args.n) * len(p) / cert.passes.sum()),
                             "loss_sigma_median": float(np.median(loss)), "loss_le_0.05": float(np.mean(loss <= 0.05)),
                             "loss_sigma": distribution(loss), "pass_reduction": distribution(reduction),
                             "by_p": by_p(p, reduction, loss)})
    return rows


def by_p(p: np.ndarray, reduction: np.ndarray, loss: np.ndarray) -> list[dict[str, Any]]:
    edges = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0, 1.0 + 1e-12]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (p >= lo) & (p < hi) if hi <= 1.0 else p >= 1.0
        if mask.any():
            rows.append({"p_range": f"[{lo}, {min(hi, 1.0)}{')' if hi <= 1.0 else ']'}", "inputs": int(mask.sum()),
                         "reduction_median": float(np.median(reduction[mask])), "loss_median": float(np.median(loss[mask]))})
    return rows


def bookkeeping_ms(args: argparse.Namespace, schedule: LookSchedule, rng: np.random.Generator) -> float:
    """Mean milliseconds of sequential bookkeeping per certificate (simulated draws cost ~nothing)."""
    ps = rng.uniform(0.5, 1.0, 30)
    start = time.perf_counter()
    for q in ps:
        sequential_cohen(bernoulli_sampler(float(q), rng), args.sigma, args.alpha, n0=args.n0, schedule=schedule)
    return 1e3 * (time.perf_counter() - start) / len(ps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--source", choices=["auto", "synthetic", "classifier"], default="auto")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0], help="decision radii r*/σ")
    parser.add_argument("--tol", type=float, nargs="+", default=[0.05, 0.03])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p-file", help="JSON with top_counts and draws (e.g. classifier_p_cuda.json from a GPU run)")
    parser.add_argument("--paths-file", help="JSON with real per-image count paths at the default looks "
                        "(classifier_paths_cuda.json from a GPU run); replaces the simulation")
    parser.add_argument("--tag", default="", help="suffix of the output name (sequential<tag>.json)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    schedule = LookSchedule.geometric(n_max=args.n)
    p, paths, source = load_inputs(args, schedule, rng)
    decisions, radii = decision_rows(paths, args, schedule), radius_rows(paths, p, args, schedule)
    print(f"p source: {source}; {len(p)} inputs; looks {schedule.sizes.tolist()}")
    _common.print_table([{k: v for k, v in r.items() if not isinstance(v, dict)} for r in decisions])
    _common.print_table([{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in radii])
    head = next(r for r in radii if (r["method"], r["projection"], r["tol"]) == ("union_cp", "estimate", args.tol[0]))
    print("radius mode by p (union_cp, estimate, tol", args.tol[0], ")")
    _common.print_table(head["by_p"])
    headline = next(r for r in decisions if r["r_over_sigma"] == 1.0) if 1.0 in args.rho else decisions[0]
    _common.write(f"sequential{args.tag}", {
        "p_source": source, "inputs": len(p), "p_distribution": distribution(p), "schedule": schedule.sizes.tolist(),
        "decision": decisions, "radius": radii, "bookkeeping_ms_per_certificate": bookkeeping_ms(args, schedule, rng),
        "headline": {"decision_r_over_sigma": headline["r_over_sigma"],
                     "decision_pass_reduction": headline["pass_reduction_median"], "decision_agreement": headline["agreement"],
                     "radius_setting": {k: head[k] for k in ("method", "projection", "tol")},
                     "radius_pass_reduction": head["pass_reduction_median"], "radius_loss_sigma": head["loss_sigma_median"]},
        "args": json.loads(json.dumps(vars(args)))})


if __name__ == "__main__":
    main()
