"""Augmented queries for LiRA (Carlini et al. 2022): the target and every reference are also
queried on transformed copies of each audit image, the transforms the training augmentation
draws from, and LiRA scores every view with its own Gaussians (`attacks.lira`).

`none`: the image only (an ablation). `flip`: the horizontal mirror (one extra query).
`flip_shift`: the mirror and the image shifted by `shift` pixels up, down, left and right (zero
padding, as a padded random crop sees it), each also mirrored: nine extra queries. Every view is deterministic, so the target and the
references see exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QUERY_VIEWS = ("none", "flip", "flip_shift")

View = Callable[[torch.Tensor], torch.Tensor]


def shift_image(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) images moved by (dy, dx) pixels (down/right positive); vacated pixels are 0
    (the per-channel mean of normalised images, like the training crop's padding)."""
    if x.dim() != 4:
        raise ValueError(f"shift_image expects (B, C, H, W) images, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"shift ({dy}, {dx}) does not fit images of {h}x{w} pixels")
    out = torch.zeros_like(x)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def query_views(kind: str, shift: int = 2) -> list[tuple[str, View]]:
    """The extra queries of `kind` (see the module docstring) as (name, transform) pairs."""
    if kind not in QUERY_VIEWS:
        raise ValueError(f"unknown query views {kind!r}; valid: {list(QUERY_VIEWS)}")
    if shift < 1:
        raise ValueError(f"query shift must be >= 1 pixel, got {shift}")
    if kind == "none":
        return []
    views: list[tuple[str, View]] = [("flip", _mirror)]
    if kind == "flip_shift":
        for dy, dx in ((-shift, 0), (shift, 0), (0, -shift), (0, shift)):
            views.append((f"shift({dy},{dx})", _shifted(dy, dx, mirror=False)))
            views.append((f"flip+shift({dy},{dx})", _shifted(dy, dx, mirror=True)))
    return views


def _mirror(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _shifted(dy: int, dx: int, mirror: bool) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        return shift_image(_mirror(x) if mirror else x, dy, dx)

    return view
