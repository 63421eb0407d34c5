"""The registered compress methods, one module each; importing this package registers them.

A new method: one module here with a `@register`ed `CompressMethod` (or
`SparseTrainingMethod`) subclass, plus its import below.
"""

from training.compress.methods import dense, dmp, dpsgd, dst, dst_adv, gmp, oneshot, safecompress  # noqa: F401
