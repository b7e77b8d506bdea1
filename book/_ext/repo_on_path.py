"""Sphinx extension: put the repository root first on ``sys.path`` so that autodoc documents the
working tree's ``smoothgen`` (importable whether or not the package is installed)."""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.application import Sphinx

REPO_ROOT = Path(__file__).resolve().parents[2]


def setup(app: Sphinx) -> dict[str, bool]:
    """Insert the repository root into ``sys.path`` (once)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
