"""Run the study: execute every experiment notebook with papermill, resumably.

Each notebook ``notebooks/NN_name.ipynb`` is executed with the parameters ``preset`` and
``overrides`` into ``<results>/NN_name/<preset>/NN_name.ipynb``, next to the tables it writes —
except for the published run (the book's preset :data:`BOOK_PRESET` into the published results
root ``data/results``), whose executed copies go to ``book/notebooks/`` where the Jupyter Book
includes them. ``<results>`` is chosen by :func:`output_root`: a run with overrides goes to the
scratch root ``artifacts/results`` unless told otherwise, so that it never writes over the
published tables and notebooks. The kernels get ``<results>`` as ``SMOOTHGEN_RESULTS``.

Nothing runs before two checks pass: every override is a parameter of every selected notebook
(:func:`check_overrides`), and the data read by the notebooks that will run is present
(:func:`require_data`; with ``download=True`` it is fetched from the official sources).
A run is *resumable*: a notebook whose inputs (its source, the parameters, the library's source
and the checkpoint cards) hash to the stamp of its last successful run is skipped, and needs no
data. A failing notebook stops the run with a :class:`NotebookError`; results of earlier
notebooks stay as they are.
Kernels start with :data:`KERNEL_ENV` (progress bars off inside the executed copies: the runner
shows its own) unless the caller's environment sets those variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm.auto import tqdm

from smoothgen import distributed
from smoothgen.data import (CIFAR10_DIR, CIFAR10_MD5, CIFAR10_URL, PTB_MD5, PTB_SPLITS, PTB_URL, data_root, load_cifar10,
                            load_ptb)
from smoothgen.presets import STUDY_PRESETS, study_params
from smoothgen.results import repo_root, results_dir, write_json
from smoothgen.results import results_root as resolve_results_root

STAMP = ".stamp.json"
BOOK_PRESET = "cpu"
"""The preset whose executed notebooks the book shows."""
KERNEL_ENV = {"TQDM_DISABLE": "1"}
"""Environment defaults of the notebook kernels."""


class DataMissingError(FileNotFoundError):
    """A notebook that must run reads a dataset that is absent (or could not be fetched)."""


class NotebookError(RuntimeError):
    """A cell of a study notebook raised; the message names the notebook, the error and the kept copy."""


@dataclass(frozen=True)
class Dataset:
    """A dataset the study reads: its files under the data root and where they come from.

    Attributes
    ----------
    title
        The dataset's name in messages.
    folder
        The folder that holds ``files``, relative to the data root.
    files
        The files the study notebooks read.
    source
        The official source.
    fetch
        Downloads the official files into the data root (checksums verified).
    complete
        Every file of the dataset (all splits: what the tests and the model training read).
    """

    title: str
    folder: str
    files: tuple[str, ...]
    source: str
    fetch: Callable[[], object]
    complete: tuple[str, ...]

    def missing(self, root: Path, every: bool = False) -> list[Path]:
        """The files of :attr:`files` (of :attr:`complete` if ``every``) absent under the data root ``root``."""
        names = self.complete if every else self.files
        return [root / self.folder / name for name in names if not (root / self.folder / name).is_file()]


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("CIFAR-10", f"cifar10/{CIFAR10_DIR}", ("test_batch", "batches.meta"),
                       f"{CIFAR10_URL} (extracted)", lambda: [load_cifar10(split, download=True) for split in ("test", "train")], tuple(CIFAR10_MD5)),
    "ptb": Dataset("Penn Treebank", "ptb", ("ptb.train.txt", "ptb.test.txt"), PTB_URL,
                   lambda: [load_ptb(split, download=True) for split in PTB_SPLITS], tuple(PTB_MD5)),
}
"""The datasets of the study notebooks (which read the test splits; PTB's vocabulary comes from its train
file). ``fetch`` gets every split: the tests and the model training read them too."""

DATA_NEEDS: dict[str, tuple[str, ...]] = {
    "01_smoothing_classifiers": ("cifar10",), "02_certificates": (), "03_cifar10": ("cifar10",),
    "04_ptb": ("ptb",), "05_adaptive_noise": ("cifar10", "ptb"), "06_attacks": ("ptb",),
    "07_overhead": ("cifar10",), "08_meaningful_radii": ("cifar10", "ptb"), "09_ablations": ("cifar10",),
}
"""The datasets (keys of :data:`DATASETS`) each notebook reads."""


def notebook_dir() -> Path:
    """The folder of the source notebooks."""
    return repo_root() / "notebooks"


def published_root() -> Path:
    """The results root that the book and the repository publish: ``<repo>/data/results``."""
    return repo_root() / "data" / "results"


def scratch_root() -> Path:
    """The default results root of runs with overrides: ``<repo>/artifacts/results`` (ignored by git)."""
    return repo_root() / "artifacts" / "results"


def output_root(overrides: Mapping[str, Any] | None = None, root: str | Path | None = None) -> Path:
    """Where a run writes, as an absolute path.

    ``root``, else ``$SMOOTHGEN_RESULTS``, else :func:`published_root` — or :func:`scratch_root`
    for a run with ``overrides``, so that overrides never replace the published results by default.
    """
    if root is None and not os.environ.get("SMOOTHGEN_RESULTS"):
        root = scratch_root() if overrides else published_root()
    return resolve_results_root(root).resolve()


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


def check_overrides(notebooks: Sequence[Path], preset: str, overrides: Mapping[str, Any] | None) -> None:
    """Check that every override is a parameter of every notebook's ``preset`` (see ``STUDY_PRESETS``), of its kind.

    Raises
    ------
    ValueError
        On one line: the unknown keys, the notebooks that lack them, the ``--only`` selection of the
        notebooks that take them, and the keys that all the rejecting notebooks take.
    """
    keys = set(overrides or {})
    valid = {nb.stem: set(STUDY_PRESETS.get(nb.stem, {}).get(preset, {})) for nb in notebooks}
    rejecting = [name for name, known in valid.items() if keys - known]
    if not rejecting:
        for name in valid:  # the kinds too (a string where a number belongs), before anything runs
            if name in STUDY_PRESETS:
                study_params(name, preset, dict(overrides or {}))
        return
    unknown = sorted(set().union(*(keys - valid[name] for name in rejecting)))
    taking = [name.split("_")[0] for name, known in valid.items() if keys <= known]
    hint = f"; only {' '.join(taking)} take them (select with --only {' '.join(taking)})" if taking else ""
    common = sorted(set.intersection(*(valid[name] for name in rejecting)))
    takers = f"{rejecting[0]} takes" if len(rejecting) == 1 else "keys they all take"
    raise ValueError(f"override(s) {unknown} unknown to {', '.join(rejecting)} at preset {preset!r}{hint}; "
                     f"{takers}: {common}")


def inputs_digest(notebook: Path, parameters: dict[str, Any]) -> str:
    """SHA-256 over what a notebook's results depend on: source, parameters, library, checkpoint cards."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    root = repo_root()
    for path in sorted((root / "smoothgen").rglob("*.py")) + sorted((root / "data" / "checkpoints").glob("*.json")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def executed_path(notebook: Path, preset: str, root: Path) -> Path:
    """Where the executed copy goes: ``book/notebooks/`` for the book's preset into the published
    results root, else next to the notebook's tables under ``root``."""
    if preset == BOOK_PRESET and root.resolve() == published_root().resolve():
        return repo_root() / "book" / "notebooks" / notebook.name
    return root / notebook.stem / preset / notebook.name


def _parameters(preset: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The papermill parameters of a run."""
    return {"preset": preset, "overrides": dict(overrides or {})}


def _saved_stamp(notebook: Path, preset: str, root: Path, digest: str) -> dict[str, Any] | None:
    """The stamp of the notebook's last run under ``root`` if it matches ``digest`` and its executed copy exists."""
    stamp_path = root / notebook.stem / preset / STAMP
    if not (stamp_path.exists() and executed_path(notebook, preset, root).exists()):
        return None
    stamp = json.loads(stamp_path.read_text())
    return stamp if stamp.get("digest") == digest else None


def pending_notebooks(notebooks: Sequence[Path], preset: str, overrides: Mapping[str, Any] | None = None,
                      force: bool = False, results_root: Path | None = None) -> list[Path]:
    """The notebooks of ``notebooks`` that a run would execute: all with ``force``, else those whose
    inputs changed since their last run (see :func:`inputs_digest`)."""
    root, parameters = output_root(overrides, results_root), _parameters(preset, overrides)
    return [nb for nb in notebooks if force or _saved_stamp(nb, preset, root, inputs_digest(nb, parameters)) is None]


def missing_data(notebooks: Iterable[Path]) -> dict[str, list[Path]]:
    """The datasets read by ``notebooks`` that lack files under :func:`smoothgen.data.data_root`,
    with the missing files, by name (empty when everything is present)."""
    root = data_root()
    names = dict.fromkeys(name for nb in notebooks for name in DATA_NEEDS.get(nb.stem, ()))
    return {name: files for name in names if (files := DATASETS[name].missing(root))}


def data_help(names: Iterable[str]) -> str:
    """Where the datasets ``names`` go and where they come from, one line each, then how to provide them."""
    root = data_root()
    lines = [f"  {d.title}: {root / d.folder}/{{{','.join(d.files)}}} from {d.source}"
             for d in (DATASETS[name] for name in names)]
    return "\n".join([*lines, "Place the files there, or set SMOOTHGEN_DATA to a folder that holds cifar10/ and ptb/ "
                              "(default: data/ in the repository)."])


def fetch_data(names: Iterable[str]) -> None:
    """Download the datasets ``names`` from their official sources into the data root (checksums verified).

    Raises
    ------
    DataMissingError
        If a download fails; the loaders write atomically and remove the folders they made (when empty),
        so nothing half-made is left behind.
    """
    for name in names:
        dataset = DATASETS[name]
        try:
            dataset.fetch()
        except (OSError, ValueError) as err:  # ConnectionError, ChecksumError
            raise DataMissingError(f"could not fetch {dataset.title}: {err}\n{data_help([name])}") from err


def ensure_datasets(names: Iterable[str], download: bool = False) -> dict[str, list[Path]]:
    """Every file of the datasets ``names`` under the data root, fetched if ``download``; returns what is
    still missing, by name (empty when complete).

    Raises
    ------
    DataMissingError
        If a download fails (nothing half-made is left behind).
    """
    root = data_root()
    missing = {name: files for name in names if (files := DATASETS[name].missing(root, every=True))}
    if missing and download:
        fetch_data(missing)
        missing = {name: files for name in missing if (files := DATASETS[name].missing(root, every=True))}
    return missing


def require_data(notebooks: Sequence[Path], download: bool = False) -> None:
    """Make sure the data read by ``notebooks`` is present, fetching it if ``download``.

    Raises
    ------
    DataMissingError
        If data is missing and ``download`` is false (or a download fails); nothing is written.
    """
    missing = missing_data(notebooks)
    if missing and download:
        fetch_data(missing)
    elif missing:
        needing = [nb.stem for nb in notebooks if set(DATA_NEEDS.get(nb.stem, ())) & set(missing)]
        raise DataMissingError(
            f"the study must run {', '.join(needing)} (inputs changed, or --force) but their data is missing:\n"
            f"{data_help(missing)} Or rerun with --download to fetch the official files (checksums verified).")


def recorded_wall_time(notebook: str, preset: str = BOOK_PRESET) -> float | None:
    """Wall time in seconds of the notebook's last run into the published results (its stamp), if any."""
    path = published_root() / notebook / preset / STAMP
    return json.loads(path.read_text()).get("wall_time_s") if path.exists() else None


@contextlib.contextmanager
def kernel_environment(defaults: Mapping[str, str], forced: Mapping[str, str] | None = None) -> Iterator[None]:
    """Set ``defaults`` (where not already set) and ``forced`` in ``os.environ`` while a kernel starts,
    then restore the previous environment."""
    values = {**{k: v for k, v in defaults.items() if k not in os.environ}, **(forced or {})}
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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


def _execute(notebook: Path, parameters: dict[str, Any], out_dir: Path, root: Path) -> Path:
    """Execute ``notebook`` into a hidden file in ``out_dir`` (returned), its kernel writing under ``root``.

    Raises
    ------
    NotebookError
        If a cell raises; the executed copy is kept as ``<out_dir>/<name>.failed.ipynb``.
    """
    import papermill  # heavy imports, only when a notebook runs
    from papermill.exceptions import PapermillExecutionError

    tmp, failed = out_dir / f".{notebook.stem}.running.ipynb", out_dir / f"{notebook.stem}.failed.ipynb"
    try:
        with kernel_environment(KERNEL_ENV, {"SMOOTHGEN_RESULTS": str(root)}):
            papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, cwd=str(notebook.parent),
                                       progress_bar=False, kernel_name="python3")
    except BaseException as err:
        if tmp.exists():  # keep the failed run for inspection, never as a result
            tmp.replace(failed)
        if isinstance(err, PapermillExecutionError):
            raise NotebookError(f"notebook {notebook.stem} failed in cell [{err.exec_count}]: {err.ename}: "
                                f"{err.evalue} (executed copy kept at {failed})") from err
        raise
    return tmp


def experiment_of(notebook: Path) -> ModuleType:
    """The ``smoothgen.experiments`` module whose ``run`` the notebook calls (read from its source)."""
    found = re.search(r"from smoothgen\.experiments import (\w+)", notebook.read_text())
    if found is None:
        raise ValueError(f"{notebook.name} imports no smoothgen.experiments module")
    return importlib.import_module(f"smoothgen.experiments.{found.group(1)}")


def sharded(notebook: Path) -> bool:
    """Whether the notebook's experiment splits its work across torchrun ranks (its module's ``SHARDED``)."""
    return bool(getattr(experiment_of(notebook), "SHARDED", False))


def _execute_sharded(notebook: Path, preset: str, overrides: dict[str, Any] | None, root: Path, nproc: int) -> None:
    """Run the notebook on ``nproc`` torchrun ranks (:mod:`smoothgen.distributed`); rank 0 writes its results."""
    command = distributed.torchrun_command(notebook, preset, overrides, root, nproc)
    command[0] = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run(command, cwd=repo_root())
    if done.returncode != 0:
        raise NotebookError(f"notebook {notebook.stem} failed on {nproc} ranks (torchrun exit {done.returncode}; "
                            f"see the output above and {results_dir(notebook.stem, preset, root)})")


def run_notebook(notebook: Path, preset: str, overrides: dict[str, Any] | None = None,
                 force: bool = False, results_root: Path | None = None, nproc: int = 1) -> dict[str, Any]:
    """Execute one notebook with papermill unless its stamp says its inputs are unchanged.

    Results go under :func:`output_root` (``overrides``, ``results_root``). With ``nproc > 1`` a
    shard-aware notebook (:func:`sharded`) runs on that many torchrun ranks, giving the same tables.
    Returns the stamp: ``{"notebook", "preset", "digest", "wall_time_s", "output", "skipped"}``.
    """
    parameters, root = _parameters(preset, overrides), output_root(overrides, results_root)
    digest = inputs_digest(notebook, parameters)
    saved = None if force else _saved_stamp(notebook, preset, root, digest)
    if saved is not None:
        return {**saved, "skipped": True}
    if nproc > 1 and sharded(notebook):
        _execute_sharded(notebook, preset, overrides, root, nproc)
        return {**json.loads((results_dir(notebook.stem, preset, root) / STAMP).read_text()), "skipped": False}
    start = time.perf_counter()
    out_dir, output = results_dir(notebook.stem, preset, root), executed_path(notebook, preset, root)
    tmp = _execute(notebook, parameters, out_dir, root)
    clean_executed(tmp)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(output)
    (out_dir / f"{notebook.stem}.failed.ipynb").unlink(missing_ok=True)
    stamp = {"notebook": notebook.stem, "preset": preset, "digest": digest, "output": os.path.relpath(output, repo_root()),
             "wall_time_s": round(time.perf_counter() - start, 2)}
    write_json(out_dir / STAMP, stamp)
    return {**stamp, "skipped": False}


def run_study(preset: str, only: Sequence[str] | None = None, overrides: dict[str, Any] | None = None,
              force: bool = False, results_root: Path | None = None, download: bool = False,
              nproc: int = 1) -> list[dict[str, Any]]:
    """Run the notebooks in order (see :func:`run_notebook`, which takes ``nproc``) with a progress bar;
    stop at the first failure.

    Before anything runs, the overrides are checked against every selected notebook
    (:func:`check_overrides`) and the data of the notebooks that will run is required
    (:func:`require_data`, which fetches it if ``download``).

    Raises
    ------
    ValueError
        An unknown notebook in ``only`` or an override that a selected notebook does not take.
    DataMissingError
        Data that a notebook to run reads is missing (and not fetched).
    NotebookError
        A notebook failed.
    """
    books = list_notebooks(only)
    check_overrides(books, preset, overrides)
    require_data(pending_notebooks(books, preset, overrides, force, results_root), download)
    stamps = []
    with tqdm(books, desc=f"study[{preset}]", unit="notebook") as bar:
        for notebook in bar:
            bar.set_postfix_str(notebook.stem)
            stamps.append(run_notebook(notebook, preset, overrides, force, results_root, nproc))
    return stamps
