"""The shipped files of one compressed model: ONNX (checked against PyTorch with ONNX Runtime),
a plain PyTorch state_dict (pruned weights as zeros in place) and the compact `.sc` export.

Pure torch/onnx: no config objects, no MLflow. ONNX needs the `export` extra (onnx,
onnxruntime); without it `require_onnx` names the extra before any work. A model ONNX cannot
express (an op of a user's model) raises `OnnxExportError` naming the innermost module whose
forward fails to export, found by exporting every submodule alone on the inputs it saw.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

EXTRA = "export"
EXTRA_MODULES = ("onnx", "onnxruntime")
ONNX_FILE = "model.onnx"
STATE_DICT_FILE = "state_dict.pt"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class MissingExtraError(ImportError):
    """A module of the `export` extra is not installed."""


class OnnxExportError(RuntimeError):
    """The model cannot be written as ONNX; `module` names where (qualified name and class)."""

    def __init__(self, message: str, module: str):
        super().__init__(message)
        self.module = module


def require_onnx() -> None:
    """Raise `MissingExtraError` naming the extra when onnx or onnxruntime cannot be imported."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"ONNX export needs the `{EXTRA}` extra, which is not installed (missing: {', '.join(missing)}): "
            f"pip install -e '.[{EXTRA}]' (`make install` installs it), or export.onnx=false to write "
            "the other formats only"
        )


def cpu_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode (the export never moves or changes the caller's model)."""
    return copy.deepcopy(model).cpu().eval()


def write_state_dict(model: nn.Module, path: Path) -> int:
    """`torch.save(model.state_dict())` on the CPU (a pruned weight keeps its zeros); returns bytes.
    A user's class inside the adapter is saved as itself (keys as their class names them, so
    `TheirClass().load_state_dict(...)` and `teacher.checkpoint` take the file as it is)."""
    from training.model_adapter import unwrap

    torch.save({k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}, path)
    return path.stat().st_size


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The TorchScript exporter's deprecation warning and the IR dump it prints on a failure."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export(module: nn.Module, args: tuple[Any, ...], f: Any, opset: int, dynamic_batch: bool) -> None:
    # the TorchScript exporter: the dynamo one needs onnxscript, which the extra does not bring
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs = {
            "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME],
            "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        }
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, args, f, opset_version=opset, dynamo=False, **kwargs)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> int:
    """Write `model` (input `example`, batch dimension dynamic) as ONNX to `path`; returns bytes.

    A failure raises `OnnxExportError` naming the module whose forward cannot be exported;
    nothing is left at `path` then.
    """
    require_onnx()
    model = cpu_copy(model)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _export(model, (example.cpu(),), str(tmp), opset, dynamic_batch=True)
        import onnx

        onnx.checker.check_model(str(tmp))
    except Exception as err:  # noqa: BLE001 - any exporter error becomes one message naming the module
        if tmp.exists():
            tmp.unlink()
        where = failing_module(model, example.cpu(), opset)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxExportError(
            f"the model cannot be exported to ONNX (opset {opset}): module {where} fails: "
            f"{type(err).__name__}: {first}", where
        ) from err
    os.replace(tmp, path)
    return path.stat().st_size


def failing_module(model: nn.Module, example: torch.Tensor, opset: int = 17) -> str:
    """The innermost module whose forward alone cannot be exported, as `'name' (Class)`;
    the model itself (`<model> (Class)`) when every submodule exports on its own."""
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen.setdefault(name, tuple(a.detach() if torch.is_tensor(a) else a for a in args))

        hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # noqa: BLE001 - the forward itself fails: the model is the module to name
        return f"<model> ({type(model).__name__})"
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    failing = []
    for name, args in seen.items():
        if not all(torch.is_tensor(a) for a in args):
            continue
        try:
            _export(modules[name], args, io.BytesIO(), opset, dynamic_batch=False)
        except Exception:  # noqa: BLE001 - this submodule cannot be exported alone
            failing.append(name)
    innermost = [n for n in failing if not any(o != n and o.startswith(n + ".") for o in failing)]
    if innermost:
        return f"{innermost[0]!r} ({type(modules[innermost[0]]).__name__})"
    return f"<model> ({type(model).__name__})"


@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime against PyTorch on the same inputs."""

    n_inputs: int
    max_abs_diff: float  # largest |logit difference| over every input and class
    argmax_agreement: float  # fraction of inputs with the same predicted class
    bound: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.bound


def check_onnx(path: Path, model: nn.Module, inputs: torch.Tensor, bound: float, batch_size: int = 256) -> OnnxCheck:
    """Run `inputs` (n, ...) through ONNX Runtime and the PyTorch model; compare the logits."""
    require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # small models; the machine is shared
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = cpu_copy(model)
    diffs, agree = [], 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            xb = inputs[start : start + batch_size].cpu()
            ref = model(xb).numpy()  # (b, C)
            got = session.run([OUTPUT_NAME], {INPUT_NAME: xb.numpy()})[0]
            diffs.append(float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
    return OnnxCheck(len(inputs), max(diffs) if diffs else float("nan"), agree / max(len(inputs), 1), bound)


def check_inputs(x: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """At least `n` inputs shaped like the data's records `x` (N, ...): every record in order,
    then (when N < n) mixes a·x_i + (1-a)·x_j of random pairs, rounded when the data are
    integral (token ids stay ids). Returns (inputs, number of real records among them)."""
    if len(x) == 0:
        raise ValueError("the data set has no records to check the ONNX model on")
    real = x[:n]
    if len(real) >= n:
        return real, n
    k = n - len(real)
    i = torch.randint(len(x), (k,), generator=generator)
    j = torch.randint(len(x), (k,), generator=generator)
    a = torch.rand((k,) + (1,) * (x.dim() - 1), generator=generator)
    xf = x.double()
    mixed = a * xf[i] + (1 - a) * xf[j]
    if bool(torch.equal(xf, xf.round())):
        mixed = mixed.round()
    return torch.cat([real, mixed.to(x.dtype)]), len(real)
