"""Cells and markdown tables shared by the report and compare stages."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def finite(v: Any) -> bool:
    """Whether `v` is a finite number (None, NaN, inf and non-numbers are not)."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def markdown(t: pd.DataFrame) -> str:
    """A markdown table of `t`'s columns (its index left out)."""
    if t.empty:
        return "(nothing to show)"
    head = "| " + " | ".join(t.columns) + " |"
    sep = "|" + "---|" * len(t.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def markdown_indexed(table: pd.DataFrame) -> str:
    """A markdown table with `table`'s index as its first column (headed by the index's name)."""
    header = [table.index.name or "", *table.columns]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.iterrows():
        out.append("| " + " | ".join([str(label), *(str(v) for v in row)]) + " |")
    return "\n".join(out)
