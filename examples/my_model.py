"""A model written as any PyTorch user would: no `features()`, no `head`, nothing from this package.

README "Compress your own model" runs it on a CSV through `stage=search` and `stage=attack`:

    PYTHONPATH=examples python -m pipeline stage=search model._target_=my_model.TabularNet \
        +model.n_features=20 dataset=files dataset.format=csv dataset.path=examples/my_data.csv

The adapter (`training.model_adapter`) takes its last `nn.Linear` as the head and the input of
that layer as the features, so every attack (the white-box one included) and the sparse engine
work on it; `n_classes` is passed because the constructor takes it.
"""

from torch import nn


class TabularNet(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.layers(x)
