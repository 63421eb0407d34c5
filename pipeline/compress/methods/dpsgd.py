"""`dpsgd`: DP-SGD (Abadi et al. CCS'16) with Opacus at `compress.dp.epsilon`.

Dense unless `compress.dp.sparse` (a fixed ERK mask at `compress.density`, applied after
every step: post-processing keeps the DP guarantee). Its own SGD learning rate and batch
size (`compress.dp`); noise from a seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import sparse
from pipeline import interrupt
from pipeline.compress.method import CompressJob, CompressMethod, Trained, register
from pipeline.seeds import derive_seed, generator
from pipeline.training import DivergenceCheck, NonFiniteLossError, evaluate, model_device


@register
class DPSGD(CompressMethod):
    name = "dpsgd"
    is_dense = True
    label_params = ("compress.dp.epsilon",)

    def train(self, job: CompressJob) -> Trained:
        try:
            from opacus import PrivacyEngine
        except ImportError as err:  # pragma: no cover
            raise ImportError("compress=dpsgd needs opacus: pip install 'safecompress[dp]'") from err
        c, recipe, data, seed = job.c, job.recipe, job.data, job.seed
        x, y = data.part("train")
        model = job.new_model("compress")
        masks = sparse.random_masks(model, c.density, "erk", generator(seed, "compress", "mask")) if c.dp.sparse else None
        if masks is not None:
            masks.apply(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=c.dp.lr, momentum=0.9)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=c.dp.batch_size, shuffle=True,
            generator=generator(seed, "dpsgd", "batches"),
        )
        delta = c.dp.delta if c.dp.delta is not None else 1.0 / len(y)
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "dpsgd", "noise") % (2**31))
            dp_model, dp_opt, dp_loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, target_epsilon=c.dp.epsilon,
                target_delta=delta, epochs=recipe.epochs, max_grad_norm=c.dp.max_grad_norm,
            )
            history = []
            device = model_device(model)
            diverged = DivergenceCheck(data.dataset.n_classes, "DP-SGD")
            for epoch in range(recipe.epochs):
                dp_model.train()
                ls = []
                for xb, yb in dp_loader:
                    interrupt.check()
                    if len(yb) == 0:
                        continue
                    xb, yb = xb.to(device), yb.to(device)
                    dp_opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(dp_model(xb), yb)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(f"DP-SGD loss is {loss.item()}; lower train.lr")
                    loss.backward()
                    dp_opt.step()
                    if masks is not None:
                        masks.apply(model)  # post-processing: keeps the DP guarantee
                    ls.append(loss.item())
                    diverged.step(ls[-1])
                _, val_acc = evaluate(model, *data.part("val"))
                if ls:
                    diverged.epoch(epoch, float(np.mean(ls)))
                history.append({"epoch": epoch, "loss": float(np.mean(ls)) if ls else math.nan, "val_accuracy": val_acc,
                                "epsilon": float(engine.get_epsilon(delta))})
        clean = job.new_model("compress")
        clean.load_state_dict({k.removeprefix("_module."): v for k, v in model.state_dict().items()})
        return Trained(clean, masks, history, pd.DataFrame())


