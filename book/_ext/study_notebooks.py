"""Sphinx extension: include the executed study notebooks that exist, and say so in their chapters.

The study writes its executed notebooks to ``book/notebooks/NN_name.ipynb`` one by one, so a build
may find only some of them. ``_toc.yml`` lists all of them; this extension makes that safe:

* **Table of contents.** Before ``sphinx_external_toc`` reads ``_toc.yml`` (``config-inited``,
  priority 500 < 900), entries whose ``file`` lies under ``notebooks/`` and has no ``.ipynb`` in
  the book are dropped (:func:`present_toc`), and the external toc path is pointed at the filtered
  copy ``<doctreedir>/_toc.present.yml``. Every other entry must exist, as before.
* **Chapter text.** The directive ``study-notebook`` renders, in the chapter,

  - one sentence linking to the executed notebook when ``<docname>.ipynb`` exists, with the
    papermill parameters it was run with (from the notebook's ``metadata.papermill``);
  - otherwise a warning box titled :data:`MISSING_TITLE` whose body is the directive's content.

  Usage in a chapter (MyST)::

      ```{study-notebook} notebooks/03_cifar10
      This chapter will show the executed notebook ... (the box text while it is absent)
      ```

* **Injected parameters.** Papermill's ``injected-parameters`` cell repeats the ``parameters``
  cell with the values used; the page drops it, and the chapter's sentence states those values.
  The ``parameters`` cell itself moves under the page's title.
* **Wide tables.** Output tables wider than the column scroll sideways inside it
  (``static/study_notebooks.css``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util.docutils import SphinxDirective

NOTEBOOK_FOLDER = "notebooks/"
MISSING_TITLE = "The executed notebook is not yet in this build"
FILTERED_TOC = "_toc.present.yml"
INJECTED_CELL_CLASS = "tag_injected-parameters"
PARAMETERS_CELL_CLASS = "tag_parameters"
STYLESHEET = "study_notebooks.css"
"""Wide output tables scroll inside the column (served from ``_ext/static``, the folder that
``model_cards`` adds to the static path)."""


def notebook_present(srcdir: Path, docname: str) -> bool:
    """Whether the executed notebook ``<srcdir>/<docname>.ipynb`` exists."""
    return (srcdir / f"{docname}.ipynb").is_file()


def present_toc(toc: dict[str, Any], srcdir: Path) -> dict[str, Any]:
    """A copy of a jb-book toc without the ``notebooks/`` entries whose ``.ipynb`` is absent.

    Entries elsewhere are kept whether or not their file exists (Sphinx reports missing ones).
    A ``sections`` list left empty is removed with its key.
    """
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError("the toc must be a jb-book mapping with a 'root' entry (see book/_toc.yml)")

    def keep(entry: dict[str, Any]) -> bool:
        name = str(entry.get("file", ""))
        return not name.startswith(NOTEBOOK_FOLDER) or notebook_present(srcdir, Path(name).with_suffix("").as_posix())

    def prune(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for entry in filter(keep, entries):
            if "sections" in entry:
                entry["sections"] = prune(entry["sections"])
                if not entry["sections"]:
                    del entry["sections"]
            kept.append(entry)
        return kept

    out = copy.deepcopy(toc)
    for part in out.get("parts", []):
        part["chapters"] = prune(part.get("chapters", []))
    if "chapters" in out:
        out["chapters"] = prune(out["chapters"])
    return out


def use_present_toc(app: Sphinx, config: Config) -> None:
    """Point ``external_toc_path`` at a copy of the toc that lists only the notebooks present."""
    source = Path(app.srcdir) / str(config.external_toc_path)
    if not source.is_file():
        return  # sphinx_external_toc reports the missing toc itself
    toc = yaml.safe_load(source.read_text(encoding="utf-8"))
    filtered = present_toc(toc, Path(app.srcdir))
    if filtered == toc:
        return
    target = Path(app.doctreedir) / FILTERED_TOC
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(filtered, sort_keys=False), encoding="utf-8")
    tmp.replace(target)
    config.external_toc_path = str(target)


def papermill_parameters(path: Path) -> dict[str, Any]:
    """The parameters papermill ran the notebook with (empty when it was not run by papermill)."""
    metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    return dict(metadata.get("papermill", {}).get("parameters", {}))


class StudyNotebookDirective(SphinxDirective):
    """``{study-notebook} notebooks/NN_name``: link to the executed notebook, or a warning box."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        docname = self.arguments[0].strip("/").removesuffix(".ipynb")
        if not docname.startswith(NOTEBOOK_FOLDER):
            raise self.error(f"study-notebook: expected a docname under {NOTEBOOK_FOLDER}, got {docname!r}")
        path = Path(self.env.srcdir) / f"{docname}.ipynb"
        self.env.note_dependency(str(path))
        if path.is_file():
            return self.pointer(docname, papermill_parameters(path))
        if not self.content:
            raise self.error("study-notebook: give the text of the box shown while the notebook is absent")
        box = nodes.admonition(classes=["warning", "study-notebook-missing"])
        box += nodes.title(MISSING_TITLE, MISSING_TITLE)
        box += self.parse_content_to_nodes()
        return [box]

    def pointer(self, docname: str, parameters: dict[str, Any]) -> list[nodes.Node]:
        ordered = sorted(parameters.items(), key=lambda item: item[0] != "preset")  # preset first
        run = ", ".join(f"`{key} = {json.dumps(value)}`" for key, value in ordered)
        how = f" (run by papermill with {run})" if run else ""
        text = (f"The results of this chapter are in its executed notebook, {{doc}}`/{docname}`{how}, "
                f"the section that follows this page.")
        para = nodes.container(classes=["study-notebook-present"])
        para += self.parse_text_to_nodes(text)
        return [para]


def drop_injected_parameters(app: Sphinx, doctree: nodes.document) -> None:
    """Remove papermill's injected-parameters cell from notebook pages, and show the ``parameters`` cell
    (the first cell, as papermill wants it) under the page's title instead of above it."""
    for cell in list(doctree.findall(nodes.container)):
        if INJECTED_CELL_CLASS in cell.get("classes", []):
            cell.parent.remove(cell)
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        return
    for cell in [c for c in doctree.children if PARAMETERS_CELL_CLASS in c.get("classes", [])]:
        doctree.remove(cell)
        section.insert(1, cell)  # after the section's title


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the toc filter, the directive and the cell filter."""
    app.connect("config-inited", use_present_toc, priority=500)
    app.connect("doctree-read", drop_injected_parameters)
    app.add_css_file(STYLESHEET)
    app.add_directive("study-notebook", StudyNotebookDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
