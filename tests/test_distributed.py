"""Sharded study runs (smoothgen.distributed): torchrun ranks over gloo give the tables of one process."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from smoothgen import distributed, study
from smoothgen.experiments.common import Stopwatch, finish

SHARDED = ["03_cifar10", "04_ptb"]


def test_map_items_in_one_process_is_the_plain_map(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == (0, 1) and distributed.is_writer()
    assert distributed.map_items(lambda i, x: (i, x * x), [3, 1, 2]) == [(0, 9), (1, 1), (2, 4)]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path))
    params, table = {"preset": "smoke"}, {"t": pd.DataFrame({"a": [1]})}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = finish("99_test", params, dict(table), seed=0, data_variant=None, clock=Stopwatch())
    assert result["t"]["a"].tolist() == [1] and result.meta["world_size"] == 2 and not any(tmp_path.rglob("*"))
    monkeypatch.setenv("RANK", "0")
    finish("99_test", params, dict(table), seed=0, data_variant=None, clock=Stopwatch())
    assert sorted(p.name for p in (tmp_path / "99_test" / "smoke").iterdir()) == ["meta.json", "t.csv"]


def test_shard_aware_notebooks_are_declared() -> None:
    books = {nb.stem: nb for nb in study.list_notebooks()}
    assert [name for name, nb in books.items() if study.sharded(nb)] == SHARDED
    command = distributed.torchrun_command(books["03_cifar10"], "smoke", {"n": 4}, Path("out"), 2)
    assert command[:4] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m"] and json.loads(command[-2]) == {"n": 4}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.needs_data("cifar10", "ptb")
def test_two_cpu_ranks_give_byte_identical_tables(tmp_path: Path) -> None:
    """``smoothgen study --preset smoke --nproc 2`` (torchrun, gloo) writes the CSVs of one process, byte for byte."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for nproc in (1, 2):
        done = subprocess.run([sys.executable, "-m", "smoothgen.cli", "study", "--preset", "smoke", "--only", *SHARDED,
                               "--force", "--nproc", str(nproc), "--results-dir", str(tmp_path / str(nproc))],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    for name in SHARDED:
        one, two = tmp_path / "1" / name / "smoke", tmp_path / "2" / name / "smoke"
        tables = sorted(p.name for p in one.glob("*.csv"))
        assert tables and tables == sorted(p.name for p in two.glob("*.csv"))
        match, mismatch, errors = filecmp.cmpfiles(one, two, tables, shallow=False)
        assert match == tables, f"{name}: {mismatch or errors} differ between 1 and 2 ranks"
        assert json.loads((two / "meta.json").read_text())["world_size"] == 2
        assert json.loads((one / "meta.json").read_text())["world_size"] == 1
        assert (two / f"{name}.ipynb").is_file()
