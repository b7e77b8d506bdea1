"""The starter notebooks of the coding exercises: ``book/exercises/<label>.ipynb``.

Every exercise of the chapters whose solution runs code has a starter notebook named after its label, the
exercise links it, and every starter is a clean notebook that runs top to bottom as shipped (its ``# TODO``
lines hold placeholders that run) in a fresh kernel and an empty working directory.

An exercise *runs code* when its collapsed solution holds a fenced ``python`` or ``bash`` block, or inline code
that calls a SmoothGen function (``certify.dkw_margin(n, 1e-3)``, ``smoothgen.calibrate.effective_sigma(...)``)
or the ``smoothgen`` command line (``smoothgen study ...``). A new exercise of that kind without a starter
fails :func:`test_every_coding_exercise_has_a_starter`.
"""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import smoothgen
from smoothgen import study

BOOK = Path(__file__).resolve().parents[1] / "book"
EXERCISES = BOOK / "exercises"
STARTERS = sorted(EXERCISES.glob("*.ipynb"))

_MODULES = sorted(m.name for m in pkgutil.iter_modules(smoothgen.__path__))
_CODE_IN_SOLUTION = (
    re.compile(r"^```(?:python|bash)\b", re.M),                                      # a fenced code block
    re.compile(r"`(?:smoothgen\.)?(?:%s)\.\w+(?:\.\w+)*\(" % "|".join(_MODULES)),   # a library call
    re.compile(r"`(?:\.venv/bin/)?smoothgen [a-z]"),                                   # the command line
)


def _block(lines: list[str], start: int) -> int:
    """The index of the line that closes the colon fence opened at ``lines[start]``."""
    fence = re.match(r"^(:{3,})", lines[start]).group(1)
    end = start + 1
    while lines[end].strip() != fence:
        end += 1
    return end


def exercises() -> dict[str, dict[str, str]]:
    """Every ``{exercise}`` of the chapters by label: its chapter file, its text and its solution's text."""
    found: dict[str, dict[str, str]] = {}
    for chapter in sorted(BOOK.glob("*.md")):
        if chapter.name == "README.md":
            continue
        lines = chapter.read_text(encoding="utf-8").splitlines()
        solutions: dict[str, str] = {}
        for i, line in enumerate(lines):
            match = re.match(r"^:{3,}\{solution\} (ex-[\w-]+)", line)
            if match:
                solutions[match.group(1)] = "\n".join(lines[i : _block(lines, i)])
        for i, line in enumerate(lines):
            if re.match(r"^:{3,}\{exercise\}", line):
                text = "\n".join(lines[i : _block(lines, i)])
                label = re.search(r"^:label: (ex-[\w-]+)$", text, re.M).group(1)
                found[label] = {"chapter": chapter.name, "text": text, "solution": solutions.get(label, "")}
    return found


def runs_code(solution: str) -> bool:
    """Whether an exercise's solution runs code (the rule of the module docstring)."""
    return any(pattern.search(solution) for pattern in _CODE_IN_SOLUTION)


def _link(label: str) -> str:
    return f"Starter notebook: `book/exercises/{label}.ipynb`."


def test_the_rule_finds_the_coding_exercises() -> None:
    found = exercises()
    assert len(found) > 30 and all(ex["solution"] for ex in found.values()), "exercise blocks not parsed"
    coding = {label for label, ex in found.items() if runs_code(ex["solution"])}
    assert {"ex-classifiers-3", "ex-reproducing-1", "ex-generators-8"} <= coding  # a block, the CLI, a call
    assert {"ex-classifiers-1", "ex-ptb-2"}.isdisjoint(coding)                     # proofs and explanations


def test_every_coding_exercise_has_a_starter() -> None:
    coding = {label for label, ex in exercises().items() if runs_code(ex["solution"])}
    missing = sorted(coding - {path.stem for path in STARTERS})
    assert not missing, f"coding exercises without a starter notebook in book/exercises/: {missing}"


def test_every_starter_is_an_exercise_that_links_it() -> None:
    found = exercises()
    assert STARTERS
    for path in STARTERS:
        label = path.stem
        assert label in found, f"{path.name} names no exercise label of the chapters"
        nb = nbformat.read(path, as_version=4)
        meta = nb.metadata.get("smoothgen", {})
        assert meta.get("exercise") == label and meta.get("chapter") == found[label]["chapter"], path.name
        assert _link(label) in found[label]["text"], f"{label}: the exercise (not its solution) must say {_link(label)!r}"
    for label, ex in found.items():  # no link to a starter that does not exist
        for linked in re.findall(r"`book/exercises/([\w-]+)\.ipynb`", ex["text"] + ex["solution"]):
            assert linked == label and (EXERCISES / f"{linked}.ipynb").exists(), f"{label} links {linked}.ipynb"


@pytest.mark.parametrize("path", STARTERS, ids=[p.stem for p in STARTERS])
def test_starter_is_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata["kernelspec"]["name"] == "python3"
    first, code = nb.cells[0], [c for c in nb.cells if c.cell_type == "code"]
    assert first.cell_type == "markdown" and f"`{path.stem}`" in first.source and "What to do" in first.source
    assert any("# TODO" in c.source for c in code), "no `# TODO` for the student"
    assert all(not c.outputs and c.execution_count is None for c in code), "stored outputs"
    assert not any(re.search(r"^\s*(\.\.\.|raise NotImplementedError)", c.source, re.M) for c in code), \
        "a placeholder that does not run"
    assert "from smoothgen" in code[0].source, "the setup cell imports SmoothGen"


def _runnable(path: Path) -> pytest.param:
    needs = nbformat.read(path, as_version=4).metadata.get("smoothgen", {}).get("needs_data", [])
    return pytest.param(path, id=path.stem, marks=[pytest.mark.needs_data(*needs)] if needs else [])


@pytest.mark.slow
@pytest.mark.parametrize("path", [_runnable(p) for p in STARTERS])
def test_starter_runs_as_shipped(path: Path, tmp_path: Path) -> None:
    """Top to bottom in a fresh kernel (the study's kernel environment), in an empty working directory: no cell
    may fail (nbclient raises on the first error)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with study.kernel_environment(study.KERNEL_ENV):
        client.execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    assert list(tmp_path.iterdir()) == [], "a starter must not write files"
