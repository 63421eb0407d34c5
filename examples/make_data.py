"""Write a CSV of the kind a user brings (a header row, a `label` column 0..C-1, numeric features
and one categorical column), and optionally the trained model's membership as a `member` column.

    python examples/make_data.py examples/my_data.csv
"""

import sys

import numpy as np
import pandas as pd


def make(path: str, n: int = 1200, n_features: int = 20, n_classes: int = 4, seed: int = 0, noise: float = 2.0,
         member: bool = False) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (n_classes, n_features))
    y = rng.integers(0, n_classes, n)
    x = centres[y] + rng.normal(0, noise, (n, n_features))
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(n_features)])
    table["label"] = y
    if member:
        table["member"] = (rng.random(n) < 0.4).astype(int)
    table.to_csv(path, index=False)


if __name__ == "__main__":
    make(sys.argv[1] if len(sys.argv) > 1 else "my_data.csv")
