"""Quality and distance metrics for generated images and texts, each named for what it measures.

Image metrics (FID, IS) go through **torchmetrics** with an explicit feature source. The
standard Inception-v3 features need torch-fidelity and locally cached weights; without them
(the offline default here) any feature module can be used, e.g. the CIFAR-10 evaluator's
penultimate layer, and the result is then *named* after it: ``FID[evaluator-penultimate]``,
never plain ``FID``. Text metrics: BLEU and ROUGE (torchmetrics, no NLTK data download),
perplexity. Distances between sample sets: empirical W₁ through **POT** with an explicit
ground metric (pixel ℓ₂, feature ℓ₂, normalised token edit distance).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
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

LOCAL = {"sync_on_compute": False}
"""torchmetrics keyword for every metric here: a value is over the samples this process was handed. Without
it, a metric computed inside a torchrun rank (:mod:`smoothgen.distributed`) gathers every rank's states."""

__all__ = [
    "INCEPTION_FEATURE_NAME",
    "MetricResult",
    "bleu",
    "class_consistency",
    "frechet_distance",
    "inception_available",
    "inception_score",
    "normalized_edit_distance",
    "pairwise_normalized_edit_distance",
    "perplexity",
    "rouge",
    "sample_wasserstein1",
    "wasserstein1",
    "wasserstein1_torch",
]

INCEPTION_FEATURE_NAME = "inception-v3"
_INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's URL basename
_ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_MAX_EXACT_PAIRS = 25_000_000  # 5,000 x 5,000 points: ~0.2 GB cost matrix, seconds of network simplex
_EDIT_BLOCK_CELLS = 16_000_000  # DP cells (int16) held at once by the pairwise edit distance

Images = Tensor
FeatureFn = Callable[[Tensor], Tensor]
TokenSeqs = Tensor | Sequence[Sequence[int]]
GroundMetric = Literal["pixel-l2", "feature-l2", "token-edit"]


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


def _hub_inception_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _INCEPTION_WEIGHTS_FILE


def inception_available(weights_path: str | Path | None = None) -> bool:
    """Tell whether the standard torch-fidelity Inception-v3 features can be used offline.

    True only when ``torch_fidelity`` imports (it needs a working torchvision) **and** the
    Inception weights file exists locally: ``weights_path`` if given, else torch-fidelity's
    cache file ``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth``.
    Never downloads anything.
    """
    if importlib.util.find_spec("torch_fidelity") is None:
        return False
    try:
        import torch_fidelity  # noqa: F401  (imports torchvision, which may be broken)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    path = Path(weights_path) if weights_path is not None else _hub_inception_weights()
    return path.is_file()


def _require_inception(weights_path: str | Path | None) -> None:
    if not inception_available(weights_path):
        raise RuntimeError(
            "the standard Inception-v3 features are unavailable: they need torch-fidelity, a working "
            f"torchvision and the weights file {_INCEPTION_WEIGHTS_FILE} (in {_hub_inception_weights().parent} "
            "or passed as inception_weights). Offline, pass a feature module instead, e.g. the CIFAR-10 "
            "evaluator's penultimate features, with feature_name='evaluator-penultimate'."
        )


def _to_uint8(images: Tensor) -> Tensor:
    """float ``[0, 1]`` → uint8 by rounding (torchmetrics' own ``normalize`` truncates)."""
    return images if images.dtype == torch.uint8 else (images * 255.0).round().to(torch.uint8)


# ----------------------------------------------------------------------------- FID / IS / class consistency


def _fid_metric(
    feature: FeatureFn | str, probe: Tensor, feature_name: str | None, preprocess: FeatureFn | None,
    inception_weights: str | Path | None,
) -> tuple[FrechetInceptionDistance, str, str, bool]:
    """Return ``(metric, name, feature source, wants_uint8)`` for ``frechet_distance``."""
    if isinstance(feature, str):
        if feature != "inception":
            raise ValueError(f"feature must be a module/callable or 'inception', got {feature!r}")
        _require_inception(inception_weights)
        weights = str(inception_weights) if inception_weights is not None else str(_hub_inception_weights())
        metric = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=weights, **LOCAL)
        return metric, "FID", INCEPTION_FEATURE_NAME, True
    name = _check_feature_name(feature_name)
    adapter = _make_adapter(feature, preprocess, probe, name)
    return FrechetInceptionDistance(feature=adapter, normalize=True, **LOCAL), f"FID[{name}]", name, False


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
        needs :func:`inception_available`.
    feature_name
        Name of the feature source (required for a module, e.g. ``"evaluator-penultimate"``);
        names starting with ``"inception"`` are reserved.
    preprocess
        Optional callable applied to the ``[0, 1]`` float batch before ``feature`` (e.g. the
        evaluator's mean/std normalisation).
    batch_size
        Images per forward pass.
    inception_weights
        Path of the Inception weights file (default: torch-fidelity's cache file).

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
    metric, name, source, wants_uint8 = _fid_metric(feature, real, feature_name, preprocess, inception_weights)
    with _eval_mode(feature):
        for images, is_real in ((real, True), (fake, False)):
            images = _to_uint8(images) if wants_uint8 else images
            for i in range(0, images.shape[0], batch_size):
                metric.update(images[i : i + batch_size], real=is_real)
    value = float(metric.compute())
    return MetricResult(name, value, source, num_samples=(real.shape[0], fake.shape[0]))


def inception_score(
    images: Images,
    logits_module: FeatureFn | Literal["inception"],
    feature_name: str | None = None,
    *,
    splits: int = 10,
    preprocess: FeatureFn | None = None,
    batch_size: int = 256,
    seed: int = 0,
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

    Returns
    -------
    MetricResult
        ``name`` is ``"IS[<feature_name>]"``, or ``"IS"`` for the Inception logits.
    """
    images = _check_images(images, "images", min_count=1)
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= images.shape[0]:
        raise ValueError(f"splits must be an int in [1, N={images.shape[0]}], got {splits!r}")
    _check_batch_size(batch_size)
    metric, name, source, wants_uint8 = _is_metric(logits_module, images, feature_name, preprocess, splits)
    images = _to_uint8(images) if wants_uint8 else images
    with _eval_mode(logits_module):
        for i in range(0, images.shape[0], batch_size):
            metric.update(images[i : i + batch_size])
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # std of a single split
        mean, std = metric.compute()
    std_value = float(std) if splits > 1 else None
    return MetricResult(name, float(mean), source, std=std_value, num_samples=(images.shape[0],))


def _is_metric(
    logits_module: FeatureFn | str, probe: Tensor, feature_name: str | None, preprocess: FeatureFn | None, splits: int
) -> tuple[InceptionScore, str, str, bool]:
    """Return ``(metric, name, feature source, wants_uint8)`` for ``inception_score``."""
    with warnings.catch_warnings():  # torchmetrics warns that IS keeps all features in memory
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        if isinstance(logits_module, str):
            if logits_module != "inception":
                raise ValueError(f"logits_module must be a module/callable or 'inception', got {logits_module!r}")
            _require_inception(None)
            metric = InceptionScore(feature="logits_unbiased", splits=splits, normalize=False, **LOCAL)
            return metric, "IS", INCEPTION_FEATURE_NAME, True
        name = _check_feature_name(feature_name)
        adapter = _make_adapter(logits_module, preprocess, probe, name)
        if adapter.num_features < 2:
            raise ValueError(f"logits_module '{name}' must return logits over at least 2 classes")
        # normalize=False: with normalize=True torchmetrics would cast the images to uint8 before the module.
        return InceptionScore(feature=adapter, splits=splits, normalize=False, **LOCAL), f"IS[{name}]", name, False


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

    .. math:: W_1(\hat\mu, \hat\nu) = \min_{\gamma \in \Pi(\frac{1}{n}\mathbf 1, \frac{1}{m}\mathbf 1)}
              \sum_{i,j} \gamma_{ij}\, c(x_i, y_j)

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
    :math:`\langle \gamma^\star, C \rangle` with gradient :math:`\gamma^\star` with respect to
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
