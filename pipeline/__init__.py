"""SafeCompress pipeline: Hydra entry point, stages, caching and tracking.

The only package with I/O, Hydra, Optuna and MLflow; `sparse/` and `attacks/`
are pure torch/numpy libraries it drives.
"""

import os as _os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With the default
# (spin), two torch threads on a 2-core machine that other jobs also use ran one MLP step
# 100x slower than one thread (833 vs 8 ms, load average 11); sleeping, 2 threads were no
# slower than 1. The user's own OMP_WAIT_POLICY wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
