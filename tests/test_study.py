"""The study runner: papermill execution, resumability, failure handling, parameter presets,
override validation, where results go and the data check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from smoothgen import data, study
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
    """Notebooks in ``tmp_path/notebooks`` (``01_echo`` takes the parameter ``x``), results in ``tmp_path/results``."""
    books = tmp_path / "notebooks"
    books.mkdir()
    monkeypatch.setattr(study, "notebook_dir", lambda: books)
    monkeypatch.setitem(STUDY_PRESETS, "01_echo", {"smoke": {"x": 0}, "cpu": {"x": 0}})
    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture()
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root (``SMOOTHGEN_DATA``) and a private cache."""
    root = tmp_path / "empty_data"
    root.mkdir()
    monkeypatch.setenv("SMOOTHGEN_DATA", str(root))
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "cache"))
    return root


def _never_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("a notebook was executed")


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
    failed = r"02_bad failed in cell \[\d+\]: RuntimeError: boom .*02_bad\.failed\.ipynb"
    with pytest.raises(study.NotebookError, match=failed):
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


def test_overrides_are_checked_against_every_notebook_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``{"n": 200}`` fits 01-04 and 09 only: the run stops before 01 with the notebooks, ``--only`` and the valid keys."""
    monkeypatch.setattr(study, "run_notebook", _never_run)
    with pytest.raises(ValueError) as info:
        study.run_study("cpu", overrides={"n": 200})
    message = str(info.value)
    assert "\n" not in message and "['n']" in message
    assert "05_adaptive_noise, 06_attacks, 07_overhead, 08_meaningful_radii" in message
    assert "--only 01 02 03 04" in message and "'seed'" in message
    with pytest.raises(ValueError, match=r"\['n_per_class'\] unknown to 03_cifar10 .*'focus_n'"):
        study.run_study("cpu", only=["03"], overrides={"n_per_class": 40})
    study.check_overrides(study.list_notebooks(["03", "04"]), "cpu", {"n": 40, "seed": 1})  # valid: no error


def test_override_run_never_writes_over_published_results(
        fake_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the book's preset with overrides, tables, stamp and executed copy go to the scratch root."""
    monkeypatch.setattr(study, "repo_root", lambda: fake_repo)
    monkeypatch.delenv("SMOOTHGEN_RESULTS")
    _notebook(fake_repo / "notebooks" / "01_echo.ipynb",
              "from smoothgen.results import results_dir\n(results_dir('01_echo', preset) / 't.csv').write_text('x')")
    stamp = study.run_study(study.BOOK_PRESET, overrides={"x": 1})[0]
    scratch = fake_repo / "artifacts" / "results" / "01_echo" / study.BOOK_PRESET
    assert {p.name for p in scratch.iterdir()} == {"t.csv", "01_echo.ipynb", study.STAMP}
    assert stamp["output"] == f"artifacts/results/01_echo/{study.BOOK_PRESET}/01_echo.ipynb"
    assert not (fake_repo / "book").exists() and not (fake_repo / "data").exists()
    assert "SMOOTHGEN_RESULTS" not in os.environ


def test_output_root_and_executed_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMOOTHGEN_RESULTS", raising=False)
    nb, cpu = Path("03_cifar10.ipynb"), study.BOOK_PRESET
    published = study.output_root()
    assert published == study.published_root().resolve()
    assert study.executed_path(nb, cpu, published) == study.repo_root() / "book" / "notebooks" / nb.name
    assert study.executed_path(nb, "smoke", published) == published / "03_cifar10" / "smoke" / nb.name
    scratch = study.output_root({"n": 1})
    assert scratch == study.scratch_root().resolve() and scratch != published
    assert study.executed_path(nb, cpu, scratch) == scratch / "03_cifar10" / cpu / nb.name
    assert study.output_root({"n": 1}, tmp_path) == tmp_path.resolve()  # an explicit root wins
    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path))
    assert study.output_root({"n": 1}) == study.output_root() == tmp_path.resolve()


def test_missing_data_stops_the_study_before_anything_runs(fake_repo: Path, no_data: Path) -> None:
    _notebook(fake_repo / "notebooks" / "02_certificates.ipynb", "pass")
    _notebook(fake_repo / "notebooks" / "03_cifar10.ipynb", "pass")
    with pytest.raises(study.DataMissingError) as info:
        study.run_study("smoke")
    message = str(info.value)
    assert message.startswith("the study must run 03_cifar10 ") and "02_certificates" not in message
    assert f"{no_data}/cifar10/cifar-10-batches-py/{{test_batch,batches.meta}}" in message
    assert data.CIFAR10_URL in message and "SMOOTHGEN_DATA" in message and "--download" in message
    assert "Penn Treebank" not in message
    assert not (fake_repo / "results").exists() and not any(no_data.iterdir())


def test_notebooks_with_current_stamps_need_no_data(fake_repo: Path, no_data: Path) -> None:
    """A notebook whose stamp matches its inputs is skipped, so missing data does not matter."""
    nb = _notebook(fake_repo / "notebooks" / "03_cifar10.ipynb", "pass")
    out = fake_repo / "results" / "03_cifar10" / "smoke"
    out.mkdir(parents=True)
    (out / nb.name).write_text("{}")
    digest = study.inputs_digest(nb, {"preset": "smoke", "overrides": {}})
    (out / study.STAMP).write_text(json.dumps({"notebook": nb.stem, "digest": digest}))
    assert study.pending_notebooks([nb], "smoke") == []
    assert [s["skipped"] for s in study.run_study("smoke")] == [True]
    assert study.pending_notebooks([nb], "smoke", force=True) == [nb]
    with pytest.raises(study.DataMissingError):
        study.run_study("smoke", force=True)


def test_failed_download_leaves_no_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    monkeypatch.setenv("SMOOTHGEN_DATA", str(root))
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "CIFAR10_URL", (tmp_path / "nowhere" / data.CIFAR10_ARCHIVE).as_uri())
    with pytest.raises(study.DataMissingError, match="could not fetch CIFAR-10"):
        study.fetch_data(["cifar10"])
    assert not root.exists()


def test_data_needs_cover_what_each_notebook_loads() -> None:
    """Every dataset whose loader a notebook's experiment module calls is declared in ``DATA_NEEDS``."""
    books = study.list_notebooks()
    assert set(study.DATA_NEEDS) == {p.stem for p in books}
    for book in books:
        module = re.search(r"from smoothgen\.experiments import (\w+)", book.read_text()).group(1)
        source = (study.repo_root() / "smoothgen" / "experiments" / f"{module}.py").read_text()
        called = {name for name in study.DATASETS if f"load_{name}(" in source}
        assert called <= set(study.DATA_NEEDS[book.stem]), book.stem


def test_study_params_parse_json_overrides_and_refuse_the_wrong_kind() -> None:
    """What ``papermill -p overrides '{...}'`` delivers (a string) is parsed; a value of the wrong kind
    fails at once with the parameter's name, instead of deep inside the experiment."""
    from smoothgen.presets import study_params

    assert study_params("03_cifar10", "smoke", '{"n": 40, "sigma_rel": [0.01]}')["n"] == 40
    assert study_params("03_cifar10", "smoke", "")["n"] == study_params("03_cifar10", "smoke")["n"]
    assert study_params("03_cifar10", "smoke", {"epsilon": 1})["epsilon"] == 1  # an int is a number
    for bad, match in [("{n: 5}", "not valid JSON"), ("[1]", "expected a JSON object"), ('{"n": "x"}', "n='x' is of kind str"),
                       ({"n": [1]}, "kind list, but the preset's n is of kind int"),
                       ({"sigma_rel": 0.1}, "kind number, but the preset's sigma_rel is of kind list"),
                       ({"n": True}, "kind bool")]:
        with pytest.raises(ValueError, match=re.escape(match) if "'" in match else match):
            study_params("03_cifar10", "smoke", bad)


def test_papermill_parameters_other_than_preset_and_overrides_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """papermill only logs "Passed unknown parameter" and runs on; the notebooks pass their input history,
    and a name injected there other than preset/overrides is refused with the override that means it.
    A papermill run turns progress bars off; an interactive session (no injected cell) leaves them alone."""
    from smoothgen.presets import injected_parameters, study_params

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert study_params("02_certificates", "smoke", None, history=["import x", "y = 1"])["preset"] == "smoke"
    assert "TQDM_DISABLE" not in os.environ
    injected = '# Parameters\npreset = "smoke"\noverrides = "{}"\n'
    assert injected_parameters(["", injected]) == {"preset": '"smoke"', "overrides": '"{}"'}
    assert study_params("02_certificates", "smoke", "{}", history=["", injected])["preset"] == "smoke"
    assert os.environ["TQDM_DISABLE"] == "1"
    for extra, hint in [("sigma = -1", '{"sigma": -1}'), ("name = 'a b'", '{"name": "a b"}')]:
        with pytest.raises(ValueError, match=re.escape(f"not ['{extra.split()[0]}']; pass them as -p overrides '{hint}'")):
            study_params("02_certificates", "smoke", None, history=[injected + extra + "\n"])


@pytest.mark.timeout(300)
def test_papermill_by_hand_fails_on_an_unknown_parameter(tmp_path: Path) -> None:
    """``papermill NB out -p sigma -1`` exits non-zero with the one-line reason (not silently at the preset's value)."""
    notebook = study.repo_root() / "notebooks" / "02_certificates.ipynb"
    done = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb"), "-p", "preset",
                           "smoke", "-p", "sigma", "-1", "--cwd", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "SMOOTHGEN_RESULTS": str(tmp_path)})
    assert done.returncode != 0
    assert "takes only -p preset" in done.stderr + done.stdout and '-p overrides \'{"sigma": -1}\'' in done.stderr + done.stdout


def test_git_dirty_sees_code_changes_but_not_the_study_outputs(tmp_path: Path) -> None:
    """meta.json and model cards say whether the code behind them was committed; results written by the run
    itself (data/results, book/notebooks, data/checkpoints) do not count as changes."""
    from smoothgen.results import git_dirty

    assert git_dirty(tmp_path) is None  # not a checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for name in ("code.py", "data/results/t.csv", "book/notebooks/n.ipynb", "data/checkpoints/c.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    assert git_dirty(tmp_path) is False
    for name in ("data/results/t.csv", "book/notebooks/n.ipynb", "data/checkpoints/c.json"):
        (tmp_path / name).write_text("1")
    (tmp_path / "untracked.py").write_text("x")
    assert git_dirty(tmp_path) is False
    (tmp_path / "code.py").write_text("1")
    assert git_dirty(tmp_path) is True


def test_the_banner_states_alpha_and_a_dirty_tree() -> None:
    from smoothgen.experiments.common import banner

    meta = {"preset": "cpu", "seed": 0, "git_commit": "0123456789abcdef", "git_dirty": True, "date": "d",
            "data_variant": None, "machine": "m", "wall_time_s": 1.0, "params": {"alpha": 0.001}}
    line = banner(meta)
    assert "`0123456789+dirty`" in line and "α = 0.001" in line
    assert "α" not in banner({**meta, "git_dirty": False, "params": {}}) and "+dirty" not in banner({**meta, "git_dirty": False})


def test_results_record_the_commit_the_run_started_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that outlives a commit records the code it imported at its start, not the later HEAD."""
    from smoothgen import results
    from smoothgen.experiments import common

    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path))
    monkeypatch.setattr(common, "git_commit", lambda: "a" * 40)
    monkeypatch.setattr(common, "git_dirty", lambda: True)
    clock = common.Stopwatch()
    monkeypatch.setattr(results, "git_commit", lambda: "b" * 40)  # HEAD moved during the run
    monkeypatch.setattr(results, "git_dirty", lambda: False)
    meta = common.finish("99_test", {"preset": "smoke"}, {}, seed=0, data_variant=None, clock=clock).meta
    assert (meta["git_commit"], meta["git_dirty"]) == ("a" * 40, True)
