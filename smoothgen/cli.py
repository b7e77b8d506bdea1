"""Command line: ``smoothgen study`` runs the study, ``smoothgen train`` trains a base model."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _study(args: argparse.Namespace) -> int:
    from smoothgen.study import run_study

    overrides = json.loads(args.set) if args.set else {}
    stamps = run_study(args.preset, only=args.only, overrides=overrides, force=args.force)
    for stamp in stamps:
        state = "skipped (inputs unchanged)" if stamp["skipped"] else f"{stamp['wall_time_s']:.1f} s"
        print(f"{stamp['notebook']:<24} {stamp['preset']:<6} {state}")
    return 0


def _train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from smoothgen.models.train import main as train_main

    return train_main(list(rest))


def build_parser() -> argparse.ArgumentParser:
    """The ``smoothgen`` argument parser."""
    parser = argparse.ArgumentParser(prog="smoothgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    study = sub.add_parser("study", help="execute the experiment notebooks with papermill (resumable)")
    study.add_argument("--preset", default="cpu", choices=("smoke", "cpu", "gpu"))
    study.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="e.g. 03 or 03_cifar10")
    study.add_argument("--force", action="store_true", help="rerun notebooks whose inputs did not change")
    study.add_argument("--set", metavar="JSON", help='parameter overrides, e.g. \'{"n": 200}\'')
    sub.add_parser("train", help="train a base model: smoothgen train {diffusion,lm,classifier} --preset P",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smoothgen`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "train":
        return _train(args, rest)
    if rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return _study(args)


if __name__ == "__main__":
    raise SystemExit(main())
