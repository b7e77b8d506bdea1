"""Classifier certify throughput: SmoothedClassifier.certify vs straightforward loop-style implementations.

Same model, same image, same ``n0`` selection + ``n`` estimation draws, same
:func:`smoothgen.certify.cohen_certify` at the end; only the sampling loop differs:

* ``engine``: :meth:`smoothgen.smoothing.SmoothedClassifier.certify` (batched, noise drawn in place,
  ``inference_mode``, counts on the device);
* ``one_at_a_time``: one noisy copy per forward pass, ``argmax().item()`` into a Python counter;
* ``cohen_reference``: the loop of Cohen et al.'s ``core.py`` — ``x.repeat`` per batch, ``no_grad``,
  predictions to NumPy and counted by a Python loop over the batch.

Reported: draws per second (best of ``--repeats``) and the speedups. Target (issue 9): ≥ 2× over
a loop-style implementation.

Usage: ``python benchmarks/certify_throughput.py [--n 2000] [--n0 100] [--batch 250] [--repeats 2]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import _common
from smoothgen import certify
from smoothgen.models.classifier import ClassifierBase
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import make_generator
from smoothgen.smoothing import SmoothedClassifier

CLASSES = 10


def one_at_a_time(model: torch.nn.Module, x: torch.Tensor, sigma: float, n: int, gen: torch.Generator) -> np.ndarray:
    counts = np.zeros(CLASSES, dtype=np.int64)
    with torch.no_grad():
        for _ in range(n):
            noisy = x + sigma * torch.randn(x.shape, generator=gen, device=x.device)
            counts[model(noisy[None]).argmax(1).item()] += 1
    return counts


def cohen_reference(model: torch.nn.Module, x: torch.Tensor, sigma: float, n: int, batch: int, gen: torch.Generator) -> np.ndarray:
    counts = np.zeros(CLASSES, dtype=np.int64)
    with torch.no_grad():
        remaining = n
        while remaining > 0:
            size = min(batch, remaining)
            remaining -= size
            copies = x.repeat((size, 1, 1, 1))
            noise = torch.randn(copies.shape, generator=gen, device=x.device) * sigma
            for idx in model(copies + noise).argmax(1).cpu().numpy():
                counts[idx] += 1
    return counts


def runners(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    engine = SmoothedClassifier(ClassifierBase(model), GaussianNoise(args.sigma, (3, 32, 32)), CLASSES, batch_size=args.batch)

    def loop(sample) -> certify.CohenCertificate:
        gen = make_generator(args.seed, x.device)
        return certify.cohen_certify(sample(args.n0, gen), sample(args.n, gen), args.sigma, args.alpha)
    return {
        "engine": lambda: engine.certify(x, args.n0, args.n, args.alpha, seed=args.seed, device=x.device),
        "one_at_a_time": lambda: loop(lambda k, g: one_at_a_time(model, x, args.sigma, k, g)),
        "cohen_reference": lambda: loop(lambda k, g: cohen_reference(model, x, args.sigma, k, args.batch, g)),
    }


def test_image(seed: int) -> tuple[torch.Tensor, str]:
    try:
        from smoothgen.data import load_cifar10
        test = load_cifar10("test")
        return test.images[0].float() / 255, f"CIFAR-10 test image 0 ({test.variant})"
    except (FileNotFoundError, ValueError):
        return torch.rand((3, 32, 32), generator=make_generator(seed, "cpu")), "random image (CIFAR-10 not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU runs are written to certify_throughput_cuda.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, model_desc = _common.classifier_model(args.sigma, args.device)
    x, image_desc = test_image(args.seed)
    x = x.to(args.device)
    rows, results = [], {}
    for name, run in runners(model, x, args).items():
        run()  # warm-up
        seconds = min(_common.timed(lambda: results.__setitem__(name, run()), args.device) for _ in range(args.repeats))
        rows.append({"implementation": name, "seconds": seconds, "draws_per_s": (args.n0 + args.n) / seconds,
                     "prediction": int(results[name].prediction), "radius": float(results[name].radius)})
    engine_rate = rows[0]["draws_per_s"]
    for row in rows:
        row["engine_speedup"] = engine_rate / row["draws_per_s"]
    _common.print_table(rows)
    speedups = {r["implementation"]: r["engine_speedup"] for r in rows[1:]}
    _common.write(_common.tagged("certify_throughput", args.device), {
        "rows": rows, "speedup_vs_one_at_a_time": speedups["one_at_a_time"],
        "speedup_vs_cohen_reference": speedups["cohen_reference"], "per_pass_ms": 1e3 / engine_rate, "target": 2.0,
        "model": model_desc, "image": image_desc, "args": vars(args)})


if __name__ == "__main__":
    main()
