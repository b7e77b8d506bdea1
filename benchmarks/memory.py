"""Peak memory vs n: streaming statistics stay flat in n, materialised samples grow with it.

Each (method, n) runs in a fresh Python process on a cheap image-like toy generator
(``[64]`` condition → ``[3, 16, 16]`` image, a fixed random linear map + sigmoid + noise). After
imports and one warm-up batch the kernel's peak-RSS mark is reset (Linux ``clear_refs``), so
``peak_mb`` is the peak resident set size during the run and ``increment_mb = peak_mb −
baseline_mb`` what the run added on top of the resident size before it (``ru_maxrss`` fallback
elsewhere). Resident size includes what the C allocator keeps from freed buffers.

Methods: ``mean`` (:meth:`SmoothedGenerator.mean`), ``map_reduce`` (ℓ₂ distance of every output to a
reference image), ``counts`` (:meth:`SmoothedClassifier.counts` of a linear 10-class head) and, for
contrast, ``sample`` (all ``n`` outputs in one tensor).

Usage: ``python benchmarks/memory.py [--n 1000 10000 100000] [--batch 256]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

DIM, SHAPE = 64, (3, 16, 16)


class ImageToy:
    """``G(u, z) = sigmoid(u W + 0.1 z)`` reshaped to an image; ``W`` fixed by a seed."""

    def __init__(self) -> None:
        self.w = torch.randn((DIM, 768), generator=torch.Generator().manual_seed(0)) / DIM**0.5

    def __call__(self, u: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z = torch.randn((u.shape[0], 768), generator=g)
        return torch.sigmoid(u @ self.w + 0.1 * z).view(u.shape[0], *SHAPE)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0: ``5 > /proc/self/clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak resident set size in MiB: ``VmHWM`` (since the last reset) or ``ru_maxrss`` (since start)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(method: str, n: int, batch: int) -> dict:
    """One measurement in this (fresh) process."""
    from smoothgen.noise import GaussianNoise
    from smoothgen.smoothing import SmoothedClassifier, SmoothedGenerator

    torch.set_num_threads(1)
    toy, c, noise = ImageToy(), torch.zeros(DIM), GaussianNoise(0.5)
    smoothed = SmoothedGenerator(toy, noise, batch_size=batch)
    head = torch.randn((DIM, 10), generator=torch.Generator().manual_seed(1))
    classifier = SmoothedClassifier(lambda u, g: u @ head, noise, 10, batch_size=batch)
    reference = torch.full(SHAPE, 0.5)
    run = {"mean": lambda k: smoothed.mean(c, k, seed=0),
           "map_reduce": lambda k: smoothed.map_reduce(c, k, 0, lambda y: (y - reference).flatten(1).norm(dim=1)),
           "counts": lambda k: classifier.counts(c, k, seed=0),
           "sample": lambda k: smoothed.sample(c, k, seed=0)}[method]
    run(batch)  # warm-up: one batch
    reset = _reset_peak()
    baseline = _peak_mb()
    run(n)
    peak = _peak_mb()
    return {"method": method, "n": n, "batch_size": batch, "baseline_mb": baseline, "peak_mb": peak,
            "increment_mb": peak - baseline, "peak_reset": reset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=["mean", "map_reduce", "counts", "sample"])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch)))
        return
    import _common

    rows = []
    for method in args.methods:
        for n in args.n:
            out = subprocess.run([sys.executable, str(Path(__file__)), "--child", method, str(n), "--batch", str(args.batch)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    _common.print_table(rows)
    lo, hi = min(args.n), max(args.n)
    peak = {(r["method"], r["n"]): r["peak_mb"] for r in rows}
    ratios = {m: peak[(m, hi)] / peak[(m, lo)] for m in args.methods}
    streaming = [m for m in args.methods if m != "sample"]
    _common.write("memory", {
        "rows": rows, "peak_ratio_n_max_vs_n_min": ratios, "n_min": lo, "n_max": hi,
        "peak_memory_ratio_n_max_vs_n_min": max(ratios[m] for m in streaming) if streaming else None,
        "note": "ratio of whole-process peak RSS (imports included) at n_max vs n_min; streaming methods only "
                "in the headline (the maximum over them); 'sample' materialises the outputs for contrast",
        "args": {k: v for k, v in vars(args).items() if k != "child"}})


if __name__ == "__main__":
    main()
