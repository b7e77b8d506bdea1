"""Shared test setup: the datasets a test needs (the ``needs_data`` marker), and a thread-limited torch."""

from __future__ import annotations

import os

import pytest
import torch

from smoothgen import data, study


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_data(*names): the test reads these datasets (keys of "
                            "smoothgen.study.DATASETS) from the data root; skipped when they are absent, failed under CI")
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``needs_data`` runs only when the data root (``$SMOOTHGEN_DATA``, else ``data/``) holds
    every file of its datasets, which ``make test`` fetches like the loaders do (``smoothgen data --download``).
    Otherwise it is skipped with one line saying how to get them; under CI, which provides them, it fails."""
    marker = item.get_closest_marker("needs_data")
    if marker is None:
        return
    missing = study.ensure_datasets(marker.args)
    if missing:
        reason = (f"dataset(s) {', '.join(missing)} not under {data.data_root()}: run `smoothgen data --download` "
                  "(make test does) or set SMOOTHGEN_DATA")
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
