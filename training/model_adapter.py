"""The user's own model class (issue 24): any importable `torch.nn.Module` subclass by its Hydra
`_target_`, and the adapter that gives it what the attacks and the sparse engine ask of a model.

The package's classes (`training.models.MODELS`) expose `features(x)` (the penultimate
activations, (n, d)) and `head` (the last `nn.Linear`), with `forward(x) == head(features(x))`.
A user's class need not: `AdaptedModel` wraps it (as `net`), takes its head to be the module
named by `model.head_module` or else its last `nn.Linear` (registration order), and reads the
features with a forward hook on the head's input. `check_model` builds the model once on the
data's shape, before any training, and refuses a head whose output is not the model's output
(e.g. a softmax after it), features that are not (n, d), and, for DP-SGD, modules Opacus cannot
bound per example, naming them.

A `_target_` is imported, never called, until it is known to be an `nn.Module` subclass (so
`os.system` or any other callable is refused as it is). Its class's source file enters the
model's cache key by SHA-256 (`source_hash`): an edited class retrains what was built on it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from training.models import MODELS

# a model config key the adapter reads (never passed to the user's constructor)
HEAD_KEY = "head_module"
ADAPTER_KEYS = (HEAD_KEY,)


def resolve_class(target: str) -> type[nn.Module]:
    """The `nn.Module` subclass `target` names; anything else raises, naming why (nothing is called)."""
    if target in MODELS:
        return MODELS[target]
    module_name, _, attr = str(target).rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"model._target_={target!r} must be an import path 'package.module.Class'; the package's "
                         f"models: {list(MODELS)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model._target_={target!r}: cannot import module {module_name!r} ({err}); put its folder "
                         "on sys.path (PYTHONPATH) or pip install its package") from err
    if not hasattr(module, attr):
        raise ValueError(f"unknown model {target!r}: module {module_name!r} has no attribute {attr!r}; valid: the "
                         f"package's {list(MODELS)} or any importable torch.nn.Module subclass")
    obj = getattr(module, attr)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        kind = "a class that is not a torch.nn.Module subclass" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise ValueError(f"model._target_={target!r} is {kind}, not a torch.nn.Module subclass; it was not called "
                         "(a model's _target_ must name an nn.Module class)")
    return obj


def is_user_model(target: str) -> bool:
    return str(target) not in MODELS


def source_hash(target: str) -> Optional[str]:
    """SHA-256 of the source file defining a user's class (None for the package's own classes)."""
    if not is_user_model(target):
        return None
    cls = resolve_class(target)
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        path = None
    if path is None:
        raise ValueError(f"model._target_={target!r}: the class has no source file to hash into the cache keys")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def instantiate_model(model_cfg: Mapping[str, Any], input_shape: list[int], n_classes: int) -> nn.Module:
    """A user's class built with its config's arguments plus `input_shape` / `n_classes` where its
    constructor takes them, then adapted (unless it already has `features` and a Linear `head`)."""
    target = str(model_cfg.get("_target_", ""))
    cls = resolve_class(target)
    kwargs = {k: v for k, v in model_cfg.items() if k != "_target_" and k not in ADAPTER_KEYS}
    params = inspect.signature(cls).parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in (("input_shape", list(input_shape)), ("n_classes", int(n_classes))):
        if (name in params or open_kwargs) and name not in kwargs:
            kwargs[name] = value
    try:
        net = cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"model._target_={target!r} cannot be built with {sorted(kwargs)}: {err}") from err
    head = model_cfg.get(HEAD_KEY)
    has_own = isinstance(getattr(net, "head", None), nn.Linear) and callable(getattr(net, "features", None))
    if has_own and head is None:
        return net  # it already follows the package's convention
    return AdaptedModel(net, find_head(net, head, target))


def find_head(net: nn.Module, name: Optional[str], target: str) -> str:
    """The head's module name: `name` when given (must be an nn.Linear), else the last nn.Linear."""
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if name is not None:
        try:
            module = net.get_submodule(str(name))
        except AttributeError as err:
            raise ValueError(f"model.{HEAD_KEY}={name!r}: {target} has no such module; its nn.Linear modules: "
                             f"{linears}") from err
        if not isinstance(module, nn.Linear):
            raise ValueError(f"model.{HEAD_KEY}={name!r} is a {type(module).__name__}; the head must be an nn.Linear "
                             f"(the white-box attack reads its weight's gradient); nn.Linear modules: {linears}")
        return str(name)
    if not linears:
        raise ValueError(f"{target} has no nn.Linear module to serve as its head; the attacks need one "
                         f"(name it with model.{HEAD_KEY})")
    return linears[-1]


class AdaptedModel(nn.Module):
    """A user's module with `features(x)` and `head`: `head` is its module `head_name`; `features`
    runs the module and returns the head's input, caught by a forward hook. Its weights live under
    `net.` (`user_state_dict` / `load_user_state` read and write them without that prefix)."""

    def __init__(self, net: nn.Module, head_name: str):
        super().__init__()
        self.net = net
        self.head_name = head_name

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.net.get_submodule(self.head_name)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        caught: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda _m, inputs, _out: caught.append(inputs[0]))
        try:
            self.net(x)
        finally:
            handle.remove()
        if len(caught) != 1:
            raise RuntimeError(f"head {self.head_name!r} ran {len(caught)} times in one forward pass; name the final "
                               f"layer with model.{HEAD_KEY}")
        return caught[0]  # (n, d)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside an adapter (the model itself otherwise)."""
    return model.net if isinstance(model, AdaptedModel) else model


def load_user_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load a user's state_dict (keys as their class names them) into `model`, strictly."""
    try:
        unwrap(model).load_state_dict(dict(state))
    except RuntimeError as err:
        why = " ".join(str(err).split())
        raise ValueError(f"{where} does not fit model {type(unwrap(model)).__name__}: {why}") from err


def check_adapter(model: nn.Module, x: torch.Tensor, target: str) -> None:
    """`forward(x) == head(features(x))` and features of shape (n, d), on a probe batch."""
    if not isinstance(model, AdaptedModel):
        return
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
        if feats.dim() != 2:
            raise ValueError(f"{target}: the head {model.head_name!r} takes inputs of shape {tuple(feats.shape)}; the "
                             f"attacks need (n, d) features: name a head with 2-d inputs with model.{HEAD_KEY}")
        again = model.head(feats)
    if out.shape != again.shape or not torch.allclose(out, again, atol=1e-5, rtol=1e-4):
        raise ValueError(f"{target}: its output is not its head's output (head {model.head_name!r}, shape "
                         f"{tuple(again.shape)} vs output {tuple(out.shape)}): the model must return the logits of its "
                         f"last nn.Linear (no softmax after it), or name that layer with model.{HEAD_KEY}")


def dp_unsupported(model: nn.Module) -> dict[str, str]:
    """Modules Opacus cannot bound per example: {module name: why} (empty: DP-SGD can train it)."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    out: dict[str, str] = {}
    for name, module in model.named_modules():  # Opacus's own per-layer validators (BatchNorm, LSTM, ...)
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator is not None else []
        if errors:
            out[name] = str(errors[0]).split(". ")[0]
    samplers = GradSampleModule.GRAD_SAMPLERS
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)) and type(module) not in samplers:
            out.setdefault(name, f"{type(module).__name__} has trainable parameters and no Opacus per-example "
                           "gradient")
    return out
