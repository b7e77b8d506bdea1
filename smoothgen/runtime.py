"""Seeds and devices: the one place that turns a seed into a ``torch.Generator``.

SmoothGen never touches global RNG state. Every random draw goes through a
``torch.Generator`` made here, so that a seed reproduces a result exactly on the CPU.
"""

from __future__ import annotations

import os

import torch

DeviceLike = str | torch.device | None


def default_device() -> torch.device:
    """Return ``cuda`` when a GPU is visible (``cuda:LOCAL_RANK`` in a process launched by torchrun: one
    device per rank), else ``cpu``."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ["LOCAL_RANK"])) if "LOCAL_RANK" in os.environ else torch.device("cuda")


def resolve_device(device: DeviceLike = None) -> torch.device:
    """Turn ``None`` / a string / a device into a ``torch.device`` (``None`` → :func:`default_device`)."""
    return default_device() if device is None else torch.device(device)


def make_generator(seed: int, device: DeviceLike = None) -> torch.Generator:
    """Return a ``torch.Generator`` on ``device`` seeded with ``seed``.

    Parameters
    ----------
    seed
        A non-negative integer.
    device
        Where the generator draws (``None`` → :func:`default_device`).

    Raises
    ------
    ValueError
        If ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    gen = torch.Generator(device=resolve_device(device))
    gen.manual_seed(seed)
    return gen
