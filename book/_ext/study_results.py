"""Sphinx extension: the ``result`` role inserts a number from the study's result files at build time.

Usage in a chapter (MyST)::

    {result}`08_meaningful_radii/cpu/summary.json#cifar10_class_radius_frac_half_gap:.0%`
    {result}`08_meaningful_radii/cpu/cifar_quality.csv?method == "projection" and sigma_rel == 0.25#fid_ratio:.2f`

``<file>#<key>`` reads a key of a JSON file (``a.b``: the key ``b`` inside the object at key ``a``, e.g.
a run's parameter ``meta.json#params.n_prompts``); ``<file>?<pandas query>#<column>`` reads one column of
the single CSV row that matches the query; ``<file>[?<query>]#<column>@<agg>`` aggregates the column
over every matching row (``agg`` in :data:`AGGREGATES`: ``min``, ``max``, ``median``, ``mean``,
``sum``, ``count``; NaN cells are skipped, and no matching row is an error). ``:<format>`` is a Python format spec (default ``.3g``).
Files are read from ``study_results_dir`` (default ``../data/results``, relative to the book folder).
A JSON ``null`` (a result that the study found not to exist, e.g. no configuration met a condition)
prints as :data:`NULL_TEXT`. A missing file, key or column, a query matching other than one row, or a
NaN is a build warning (an error with ``-W``), so a rerun of the study updates every number and a typo fails the
build instead of printing a stale figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
NULL_TEXT = "none (no configuration qualified)"
AGGREGATES = ("min", "max", "median", "mean", "sum", "count")


class ResultError(ValueError):
    """A reference that names no single value."""


def parse(text: str) -> tuple[str, str | None, str, str]:
    """Split ``file[?query]#field[:format]`` into its parts."""
    if "#" not in text:
        raise ResultError(f"{text!r}: expected <file>#<key> or <file>?<query>#<column>")
    location, field = text.rsplit("#", 1)
    field, _, spec = field.partition(":")
    path, _, query = location.partition("?")
    return path.strip(), query.strip() or None, field.strip(), spec.strip() or ".3g"


def aggregate(file: Path, query: str | None, field: str, text: str) -> Any:
    """``field@agg`` over the CSV rows that ``query`` selects (all rows without one)."""
    column, _, agg = field.partition("@")
    if agg not in AGGREGATES:
        raise ResultError(f"{text!r}: unknown aggregate {agg!r}; use one of {AGGREGATES}")
    rows = pd.read_csv(file)
    rows = rows.query(query) if query else rows
    if rows.empty or column not in rows:
        raise ResultError(f"{text!r}: the query matches no row or there is no column {column!r}")
    value = getattr(rows[column].dropna(), agg)()
    return value.item() if hasattr(value, "item") else value


def json_value(data: Any, field: str, text: str) -> Any:
    """The value at the dotted key path ``field`` of a parsed JSON document."""
    for key in field.split("."):
        if not isinstance(data, dict) or key not in data:
            raise ResultError(f"{text!r}: no key {key!r} on the path {field!r}")
        data = data[key]
    return data


def lookup(root: Path, text: str) -> str:
    """The formatted value that ``text`` names under ``root``."""
    path, query, field, spec = parse(text)
    file = root / path
    if not file.is_file():
        raise ResultError(f"{text!r}: no result file {file}")
    if "@" in field:
        value: Any = aggregate(file, query, field, text)
    elif query is None:
        value = json_value(json.loads(file.read_text()), field, text)
    else:
        rows = pd.read_csv(file).query(query)
        if len(rows) != 1 or field not in rows:
            raise ResultError(f"{text!r}: the query matches {len(rows)} rows (need one) or no column {field!r}")
        value = rows[field].iloc[0]
    if value is None:
        return NULL_TEXT
    if isinstance(value, float) and value != value:
        raise ResultError(f"{text!r}: the value is NaN")
    return format(value, spec)


def result_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
                content: Any = None) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    """Docutils role: a literal-free text node holding the looked-up value."""
    env = inliner.document.settings.env
    root = (Path(env.srcdir) / env.config.study_results_dir).resolve()
    try:
        path = root / parse(text)[0]
        if path.is_file():
            env.note_dependency(str(path))  # a rerun of the study marks the page outdated
        return [nodes.inline(rawtext, lookup(root, text), classes=["study-result"])], []
    except (ResultError, ValueError) as err:
        LOGGER.warning(str(err), location=(env.docname, lineno))
        return [nodes.problematic(rawtext, rawtext)], []


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``result`` role and its ``study_results_dir`` setting."""
    app.add_config_value("study_results_dir", "../data/results", "env")
    app.add_role("result", result_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
