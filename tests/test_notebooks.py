"""Every study notebook runs end to end on the smoke preset (papermill, fresh kernel) and writes sane tables."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from smoothgen import study

NOTEBOOKS = study.list_notebooks()


def _source_is_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert "parameters" in nb.cells[0].metadata.get("tags", []), "first cell must be tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "source notebook has outputs"


def _check_tables(directory: Path) -> dict[str, pd.DataFrame]:
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["preset"] == "smoke" and meta["git_commit"] and meta["versions"]["torch"]
    tables = {name: pd.read_csv(directory / f"{name}.csv") for name in meta["tables"]}
    for name, table in tables.items():
        assert len(table) > 0, name
        numeric = table.select_dtypes("number")  # inf is a legitimate value ("no bound": an abstention)
        assert not numeric.isna().all().any(), f"{name}: a numeric column holds no value at all"
        assert not (numeric == -np.inf).any().any(), f"{name}: -inf in a numeric column"
    return tables


@pytest.mark.slow
@pytest.mark.parametrize("notebook", [pytest.param(p, marks=pytest.mark.needs_data(*study.DATA_NEEDS[p.stem]))
                                      for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke_preset(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _source_is_clean(notebook)
    before = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=notebook.parent).stdout
    monkeypatch.setenv("SMOOTHGEN_RESULTS", str(tmp_path))
    stamp = study.run_notebook(notebook, "smoke", force=True, results_root=tmp_path)
    assert not stamp["skipped"]
    tables = _check_tables(tmp_path / notebook.stem / "smoke")
    CHECKS.get(notebook.stem, lambda t: None)(tables)
    after = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=notebook.parent).stdout
    assert after == before, "running a notebook must leave nothing in the repository"


def _check_certificates(tables: dict[str, pd.DataFrame]) -> None:
    side = tables["side_by_side"]
    assert (side["tv_bound"] >= side["true_tv"] - 1e-12).all()
    assert (side["w1_certificate"] >= side["true_w1"]).all()
    assert (side["w1_certificate"] <= side["w1_diameter_bound"] + 1e-12).all()
    assert (side["tail_lower"] <= side["tail_low"]).all() and (side["tail_upper"] >= side["tail_high"]).all()
    assert set(tables["coverage"]["certificate"]) == {"w1_certificate", "tail_bounds", "mean_band"}


def _check_overhead(tables: dict[str, pd.DataFrame]) -> None:
    timing, summary = tables["timing"], tables["sequential_summary"].set_index("mode")
    assert {"base", "smoothed sample"} <= set(timing["run"]) and (timing["wall_s"] > 0).all()
    assert summary.loc["fixed", "pass_reduction_median"] == 1.0
    assert summary.loc["decision", "pass_reduction_median"] > 1
    assert summary.loc["decision", "decision_agreement"] >= 0.95
    methods = tables["passes"]["method"]
    assert methods.str.contains("Cohen").any() and methods.str.contains("center smoothing").any()


def _check_cifar10(tables: dict[str, pd.DataFrame]) -> None:
    certs = tables["certificates"]
    assert (certs["w1_certificate"] <= certs["w1_diameter_bound"] + 1e-12).all()
    assert certs["consistency_lower"].between(0, 1).all() and (certs["band_halfwidth_mean"] >= 0).all()
    assert tables["quality"]["fid_name"].str.startswith("FID[evaluator").all()
    focus = tables["focus"]
    assert (focus["w1_certificate"] <= focus["w1_diameter_bound"] + 1e-12).all() and (focus["w1_certificate"] >= 0).all()
    assert focus["w1_certificate"].is_monotonic_increasing and (focus["n"] == 24).all()  # smoke: focus_n = 24


def _check_ptb(tables: dict[str, pd.DataFrame]) -> None:
    w1 = tables["w1"]
    assert (w1["w1_certificate"] <= w1["w1_diameter_bound"] + 1e-12).all() and (w1["w1_certificate"] >= 0).all()
    quality = tables["quality"].set_index("sigma_rel")
    assert quality.loc[0.0, "bleu_vs_base"] == pytest.approx(1.0)  # the base agrees with itself


def _check_classifiers(tables: dict[str, pd.DataFrame]) -> None:
    certs = tables["certificates"]
    assert ((certs["prediction"] == -1) == (certs["radius"] == 0)).all()
    acc = tables["certified_accuracy"]
    mine = acc[acc["source"] == "SmoothGen"].sort_values("radius")
    for _, curve in mine.groupby("sigma"):
        assert curve["certified_accuracy"].is_monotonic_decreasing


def _check_attacks(tables: dict[str, pd.DataFrame]) -> None:
    t = tables["trials"]
    assert {"dataset", "certificate", "radius", "achieved", "achieved_stderr", "certified", "violation"} <= set(t.columns)
    assert set(t["dataset"]) == {"toy-probit", "cifar10", "ptb"}
    assert (t["achieved_lower"] <= t["achieved"] + 1e-12).all() and not t["violation"].any()
    toy = t[t["dataset"] == "toy-probit"]
    assert (toy["achieved"] <= toy["worst_case"] + 1e-12).all()
    assert set(tables["robustness"]["curve"]) == {"base: broken by PGD", "smoothed: broken by attack",
                                                  "smoothed: not certified"}
    smoothed = tables["smoothed_breakdown"]
    assert (smoothed["smoothed_certified_radius"] <= smoothed["smoothed_breakdown_radius"]).all()
    cell = tables["cell_trials"]
    assert set(cell["dataset"]) == {"cifar10", "ptb"} and not cell["violation"].any()
    assert cell["certificate"].str.contains("end to end").any() and (cell["certified"] <= 1).all()
    exits = cell[cell["certificate"] == "cell-exit"]
    assert (exits["radius"] <= exits["unit"] * 1.5).all() and exits["attack"].isin({"face", "pgd"}).all()


def _check_adaptive_noise(tables: dict[str, pd.DataFrame]) -> None:
    ce = tables["counterexample"]
    naive = ce["mechanism"] == "naive σ(x)"
    assert (ce.loc[naive, "violation"] > 0).any() and (ce.loc[~naive, "violation"] <= 1e-9).all()
    look = tables["table_lookup"]
    sound = (look["lookup"] == "true class") | (look["radius"] < look["margin"])
    assert (look.loc[sound, "violation"] <= 1e-9).all() and (look.loc[~sound, "violation"] > 0).all()
    front = tables["frontier"]
    noisy = front[front["strategy"] != "base (no noise)"]
    assert (noisy["radius_tv"] <= noisy["radius_tv_volume"] * (1 + 1e-9)).all()
    assert (front["radius_median"] >= front["radius_min"]).all() and (front["radius_min"] >= 0).all()
    cal = tables["calibrated"]
    assert cal["heldout_pass"].dropna().between(0, 1).all() and cal["served"].between(0, 1).all()
    for table in (front, cal):  # every quality number has its 95 % interval; the exact one contains it
        for column in ("class_consistency", "fid_evaluator", "is_evaluator", "bleu_vs_clean", "rougeL_vs_clean",
                       "rougeL_vs_reference", "exact_match_clean"):
            rows = table.dropna(subset=[column])
            assert len(rows) and (rows[f"{column}_low"] <= rows[f"{column}_high"]).all()
        rows = table.dropna(subset=["class_consistency"])
        assert (rows["class_consistency_low"] <= rows["class_consistency"]).all()
        assert (rows["class_consistency"] <= rows["class_consistency_high"]).all()
    assert set(tables["sensitivity"]["dataset"]) == {"cifar10", "ptb"}
    cells = tables["cell_sigma"]
    assert (cells["identity_radius"] <= cells["margin"]).all() and cells["exit_upper"].between(0, 1).all()
    assert {"global", "cells"} <= set(cells["strategy"]) and set(cells["dataset"]) == {"cifar10", "ptb"}


def _check_meaningful(tables: dict[str, pd.DataFrame]) -> None:
    from smoothgen import certify

    radii = tables["cifar_radii"]
    proj, other = radii[radii["method"] == "projection"], radii[radii["method"] != "projection"]
    # no valid certificate of "the condition stays in its cell" reaches past the cell's boundary
    assert (proj["class_radius"] < proj["half_gap"]).all() and (proj["w1_radius"] <= proj["class_radius"]).all()
    assert (proj["generator_passes"] == 0).all() and (proj["count"] <= proj["n"]).all()
    data_free = [certify.certified_radius(0.05, s, 1.0) for s in other["sigma"]]
    assert np.allclose(other["w1_radius"], data_free)
    text = tables["ptb_per_prompt"]
    snapped = text[text["method"] == "projection"]
    assert (snapped["continuation_radius"] < snapped["prompt_nn_min"] / 2).all()
    quality = tables["cifar_quality"]
    assert (quality["fid_low"] <= quality["fid_high"]).all()
    assert ((quality["class_consistency_low"] <= quality["class_consistency"])
            & (quality["class_consistency"] <= quality["class_consistency_high"])).all()
    assert set(tables["choices"]["prefix"].fillna("")) == {"", "noise_trained_", "naive_"}
    large = tables["cifar_fid_large"]  # the base first, then each chosen configuration once, pooled over the seeds
    assert large["role"].iloc[0] == "base" and large["role"].is_unique and np.isclose(large["fid_ratio"].iloc[0], 1.0)
    assert (large["seeds"] == 2).all() and (large["n_images"] == 2 * quality["n_images"].iloc[0]).all()
    assert (large["fid_low"] <= large["fid_high"]).all()
    seeds = tables["headline_seeds"]  # each chosen configuration at the main seed and every extra one
    assert (seeds.groupby(["dataset", "role"])["headline_seed"].nunique() == 2).all()
    assert len(seeds) == 2 * len(seeds[["dataset", "role"]].drop_duplicates())
    assert set(seeds.loc[seeds["dataset"] == "cifar10", "role"]) == set(large["role"]) - {"base"}
    main = seeds[(seeds["headline_seed"] == 0) & (seeds["dataset"] == "cifar10")]  # seed 0 is the grid's own run
    grid = main.merge(quality, on=["method", "sigma_rel"], suffixes=("", "_grid"))
    assert len(grid) == len(main) and np.allclose(grid["cifar10_fid_ratio"], grid["fid_ratio"])


def _check_ablations(tables: dict[str, pd.DataFrame]) -> None:
    from smoothgen import certify

    guidance = tables["guidance"]
    assert guidance["guidance_scale"].nunique() >= 2 and (guidance.groupby("guidance_scale")["sigma_rel"].min() == 0).all()
    base = guidance["sigma_rel"] == 0  # the FID ratio refers to σ = 0 at the same weight: defined exactly off it
    assert guidance.loc[base, "fid_evaluator_ratio"].isna().all() and guidance.loc[~base, "fid_evaluator_ratio"].notna().all()
    assert ((guidance["class_consistency_low"] <= guidance["class_consistency"])
            & (guidance["class_consistency"] <= guidance["class_consistency_high"])).all()
    sizes = tables["sample_size"]
    assert (sizes["w1_certificate"] <= sizes["w1_diameter_bound"] + 1e-12).all() and sizes["n"].nunique() >= 2
    center = tables["center"]
    need = center["center_delta"].map(certify.center_min_samples)
    assert (center["stage_n_needed"] == need).all() and center.loc[center["stage_n"] < need, "abstained"].all()


CHECKS = {"09_ablations": _check_ablations, "08_meaningful_radii": _check_meaningful, "05_adaptive_noise": _check_adaptive_noise, "06_attacks": _check_attacks, "01_smoothing_classifiers": _check_classifiers, "02_certificates": _check_certificates,
          "03_cifar10": _check_cifar10, "04_ptb": _check_ptb, "07_overhead": _check_overhead}


PUBLISHED = sorted((study.repo_root() / "book" / "notebooks").glob("*.ipynb"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@pytest.mark.parametrize("path", [*NOTEBOOKS, *PUBLISHED], ids=[f"{p.parent.name}/{p.stem}" for p in [*NOTEBOOKS, *PUBLISHED]])
def test_cell_sources_hold_no_control_characters(path: Path) -> None:
    """A LaTeX escape written through a Python string (``"\varepsilon"`` is a vertical tab and ``arepsilon``)
    leaves a control character in the cell; MathJax then shows ``arepsilon``."""
    nb = nbformat.read(path, as_version=4)
    bad = {i: _CONTROL.findall(cell.source) for i, cell in enumerate(nb.cells) if _CONTROL.search(cell.source)}
    assert not bad, f"control characters in cells {bad}"


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_published_notebooks_hold_no_stderr_and_no_machine_paths(path: Path) -> None:
    """The executed notebooks in the book carry no stderr output (warnings, progress bars) and no absolute
    path of the machine that ran them (papermill metadata, warnings, banners)."""
    nb = nbformat.read(path, as_version=4)
    stderr = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.outputs if out.get("output_type") == "stream" and out.get("name") == "stderr"]
    assert not stderr, f"stderr outputs in cells {stderr}"
    papermill = nb.metadata.get("papermill", {})
    assert not any(Path(str(papermill.get(key, ""))).is_absolute() for key in ("input_path", "output_path"))
    text = path.read_text()
    machine = re.findall(r"(?:/home/|/Users/|/root/|/tmp/|" + re.escape(str(study.repo_root())) + r")[^\s\"']*", text)
    assert not machine, f"machine paths: {sorted(set(machine))[:5]}"
