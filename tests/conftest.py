"""Shared test setup: the data root, and a deterministic, thread-limited torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    if "SMOOTHGEN_DATA" not in os.environ and SHARED_DATA.is_dir():
        os.environ["SMOOTHGEN_DATA"] = str(SHARED_DATA)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
