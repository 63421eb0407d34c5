"""Sparse training engine: exact masks, ERK/uniform/magnitude init, schedules, prune/grow, export.

Pure torch (no config, tracking or search libraries). Follows dynamic sparse training as used by
SafeCompress (Zhu et al., TSE 2024): SET (Mocanu 2018), RigL (Evci 2020), ITOP (Liu 2021).
"""

from sparse.export import (
    dense_size_bytes,
    export_model,
    exported_size_bytes,
    load_export,
    read_export,
    save_export,
    size_report,
)
from sparse.inference import SparseLinear, measure_latency, to_sparse_linear
from sparse.init import (
    DISTRIBUTIONS,
    MAGNITUDE_SCOPES,
    allocate_counts,
    erk_densities,
    layer_densities_for,
    layer_target_counts,
    magnitude_masks,
    random_masks,
    target_count,
    uniform_densities,
)
from sparse.masks import MaskSet
from sparse.resize import resize
from sparse.schedules import DENSITY_SCHEDULES, REGROWTH_SCHEDULES, density_at, regrowth_ratio_at
from sparse.scores import (
    GROW_CRITERIA,
    GROW_SCORES,
    PRUNE_CRITERIA,
    PRUNE_SCORES,
    GradientMomentum,
    LayerInputs,
    criterion_needs,
    grow_scores,
    prune_scores,
)
from sparse.update import prune_and_grow, prune_and_grow_many


class SparseArray:
    """Never instantiated: keeps scipy working beside this package.

    This package's import name is also that of pydata/sparse. SciPy's array-API helpers
    recognise pydata arrays by looking up ``sys.modules["sparse"].SparseArray`` and raised
    AttributeError on this package instead (e.g. ``scipy.stats.tstd`` on a list, once
    ``sparse`` was imported). No object is an instance of this class, so they find none.
    """

__all__ = [
    "DENSITY_SCHEDULES",
    "DISTRIBUTIONS",
    "GROW_CRITERIA",
    "GROW_SCORES",
    "MAGNITUDE_SCOPES",
    "PRUNE_CRITERIA",
    "PRUNE_SCORES",
    "REGROWTH_SCHEDULES",
    "GradientMomentum",
    "LayerInputs",
    "MaskSet",
    "SparseLinear",
    "allocate_counts",
    "dense_size_bytes",
    "density_at",
    "erk_densities",
    "export_model",
    "exported_size_bytes",
    "criterion_needs",
    "grow_scores",
    "layer_densities_for",
    "layer_target_counts",
    "load_export",
    "magnitude_masks",
    "measure_latency",
    "prune_and_grow",
    "prune_and_grow_many",
    "prune_scores",
    "random_masks",
    "read_export",
    "regrowth_ratio_at",
    "resize",
    "save_export",
    "size_report",
    "target_count",
    "to_sparse_linear",
    "uniform_densities",
]
