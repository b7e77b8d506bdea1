"""Presets: the one place that holds SmoothGen's smoke / cpu / gpu parameters.

Training presets
----------------
``TRAIN_PRESETS[model][preset]`` is a flat dict of one model's architecture and training
parameters (read by :mod:`smoothgen.models.train`). ``steps`` counts optimizer steps.

- ``smoke``: tiny models, a few steps, evaluation on small subsets: seconds on a CPU (tests).
- ``cpu``: the architectures SmoothGen ships; on 2 quiet CPU cores (estimated from step times
  scaled to the platform notes' reference timings) about 1.5–2 h for the diffusion model
  (15,000 steps of 64 images), 40 min for the LM (3,600 steps of 16×128 tokens, ≈ 8 epochs) and
  25 min per classifier (7,800 steps of 256 images = 40 epochs). The shipped weights use these
  architectures, trained on a GPU (diffusion and LM with larger batches / more steps, the
  classifiers with this recipe, in bf16 autocast); each model card records the preset, the
  overrides and the hardware.
  On a *shared* 2-core machine run with ``OMP_NUM_THREADS=1``: two OpenMP threads competing with
  other processes slow small convolutions down many-fold.
- ``gpu``: larger models for users with a GPU (not shipped).

Every diffusion and LM preset also carries the condition-noise keys (``_COND_NOISE``):
``cond_noise_rel`` (0 = off: training as before, bit for bit), ``init_from`` (a checkpoint name to
fine-tune from, or None) and ``freeze_cond_embedding`` (None = frozen iff ``init_from``); see
:mod:`smoothgen.models.train` for their meaning and the recipe of the cpu noise fine-tunes.

Use :func:`get_train_preset` to read one with overrides.
"""

from __future__ import annotations

import ast
import copy
import json
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["TRAIN_PRESETS", "get_train_preset"]

_COND_NOISE = {"cond_noise_rel": 0.0, "init_from": None, "freeze_cond_embedding": None}

_DIFFUSION_SCHEDULE = {
    "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "epsilon", "cond_dropout": 0.1,
}

TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "diffusion": {
        "smoke": {
            **_DIFFUSION_SCHEDULE, **_COND_NOISE, "block_out_channels": (16, 16, 16), "layers_per_block": 1,
            "mid_attention": True, "attention_head_dim": 8, "norm_num_groups": 8, "dropout": 0.0,
            "batch_size": 8, "steps": 3, "lr": 2e-4, "warmup_steps": 1, "min_lr_frac": 1.0,
            "weight_decay": 0.0, "grad_clip": 1.0, "ema_decay": 0.9, "checkpoint_every": 2,
            "train_subset": 512, "sample_steps": 2, "eval_samples": 20, "sweep_scales": (1.0, 3.0),
            "sweep_samples": 10, "eval_batch_size": 20, "fid_real_samples": 200,
        },
        "cpu": {
            **_DIFFUSION_SCHEDULE, **_COND_NOISE, "block_out_channels": (32, 64, 64), "layers_per_block": 1,
            "mid_attention": True, "attention_head_dim": 8, "norm_num_groups": 8, "dropout": 0.0,
            "batch_size": 64, "steps": 15_000, "lr": 5e-4, "warmup_steps": 500, "min_lr_frac": 1.0,
            "weight_decay": 0.0, "grad_clip": 1.0, "ema_decay": 0.999, "checkpoint_every": 500,
            "train_subset": None, "sample_steps": 20, "eval_samples": 1000,
            "sweep_scales": (1.0, 1.5, 2.0, 3.0, 4.0, 5.0), "sweep_samples": 200, "eval_batch_size": 250,
            "fid_real_samples": None,
        },
        "gpu": {
            **_DIFFUSION_SCHEDULE, **_COND_NOISE, "block_out_channels": (128, 256, 256, 256), "layers_per_block": 2,
            "mid_attention": True, "attention_head_dim": 32, "norm_num_groups": 32, "dropout": 0.1,
            "batch_size": 128, "steps": 200_000, "lr": 2e-4, "warmup_steps": 5000, "min_lr_frac": 1.0,
            "weight_decay": 0.0, "grad_clip": 1.0, "ema_decay": 0.9999, "checkpoint_every": 5000,
            "train_subset": None, "sample_steps": 20, "eval_samples": 10_000,
            "sweep_scales": (1.0, 1.5, 2.0, 3.0, 4.0, 5.0), "sweep_samples": 1000, "eval_batch_size": 1000,
            "fid_real_samples": None,
        },
    },
    "lm": {
        "smoke": {
            **_COND_NOISE, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 32, "dropout": 0.1,
            "batch_size": 4, "seq_len": 16, "steps": 3, "lr": 1e-3, "warmup_steps": 1, "min_lr_frac": 0.1,
            "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 2, "checkpoint_every": 2,
            "eval_tokens": 500, "storage_dtype": "float32",
        },
        "cpu": {
            **_COND_NOISE, "n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 128, "dropout": 0.2,
            "batch_size": 16, "seq_len": 128, "steps": 3600, "lr": 1e-3, "warmup_steps": 200,
            "min_lr_frac": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 450,
            "checkpoint_every": 450, "eval_tokens": None, "storage_dtype": "float16",
        },
        "gpu": {
            **_COND_NOISE, "n_embd": 512, "n_layer": 6, "n_head": 8, "n_positions": 256, "dropout": 0.3,
            "batch_size": 64, "seq_len": 256, "steps": 10_000, "lr": 6e-4, "warmup_steps": 500,
            "min_lr_frac": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 500,
            "checkpoint_every": 1000, "eval_tokens": None, "storage_dtype": "float16",
        },
    },
    "classifier": {
        "smoke": {
            "widths": (8, 8, 16, 16), "batch_size": 32, "steps": 3, "lr": 0.05, "warmup_steps": 1,
            "min_lr_frac": 0.0, "weight_decay": 5e-4, "label_smoothing": 0.1, "grad_clip": None,
            "checkpoint_every": 2, "eval_samples": 256,
        },
        "cpu": {
            "widths": (16, 32, 64, 128), "batch_size": 256, "steps": 7800, "lr": 0.2, "warmup_steps": 200,
            "min_lr_frac": 0.0, "weight_decay": 5e-4, "label_smoothing": 0.1, "grad_clip": None,
            "checkpoint_every": 390, "eval_samples": None,
        },
        "gpu": {
            "widths": (64, 128, 256, 512), "batch_size": 512, "steps": 8000, "lr": 0.4, "warmup_steps": 500,
            "min_lr_frac": 0.0, "weight_decay": 5e-4, "label_smoothing": 0.1, "grad_clip": None,
            "checkpoint_every": 1000, "eval_samples": None,
        },
    },
}


def get_train_preset(model: str, preset: str, **overrides: Any) -> dict[str, Any]:
    """A copy of ``TRAIN_PRESETS[model][preset]`` with ``overrides`` applied.

    Raises
    ------
    ValueError
        Unknown model or preset, or an override key the preset does not have.
    """
    if model not in TRAIN_PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(TRAIN_PRESETS)}")
    if preset not in TRAIN_PRESETS[model]:
        raise ValueError(f"unknown preset {preset!r} for {model}; choose one of {sorted(TRAIN_PRESETS[model])}")
    params = copy.deepcopy(TRAIN_PRESETS[model][preset])
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown {model} parameters {unknown}; valid: {sorted(params)}")
    params.update(overrides)
    return params


# Study presets -------------------------------------------------------------------------------
# ``STUDY_PRESETS[notebook][preset]``: the parameters of one study notebook (read by
# :func:`study_params`; the notebooks pass ``preset`` and ``overrides``).

_TOYS = [{"name": "spread", "a_norm": 2.0, "s": 0.0}, {"name": "concentrated", "a_norm": 0.25, "s": 0.05}]

_RADII = [round(0.05 * k, 2) for k in range(31)]

_CIFAR_BASE = {"seed": 0, "device": None, "steps": 20, "guidance_scale": None, "classes": list(range(10)),
               "bootstrap": 200,
               "alpha": 0.001, "center_delta": 0.3, "epsilon": 0.05, "focus_class": 3, "focus_sigma_rel": 0.01,
               "radii_rel": [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]}
# σ relative to the mean embedding norm. The noise's own norm is σ·√E (E = 128 for the class
# embeddings, 5·256 for a 5-token prompt): σ_rel = 0.01 already moves a class embedding by ~11 % of
# its length, and class-consistency collapses near σ_rel = 0.05, hence grids that start at 0.005.
_PTB_BASE = {"seed": 0, "device": None, "prompt_len": 5, "steps": 10, "alpha": 0.001, "temperature": 1.0,
             "bootstrap": 200,
             "top_k": 50, "radii_rel": [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]}

_OVERHEAD_SEQUENTIAL = {"alpha": 0.001, "n0": 100, "cert_sigma": 0.25, "decision_r_over_sigma": 1.0, "tol": 0.05}
_OVERHEAD_MODELS = {"sigma_diffusion": 0.5, "sigma_lm": 0.1, "lm_prompt_len": 8, "lm_tokens": 10}

_ATTACKS_BASE = {
    "seed": 0, "device": None, "models": "shipped", "random_arch": "smoke", "alpha": 0.001, "violation_z": 2.0,
    "refine_steps": 2,
    "toy_dim": 8, "toy_sigma": 0.5, "toy_restarts": 2, "toy_pgd_steps": 20, "toy_n_eot": 64, "toy_n_cert": 20_000,
    # σ relative to the mean class-embedding norm: the noise's norm is σ·√128 ≈ 11σ, so σ_rel = 0.01 already
    # perturbs the embedding by ~11 % of its length (σ_rel = 0.03 drops class-consistency below 0.5).
    "cifar_sigma_rel": 0.01, "cifar_guidance_scale": None, "cifar_restarts": 3,
    "cifar_radii_rel": [0.005, 0.015, 0.04],
    "cifar_breakdown_grid_rel": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4],
    # the smoothed model's own breakdown: along the straight line to the nearest class, in half gaps (the
    # midpoint between the two class embeddings is at 1); PTB: PGD-EOT, in median nearest-token distances
    "cifar_smoothed_grid_rel": [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0],
    "ptb_smoothed_grid_rel": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0],
    "ptb_prompt_len": 5, "ptb_sigma_rel": 0.02, "ptb_restarts": 3,
    "ptb_radii_rel": [0.005, 0.02, 0.05, 0.1],
    "ptb_breakdown_grid_rel": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4],
    # the projection front-end's certificate under attack, at notebook 08's chosen σ (CIFAR-10: over the
    # smallest half class gap; PTB: over the median nearest-token distance); radii over each class's own
    # half gap / the median nearest-token distance, plus 0.999 × each condition's certified identity radius
    "cell_alpha": 0.001, "cell_cifar_sigma_rel": 0.25, "cell_cifar_radii_rel": [0.25, 0.5, 0.75, 1.0],
    "cell_ptb_sigma_rel": 0.1, "cell_ptb_radii_rel": [0.1, 0.2], "cell_pgd_steps": 30, "cell_restarts": 2,
    "cell_n_cert": 100_000, "cell_n_fresh": 100_000, "cell_ptb_n": 10_000, "cell_ptb_prompts": 10,
    "cell_n_images": 64, "cell_n_texts": 100,
}

_ADAPTIVE_TOY = {"toy_boundaries": [0.0], "toy_sigma_range": [0.01, 10.0], "toy_sigma_points": 301, "toy_kappa": 0.99,
        "toy_radius": 1.0, "toy_inputs": [-0.5, -0.9, 0.3], "toy_curve_points": 201,
        "toy_table_sigmas": [1.0, 0.05], "toy_table_inputs": [-0.3, -0.8]}

_ADAPTIVE_CIFAR = ["isotropic", "anisotropic-lowrank", "anisotropic-diagonal", "schedule"]
_ADAPTIVE_PTB = ["isotropic", "anisotropic-lowrank", "anisotropic-diagonal"]

_ADAPTIVE_BASE = {"seed": 0, "device": None, "guidance_scale": None, "classes": list(range(10)), "split": "samples",
         "alpha": 0.05, "bootstrap": 200,
         "kappa": 0.5, "target_fraction": 0.6, "ptb_tolerance": 0.3, "tv_level": 0.5, "power": 1.0,
         "max_ratio": 4.0, "gram_oversample": 4, "gram_iters": 1, "prompt_len": 5,
         "cifar_strategies": _ADAPTIVE_CIFAR, "ptb_strategies": _ADAPTIVE_PTB, **_ADAPTIVE_TOY,
         # σ read off the projected condition's cells (κ × a half gap / half nearest-token distance):
         # quality target P(leave the cells) <= cell_max_exit, radius maximised under it, at level cell_alpha
         "cell_alpha": 0.001, "cell_kappas": [0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5], "cell_max_exit": 0.02,
         "cell_pass_fraction": 0.9, "cell_n_cal": 10_000, "cell_n_cert": 100_000, "cell_ptb_n_cal": 2000,
         "cell_ptb_n": 10_000}

# Notebook 08: σ relative to the smallest half class gap (CIFAR-10) and to the median nearest-token
# distance (PTB); the grids reach where a projected condition still snaps back almost surely.
_MEANINGFUL_BASE = {
    "seed": 0, "device": None, "alpha": 0.001, "epsilon": 0.05, "guidance_scale": None, "classes": list(range(10)),
    "prompt_len": 5, "steps": 10, "diffusion_noise_checkpoint": None,
    "lm_noise_checkpoint": None, "target_consistency": 0.85, "target_fid_ratio": 1.25, "target_bleu": 0.9,
    "target_ppl_ratio": 1.1, "breakdown_grid_rel": [0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5],
    "refine_steps": 2, "headline_seeds": [1, 2],
}

STUDY_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "01_smoothing_classifiers": {
        "smoke": {"seed": 0, "sigmas": [0.25], "n_images": 3, "stride": 1000, "n0": 10, "n": 50,
                  "alpha": 0.001, "batch_size": 64, "radii": [0.0, 0.25, 0.5], "device": None},
        "cpu": {"seed": 0, "sigmas": [0.12, 0.25, 0.5], "n_images": 100, "stride": 100, "n0": 100, "n": 10_000,
                "alpha": 0.001, "batch_size": 1010, "radii": _RADII, "device": None},
        "gpu": {"seed": 0, "sigmas": [0.12, 0.25, 0.5], "n_images": 500, "stride": 20, "n0": 100, "n": 100_000,
                "alpha": 0.001, "batch_size": 2000, "radii": _RADII, "device": None},
    },
    "03_cifar10": {
        "smoke": {**_CIFAR_BASE, "steps": 2, "classes": [0, 1], "sigma_rel": [0.0, 0.2], "n": 12, "n_pilot": 4, "bootstrap": 5,
                  "focus_n": 24, "batch_size": 12, "n_real": 64, "grid_samples": 4, "radii_rel": [0.1, 0.5]},
        "cpu": {**_CIFAR_BASE, "steps": 10, "sigma_rel": [0.0, 0.005, 0.01, 0.02, 0.05], "n": 80, "n_pilot": 16,
                "focus_n": 1500, "batch_size": 80, "n_real": 10_000, "grid_samples": 8},
        "gpu": {**_CIFAR_BASE, "steps": 50, "sigma_rel": [0.0, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1], "n": 10_000,
                "focus_n": 30_000,
                "n_pilot": 500, "batch_size": 1000, "n_real": 10_000, "grid_samples": 8, "center_delta": 0.05},
    },
    "04_ptb": {
        "smoke": {**_PTB_BASE, "steps": 4, "sigma_rel": [0.0, 0.25], "n_prompts": 2, "n0": 4, "n": 16, "bootstrap": 5,
                  "n_samples": 16, "n_pilot": 4, "nll_draws": 4, "batch_size": 32, "radii_rel": [0.1, 0.5]},
        "cpu": {**_PTB_BASE, "sigma_rel": [0.0, 0.01, 0.02, 0.05], "n_prompts": 40, "n0": 20,
                "n": 300, "n_samples": 200, "n_pilot": 20, "nll_draws": 16, "batch_size": 320},
        "gpu": {**_PTB_BASE, "sigma_rel": [0.0, 0.005, 0.01, 0.02, 0.05, 0.1], "n_prompts": 500, "n0": 100,
                "n": 100_000, "n_samples": 10_000, "n_pilot": 500, "nll_draws": 256, "batch_size": 10_000},
    },
    "02_certificates": {
        "smoke": {"seed": 0, "dim": 16, "toys": _TOYS, "sigma": 0.5, "alpha": 0.001, "n": 2000,
                  "batch_size": 4096, "radii": [0.1, 0.5], "n_center": 200, "center_delta": 0.2, "alpha_coverage": 0.05,
                  "coverage_radius": 0.25, "coverage_n": [10], "seeds": 40},
        "cpu": {"seed": 0, "dim": 16, "toys": _TOYS, "sigma": 0.5, "alpha": 0.001, "n": 100_000,
                "batch_size": 8192, "radii": [0.05, 0.1, 0.25, 0.5, 0.75, 1.0], "n_center": 5000, "center_delta": 0.05,
                "alpha_coverage": 0.05, "coverage_radius": 0.25, "coverage_n": [5, 10, 100, 1000], "seeds": 2000},
        "gpu": {"seed": 0, "dim": 16, "toys": _TOYS, "sigma": 0.5, "alpha": 0.001, "n": 1_000_000,
                "batch_size": 65536, "radii": [0.05, 0.1, 0.25, 0.5, 0.75, 1.0], "n_center": 10_000, "center_delta": 0.05,
                "alpha_coverage": 0.05, "coverage_radius": 0.25, "coverage_n": [5, 10, 100, 1000, 10_000],
                "seeds": 5000},
    },
    "07_overhead": {
        "smoke": {"seed": 0, "device": None, "models": ["toy"], "n_values": [64, 256], "batch_size": 64, "repeats": 1, "threads": 1,
                  "diffusion_steps": 1, **_OVERHEAD_MODELS, **_OVERHEAD_SEQUENTIAL, "inputs": 300, "n_fixed": 10_000,
                  "p_source": "synthetic", "p_images": 0, "p_draws": 0},
        "cpu": {"seed": 0, "device": None, "models": ["toy", "diffusion", "lm"], "n_values": [32, 128, 512],
                "batch_size": 64, "repeats": 2, "threads": 1, "diffusion_steps": 4, **_OVERHEAD_MODELS, **_OVERHEAD_SEQUENTIAL, "inputs": 2000,
                "n_fixed": 100_000, "p_source": "classifier", "p_images": 60, "p_draws": 500},
        "gpu": {"seed": 0, "device": None, "models": ["toy", "diffusion", "lm"], "n_values": [256, 1024, 4096, 16384],
                "batch_size": 1024, "repeats": 3, "threads": None, "diffusion_steps": 20, **_OVERHEAD_MODELS, **_OVERHEAD_SEQUENTIAL, "inputs": 10_000,
                "n_fixed": 100_000, "p_source": "classifier", "p_images": 500, "p_draws": 10_000},
    },
    "06_attacks": {
        "smoke": {**_ATTACKS_BASE, "toy_trials": 200, "toy_n_cert": 2000, "toy_pgd_steps": 10,
                  "cifar_classes": [0, 1], "cifar_pgd": {"class_consistency": [0], "mean_shift": [1]},
                  "cifar_radii_rel": [0.04], "cifar_sample_steps": 2, "cifar_batch_size": 16, "cifar_restarts": 1,
                  "cifar_n_breakdown": 8, "cifar_smoothed_grid_rel": [0.1, 1.0], "ptb_smoothed_grid_rel": [0.05, 0.5],
                  "ptb_restarts": 1, "ptb_black_box_draws": 4, "cifar_black_box": [0], "cifar_black_box_draws": 4,
                  "cifar_n_cert": 16, "cifar_n_pilot": 4, "cifar_n_fresh": 8, "cifar_n_eot": 2, "cifar_pgd_steps": 2,
                  "cifar_base_noises": 1, "cifar_base_pgd_steps": 2, "cifar_breakdown_grid_rel": [0.005, 0.1],
                  "ptb_prompts": 1, "ptb_steps": 3, "ptb_radii_rel": [0.005, 0.05], "ptb_n0": 4, "ptb_n": 16,
                  "ptb_n_eot": 4, "ptb_pgd_steps": 2, "ptb_n_fresh": 16, "ptb_batch_size": 32, "ptb_base_pgd_steps": 2,
                  "ptb_breakdown_grid_rel": [0.005, 0.1], "refine_steps": 0, "cell_cifar_radii_rel": [0.5],
                  "cell_ptb_radii_rel": [0.1], "cell_pgd_steps": 3, "cell_restarts": 1, "cell_n_cert": 2000,
                  "cell_n_fresh": 2000, "cell_ptb_n": 200, "cell_ptb_prompts": 1, "cell_n_images": 4,
                  "cell_n_texts": 8},
        # the certificates and the attacks use the same 5-step sampler; every white-box attack runs 20 PGD
        # steps x 3 restarts x 8 EOT draws and is judged on 256 fresh samples. What 2 CPU cores cannot pay
        # for (about 140 s per CIFAR-10 PGD run): one radius on CIFAR-10 and the mean-shift objective on two
        # classes (the class-consistency objective and the straight move run on all ten). The black-box attack
        # (same steps and restarts, 32 fresh noisy copies per step, forward passes only) runs on all ten
        "cpu": {**_ATTACKS_BASE, "toy_trials": 1000,
                "cifar_classes": list(range(10)), "cifar_pgd": {"class_consistency": list(range(10)), "mean_shift": [3, 8]},
                "cifar_black_box": list(range(10)), "cifar_black_box_draws": 32,
                "cifar_radii_rel": [0.04], "cifar_sample_steps": 5, "cifar_n_breakdown": 32,
                "cifar_batch_size": 64, "cifar_n_cert": 128, "cifar_n_pilot": 8, "cifar_n_fresh": 256, "cifar_n_eot": 8,
                "cifar_pgd_steps": 20, "cifar_base_noises": 2, "cifar_base_pgd_steps": 8,
                "ptb_prompts": 40, "ptb_steps": 8, "ptb_n0": 32, "ptb_n": 300, "ptb_black_box_draws": 32,
                "ptb_n_eot": 16, "ptb_pgd_steps": 20, "ptb_n_fresh": 300, "ptb_batch_size": 400,
                "ptb_base_pgd_steps": 10},
        "gpu": {**_ATTACKS_BASE, "toy_trials": 10_000, "toy_restarts": 4, "toy_pgd_steps": 50, "toy_n_cert": 100_000,
                "cifar_classes": list(range(10)), "cifar_radii_rel": [0.0025, 0.005, 0.01, 0.02, 0.04, 0.08],
                "cifar_pgd": {"class_consistency": list(range(10)), "mean_shift": list(range(10))},
                "cifar_n_breakdown": 1000, "ptb_black_box_draws": 128,
                "cifar_black_box": list(range(10)), "cifar_black_box_draws": 128,
                "cifar_sample_steps": 20, "cifar_batch_size": 500, "cifar_n_cert": 5000, "cifar_n_pilot": 200,
                "cifar_n_fresh": 2000, "cifar_n_eot": 32, "cifar_pgd_steps": 20, "cifar_restarts": 3,
                "cifar_base_noises": 8, "cifar_base_pgd_steps": 20, "refine_steps": 4,
                "ptb_prompts": 200, "ptb_steps": 10, "ptb_n0": 100, "ptb_n": 10_000, "ptb_n_eot": 128,
                "ptb_pgd_steps": 30, "ptb_restarts": 3, "ptb_n_fresh": 10_000, "ptb_batch_size": 5000,
                "ptb_base_pgd_steps": 20, "cell_pgd_steps": 50, "cell_restarts": 4, "cell_n_cert": 1_000_000,
                "cell_n_fresh": 1_000_000, "cell_ptb_n": 100_000, "cell_ptb_prompts": 200, "cell_n_images": 1000,
                "cell_n_texts": 1000},
    },
    "08_meaningful_radii": {
        "smoke": {**_MEANINGFUL_BASE, "diffusion_steps": 2, "classes": [0, 1], "n_quality": 4, "batch_size": 8,
                  "n_real": 32, "bootstrap": 3, "grid_samples": 2, "n_projection": 2000,
                  "cifar_grid": {"naive": [0.25], "projection": [0.25], "soft": [0.25], "noise_trained": [0.25],
                                 "noise_trained+soft": [0.25]},
                  # the shipped checkpoints stand in for noise-trained ones: the smoke run only exercises the code
                  "diffusion_noise_checkpoint": "diffusion_cifar10", "lm_noise_checkpoint": "lm_ptb",
                  "breakdown_classes": [0], "breakdown_pgd_steps": 1, "breakdown_grid_rel": [0.5, 1.5], "n_prompts": 2,
                  "steps": 4, "ptb_sigma_rel": [0.1], "n_generate": 8, "n_text": 4, "nll_draws": 2,
                  "n_projection_ptb": 200, "bootstrap_text": 3, "n_breakdown_prompts": 1, "n_texts_shown": 1,
                  "refine_steps": 0, "headline_seeds": [1],
                  # targets every configuration meets, so that the smoke run exercises the headline code paths
                  "target_consistency": 0.0, "target_fid_ratio": 1e9, "target_bleu": 0.0, "target_ppl_ratio": 1e9},
        "cpu": {**_MEANINGFUL_BASE, "diffusion_steps": 5, "n_quality": 200, "batch_size": 100,
                "n_real": 10_000,
                "bootstrap": 50, "grid_samples": 6, "n_projection": 100_000,
                "cifar_grid": {"naive": [0.02, 0.1], "projection": [0.1, 0.25, 0.4], "soft": [0.25],
                               "noise_trained": [0.1, 0.25], "noise_trained+soft": [0.25]},
                "diffusion_noise_checkpoint": "diffusion_cifar10_noise", "lm_noise_checkpoint": "lm_ptb_noise",
                "breakdown_classes": list(range(10)), "breakdown_pgd_steps": 6, "n_prompts": 40,
                "ptb_sigma_rel": [0.05, 0.1, 0.13], "n_generate": 100, "n_text": 16, "nll_draws": 16,
                "n_projection_ptb": 10_000, "bootstrap_text": 50, "n_breakdown_prompts": 40, "n_texts_shown": 6},
        "gpu": {**_MEANINGFUL_BASE, "diffusion_steps": 20, "n_quality": 1000, "batch_size": 1000,
                "n_real": 10_000,
                "bootstrap": 200, "grid_samples": 8,
                "cifar_grid": {m: [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]
                               for m in ("naive", "projection", "soft", "noise_trained", "noise_trained+soft")},
                "diffusion_noise_checkpoint": "diffusion_cifar10_noise", "lm_noise_checkpoint": "lm_ptb_noise",
                "n_projection": 1_000_000, "breakdown_classes": list(range(10)), "breakdown_pgd_steps": 20,
                "n_prompts": 200, "ptb_sigma_rel": [0.01, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16], "n_generate": 10_000,
                "n_text": 32, "nll_draws": 64, "n_projection_ptb": 100_000, "bootstrap_text": 200,
                "n_breakdown_prompts": 200, "n_texts_shown": 8},
    },
    "05_adaptive_noise": {
        "smoke": {**_ADAPTIVE_BASE, "models": "tiny", "tasks": ["cifar10", "ptb"], "steps": 2, "classes": [0, 1, 2, 3],
                  "bootstrap": 5,
                  "n_real": 64, "batch_size": 16, "gram_method": "subspace", "gram_draws": 1, "gram_rank": 2,
                  "ptb_gram_rank": 2, "gram_probes": 2, "gram_max_rows": 16, "target_fraction": 0.5,
                  "cifar_n_cal": 8, "cifar_n_eval": 8, "cifar_scales": [0.05, 0.2], "cifar_target_radii_rel": [0.001],
                  "ptb_steps": 4, "n_prompts": 6, "ptb_n_cal": 8, "ptb_n_eval": 8, "ptb_scales": [0.02, 0.05, 0.2],
                  "ptb_target_radii_rel": [0.0005, 0.002], "toy_sigma_points": 61, "toy_curve_points": 21,
                  "cell_kappas": [0.2, 0.3], "cell_n_cal": 200, "cell_n_cert": 1000, "cell_ptb_n_cal": 50,
                  "cell_ptb_n": 100},
        "cpu": {**_ADAPTIVE_BASE, "models": "checkpoints", "tasks": ["cifar10", "ptb"], "steps": 10, "n_real": 2000,
                "batch_size": 80, "gram_method": "sketch", "gram_draws": 1, "gram_rank": 6, "ptb_gram_rank": 16,
                "gram_probes": 8, "gram_max_rows": 5,
                "cifar_strategies": ["isotropic", "anisotropic-lowrank", "schedule"], "cifar_n_cal": 48,
                "cifar_n_eval": 48, "cifar_scales": [0.003, 0.006, 0.0125, 0.025],
                "cifar_target_radii_rel": [0.0025, 0.005, 0.01, 0.02], "ptb_steps": 10, "n_prompts": 40,
                "ptb_n_cal": 48, "ptb_n_eval": 48, "ptb_scales": [0.0125, 0.025, 0.05, 0.1],
                "ptb_target_radii_rel": [0.0025, 0.005, 0.01, 0.02]},
        "gpu": {**_ADAPTIVE_BASE, "models": "checkpoints", "tasks": ["cifar10", "ptb"], "steps": 20, "alpha": 0.001,
                "n_real": 10_000, "batch_size": 1000, "gram_method": "subspace", "gram_draws": 8,
                "gram_rank": 16, "ptb_gram_rank": 32, "gram_iters": 4, "gram_probes": 16, "gram_max_rows": 640,
                "cifar_n_cal": 1000, "cifar_n_eval": 1000, "cifar_scales": [0.0015, 0.003, 0.006, 0.0125, 0.025, 0.05],
                "cifar_target_radii_rel": [0.0025, 0.005, 0.01, 0.02, 0.05], "ptb_steps": 10, "n_prompts": 200,
                "ptb_n_cal": 1000, "ptb_n_eval": 1000, "ptb_scales": [0.00625, 0.0125, 0.025, 0.05, 0.1, 0.2],
                "ptb_target_radii_rel": [0.0025, 0.005, 0.01, 0.02, 0.05], "cell_n_cal": 100_000,
                "cell_n_cert": 1_000_000, "cell_ptb_n_cal": 20_000, "cell_ptb_n": 100_000},
    },
    # Guidance weights 1 (plain conditional), 2 and the card's 4; the focus class and σ of notebook 03; Δ = 0.05
    # is center smoothing's reference value (Kumar & Goldstein 2021), 0.3 notebook 03's.
    "09_ablations": {
        "smoke": {**_CIFAR_BASE, "steps": 2, "classes": [0, 1], "sigma_rel": [0.0, 0.2], "guidance_scales": [1.0, 4.0],
                  "n": 6, "n_pilot": 4, "bootstrap": 5, "batch_size": 12, "n_real": 64, "grid_samples": 2,
                  "radii_rel": [0.1, 0.5], "sample_sizes": [12, 24], "center_deltas": [0.1, 0.3]},
        "cpu": {**_CIFAR_BASE, "steps": 10, "sigma_rel": [0.0, 0.02, 0.05], "guidance_scales": [1.0, 2.0, 4.0], "n": 80,
                "n_pilot": 16, "batch_size": 80, "n_real": 10_000, "grid_samples": 2,
                "sample_sizes": [80, 160, 320, 640, 1280], "center_deltas": [0.05, 0.1, 0.2, 0.3]},
        "gpu": {**_CIFAR_BASE, "steps": 50, "sigma_rel": [0.0, 0.01, 0.02, 0.05], "guidance_scales": [1.0, 2.0, 3.0, 4.0, 5.0],
                "n": 1000, "n_pilot": 500, "batch_size": 1000, "n_real": 10_000, "grid_samples": 2,
                "sample_sizes": [1000, 3000, 10_000, 30_000], "center_deltas": [0.05, 0.1, 0.2, 0.3]},
    },
}


GPU_COST = """\
What the ``gpu`` presets cost, in base-model evaluations (the device time is this count divided by
the throughput that notebook 07 measures on the device; ``smoothgen study --nproc K`` divides the
wall time of 03 and 04 by about K):

- 03: per class, ``n`` images at σ = 0 and ``n + n_pilot`` at each of the six σ > 0, plus
  ``focus_n + n_pilot`` for the focus class: 10 × (10,000 + 6 × 10,500) + 30,500 = 760,500 images ×
  50 DDIM steps ≈ 3.8·10⁷ UNet rows (twice that with classifier-free guidance). FID pools
  ``10 × n`` = 100,000 samples per σ against the 10,000 test images; certificates use 10⁴ samples
  per class (the data-dependent W₁ certificate's DKW margin is then √(log(2/α)/2n) ≈ 0.020), and the
  focus class 3·10⁴. Not 10⁵ per class: the pooled images of one σ (10⁶ × 3,072 floats, 12 GB) would
  not fit beside the model on the host; ``focus_n`` is the knob for a larger-n certificate.
- 04: per prompt and σ > 0, the certified greedy decoder's ``steps × (n0 + n)`` = 10 × 100,100
  next-token rows, ``n_pilot + n_samples`` = 10,500 sampled continuations of 10 tokens and 256 NLL
  rows: ≈ 1.1·10⁶ LM forward rows, × 5 σ × 500 prompts ≈ 2.8·10⁹ rows.
- 01: 500 images × 3 σ × (n0 + n) = 1.5·10⁸ classifier rows.
- 08: 5 methods × 10 σ × 10 classes × ``n_quality`` = 500,000 images × 20 steps = 10⁷ UNet rows for
  its quality grid, plus the base and each headline configuration again at the two ``headline_seeds``
  (FID on the pooled 30,000 images of each: ≥ 60,000 more images × 20 steps), the breakdown attacks and
  the PTB side (not counted).
- 09: 5 guidance weights × 4 σ × 10 classes × 1,000 images plus 30,500 for the focus class =
  230,500 images × 50 steps ≈ 1.2·10⁷ UNet rows (twice that for the guided ones); its center smoothing
  at Δ = 0.05 then has 10⁴ samples per stage, the reference's center batch (its 10⁶ certification
  samples stay out of reach).
- 06: all 10 classes and 200 prompts (``cell_ptb_prompts`` too); 05: 200 prompts; neither is
  estimated here.

None of the gpu presets has been run yet: no device was available to this project's sessions.
"""


NOTEBOOK_PARAMETERS = ("preset", "overrides")
"""The parameters of every study notebook's ``parameters`` cell (the rest travels in ``overrides``)."""


def study_params(notebook: str, preset: str, overrides: dict[str, Any] | str | None = None,
                 history: Sequence[str] | None = None) -> dict[str, Any]:
    """Parameters of one study notebook at ``preset``, with ``overrides`` applied.

    ``overrides`` is a dict, or its JSON text (what ``papermill -p overrides '{...}'`` delivers).
    Each override must name a parameter of the preset and have its kind: a number where the preset
    has a number (an integer where it has an integer), a list where it has a list, a string, a bool
    or a dict likewise; ``None`` is accepted where the preset has ``None`` or a number/string.

    ``history`` is the kernel's input history (IPython's ``In``), which the study notebooks pass. In a
    papermill run it holds papermill's injected ``# Parameters`` cell: a name set there other than
    :data:`NOTEBOOK_PARAMETERS` is refused (papermill itself only logs "Passed unknown parameter" and
    runs on with the preset's value), and, the run having no one watching, progress bars go off
    (``TQDM_DISABLE=1`` in the kernel's environment).

    Raises
    ------
    ValueError
        For an unknown notebook or preset, overrides that are not a JSON object, an override that
        names no parameter, one of the wrong kind, or an injected parameter other than ``preset`` and
        ``overrides``.
    """
    if notebook not in STUDY_PRESETS:
        raise ValueError(f"unknown notebook {notebook!r}; choose from {sorted(STUDY_PRESETS)}")
    _check_injected(notebook, history)
    presets = STUDY_PRESETS[notebook]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {notebook}; choose from {sorted(presets)}")
    params = copy.deepcopy(presets[preset])
    overrides = parse_overrides(overrides)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {notebook}; known: {sorted(params)}")
    for key, value in overrides.items():
        _check_kind(key, value, params[key])
    params.update(copy.deepcopy(overrides))
    return {**params, "preset": preset, "notebook": notebook}


def injected_parameters(history: Sequence[str]) -> dict[str, str] | None:
    """Names and (JSON) value texts that papermill's injected ``# Parameters`` cell in ``history``
    assigns, or ``None`` when the kernel ran no such cell (an interactive session)."""
    for source in history:
        if source.lstrip().startswith("# Parameters"):
            return {target.id: _json_text(node.value) for node in ast.parse(source).body
                    if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
    return None


def _json_text(node: ast.expr) -> str:
    """The JSON text of a literal (how it would be written inside ``-p overrides``), else its source."""
    try:
        return json.dumps(ast.literal_eval(node))
    except (ValueError, TypeError):
        return ast.unparse(node)


def _check_injected(notebook: str, history: Sequence[str] | None) -> None:
    """Refuse papermill parameters the notebook does not take; turn progress bars off in a papermill run."""
    injected = injected_parameters(history or [])
    if injected is None:
        return
    os.environ["TQDM_DISABLE"] = "1"
    unknown = {name: value for name, value in injected.items() if name not in NOTEBOOK_PARAMETERS}
    if unknown:
        name, value = next(iter(unknown.items()))
        raise ValueError(f"{notebook} takes only -p preset <{'|'.join(STUDY_PRESETS[notebook])}> and -p overrides "
                         f"'<JSON>', not {sorted(unknown)}; pass them as -p overrides '{{\"{name}\": {value}}}'")


def parse_overrides(overrides: dict[str, Any] | str | None, what: str = "overrides") -> dict[str, Any]:
    """``overrides`` as a dict: ``None`` or blank -> ``{}``, JSON text parsed (``what`` names it in errors).

    Raises
    ------
    ValueError
        If the text is not JSON, or the value is not a JSON object / dict.
    """
    if overrides is None or (isinstance(overrides, str) and not overrides.strip()):
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"{what}: not valid JSON ({err.msg} at column {err.colno}); keys and strings need "
                             """double quotes, e.g. '{"n": 40}'""") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"""{what}: expected a JSON object such as '{{"n": 40}}', got {overrides!r}""")
    return overrides


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    return {list: "list", tuple: "list", dict: "dict", str: "str"}.get(type(value), "other")


def _check_kind(key: str, value: Any, default: Any) -> None:
    """Refuse an override whose kind differs from the preset's (an int is a valid number)."""
    want, got = _kind(default), _kind(value)
    if default is None or want == "other" or got == want or (want == "number" and got == "int"):
        return
    if value is None and want in ("int", "number", "str"):
        return
    raise ValueError(f"override {key}={value!r} is of kind {got}, but the preset's {key} is of kind {want} "
                     f"(default {default!r})")
