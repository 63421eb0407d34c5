"""Tracking: MLflow plumbing from the config (`plumbing`), tracked runs as tables (`runs`),
stores created complete or not at all (`stores`) and what leaves the process without its
secrets (`masking`)."""
