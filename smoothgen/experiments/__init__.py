"""Experiments: one module per notebook; the only place that combines models, smoothing,
certificates and metrics. Each module exposes ``run(params) -> StudyResult``."""
