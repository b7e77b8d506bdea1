"""Collect the headline numbers of the other benchmarks into ``<results>/benchmarks/summary.json``.

Run the benchmarks first (``overhead.py``, ``sequential.py``, ``certify_throughput.py``,
``memory.py``; ``notebook_times.py`` optional); a missing one leaves its fields ``null``.

Usage: ``python benchmarks/summary.py``.
"""

from __future__ import annotations

import json
from typing import Any

import _common

TARGETS = {"smoothing_overhead_ratio": ("<=", 1.1), "decision_pass_reduction": (">=", 10.0),
           "decision_agreement": (">=", 0.99), "radius_pass_reduction": (">=", 3.0), "radius_loss_sigma": ("<=", 0.05),
           "certify_speedup": (">=", 2.0), "peak_memory_ratio_n_max_vs_n_min": ("<=", 1.1)}


def load(name: str) -> dict[str, Any] | None:
    path = _common.out_path(name)
    return json.loads(path.read_text()) if path.exists() else None


NAMES = ("overhead", "overhead_cuda", "sequential", "certify_throughput", "certify_throughput_cuda", "memory")


def headline() -> tuple[dict[str, Any], dict[str, str]]:
    """The summary fields (CPU runs are the headline; ``*_cuda`` fields from GPU runs) and each run's machine."""
    data = {name: load(name) for name in NAMES}
    over, seq, thr, mem = data["overhead"], data["sequential"], data["certify_throughput"], data["memory"]
    over_gpu, thr_gpu = data["overhead_cuda"], data["certify_throughput_cuda"]
    head = (seq or {}).get("headline", {})
    out = {
        "smoothing_overhead_ratio": over and over["median_ratio"],
        "smoothing_overhead_ratio_max": over and over["max_ratio"],
        "smoothing_overhead_ratio_cuda": over_gpu and over_gpu["median_ratio"],
        "smoothing_overhead_ratio_cuda_max": over_gpu and over_gpu["max_ratio"],
        "decision_pass_reduction": head.get("decision_pass_reduction"),
        "decision_agreement": head.get("decision_agreement"),
        "decision_r_over_sigma": head.get("decision_r_over_sigma"),
        "radius_pass_reduction": head.get("radius_pass_reduction"),
        "radius_loss_sigma": head.get("radius_loss_sigma"),
        "radius_setting": head.get("radius_setting"),
        "sequential_source": seq and seq["p_source"],
        "certify_speedup": thr and thr["speedup_vs_one_at_a_time"],
        "certify_speedup_vs_cohen_reference": thr and thr["speedup_vs_cohen_reference"],
        "certify_speedup_cuda": thr_gpu and thr_gpu["speedup_vs_one_at_a_time"],
        "certify_speedup_vs_cohen_reference_cuda": thr_gpu and thr_gpu["speedup_vs_cohen_reference"],
        "peak_memory_ratio_n_max_vs_n_min": mem and mem["peak_memory_ratio_n_max_vs_n_min"],
        "peak_memory_ratio_by_method": mem and mem["peak_ratio_n_max_vs_n_min"],
    }
    return out, {name: d["machine"] for name, d in data.items() if d}


def met(value: Any, rule: tuple[str, float]) -> bool | None:
    if value is None:
        return None
    return value <= rule[1] if rule[0] == "<=" else value >= rule[1]


def main() -> None:
    fields, machines = headline()
    targets = {k: {"target": f"{op} {v}", "met": met(fields[k], (op, v))} for k, (op, v) in TARGETS.items()}
    _common.print_table([{"metric": k, "value": fields[k], **targets[k]} for k in TARGETS])
    _common.write("summary", {**fields, "targets": targets, "machines": machines})


if __name__ == "__main__":
    main()
