"""The ``smoothgen`` command line: help texts, one-line errors and exit statuses (no notebook is executed)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from smoothgen import cli, data, study


def _never_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("a notebook was executed")


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Results and data roots in ``tmp_path`` (both empty), and no notebook may run."""
    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SMOOTHGEN_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("SMOOTHGEN_DEBUG", raising=False)
    monkeypatch.setattr(study, "run_notebook", _never_run)
    return tmp_path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("smoothgen: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("value, expected", [
    ("{n: 5}", "--set: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1]", "--set: expected a JSON object"),
])
def test_bad_set_is_a_one_line_error(value: str, expected: str, isolated: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["study", "--set", value]) == 2
    assert expected in _error_line(capsys)


def test_unknown_override_fails_before_any_notebook_runs(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["study", "--set", '{"n": 200}']) == 2
    line = _error_line(capsys)
    assert "['n'] unknown to 05_adaptive_noise, 06_attacks, 07_overhead, 08_meaningful_radii" in line
    assert "--only 01 02 03 04" in line
    assert not (isolated / "results").exists()


def test_unknown_notebook_is_a_one_line_error(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["study", "--only", "99"]) == 2
    assert "unknown notebook(s) ['99']" in _error_line(capsys)


def test_missing_data_exits_3_with_where_to_put_it(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["study", "--preset", "smoke", "--only", "03"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("smoothgen: error: the study must run 03_cifar10 ")
    assert f"{isolated / 'data'}/cifar10/cifar-10-batches-py/" in err and data.CIFAR10_URL in err
    assert not (isolated / "results").exists() and not (isolated / "data").exists()


def test_failed_notebook_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise study.NotebookError("notebook 03_cifar10 failed in cell [3]: RuntimeError: boom")

    monkeypatch.delenv("SMOOTHGEN_DEBUG", raising=False)
    monkeypatch.setattr(study, "run_study", fail)
    assert cli.main(["study"]) == 1
    assert "RuntimeError: boom" in _error_line(capsys)


def test_debug_shows_the_traceback(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOOTHGEN_DEBUG", "1")
    with pytest.raises(ValueError, match="not valid JSON"):
        cli.main(["study", "--set", "{n: 5}"])


def test_help_example_passes_validation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["study", "--help"])
    assert cli.SET_EXAMPLE in " ".join(capsys.readouterr().out.split())
    args = cli.build_parser().parse_args(["study", *shlex.split(cli.SET_EXAMPLE)])
    study.check_overrides(study.list_notebooks(args.only), args.preset, cli.parse_overrides(args.set))


def test_help_says_what_study_does_without_markup(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["study", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":data:" not in out
    assert "usage: smoothgen study" in out and "SMOOTHGEN_DATA" in out and "artifacts/results/" in out
    assert "exit status" in out and data.CIFAR10_URL in out and data.PTB_URL in out
    for notebook in study.list_notebooks():
        assert notebook.stem in out


def test_train_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: smoothgen train") and "python -m" not in out
    assert "data/checkpoints/" in out and "SMOOTHGEN_DATA" in out


def test_an_override_of_the_wrong_kind_fails_before_anything_runs(capsys) -> None:
    from smoothgen import cli

    code = cli.main(["study", "--preset", "smoke", "--only", "03", "--set", '{"n": "forty"}'])
    assert code == 2 and "n='forty' is of kind str" in capsys.readouterr().err
