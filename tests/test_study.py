"""The study runner: papermill execution, resumability, failure handling, parameter presets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from smoothgen import study
from smoothgen.presets import STUDY_PRESETS, study_params


def _notebook(path: Path, body: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_code_cell('preset = "cpu"\noverrides = {}', metadata={"tags": ["parameters"]}),
                new_code_cell(body)]
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def fake_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    books = tmp_path / "notebooks"
    books.mkdir()
    monkeypatch.setattr(study, "notebook_dir", lambda: books)
    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_runs_then_skips_then_reruns_on_change(fake_repo: Path) -> None:
    nb = _notebook(fake_repo / "notebooks" / "01_echo.ipynb", "print(preset, overrides)")
    first = study.run_study("smoke", overrides={"x": 1})
    assert [s["skipped"] for s in first] == [False]
    executed = nbformat.read(fake_repo / "results" / "01_echo" / "smoke" / "01_echo.ipynb", as_version=4)
    assert "smoke {'x': 1}" in executed.cells[-1].outputs[0]["text"]
    assert study.run_study("smoke", overrides={"x": 1})[0]["skipped"] is True
    assert study.run_study("smoke", overrides={"x": 2})[0]["skipped"] is False
    _notebook(nb, "print('changed')")
    assert study.run_study("smoke", overrides={"x": 2})[0]["skipped"] is False
    assert study.run_study("smoke", overrides={"x": 2}, force=True)[0]["skipped"] is False


def test_kernels_start_without_progress_bars_and_environment_is_restored(
        fake_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    _notebook(fake_repo / "notebooks" / "01_env.ipynb", "import os\nprint(os.environ.get('TQDM_DISABLE'))")
    study.run_study("smoke")
    executed = nbformat.read(fake_repo / "results" / "01_env" / "smoke" / "01_env.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == "1"
    assert "TQDM_DISABLE" not in os.environ
    monkeypatch.setenv("TQDM_DISABLE", "0")  # the caller's choice wins
    study.run_study("smoke", force=True)
    executed = nbformat.read(fake_repo / "results" / "01_env" / "smoke" / "01_env.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == "0"


def test_failure_stops_and_keeps_earlier_results(fake_repo: Path) -> None:
    _notebook(fake_repo / "notebooks" / "01_ok.ipynb", "print('ok')")
    _notebook(fake_repo / "notebooks" / "02_bad.ipynb", "raise RuntimeError('boom')")
    _notebook(fake_repo / "notebooks" / "03_never.ipynb", "print('never')")
    with pytest.raises(Exception, match="boom"):
        study.run_study("smoke")
    out = fake_repo / "results"
    assert json.loads((out / "01_ok" / "smoke" / study.STAMP).read_text())["notebook"] == "01_ok"
    assert (out / "02_bad" / "smoke" / "02_bad.failed.ipynb").exists()
    assert not (out / "02_bad" / "smoke" / "02_bad.ipynb").exists()
    assert not (out / "03_never").exists()


def test_only_selects_by_number_or_name(fake_repo: Path) -> None:
    for name in ("01_a", "02_b"):
        _notebook(fake_repo / "notebooks" / f"{name}.ipynb", "pass")
    assert [p.stem for p in study.list_notebooks(["02"])] == ["02_b"]
    assert [p.stem for p in study.list_notebooks(["01_a"])] == ["01_a"]
    with pytest.raises(ValueError, match="unknown notebook"):
        study.list_notebooks(["09"])


def test_study_params_validates_and_overrides() -> None:
    name = next(iter(STUDY_PRESETS))
    params = study_params(name, "smoke", {"seed": 7})
    assert params["seed"] == 7 and params["preset"] == "smoke"
    assert study_params(name, "smoke")["seed"] == STUDY_PRESETS[name]["smoke"]["seed"]  # presets not mutated
    with pytest.raises(ValueError, match="unknown preset"):
        study_params(name, "huge")
    with pytest.raises(ValueError, match="unknown parameter"):
        study_params(name, "smoke", {"no_such_parameter": 1})
    with pytest.raises(ValueError, match="unknown notebook"):
        study_params("99_nothing", "smoke")


def test_every_notebook_has_presets_for_every_preset() -> None:
    names = {p.stem for p in study.list_notebooks()}
    assert names <= set(STUDY_PRESETS), f"notebooks without presets: {sorted(names - set(STUDY_PRESETS))}"
    for name in names:
        assert set(STUDY_PRESETS[name]) == {"smoke", "cpu", "gpu"}


def test_clean_executed_drops_stderr_and_machine_paths(tmp_path: Path) -> None:
    """Executed notebooks keep stdout and results, lose stderr streams, and name repo-relative paths."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="Warning: /abs/path"),
        nbformat.v4.new_output("stream", name="stdout", text="kept")])])
    nb.metadata["papermill"] = {"input_path": str(study.repo_root() / "notebooks" / "a.ipynb"), "output_path": "b.ipynb"}
    path = tmp_path / "a.ipynb"
    nbformat.write(nb, path)
    study.clean_executed(path)
    out = nbformat.read(path, as_version=4)
    assert [o["name"] for o in out.cells[0].outputs] == ["stdout"]
    assert out.metadata["papermill"] == {"input_path": "notebooks/a.ipynb", "output_path": "b.ipynb"}
