"""SmoothGen's base models and their adapters to the generator protocol.

- :mod:`.diffusion`: class-conditional CIFAR-10 diffusion (diffusers), :class:`DiffusionGenerator`;
- :mod:`.lm`: word-level PTB GPT-2-style LM (transformers), :class:`LMGenerator`;
- :mod:`.classifier`: the CIFAR-10 evaluator / Cohen base classifiers, :class:`CifarResNet`;
- :mod:`.checkpoints`: safetensors + model cards, sha256-verified loading;
- :mod:`.train` / :mod:`.training`: ``python -m smoothgen.models.train {diffusion,lm,classifier}``.
"""

from smoothgen.models.checkpoints import CheckpointError, checkpoint_root, read_card
from smoothgen.models.classifier import ClassifierBase, CifarResNet, FeatureExtractor, load_classifier
from smoothgen.models.diffusion import ClassConditionalUNet, DiffusionConfig, DiffusionGenerator, load_diffusion
from smoothgen.models.lm import LMConfig, LMGenerator, load_lm, stream_perplexity

__all__ = [
    "CheckpointError",
    "CifarResNet",
    "ClassConditionalUNet",
    "ClassifierBase",
    "DiffusionConfig",
    "DiffusionGenerator",
    "FeatureExtractor",
    "LMConfig",
    "LMGenerator",
    "checkpoint_root",
    "load_classifier",
    "load_diffusion",
    "load_lm",
    "read_card",
    "stream_perplexity",
]
