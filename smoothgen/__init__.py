"""SmoothGen: certified robustness of conditional generative models through randomized smoothing."""

from smoothgen.runtime import default_device, make_generator, resolve_device

__all__ = ["default_device", "make_generator", "resolve_device"]
__version__ = "0.1.0"
