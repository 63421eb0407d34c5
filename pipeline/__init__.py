"""SafeCompress pipeline: Hydra entry point, stages, caching and tracking.

The only package with I/O, Hydra, Optuna and MLflow; `sparse/` and `attacks/`
are pure torch/numpy libraries it drives.
"""
