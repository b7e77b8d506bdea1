"""What every experiment shares: its result object, the writer of its tables, its banner, its attack-trial rows."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from smoothgen import attacks as A
from smoothgen import distributed
from smoothgen.results import git_commit, git_dirty, results_dir, results_root, run_meta, write_json, write_table


@dataclass
class StudyResult:
    """Tables of one experiment run (tidy DataFrames by name), its provenance and where it was written."""

    tables: dict[str, pd.DataFrame]
    meta: dict[str, Any]
    directory: Path
    extras: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


class Stopwatch:
    """Wall time since creation, in seconds, and the code's provenance at that moment (``git``: commit and
    dirty flag). A run executes the code it imported when it started, so that is the commit its results
    record, not the one checked out when it finishes."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.git = {"git_commit": git_commit(), "git_dirty": git_dirty()}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def finish(experiment: str, params: dict[str, Any], tables: dict[str, pd.DataFrame], *,
           seed: int, data_variant: str | None, clock: Stopwatch, **extra: Any) -> StudyResult:
    """Write ``tables`` as ``<results>/<experiment>/<preset>/<name>.csv`` plus ``meta.json``.

    Every table gets the columns ``preset`` and ``seed`` so that a CSV read alone says where it
    came from; ``meta.json`` holds the full parameters and the world size. In a sharded run
    (:mod:`smoothgen.distributed`) only rank 0 writes; the other ranks return the same tables unwritten.
    """
    preset, (_, ranks) = params["preset"], distributed.world()
    tables = {name: table.assign(preset=preset, seed=seed) for name, table in tables.items()}
    meta = run_meta(params, preset=preset, seed=seed, data_variant=data_variant, wall_time_s=clock.elapsed,
                    experiment=experiment, tables=sorted(tables), world_size=ranks, git=clock.git, **extra)
    out = results_root() / experiment / preset
    if distributed.is_writer():
        out = results_dir(experiment, preset)
        for name, table in tables.items():
            write_table(out / f"{name}.csv", table)
        write_json(out / "meta.json", meta)
    return StudyResult(tables=tables, meta=meta, directory=out)


def banner(meta: dict[str, Any]) -> str:
    """A Markdown line for the top of an executed notebook: preset, commit (marked when the tree was dirty),
    date, data, wall time, and the failure probability α of its certificates when it has one."""
    commit = str(meta.get("git_commit", "unknown"))[:10] + ("+dirty" if meta.get("git_dirty") else "")
    data = meta.get("data_variant") or "no dataset"
    alpha = meta.get("params", {}).get("alpha")
    level = f" · certificates at α = {alpha:g} (each holds with probability ≥ 1 − α)" if alpha else ""
    return (f"**Run:** preset `{meta['preset']}` · seed {meta['seed']} · commit `{commit}` · "
            f"{meta['date']} · data: {data} · {meta['machine']} · {meta['wall_time_s']:.0f} s{level}")


def trial(estimate: A.Estimate, certified: float, **fields: Any) -> dict[str, Any]:
    """One trials-table row: the fields, the comparison, :func:`smoothgen.attacks.is_violation`."""
    ratio = estimate.value / certified if certified > 0 else math.nan
    return {**fields, "n_fresh": estimate.n, "achieved": estimate.value, "achieved_stderr": estimate.stderr,
            "achieved_lower": estimate.lower, "certified": certified,
            "violation": bool(A.is_violation(estimate.lower, certified)), "ratio": ratio,
            "gap": certified - estimate.value}
