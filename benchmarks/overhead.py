"""Smoothing overhead ratio: SmoothedGenerator time for n samples / (n × the base's per-sample time).

The reference is the bare base generator called ``n / b`` times on ready-made noisy embeddings of
batch size ``b`` (the same forward passes, nothing else). Base and smoothed runs are interleaved
and repeated; the ratio of the best (minimum) process CPU times is the headline, per (model,
method, n, b), with the wall-time ratio beside it. Target: <= 1.1.

Usage: ``python benchmarks/overhead.py [--n 64 256] [--batch 16 64] [--repeats 3] [--steps 2]``
(defaults: a few minutes on 2 cores with 1 torch thread). Models: the shipped checkpoints when
present, else random weights with the shipped (cpu-preset) architectures; the ratio does not
depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import _common
from smoothgen.noise import GaussianNoise
from smoothgen.runtime import make_generator
from smoothgen.smoothing import SmoothedGenerator


def _cpu_and_wall(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    _common.sync(device)
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    _common.sync(device)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(base: Any, c: torch.Tensor, sigma: float, n: int, batch: int, repeats: int, method: str) -> dict[str, Any]:
    """Best-of-``repeats`` CPU and wall times of the bare base (n/b calls) and of the smoothed generator."""
    device = str(c.device)
    smoothed = SmoothedGenerator(base, GaussianNoise(sigma), batch_size=batch)
    gen = make_generator(0, c.device)
    inputs = [c + sigma * torch.randn((batch, *c.shape), generator=gen, device=c.device) for _ in range(n // batch)]

    def bare() -> None:
        g = make_generator(1, c.device)
        with torch.inference_mode():
            for u in inputs:
                base(u, g)
    run = {"sample": lambda: smoothed.sample(c, n, seed=1),
           "mean": lambda: smoothed.mean(c, n, seed=1)}[method]
    bare()  # warm-up (allocator, kernels)
    base_t, smooth_t = [], []
    for _ in range(repeats):  # interleaved, so both see the same load
        base_t.append(_cpu_and_wall(bare, device))
        smooth_t.append(_cpu_and_wall(run, device))
    (base_cpu, base_wall), (smooth_cpu, smooth_wall) = (tuple(map(min, zip(*t))) for t in (base_t, smooth_t))
    return {"method": method, "n": n, "batch_size": batch, "base_cpu_s": base_cpu, "smoothed_cpu_s": smooth_cpu,
            "per_sample_cpu_ms": 1e3 * base_cpu / n, "ratio_cpu": smooth_cpu / base_cpu,
            "base_wall_s": base_wall, "smoothed_wall_s": smooth_wall, "ratio_wall": smooth_wall / base_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps of the diffusion base")
    parser.add_argument("--tokens", type=int, default=10, help="continuation length of the LM base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU runs are written to overhead_cuda.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diffusion, diffusion_desc = _common.diffusion_model(args.steps, args.device)
    lm, lm_desc = _common.lm_model(args.tokens, args.device)
    prompt = lm.prompt_embeddings(list(range(2, 10)))
    cases = [("diffusion", diffusion, diffusion.conditions()[3], 0.5, ["sample", "mean"]),
             ("lm", lm, prompt, 0.1, ["sample"])]
    rows = []
    for name, base, c, sigma, methods in cases:
        for method in methods:
            for batch in args.batch:
                for n in args.n:
                    if n % batch == 0:
                        rows.append({"model": name, **measure(base, c, sigma, n, batch, args.repeats, method)})
                        print({k: rows[-1][k] for k in ("model", "method", "n", "batch_size", "ratio_cpu", "ratio_wall")}, flush=True)
    _common.print_table(rows, ["model", "method", "n", "batch_size", "per_sample_cpu_ms", "base_cpu_s", "smoothed_cpu_s",
                               "ratio_cpu", "ratio_wall"])
    cpu, wall = [r["ratio_cpu"] for r in rows], [r["ratio_wall"] for r in rows]
    head = wall if args.device != "cpu" else cpu
    _common.write(_common.tagged("overhead", args.device), {
        "rows": rows, "median_ratio": statistics.median(head), "max_ratio": max(head), "median_ratio_cpu": statistics.median(cpu),
        "median_ratio_wall": statistics.median(wall), "max_ratio_wall": max(wall), "target": 1.1,
        "timing": "best of repeats, interleaved; ratio = smoothed / bare base. Headline on CPU: process CPU time (wall "
                  "time on the shared 2-core machine varies by ±50 %); on GPU: wall time (GPU work synchronised)",
        "models": {"diffusion": f"{diffusion_desc}, DDIM {args.steps} steps, guidance {diffusion.guidance_scale}",
                   "lm": f"{lm_desc}, {args.tokens} greedy tokens, prompt of 8 tokens"},
        "args": vars(args)})


if __name__ == "__main__":
    main()
