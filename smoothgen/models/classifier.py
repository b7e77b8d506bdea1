"""CIFAR-10 evaluator: a small ResNet-9-style CNN on float images in [0, 1].

One architecture serves three roles in SmoothGen:

- the **evaluator** (clean training): its penultimate features stand in for Inception features in
  FID (``FID[evaluator-penultimate]``) and its predictions give the *class-consistency* of
  generated images;
- the **base classifiers of the Cohen chapter**: the same network trained with Gaussian noise
  augmentation ``x + N(0, σ² I)``, σ ∈ {0.12, 0.25, 0.5} in [0, 1] pixel units (Cohen et al., 2019).

Normalisation by the training-set mean/std happens *inside* the model, so noise is always added in
[0, 1] pixel space, where σ is defined.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgen.models.checkpoints import load_weights

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "NOISE_SIGMAS",
    "ClassifierBase",
    "ClassifierConfig",
    "CifarResNet",
    "FeatureExtractor",
    "accuracy",
    "classifier_name",
    "load_classifier",
    "random_crop_flip",
]

CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
"""Per-channel train mean of the CIFAR-10 copy used here (JPEG-q75 variant; official: 0.4914, 0.4822, 0.4465)."""
CIFAR10_STD = (0.2452, 0.2428, 0.2606)
"""Per-channel train std of the CIFAR-10 copy used here (official: 0.2470, 0.2435, 0.2616)."""
NOISE_SIGMAS = (0.12, 0.25, 0.5)
"""Noise levels of the shipped noise-augmented classifiers (Cohen et al.'s CIFAR-10 grid)."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`CifarResNet`.

    Attributes
    ----------
    widths
        Channels of (prep, layer1, layer2, layer3); the feature dimension is ``widths[3]``.
    num_classes
        Number of output logits.
    mean, std
        Input normalisation applied inside the model: ``(x - mean) / std`` per channel.
    logit_scale
        Logits are ``logit_scale · W f(x)`` (the ResNet-9 recipe's 0.125 keeps early logits small).
    """

    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    num_classes: int = 10
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    logit_scale: float = 0.125

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive ints, got {self.widths!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std must be 3 numbers each, std > 0")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ClassifierConfig keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BN-ReLU layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CifarResNet(nn.Module):
    """ResNet-9-style CIFAR-10 classifier (Page's DAWNBench layout at configurable width).

    ``prep(3→w0) → [conv(w0→w1), maxpool, residual] → [conv(w1→w2), maxpool] →
    [conv(w2→w3), maxpool, residual] → global max-pool → features [N, w3] → linear → logits``.

    Inputs are float ``[N, 3, 32, 32]`` images in [0, 1] (values outside are allowed: noisy
    copies). The model normalises them itself.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        w0, w1, w2, w3 = self.config.widths
        self.register_buffer("mean", torch.tensor(self.config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.config.std).view(1, 3, 1, 1), persistent=False)
        self.body = nn.Sequential(
            _conv_bn(3, w0),
            _conv_bn(w0, w1), nn.MaxPool2d(2), _Residual(w1),
            _conv_bn(w1, w2), nn.MaxPool2d(2),
            _conv_bn(w2, w3), nn.MaxPool2d(2), _Residual(w3),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(w3, self.config.num_classes, bias=False)

    @property
    def feature_dim(self) -> int:
        """Dimension ``D`` of :meth:`features`."""
        return self.config.widths[3]

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, D]`` (global max-pool of the last block) of images ``[N, 3, 32, 32]``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"expected images [N, 3, 32, 32], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype}; divide uint8 images by 255")
        return self.body((x - self.mean) / self.std)

    def head(self, features: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` from penultimate :meth:`features` ``[N, D]``."""
        return self.config.logit_scale * self.fc(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` of float images ``[N, 3, 32, 32]`` in [0, 1]."""
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """``nn.Module`` view of :meth:`CifarResNet.features` (what torchmetrics' custom-feature FID expects)."""

    def __init__(self, model: CifarResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)


class ClassifierBase:
    """Adapter to SmoothGen's classifier protocol: ``base(inputs, generator) -> logits``.

    The network is deterministic, so ``generator`` is unused; the call runs in eval mode under
    ``torch.inference_mode`` on the model's device.
    """

    def __init__(self, model: CifarResNet) -> None:
        if not isinstance(model, CifarResNet):
            raise ValueError(f"model must be a CifarResNet, got {type(model).__name__}")
        self.model = model.eval()

    def __call__(self, inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with torch.inference_mode():
            return self.model(inputs)


def classifier_name(sigma: float | None = None) -> str:
    """Checkpoint name: ``classifier_cifar10`` (clean) or ``classifier_cifar10_sigma{σ:.2f}``."""
    if sigma is None:
        return "classifier_cifar10"
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (or None for the clean evaluator), got {sigma}")
    return f"classifier_cifar10_sigma{sigma:.2f}"


def load_classifier(sigma: float | None = None, root: str | None = None, device: Any = None,
                    name: str | None = None) -> CifarResNet:
    """Load a trained classifier (sha256-verified) in eval mode; its card is ``model.card``.

    Parameters
    ----------
    sigma
        ``None`` for the clean evaluator, else the training noise level (e.g. 0.25).
    root
        Checkpoint folder (default: ``$SMOOTHGEN_CHECKPOINTS``, else ``<repo>/data/checkpoints``).
    device
        Where to put the model (default CPU).
    name
        Explicit checkpoint name (overrides ``sigma``).

    Raises
    ------
    CheckpointError
        Missing or corrupted checkpoint (the message says how to train it).
    """
    name = name or classifier_name(sigma)
    state, card = load_weights(name, root)
    model = CifarResNet(ClassifierConfig.from_dict(card["config"]["architecture"]))
    model.load_state_dict(state)
    model.card = card
    return model.to(device or "cpu").eval()


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, sigma: float = 0.0,
             generator: torch.Generator | None = None, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images`` (optionally with one noise draw per image).

    With ``sigma > 0`` each image is classified once as ``x/255 + σ·ε``, ``ε ~ N(0, I)`` drawn from
    ``generator`` (the *base* classifier's accuracy under noise, not a smoothed prediction).
    """
    if sigma > 0 and generator is None:
        raise ValueError("a generator is needed to draw the noise when sigma > 0")
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(device).float() / 255
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=generator.device).to(device)
            correct += int((model(x).argmax(1).cpu() == labels[i : i + batch_size].cpu()).sum())
    return correct / images.shape[0]


def random_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Standard CIFAR augmentation: reflect-pad by ``pad``, random 32×32 crop, random horizontal flip.

    All randomness comes from ``generator`` (on ``x``'s device); vectorised over the batch.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]
