"""Command line: ``smoothgen study`` runs the study, ``smoothgen train`` trains a base model,
``smoothgen data`` checks (and fetches) the datasets.

Errors are reported on one line, ``smoothgen: error: ...``, with exit status 2 (1 when a notebook
failed, 3 when data that a notebook to run reads is missing); ``SMOOTHGEN_DEBUG=1`` re-raises them
with their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smoothgen import presets, study

SET_EXAMPLE = """--only 03 --set '{"n": 40}'"""
"""The ``--set`` example of the help (tests check that it passes validation)."""

DESCRIPTION = """\
SmoothGen: certified robustness of conditional generators through randomized smoothing.
'smoothgen study' runs the experiment notebooks behind the book; 'smoothgen train' trains
one of the base models they use; 'smoothgen data' checks the datasets and fetches them."""

EPILOG = """\
Run 'smoothgen study -h', 'smoothgen train -h' or 'smoothgen data -h' for details. Errors are reported on one
line (exit status 2; 1 when a notebook failed, 3 when data is missing); set SMOOTHGEN_DEBUG=1
to see the traceback."""

STUDY_DESCRIPTION = """\
Execute the study notebooks (notebooks/NN_*.ipynb) in order with papermill, at one preset of
smoothgen/presets.py. The run is resumable: a notebook whose inputs (its source, its
parameters, the library's source and the model cards) match the stamp of its last run is
skipped. The published results are committed with their stamps, so a fresh clone reruns only
the notebooks whose inputs changed since the published run, and only those need data. Before
anything runs, every --set key is checked against every selected notebook, and the data of the
notebooks that will run against the data root."""

DATA_DESCRIPTION = """\
Check that CIFAR-10 and Penn Treebank are complete (every split) under the data root:
$SMOOTHGEN_DATA if set, else data/ in the repository. With --download, fetch
the missing files from the official sources (CIFAR-10: about 170 MB; PTB: about 5 MB), each
verified against its official md5 and written atomically. The tests read these files too;
'make test' runs 'smoothgen data --download' first. Exit status 3 when something is still missing."""

STUDY_EPILOG = """\
notebooks, with the wall time of the published cpu run (approximate: a 2-core x86 machine,
no GPU; smoke takes seconds per notebook) and the data each one reads:
{table}

data (only the notebooks that will run need it):
{data}
--download fetches missing data from these official sources (checksums verified).

outputs: tables, meta.json and .stamp.json go to <results>/<notebook>/<preset>/, where
<results> is --results-dir, else $SMOOTHGEN_RESULTS, else data/results/ (the published
results) for a plain run and artifacts/results/ for a run with --set, so that --set never
writes over the published results. The executed notebooks of a cpu run into data/results/ are the book's
copies in book/notebooks/; all others go next to their tables. To change the published
numbers, edit the preset in smoothgen/presets.py and rerun.

exit status: 0 done or nothing to do; 1 a notebook failed (its executed copy is kept as
<notebook>.failed.ipynb next to its tables); 2 a usage error; 3 data missing."""

TRAIN_DESCRIPTION = """\
Train one base model of the study at a preset of smoothgen/presets.py (TRAIN_PRESETS), then
compute its model card's metrics. Writes <out>/<name>.safetensors and the card <name>.json; an
interrupted run resumes from its saved state."""

TRAIN_EPILOG = """\
kinds: diffusion (class-conditional, CIFAR-10), lm (word-level transformer, PTB), classifier
(the clean CIFAR-10 evaluator; with --sigma, a Cohen base classifier).
runtime with --preset cpu (the default) on 2 quiet CPU cores (estimates): diffusion 1.5-2 h, lm about
40 min, classifier about 25 min; smoke: seconds; gpu: larger models, for a GPU.
data: the full dataset (CIFAR-10: all of cifar10/cifar-10-batches-py/; PTB:
ptb/ptb.{train,valid,test}.txt) under --data-root, else $SMOOTHGEN_DATA, else data/; see
'smoothgen study -h' for the sources.
outputs: --out, else $SMOOTHGEN_CHECKPOINTS, else data/checkpoints/, which holds the shipped
checkpoints: a model trained there replaces the shipped one of the same name (and every study
notebook's inputs change). Example: smoothgen train classifier --preset smoke --out /tmp/ckpt"""


def _minutes(seconds: float | None) -> str:
    """A wall time in whole minutes (``?`` when unknown)."""
    if seconds is None:
        return "?"
    return "<1 min" if seconds < 60 else f"~{round(seconds / 60)} min"


def study_epilog() -> str:
    """The epilog of ``smoothgen study -h``: each notebook's recorded cpu wall time and data, the
    data layout and sources, the outputs and the exit status."""
    rows = []
    for path in study.list_notebooks():
        data = ", ".join(study.DATASETS[name].title for name in study.DATA_NEEDS.get(path.stem, ())) or "none"
        rows.append(f"  {path.stem:<26}{_minutes(study.recorded_wall_time(path.stem)):>8}   {data}")
    return STUDY_EPILOG.format(table="\n".join(rows), data=study.data_help(study.DATASETS))


def _cpu_hours() -> str:
    """The recorded wall time of the whole published cpu run, in hours."""
    seconds = [study.recorded_wall_time(path.stem) for path in study.list_notebooks()]
    return f"about {sum(s for s in seconds if s) / 3600:.1f} h" if all(seconds) else "hours"


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``smoothgen study``."""
    parser.add_argument("--preset", default="cpu", choices=("smoke", "cpu", "gpu"),
                        help=f"smoke: seconds per notebook (the tests); cpu (default): the published study, "
                             f"{_cpu_hours()} in all; gpu: paper scale, for a machine with a GPU")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                        help="run only these notebooks, by number or name (03 or 03_cifar10)")
    parser.add_argument("--force", action="store_true", help="rerun the notebooks even if their inputs did not change")
    parser.add_argument("--set", metavar="JSON", help=f"override preset parameters: a JSON object whose keys every "
                        f"selected notebook takes, e.g. {SET_EXAMPLE} (the keys are in smoothgen/presets.py). "
                        "Results go to artifacts/results/ (or --results-dir), never over the published ones")
    parser.add_argument("--results-dir", type=Path, metavar="DIR",
                        help="write tables, stamps and executed notebooks under DIR (default: see outputs below)")
    parser.add_argument("--download", action="store_true",
                        help="fetch missing data that the notebooks to run read from the official sources")
    parser.add_argument("--nproc", type=_positive, default=1, metavar="K",
                        help="split each shard-aware notebook's conditions across K torchrun ranks, one device each "
                             "(CPU ranks: gloo); the tables are the same as with one process. Default 1")


def _positive(text: str) -> int:
    """An integer ≥ 1 (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``smoothgen`` argument parser (``train``'s own options are parsed by :func:`_train`)."""
    parser = argparse.ArgumentParser(prog="smoothgen", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{study,train,data}")
    _add_study_options(sub.add_parser(
        "study", help="run the study notebooks with papermill (resumable: skips the notebooks whose inputs did "
        f"not change; the cpu preset takes {_cpu_hours()} on 2 cores)", description=STUDY_DESCRIPTION,
        epilog=study_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter))
    data = sub.add_parser("data", help="say where each dataset (CIFAR-10, Penn Treebank) is and whether it is "
                          "complete; --download fetches what is missing", description=DATA_DESCRIPTION)
    data.add_argument("--download", action="store_true",
                      help="fetch missing files from the official sources into the data root (checksums verified)")
    sub.add_parser("train", add_help=False, help="train a base model (diffusion, lm or classifier) and write its "
                   "checkpoint and model card: smoothgen train KIND --preset PRESET")
    return parser


def parse_overrides(text: str | None) -> dict[str, Any]:
    """The value of ``--set``: a JSON object (``{}`` when absent); see :func:`smoothgen.presets.parse_overrides`."""
    return presets.parse_overrides(text, "--set")


def _study(args: argparse.Namespace) -> int:
    """``smoothgen study``: run, then one line per notebook (skipped, or its wall time and executed copy)."""
    stamps = study.run_study(args.preset, only=args.only, overrides=parse_overrides(args.set), force=args.force,
                             results_root=args.results_dir, download=args.download, nproc=args.nproc)
    for stamp in stamps:
        ran = f"{stamp['wall_time_s']:.1f} s -> {stamp['output']}"
        state = "skipped (inputs unchanged)" if stamp["skipped"] else ran
        print(f"{stamp['notebook']:<26} {stamp['preset']:<6} {state}")
    if all(stamp["skipped"] for stamp in stamps):
        print("study: nothing to run: every notebook's inputs match the stamp of its last run")
    return 0


def _data(args: argparse.Namespace) -> int:
    """``smoothgen data``: one line per dataset (complete, or its missing files and source); exit 3 if any is missing."""
    missing = study.ensure_datasets(study.DATASETS, download=args.download)
    for name, dataset in study.DATASETS.items():
        where = study.data_root() / dataset.folder
        state = f"missing {len(missing[name])} of {len(dataset.complete)} files" if name in missing else "complete"
        print(f"{dataset.title:<14} {state}: {where}")
    if missing:
        raise study.DataMissingError(f"datasets missing: rerun with --download, or\n{study.data_help(missing)}")
    return 0


def _train(rest: Sequence[str]) -> int:
    """``smoothgen train``: :func:`smoothgen.models.train.main` with this command's name and help."""
    from smoothgen.models import train

    parser = train.build_parser()
    parser.prog, parser.description, parser.epilog = "smoothgen train", TRAIN_DESCRIPTION, TRAIN_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.parse_args(rest)  # -h and usage errors under this command's name; train.main parses again
    return train.main(list(rest))


def _exit_status(err: Exception) -> int:
    """1 for a failed notebook, 3 for missing data, 2 for any other error."""
    if isinstance(err, study.NotebookError):
        return 1
    return 3 if isinstance(err, study.DataMissingError) else 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smoothgen`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "train" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "train":
            return _train(rest)
        return _data(args) if args.command == "data" else _study(args)
    except (ValueError, OSError, study.NotebookError) as err:
        if os.environ.get("SMOOTHGEN_DEBUG", "0") not in ("", "0"):
            raise
        print(f"smoothgen: error: {err}", file=sys.stderr)
        return _exit_status(err)


if __name__ == "__main__":
    raise SystemExit(main())
