"""The training library: models (and the adapter for a user's own class), training loops, the
training and compression recipes, the data protocol and the embedded sets, compress methods and
defences, the grouped kernels, and the shipped formats.

Pure torch, numpy and scikit-learn: it never imports `pipeline` (the orchestration), Hydra,
OmegaConf, Optuna or MLflow, and builds on `sparse` (masks) and `attacks` (the safety test's
attackers). `pipeline` turns configs into the typed recipes this library takes.
"""
