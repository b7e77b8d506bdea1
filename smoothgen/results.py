"""The one writer of results: atomic files, tidy tables and their ``meta.json``.

Every experiment writes through this module, so that a result file is either complete or
absent (written to a temporary file in the same folder, then renamed with ``os.replace``), and
every table sits next to a ``meta.json`` that says how it was made: parameters, preset, seed,
git commit, package versions, data variant and wall time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

PACKAGES = ("smoothgen", "torch", "numpy", "scipy", "diffusers", "transformers", "torchmetrics", "pot")


def repo_root() -> Path:
    """The folder that holds the ``smoothgen`` package (the repository root for a source checkout)."""
    return Path(__file__).resolve().parent.parent


def results_root(root: str | Path | None = None) -> Path:
    """Where results live: ``root``, else ``$SMOOTHGEN_RESULTS``, else ``<repo>/data/results``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("SMOOTHGEN_RESULTS")
    return Path(env) if env else repo_root() / "data" / "results"


def results_dir(experiment: str, preset: str, root: str | Path | None = None) -> Path:
    """``<results_root>/<experiment>/<preset>/``, created if needed."""
    if not experiment or not preset or "/" in experiment + preset:
        raise ValueError(f"experiment and preset must be plain names, got {experiment!r}, {preset!r}")
    path = results_root(root) / experiment / preset
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomic UTF-8 text write (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; numpy scalars and paths are converted."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_table(path: str | Path, table: pd.DataFrame) -> Path:
    """Write a tidy table as CSV, atomically.

    Raises
    ------
    ValueError
        If ``table`` is not a DataFrame or has no columns.
    """
    if not isinstance(table, pd.DataFrame) or table.shape[1] == 0:
        raise ValueError("write_table expects a non-empty pandas DataFrame (one row per observation)")
    return atomic_write_text(path, table.to_csv(index=False))


def git_commit(root: str | Path | None = None) -> str:
    """The current git commit of the repository (``"unknown"`` outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(),
                             capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


GENERATED = ("data/results", "book/notebooks", "data/checkpoints")
"""What the study and the training write themselves (ignored by :func:`git_dirty`)."""


def git_dirty(root: str | Path | None = None) -> bool | None:
    """Whether tracked files differ from the commit :func:`git_commit` names, outside :data:`GENERATED`
    (``None`` outside a checkout): a result made from uncommitted code says so."""
    excluded = [f":(exclude){path}" for path in GENERATED]
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                             cwd=root or repo_root(), capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape SmoothGen's numbers."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_meta(params: dict[str, Any], *, preset: str, seed: int, data_variant: str | None,
             wall_time_s: float, git: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record that goes next to every results table; ``git`` is the ``git_commit`` /
    ``git_dirty`` pair to record (read now when not given)."""
    git = git or {"git_commit": git_commit(), "git_dirty": git_dirty()}
    return {
        "params": params, "preset": preset, "seed": seed, "data_variant": data_variant,
        "wall_time_s": round(float(wall_time_s), 3), **git,
        "versions": package_versions(), "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra,
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
