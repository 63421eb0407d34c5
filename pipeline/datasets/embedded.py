"""The file-free data sets of `training.data`, registered: generated in memory (or bundled with
scikit-learn), so they need no files and key on their generator parameters only."""

from pipeline.datasets.registry import register
from training.embedded import load_digits, load_purchase_synth, load_synthetic

register("digits", "scikit-learn's bundled 8x8 digits: 1797 images, 10 classes")(load_digits)
register("synthetic", "seeded Gaussian clusters (make_classification)")(load_synthetic)
register("purchase_synth", "file-free Purchase100-like baskets: 600 binary features, 100 classes")(load_purchase_synth)
