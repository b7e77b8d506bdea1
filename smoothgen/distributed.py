"""A study experiment sharded across processes with ``torch.distributed``, launched by ``torchrun``.

``smoothgen study --nproc K`` runs each shard-aware notebook as
``torchrun --standalone --nproc_per_node K -m smoothgen.distributed NOTEBOOK PRESET OVERRIDES ROOT``
(one device per rank; CPU ranks talk over gloo, CUDA ranks over NCCL). Rank 0 executes the notebook
with papermill; its kernel inherits torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables and joins
the group when the experiment starts. Every other rank runs the same experiment function headless.
Inside, :func:`map_items` gives each rank the items (classes, prompts) whose index is its rank modulo
the world size, and gathers the results in item order on every rank; only rank 0 writes (see
:func:`is_writer`). An item's randomness comes from its own seed (e.g. ``seed + 1000·k`` for class k),
so the tables are identical for any world size.

Why torchrun and not ``accelerate launch``: the study needs only process launch, rendezvous and
object collectives, which torch ships; accelerate would add a dependency and a config file for no
gain here. Several nodes: replace ``--standalone`` with torchrun's rendezvous options
(``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``) via ``SMOOTHGEN_TORCHRUN_ARGS``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from smoothgen.runtime import default_device

T = TypeVar("T")
R = TypeVar("R")


def world() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's environment; ``(0, 1)`` in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_writer() -> bool:
    """Whether this process writes results: rank 0 (the only process when not launched by torchrun)."""
    return world()[0] == 0


def init() -> None:
    """Join the process group of a torchrun launch (idempotent; nothing to do in a plain process): NCCL on
    the rank's own GPU (:func:`smoothgen.runtime.default_device`), gloo on CPUs."""
    if world()[1] == 1 or dist.is_initialized():
        return
    device = default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def map_items(fn: Callable[[int, T], R], items: Sequence[T], desc: str | None = None) -> list[R]:
    """``[fn(i, items[i]) for i in range(len(items))]``, each item computed on rank ``i mod world size``
    and the results gathered in item order on every rank (``desc``: a progress bar over this rank's items).

    ``fn`` must draw its randomness from a seed of its own item (never from a stream shared across
    items), so that the result does not depend on the world size.
    """
    init()
    rank, size = world()
    own = [(i, item) for i, item in enumerate(items) if i % size == rank]
    mine = [(i, fn(i, item)) for i, item in tqdm(own, desc=desc, leave=False, disable=desc is None)]
    if size == 1:
        return [result for _, result in mine]
    parts: list[list[tuple[int, R]] | None] = [None] * size
    dist.all_gather_object(parts, mine)
    merged = dict(pair for part in parts for pair in part or [])
    if sorted(merged) != list(range(len(items))):
        raise RuntimeError(f"gathered items {sorted(merged)} of {len(items)}: the ranks disagree on the work")
    return [merged[i] for i in range(len(items))]


def torchrun_command(notebook: Path, preset: str, overrides: dict[str, Any] | None, root: Path,
                     nproc: int) -> list[str]:
    """The torchrun command that runs ``notebook`` on ``nproc`` ranks (see the module docstring)."""
    launch = os.environ.get("SMOOTHGEN_TORCHRUN_ARGS", "--standalone").split()
    return ["torchrun", *launch, f"--nproc_per_node={nproc}", "-m", "smoothgen.distributed", str(notebook), preset,
            json.dumps(overrides or {}), str(root)]


def main(argv: Sequence[str] | None = None) -> int:
    """One rank of a sharded notebook run: rank 0 executes the notebook, the others its experiment."""
    from smoothgen import study
    from smoothgen.presets import study_params

    parser = argparse.ArgumentParser(prog="python -m smoothgen.distributed", description=__doc__.split("\n\n")[0])
    for name in ("notebook", "preset", "overrides", "root"):
        parser.add_argument(name)
    args = parser.parse_args(argv)
    notebook, overrides, root = Path(args.notebook), json.loads(args.overrides), Path(args.root)
    if is_writer():
        study.run_notebook(notebook, args.preset, overrides, force=True, results_root=root)
    else:
        os.environ["SMOOTHGEN_RESULTS"] = str(root)
        study.experiment_of(notebook).run(study_params(notebook.stem, args.preset, overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
