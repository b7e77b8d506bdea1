"""Class-conditional CIFAR-10 diffusion whose condition is a continuous embedding vector.

Model
-----
A diffusers ``UNet2DModel`` with ``class_embed_type="identity"``: the condition enters as a vector
``u ∈ R^E`` (``E`` = the UNet's time-embedding width, ``4 · block_out_channels[0]``) that is added
to the time embedding. During training ``u`` is a row of a learned table
``nn.Embedding(num_classes + 1, E)``: rows ``0..9`` are the CIFAR-10 classes, row ``10`` is the
*null* condition of classifier-free guidance (each training label is replaced by it with
probability ``cond_dropout``). Because the UNet only ever sees the vector, SmoothGen can feed it any
point of ``R^E``, e.g. a class embedding plus Gaussian noise.

Training: ``DDPMScheduler`` (``num_train_timesteps`` steps, linear β from ``beta_start`` to
``beta_end``) with ε-prediction (``prediction_type="epsilon"``; ``"v_prediction"`` is supported):
``L = E_{x0, t, ε} ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, u)‖²`` with images scaled to [−1, 1].

Sampling: ``DDIMScheduler`` (same β schedule, ``timestep_spacing="trailing"`` so that the first
step starts at ``t = T − 1``, ``eta = 0``, predicted ``x0`` clipped to [−1, 1]) with
classifier-free guidance ``ε̂ = ε_θ(x, t, ∅) + w (ε_θ(x, t, u) − ε_θ(x, t, ∅))``, computed by one
UNet call on the concatenated batch ``[u; ∅]``. ``w = 1`` is plain conditional sampling (one call
on ``u`` only), ``w = 0`` unconditional.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from smoothgen.models.checkpoints import load_weights

__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_SAMPLE_STEPS",
    "ClassConditionalUNet",
    "DiffusionConfig",
    "DiffusionGenerator",
    "ddim_scheduler",
    "ddpm_scheduler",
    "load_diffusion",
]

DEFAULT_SAMPLE_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 3.0
"""Fallback guidance scale; a checkpoint's card may carry a measured choice (``default_guidance_scale``)."""


@dataclass(frozen=True)
class DiffusionConfig:
    """Architecture and noise schedule of :class:`ClassConditionalUNet`.

    Attributes
    ----------
    block_out_channels, layers_per_block
        UNet widths per resolution (32, 16, 8 for three blocks) and ResNet layers per block.
    mid_attention
        Self-attention in the UNet's middle block (at the lowest resolution).
    attention_head_dim, norm_num_groups, dropout
        Passed to ``UNet2DModel``.
    num_classes
        Number of class rows; the table has one more row, the null condition.
    num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type
        The DDPM noise schedule and the network's target (``"epsilon"`` or ``"v_prediction"``).
    """

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    mid_attention: bool = True
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    dropout: float = 0.0
    num_classes: int = 10
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        chans = tuple(int(c) for c in self.block_out_channels)
        if not chans or min(chans) < 1 or any(c % self.norm_num_groups for c in chans):
            raise ValueError(f"block_out_channels {chans} must be positive multiples of norm_num_groups={self.norm_num_groups}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if self.num_classes < 1 or self.layers_per_block < 1:
            raise ValueError("num_classes and layers_per_block must be >= 1")
        object.__setattr__(self, "block_out_channels", chans)

    @property
    def embedding_dim(self) -> int:
        """Width ``E`` of the condition vector (= the UNet time-embedding width)."""
        return 4 * self.block_out_channels[0]

    @property
    def null_index(self) -> int:
        """Row of the null (unconditional) embedding in the class table."""
        return self.num_classes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown DiffusionConfig keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ClassConditionalUNet(nn.Module):
    """``UNet2DModel`` + learned class-embedding table (``num_classes + 1`` rows, last = null)."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiffusionConfig()
        n = len(config.block_out_channels)
        self.unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3,
            block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            add_attention=config.mid_attention, attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups, dropout=config.dropout,
            resnet_time_scale_shift="scale_shift", class_embed_type="identity",
        )
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.embedding_dim)

    def embed(self, labels: Tensor) -> Tensor:
        """Condition vectors ``[B, E]`` of integer labels (``num_classes`` = null)."""
        return self.class_embedding(labels)

    def forward(self, x_t: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        """Network output (ε or v) for noisy images ``x_t [B,3,32,32]``, timesteps ``t``, conditions ``[B, E]``."""
        return self.unet(x_t, t, class_labels=embeddings).sample


def ddpm_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The training scheduler (``add_noise``, velocity targets)."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule=config.beta_schedule,
                         prediction_type=config.prediction_type, clip_sample=True)


def ddim_scheduler(config: DiffusionConfig, steps: int) -> DDIMScheduler:
    """A DDIM sampler with ``steps`` trailing-spaced steps (``t = T−1, T−1−T/steps, ...``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= config.num_train_timesteps:
        raise ValueError(f"steps must be an int in [1, {config.num_train_timesteps}], got {steps!r}")
    scheduler = DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                              beta_end=config.beta_end, beta_schedule=config.beta_schedule,
                              prediction_type=config.prediction_type, clip_sample=True,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    return scheduler


class DiffusionGenerator:
    """SmoothGen generator: condition embeddings ``[B, E]`` → images ``[B, 3, 32, 32]`` in [0, 1].

    Per-step conditioning: embeddings ``[B, T, E]`` with ``T = num_steps`` condition DDIM step ``i``
    on ``embeddings[:, i]`` (the guidance's null branch stays unnoised). This is the base of a noise
    schedule across denoising steps (:func:`smoothgen.calibrate.schedule_noise`); ``T`` identical
    rows reproduce the ``[B, E]`` call exactly.

    Parameters
    ----------
    model
        A trained :class:`ClassConditionalUNet` (put in eval mode; runs on its own device).
    config
        Its :class:`DiffusionConfig` (default ``model.config``).
    steps
        DDIM steps (default 20).
    guidance_scale
        Classifier-free guidance weight ``w >= 0`` (see the module docstring).
    """

    def __init__(self, model: ClassConditionalUNet, config: DiffusionConfig | None = None,
                 steps: int = DEFAULT_SAMPLE_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> None:
        if not isinstance(model, ClassConditionalUNet):
            raise ValueError(f"model must be a ClassConditionalUNet, got {type(model).__name__}")
        if not (isinstance(guidance_scale, (int, float)) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        self.model = model.eval()
        self.config = config or model.config
        self.steps = steps
        self.guidance_scale = float(guidance_scale)
        self.scheduler = ddim_scheduler(self.config, steps)
        self.card: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.class_embedding.weight.device

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def conditions(self) -> Tensor:
        """Clean class embeddings ``[num_classes, E]`` (row ``k`` = class ``k``), detached copies."""
        return self.model.class_embedding.weight[: self.config.num_classes].detach().clone()

    @property
    def null_embedding(self) -> Tensor:
        """The null condition ``[E]`` used for classifier-free guidance."""
        return self.model.class_embedding.weight[self.config.null_index].detach().clone()

    def embedding_geometry(self) -> dict[str, float]:
        """Scale of the condition space, to which σ and radii should be compared.

        Returns ``dim`` (E), ``mean_norm`` / ``min_norm`` / ``max_norm`` of the class embeddings,
        ``nearest_other_min`` / ``nearest_other_median`` (over classes k of
        ``min_{j≠k} ‖u_k − u_j‖₂``), ``null_norm`` and ``null_to_class_mean`` (mean ‖u_k − u_∅‖).
        """
        u = self.conditions().double().cpu()
        null = self.null_embedding.double().cpu()
        norms = u.norm(dim=1)
        dist = torch.cdist(u, u) + torch.diag(torch.full((u.shape[0],), float("inf"), dtype=u.dtype))
        nearest = dist.min(dim=1).values.numpy()
        return {
            "dim": int(u.shape[1]), "mean_norm": float(norms.mean()), "min_norm": float(norms.min()),
            "max_norm": float(norms.max()), "nearest_other_min": float(nearest.min()),
            "nearest_other_median": float(np.median(nearest)), "null_norm": float(null.norm()),
            "null_to_class_mean": float((u - null).norm(dim=1).mean()),
        }

    @property
    def num_steps(self) -> int:
        """Number of DDIM steps ``T`` (the middle size of per-step embeddings ``[B, T, E]``)."""
        return len(self.scheduler.timesteps)

    def _check(self, embeddings: Tensor) -> None:
        shapes = ((2, (self.embedding_dim,)), (3, (self.num_steps, self.embedding_dim)))
        if not isinstance(embeddings, Tensor) or (embeddings.ndim, tuple(embeddings.shape[1:])) not in shapes:
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must be a float tensor [B, {self.embedding_dim}] or per-step "
                             f"[B, {self.num_steps}, {self.embedding_dim}], got {shape}")
        if not embeddings.is_floating_point():
            raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
        if embeddings.device != self.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the model is on {self.device}; move one of them")

    def _guided_output(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        w = self.guidance_scale
        if w == 1.0:
            return self.model(x, t, cond)
        null = self.model.class_embedding.weight[self.config.null_index].expand_as(cond)
        out_c, out_u = self.model(torch.cat([x, x]), t, torch.cat([cond, null])).chunk(2)
        return out_u + w * (out_c - out_u)

    def _denoise(self, x: Tensor, cond: Tensor) -> Tensor:
        for i, t in enumerate(self.scheduler.timesteps):
            out = self._guided_output(x, t.to(x.device), cond[:, i] if cond.ndim == 3 else cond)
            x = self.scheduler.step(out, t, x, eta=0.0).prev_sample
        return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).to(torch.float32)

    def __call__(self, embeddings: Tensor, generator: torch.Generator) -> Tensor:
        """Sample one image per condition row (``[B, E]``, or per-step ``[B, T, E]``);
        ``x_T ~ N(0, I)`` is drawn from ``generator``.

        Runs under ``torch.inference_mode`` on the model's device; ``generator`` must live there.
        Embeddings are cast to the model's dtype (e.g. float64 noise → float32). Deterministic
        given the generator state (DDIM with ``eta = 0``).
        """
        self._check(embeddings)
        if generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device} but the model runs on {self.device}")
        shape = (embeddings.shape[0], 3, 32, 32)
        dtype = self.model.class_embedding.weight.dtype
        with torch.inference_mode():
            x_t = torch.randn(shape, generator=generator, device=self.device, dtype=dtype)
            return self._denoise(x_t, embeddings.to(dtype))

    def sample_from_noise(self, embeddings: Tensor, x_t: Tensor) -> Tensor:
        """Differentiable sampling from given initial noise ``x_T [B, 3, 32, 32]``.

        Same computation as :meth:`__call__` but with autograd enabled (gradients flow to
        ``embeddings`` and ``x_t``; the final clamp to [0, 1] and DDIM's x0-clipping have zero
        gradient where they are active). Memory grows with ``steps`` (activations are kept).
        """
        self._check(embeddings)
        if x_t.shape != (embeddings.shape[0], 3, 32, 32):
            raise ValueError(f"x_t must have shape {(embeddings.shape[0], 3, 32, 32)}, got {tuple(x_t.shape)}")
        dtype = self.model.class_embedding.weight.dtype
        return self._denoise(x_t.to(device=self.device, dtype=dtype), embeddings.to(dtype))


def load_diffusion(name: str = "diffusion_cifar10", root: str | None = None, device: Any = None,
                   steps: int = DEFAULT_SAMPLE_STEPS, guidance_scale: float | None = None) -> DiffusionGenerator:
    """Load a trained diffusion checkpoint (sha256-verified) as a :class:`DiffusionGenerator`.

    ``guidance_scale=None`` takes the card's ``default_guidance_scale`` (measured at training
    time, see the card's ``guidance_sweep``), else :data:`DEFAULT_GUIDANCE_SCALE`. The card is
    available as ``generator.card``.

    Raises
    ------
    CheckpointError
        Missing or corrupted checkpoint (the message says how to train it).
    """
    state, card = load_weights(name, root)
    config = DiffusionConfig.from_dict(card["config"]["architecture"])
    model = ClassConditionalUNet(config)
    model.load_state_dict(state)
    model.to(device or "cpu")
    scale = guidance_scale if guidance_scale is not None else card.get("default_guidance_scale", DEFAULT_GUIDANCE_SCALE)
    generator = DiffusionGenerator(model, config, steps=steps, guidance_scale=scale)
    generator.card = card
    return generator
