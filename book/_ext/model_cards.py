"""Sphinx extension: render a checkpoint's model card (``data/checkpoints/<name>.json``) as a table.

Usage in a chapter (MyST)::

    ```{model-card} diffusion_cifar10
    ```

The table lists the card's name and weights file, architecture, parameter count, the architecture
and training configuration, data and data variant, training steps, wall time, hardware, seed,
creation date and commit, software versions, sha256 and metrics (plus the embedding geometry and
the other scalar fields a card may carry). The build fails (a warning, with ``-W``) when the card is
missing, lacks a required field, names another model, or its sha256 does not match the weights
file next to it. Cards are read from ``model_cards_dir`` (default ``../data/checkpoints``,
relative to the book folder). The stylesheet ``static/model_cards.css`` (added to every page) makes
the table's long values wrap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util.docutils import SphinxDirective

STATIC = Path(__file__).resolve().parent / "static"
STYLESHEET = "model_cards.css"
REQUIRED = ("name", "file", "architecture", "parameters", "config", "data", "data_variant", "steps",
            "wall_time_s", "hardware", "seed", "sha256", "metrics")
EXTRAS = {  # optional scalar fields, shown when present and not null
    "sigma": "Training noise σ (pixels in [0, 1])",
    "default_guidance_scale": "Default guidance scale",
    "best_step": "Step of the shipped weights",
    "best_valid_perplexity": "Best validation perplexity",
    "storage_dtype": "Storage dtype",
    "vocab_file": "Vocabulary file",
    "vocab_sha256": "Vocabulary sha256",
}


def fmt(value: Any) -> str:
    """A compact text form: 4 significant digits for floats, thousands separators for ints."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def key_values(mapping: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``key = value`` pairs joined by ``; ``."""
    return "; ".join(f"{k} = {fmt(v)}" for k, v in mapping.items() if k not in skip)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def steps_text(card: dict[str, Any]) -> str:
    """Optimizer steps, with the planned count when training stopped early."""
    planned = card.get("steps_planned")
    text = fmt(card["steps"])
    if planned is not None and planned != card["steps"]:
        text += f" of {fmt(planned)} planned"
    if card.get("stopped_by_time_budget"):
        text += " (stopped by the time budget)"
    return text


def card_rows(card: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The table rows ``(field, text, literal)`` of a model card."""
    config = card["config"]
    architecture = config.get("architecture", {})
    hardware = card["hardware"] + (f" ({card['training_note']})" if card.get("training_note") else "")
    rows = [
        ("Name", card["name"], True),
        ("Weights file", card["file"], True),
        ("Architecture", card["architecture"], False),
        ("Parameters", fmt(card["parameters"]), False),
        ("Architecture config", key_values(architecture), True),
        ("Training config", key_values(config.get("training", {}), skip=tuple(architecture)), True),
        ("Preset and overrides", f"preset = {config.get('preset', card.get('preset'))}; overrides: "
                                 f"{key_values(config.get('overrides', {})) or 'none'}", True),
        ("Data", card["data"], False),
        ("Data variant", card["data_variant"], True),
        ("Training steps", steps_text(card), False),
        ("Wall time", f"{card['wall_time_s']:.1f} s", False),
        ("Hardware", hardware, False),
        ("Seed", fmt(card["seed"]), False),
    ]
    if "created" in card:
        rows.append(("Created", f"{card['created']} (commit: {card.get('git_commit', 'unknown')})", False))
    if card.get("versions"):
        rows.append(("Software", key_values(card["versions"]), True))
    rows.append(("sha256 (weights, verified)", card["sha256"], True))
    rows += [(f"Metric: {k}", fmt(v), False) for k, v in card["metrics"].items()]
    if card.get("embedding_geometry"):
        rows.append(("Embedding geometry", key_values(card["embedding_geometry"]), True))
    rows += [(label, fmt(card[k]), k.endswith("sha256")) for k, label in EXTRAS.items()
             if card.get(k) is not None]
    return rows


def table_node(title: str, rows: list[tuple[str, str, bool]]) -> nodes.table:
    """A two-column docutils table (field, value) with a title."""
    table = nodes.table(classes=["model-card", "colwidths-given"])  # emit the 25:75 widths
    table += nodes.title(title, title)
    group = nodes.tgroup(cols=2)
    table += group
    group += nodes.colspec(colwidth=25)
    group += nodes.colspec(colwidth=75)
    body = nodes.tbody()
    group += body
    for field, text, literal in rows:
        row = nodes.row()
        for cell_text, as_literal in ((field, False), (text, literal)):
            inline = nodes.literal(cell_text, cell_text) if as_literal else nodes.Text(cell_text)
            row += nodes.entry("", nodes.paragraph("", "", inline))
        body += row
    return table


def load_card(folder: Path, name: str) -> dict[str, Any]:
    """Read and check the card ``<folder>/<name>.json``.

    Raises
    ------
    ValueError
        If the card is missing, lacks a field of :data:`REQUIRED`, names another model, or the
        sha256 of its weights file (``<folder>/<card["file"]>``) differs from ``card["sha256"]``.
    """
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no model card {path}; train the model or fix the name")
    card = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise ValueError(f"the card {path} lacks {missing}")
    if card["name"] != name:
        raise ValueError(f"the card {path} names the model {card['name']!r}, not {name!r}")
    weights = folder / card["file"]
    if not weights.is_file() or file_sha256(weights) != card["sha256"]:
        raise ValueError(f"{weights} is missing or does not match the sha256 of its card {path}")
    return card


class ModelCardDirective(SphinxDirective):
    """``{model-card} <name>``: the model card ``<model_cards_dir>/<name>.json`` as a table."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        folder = (Path(self.env.srcdir) / self.config.model_cards_dir).resolve()
        self.env.note_dependency(str(folder / f"{name}.json"))
        try:
            card = load_card(folder, name)
        except ValueError as err:
            raise self.error(f"model-card {name}: {err}") from err
        self.env.note_dependency(str(folder / card["file"]))
        return [table_node(f"Model card of {name}", card_rows(card))]


def add_static_path(app: Sphinx, config: Config) -> None:
    """Serve this extension's stylesheet folder with the book's static files."""
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``model-card`` directive, its ``model_cards_dir`` setting and its stylesheet."""
    app.add_config_value("model_cards_dir", "../data/checkpoints", "env")
    app.add_directive("model-card", ModelCardDirective)
    app.connect("config-inited", add_static_path)
    app.add_css_file(STYLESHEET)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
