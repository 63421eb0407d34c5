"""AG News (Zhang et al. 2015, the CSV release) as token ids: tokenizer, vocabulary, loader.

Expected files (relative to `data_dir`): `ag_news_csv/train.csv` and `ag_news_csv/test.csv`
(or under `ag_news/`): rows `class,title,description`, class in 1..4, no header (a
`Class Index,Title,Description` header, as in the Kaggle copy, is skipped).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.datasets.files import check_md5, record_read, subsample
from pipeline.datasets.registry import register
from training.data import Dataset

AG_NEWS_SOURCE = (
    "the AG News CSV release of Zhang, Zhao & LeCun 2015 (ag_news_csv.tar.gz, linked from "
    "https://github.com/zhangxiangxiao/Crepe; a copy with a header row is on Kaggle as "
    "'AG News Classification Dataset')"
)
AG_NEWS_CLASSES = 4

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# HTML entities as they appear in the AG News CSV (" #39;s", "&amp;", " quot;")
_ENTITY = re.compile(r"&?#\d+;|&?\b(?:quot|amp|lt|gt|nbsp);")
PAD_ID = 0
UNK_ID = 1


def tokenize(text: str) -> list[str]:
    """Lowercase words and numbers; HTML entities and the CSV's backslashes are separators."""
    return _TOKEN.findall(_ENTITY.sub(" ", text.lower()).replace("\\", " "))


def build_vocab(docs: Sequence[Sequence[str]], vocab_size: int) -> dict[str, int]:
    """The `vocab_size - 2` most frequent tokens, ties broken alphabetically: token -> id.

    Id 0 is padding and id 1 unknown, so ids are in [0, vocab_size).
    """
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (padding, unknown, one token), got {vocab_size}")
    counts = Counter(tok for doc in docs for tok in doc)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 2]
    return {tok: i + 2 for i, (tok, _) in enumerate(ranked)}


def _read_ag_news_csv(path: Path) -> tuple[list[int], list[list[str]]]:
    labels: list[int] = []
    docs: list[list[str]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if number == 1 and row[0].strip().lower() in {"class index", "class", "label"}:
                    continue  # header of the Kaggle copy
                if len(row) < 3:
                    raise ValueError(
                        f"{path}, line {number}: expected 3 columns (class index 1..4, title, "
                        f"description), got {len(row)}"
                    )
                try:
                    label = int(row[0])
                except ValueError:
                    raise ValueError(
                        f"{path}, line {number}: class index {row[0]!r} is not an integer 1..4"
                    ) from None
                if not 1 <= label <= AG_NEWS_CLASSES:
                    raise ValueError(f"{path}, line {number}: class index {label} outside 1..4")
                labels.append(label - 1)
                docs.append(tokenize(" ".join(row[1:])))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot parse {path} as CSV: {err}") from err
    return labels, docs


@register("ag_news", "AG News (Zhang et al. 2015): 127,600 articles, 4 classes, as token ids", reads_files=True)
def load_ag_news(
    name: str = "ag_news",
    data_dir: str = "./data",
    vocab_size: int = 20000,
    max_len: int = 64,
    expected_md5: Optional[str] = None,
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
) -> Dataset:
    """AG News (4 topics, 120,000 + 7,600 articles) as int64 token ids: x (n, max_len).

    Reads `<data_dir>/ag_news_csv/{train,test}.csv` (or `ag_news/`). Title and
    description are tokenised by `tokenize`; the vocabulary (`build_vocab`) is the
    most frequent tokens of the whole pool, so it is the same for every split of
    it (it sees the text of non-members, never their labels). Documents are
    truncated or padded with id 0 to `max_len`; unknown tokens get id 1.
    `expected_md5`, if given, is checked on `train.csv`.
    """
    if max_len < 1:
        raise ValueError(f"ag_news: max_len must be >= 1, got {max_len}")
    root = Path(data_dir)
    folders = [root / "ag_news_csv", root / "ag_news"]
    folder = next(
        (d for d in folders if (d / "train.csv").is_file() and (d / "test.csv").is_file()), None
    )
    if folder is None:
        raise FileNotFoundError(
            f"AG News not found: expected {folders[0] / 'train.csv'} and {folders[0] / 'test.csv'} "
            f"(or the same under {folders[1]}). Format: CSV rows 'class index (1..4),title,description', "
            f"no header. Get {AG_NEWS_SOURCE}, extract it into {root} "
            "(set paths.data_dir to use another folder; this tool does not download)"
        )
    record_read(folder / "train.csv")
    record_read(folder / "test.csv")
    check_md5(folder / "train.csv", expected_md5, verify=True)
    labels: list[int] = []
    docs: list[list[str]] = []
    for part in ("train.csv", "test.csv"):
        part_labels, part_docs = _read_ag_news_csv(folder / part)
        labels += part_labels
        docs += part_docs
    if not labels:
        raise ValueError(f"AG News: no rows in {folder / 'train.csv'} and {folder / 'test.csv'}")
    vocab = build_vocab(docs, vocab_size)
    x = np.full((len(docs), max_len), PAD_ID, dtype=np.int64)  # (n, L)
    for i, doc in enumerate(docs):
        ids = [vocab.get(tok, UNK_ID) for tok in doc[:max_len]]
        x[i, : len(ids)] = ids
    x, y = subsample(name, x, np.asarray(labels, dtype=np.int64), n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(x), torch.from_numpy(y), AG_NEWS_CLASSES)
