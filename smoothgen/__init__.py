"""SmoothGen: certified robustness of conditional generative models through randomized smoothing."""

from smoothgen.data import CIFAR10, PTB, ChecksumError, Vocabulary, load_cifar10, load_ptb
from smoothgen.runtime import default_device, make_generator, resolve_device

__all__ = [
    "CIFAR10", "PTB", "ChecksumError", "Vocabulary", "load_cifar10", "load_ptb",
    "default_device", "make_generator", "resolve_device",
]
__version__ = "0.1.0"
