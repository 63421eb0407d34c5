"""The data protocol's splits when the user says who their model's members are (issue 24).

A user who brings a trained model knows which records trained it and which it never saw
(`Dataset.membership`: 1 member, 0 non-member, -1 neither). The audit of that model must score
its real members against its real non-members, so the splits follow the user's labels instead
of the seeded fractions of `training.data.make_splits`:

- `train` is every member (the fraction `split.train` does not apply);
- `val`, `test` and `population` are cut from the non-members in proportion to their fractions
  (e.g. 0.15 / 0.15 / 0.4 of the pool give them 3/14, 3/14 and 8/14 of the non-members);
- the members are then cut, as always, into disjoint audit, search and known members
  (`training.data.n_search_members`).

So every split stays disjoint, no non-member the audit scores ever trained the model, and no
member is a shadow's or the performance test's data. Records in neither list are left out.
"""

from __future__ import annotations

import numpy as np

from training.data import SPLIT_NAMES, Splits, audit_splits
from training.seeds import derive_seed

NON_MEMBER_SPLITS = ("val", "test", "population")


def member_splits(
    membership: np.ndarray, fractions: dict[str, float], seed: int, n_audit: int | None = None,
    n_reference: int = 0, name: str = "files",
) -> Splits:
    """Disjoint splits from the user's membership labels; errors name the split and the numbers."""
    missing = set(SPLIT_NAMES) - set(fractions)
    if missing:
        raise ValueError(f"split fractions must name {list(SPLIT_NAMES)}; missing {sorted(missing)}")
    if n_reference:
        raise ValueError(f"dataset.reference_size={n_reference}: a defender's reference split is not taken from a "
                         "data set with user membership (every non-member serves val/test/population)")
    members = np.flatnonzero(membership == 1)
    non = np.flatnonzero(membership == 0)
    shares = {k: float(fractions[k]) for k in NON_MEMBER_SPLITS}
    if min(shares.values()) < 0 or sum(shares.values()) <= 0:
        raise ValueError(f"split fractions of {list(NON_MEMBER_SPLITS)} must be >= 0 with a positive sum, got {shares}")
    total = sum(shares.values())
    rng = np.random.default_rng(derive_seed(seed, "splits"))
    perm = rng.permutation(non)
    parts: dict[str, np.ndarray] = {}
    start = 0
    for k in NON_MEMBER_SPLITS:
        size = len(non) - start if k == "population" else int(round(shares[k] / total * len(non)))
        parts[k] = np.sort(perm[start : start + size])
        start += size
        if k != "population" and len(parts[k]) < 2:
            raise ValueError(
                f"data set {name!r}: too few non-members for split {k!r}: it gets {len(parts[k])} of the "
                f"{len(non)} records the user marked as non-members (its share {shares[k]:g}/{total:g} of them); "
                f"needs >= 2: mark more records as non-members or raise dataset.split.{k}"
            )
    return audit_splits(
        {"train": members, **parts}, n_audit, seed,
        lambda n: f"data set {name!r}: too few members for split 'train': the audit takes n_audit={n} members "
        f"(as many as test) of the {len(members)} the user marked, leaving {max(0, len(members) - n)} for the "
        "search and known members (need >= 2): mark more members, or lower attack.n_audit",
    )
