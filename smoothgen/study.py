"""Run the study: execute every experiment notebook with papermill, resumably.

Each notebook ``notebooks/NN_name.ipynb`` is executed with the parameters ``preset`` and
``overrides`` into ``<results>/NN_name/<preset>/NN_name.ipynb``, next to the tables it writes —
except for the book's preset (:data:`BOOK_PRESET`), whose executed copies go to
``book/notebooks/`` where the Jupyter Book includes them.
A run is *resumable*: a notebook whose inputs (its source, the parameters, the library's source
and the checkpoint cards) hash to the stamp of its last successful run is skipped. A failing
notebook stops the run with its error; results of earlier notebooks stay as they are.
Kernels start with :data:`KERNEL_ENV` (progress bars off inside the executed copies: the runner
shows its own) unless the caller's environment sets those variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from smoothgen.results import repo_root, results_dir, write_json

STAMP = ".stamp.json"
BOOK_PRESET = "cpu"
"""The preset whose executed notebooks the book shows."""
KERNEL_ENV = {"TQDM_DISABLE": "1"}
"""Environment defaults of the notebook kernels."""


def notebook_dir() -> Path:
    """The folder of the source notebooks."""
    return repo_root() / "notebooks"


def list_notebooks(only: Sequence[str] | None = None) -> list[Path]:
    """Source notebooks in run order, optionally restricted to names in ``only`` (``03`` or ``03_cifar10``).

    Raises
    ------
    ValueError
        If a name in ``only`` matches no notebook.
    """
    books = sorted(notebook_dir().glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return books
    chosen = [p for p in books if any(p.stem == o or p.stem.split("_")[0] == o for o in only)]
    unknown = [o for o in only if not any(p.stem == o or p.stem.split("_")[0] == o for p in books)]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; choose from {[p.stem for p in books]}")
    return chosen


def inputs_digest(notebook: Path, parameters: dict[str, Any]) -> str:
    """SHA-256 over what a notebook's results depend on: source, parameters, library, checkpoint cards."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    root = repo_root()
    for path in sorted((root / "smoothgen").rglob("*.py")) + sorted((root / "data" / "checkpoints").glob("*.json")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def executed_path(notebook: Path, preset: str, out_dir: Path, results_root: Path | None) -> Path:
    """Where the executed copy goes: ``book/notebooks/`` for the book's preset and the default
    results root, else next to the notebook's tables."""
    if preset == BOOK_PRESET and results_root is None and "SMOOTHGEN_RESULTS" not in os.environ:
        return repo_root() / "book" / "notebooks" / notebook.name
    return out_dir / notebook.name


@contextlib.contextmanager
def kernel_environment(defaults: dict[str, str]) -> Iterator[None]:
    """Set ``defaults`` in ``os.environ`` (where not already set) while a kernel starts, then restore."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def clean_executed(path: Path) -> None:
    """Make an executed notebook publishable: drop stderr stream outputs (warnings, progress bars) and
    write papermill's input/output paths relative to the repository root (no machine's paths)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key) and os.path.isabs(meta[key]):
            meta[key] = os.path.relpath(meta[key], repo_root())
    nbformat.write(nb, path)


def run_notebook(notebook: Path, preset: str, overrides: dict[str, Any] | None = None,
                 force: bool = False, results_root: Path | None = None) -> dict[str, Any]:
    """Execute one notebook with papermill unless its stamp says its inputs are unchanged.

    Returns the stamp: ``{"notebook", "preset", "digest", "wall_time_s", "output", "skipped"}``.
    """
    import papermill  # heavy import, only when a notebook runs

    parameters = {"preset": preset, "overrides": dict(overrides or {})}
    out_dir = results_dir(notebook.stem, preset, results_root)
    stamp_path, output = out_dir / STAMP, executed_path(notebook, preset, out_dir, results_root)
    digest = inputs_digest(notebook, parameters)
    if not force and stamp_path.exists() and output.exists():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("digest") == digest:
            return {**stamp, "skipped": True}
    start = time.perf_counter()
    tmp = out_dir / f".{notebook.stem}.running.ipynb"
    try:
        with kernel_environment(KERNEL_ENV):
            papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, cwd=str(notebook.parent),
                                       progress_bar=False, kernel_name="python3")
    except BaseException:
        if tmp.exists():  # keep the failed run for inspection, never as a result
            tmp.replace(out_dir / f"{notebook.stem}.failed.ipynb")
        raise
    clean_executed(tmp)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(output)
    (out_dir / f"{notebook.stem}.failed.ipynb").unlink(missing_ok=True)
    stamp = {"notebook": notebook.stem, "preset": preset, "digest": digest, "output": os.path.relpath(output, repo_root()),
             "wall_time_s": round(time.perf_counter() - start, 2)}
    write_json(stamp_path, stamp)
    return {**stamp, "skipped": False}


def run_study(preset: str, only: Sequence[str] | None = None, overrides: dict[str, Any] | None = None,
              force: bool = False, results_root: Path | None = None) -> list[dict[str, Any]]:
    """Run the notebooks in order (see :func:`run_notebook`) with a progress bar; stop at the first failure."""
    stamps = []
    books = list_notebooks(only)
    with tqdm(books, desc=f"study[{preset}]", unit="notebook") as bar:
        for notebook in bar:
            bar.set_postfix_str(notebook.stem)
            stamps.append(run_notebook(notebook, preset, overrides, force, results_root))
    return stamps
