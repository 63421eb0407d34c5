"""The embedded data sets (no file to provide): scikit-learn's 8x8 digits, seeded Gaussian
clusters, and `purchase_synth`, a file-free Purchase100-like set of binary baskets whose
members leak (SPEC "Statistical power"). Each returns a `training.data.Dataset`; the
registered names are `pipeline.datasets.embedded`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.data import Dataset


def load_digits(name: str = "digits", image: bool = True, **_: Any) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1797 images, 10 classes), raw pixels 0..16.

    Marked `standardise`: once split, each pixel is standardised with the members'
    statistics (`standardise_on`). `image=True` keeps the (1, 8, 8) shape so a CNN can
    use it; MLPs flatten.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.astype(np.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return Dataset(name, torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64)), 10,
                   standardise=True)


def load_synthetic(
    name: str = "synthetic",
    n_samples: int = 4000,
    n_features: int = 40,
    n_informative: int = 20,
    n_classes: int = 10,
    class_sep: float = 1.0,
    label_noise: float = 0.05,
    generator_seed: int = 0,
    **_: Any,
) -> Dataset:
    """Seeded Gaussian-cluster classification data (scikit-learn `make_classification`).

    Many classes and features relative to the train size, so an MLP overfits it.
    The data itself depends only on `generator_seed`; the split depends on the root seed.
    Marked `standardise` (with the members' statistics once split, `standardise_on`).
    """
    from sklearn.datasets import make_classification

    for key, value in {"n_samples": n_samples, "n_features": n_features, "n_classes": n_classes}.items():
        if value < 1:
            raise ValueError(f"synthetic data set: {key} must be >= 1, got {value}")
    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=2,
        class_sep=class_sep,
        flip_y=label_noise,
        random_state=generator_seed,
    )
    return Dataset(name, torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), n_classes,
                   standardise=True)


def load_purchase_synth(
    name: str = "purchase_synth",
    n_samples: int = 20000,
    n_features: int = 600,
    n_classes: int = 100,
    n_prototypes_per_class: int = 3,
    prototype_density: float = 0.15,
    flip_prob: float = 0.24,
    label_noise: float = 0.0,
    generator_seed: int = 0,
    reference_size: int = 0,
    **_: Any,
) -> Dataset:
    """A file-free Purchase100-like set: binary "bought this item" vectors in 100 classes.

    Generator (seeded by `generator_seed` only): each class has a few prototype
    shopping baskets, binary vectors with `prototype_density` ones; a sample is a
    random prototype of its class with every bit flipped with probability
    `flip_prob`. Classes overlap through shared items, so with a few thousand
    members an MLP fits its training set exactly and generalises only partly,
    the regime in which the real Purchase100 leaks membership.

    `reference_size` more records from the same distribution (a second random stream, so
    the first `n_samples` are the same whatever it is) are appended as the defender's
    reference rows (`Dataset.reference_rows`).
    """
    if not 0.0 <= flip_prob < 0.5:
        raise ValueError(f"purchase_synth: flip_prob must be in [0, 0.5), got {flip_prob}")
    if not 0.0 < prototype_density < 1.0:
        raise ValueError(f"purchase_synth: prototype_density must be in (0, 1), got {prototype_density}")
    if reference_size < 0:
        raise ValueError(f"dataset.reference_size must be >= 0, got {reference_size}")
    rng = np.random.default_rng(generator_seed)
    protos = rng.random((n_classes, n_prototypes_per_class, n_features)) < prototype_density
    x, y = _baskets(rng, protos, n_samples, flip_prob, label_noise)
    if reference_size:
        xr, yr = _baskets(np.random.default_rng([generator_seed, 1]), protos, reference_size, flip_prob, label_noise)
        x, y = np.concatenate([x, xr]), np.concatenate([y, yr])
    return Dataset(name, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), n_classes,
                   reference_rows=int(reference_size))


def _baskets(
    rng: np.random.Generator, protos: np.ndarray, n: int, flip_prob: float, label_noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """`n` purchase_synth records: a random prototype of a random class, each bit flipped with
    probability `flip_prob`; labels re-drawn at random with probability `label_noise`."""
    n_classes, n_prototypes, n_features = protos.shape
    y = rng.integers(0, n_classes, size=n)
    which = rng.integers(0, n_prototypes, size=n)
    flips = rng.random((n, n_features)) < flip_prob
    x = np.logical_xor(protos[y, which], flips).astype(np.float32)
    if label_noise > 0:
        noisy = rng.random(n) < label_noise
        y = np.where(noisy, rng.integers(0, n_classes, size=n), y)
    return x, y
