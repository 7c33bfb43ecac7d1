"""AstroMAE checkpoints in, without running code that came with them.

Three shapes are accepted:

- ours: ``{"format": "cosmicai-astromae/1", "config": {...}, "state_dict": {...}}``;
- a plain ``state_dict`` (tensors by name), with the default widths or a given config;
- a pickled *whole model*, as CosmicAI saves its fine-tuned AstroMAE (``torch.save`` of a
  ``DataParallel``), which would normally be read with ``torch.load(weights_only=False)`` —
  and so would run whatever the file's pickle asks for.

The first two go through ``torch.load(weights_only=True)``. The third goes through
:class:`InertUnpickler`: every class the pickle names must be a known module class (torch.nn,
timm, CosmicAI's ``blocks``, ours) and is replaced by :class:`InertModule`, a plain record of
the pickled attributes whose code never runs; tensors are rebuilt by torch's own functions.
The parameters and buffers are then read out of those records into a state_dict. Anything
else a pickle names (``os.system``, ``builtins.eval``, …) is refused before it is called.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from cosmicai.astromae.network import AstroMAE, AstroMAEConfig
from cosmicai.exceptions import ModelError

FORMAT = "cosmicai-astromae/1"

#: Module paths whose classes may appear in a whole-model pickle; they become InertModule.
MODULE_PREFIXES = (
    "torch.nn.modules.",
    "torch.nn.parallel.",
    "timm.",
    "blocks.",  # CosmicAI's package holding ViT_Astro
    "models_vit",  # the MAE reference code's module name
    "cosmicai.astromae.",
)

#: The few callables a pickled tensor needs (all torch's own, none reaches the OS).
ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    # Protocol-2 pickles (torch's default) spell Python 2's module name.
    ("__builtin__", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "float32"): torch.float32,
}
for _name in (
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "BoolStorage",
    "ByteStorage",
):
    ALLOWED[("torch", _name)] = getattr(torch, _name)
if hasattr(torch._utils, "_rebuild_parameter_with_state"):
    ALLOWED[("torch._utils", "_rebuild_parameter_with_state")] = (
        torch._utils._rebuild_parameter_with_state
    )


class InertModule:
    """Stands in for a pickled module: keeps its attributes, runs none of its code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_pickled_class"] = type(self).__qualname__

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _inert_class(module: str, name: str) -> type[InertModule]:
    # A subclass per pickled name, so error messages and the walk can say what each part was.
    return type(name, (InertModule,), {"__module__": f"inert.{module}"})


class InertUnpickler(pickle.Unpickler):
    """Only the names above resolve; module classes become inert records."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module.startswith(MODULE_PREFIXES) and name[:1].isupper():
            return _inert_class(module, name)
        raise pickle.UnpicklingError(
            f"refused: the checkpoint's pickle names {module}.{name}, which is not a known "
            "model class or tensor part (it could run arbitrary code)"
        )


class _InertPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an Unpickler, a load, the error type."""

    Unpickler = InertUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "cosmicai_inert_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return InertUnpickler(file, **kwargs).load()


def _state_from_inert(root: InertModule) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of an inert module tree, by dotted name."""
    state: dict[str, torch.Tensor] = {}

    def walk(node: Any, prefix: str) -> None:
        d = getattr(node, "__dict__", {})
        skip = d.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for key, value in (d.get(kind) or {}).items():
                if isinstance(value, torch.Tensor) and key not in skip:
                    state[prefix + key] = value.detach()
        for key, child in (d.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{key}.")

    walk(root, "")
    return state


def _unwrap(state: dict[str, Any]) -> dict[str, Any]:
    """DataParallel names its parameters ``module.…``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], AstroMAEConfig | None]:
    """A checkpoint's tensors by name, and its config when it carries one."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"checkpoint {path} does not exist") from exc
    except pickle.UnpicklingError:
        # Not weights-only: a whole pickled model. Read it inertly.
        try:
            blob = torch.load(
                path,
                map_location="cpu",
                weights_only=False,
                pickle_module=_InertPickleModule,
            )
        except pickle.UnpicklingError as exc:
            raise ModelError(f"checkpoint {path}: {exc}") from exc
    except Exception as exc:  # torch raises RuntimeError and friends for non-checkpoints
        raise ModelError(f"checkpoint {path} is not a torch checkpoint: {exc}") from exc
    if isinstance(blob, InertModule):
        return _unwrap(_state_from_inert(blob)), None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return dict(blob["state_dict"]), AstroMAEConfig.from_dict(blob["config"])
    if isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return _unwrap(dict(blob)), None
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):  # MAE-style wrapper
        return _unwrap(dict(blob["model"])), None
    raise ModelError(
        f"checkpoint {path} holds a {type(blob).__name__}, not a state_dict or a pickled model"
    )


def load_checkpoint(path: Path, config: AstroMAEConfig | None = None) -> AstroMAE:
    """An :class:`AstroMAE` in eval mode with the checkpoint's weights (every one must fit)."""
    state, carried = read_state(Path(path))
    model = AstroMAE(config or carried or AstroMAEConfig())
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path} does not fit this AstroMAE: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"checkpoint {path}: {k} has shape {tuple(state[k].shape)}, "
            f"this AstroMAE expects {tuple(expected[k].shape)} ({len(wrong)} such)"
        )
    model.load_state_dict(state)
    return model.eval()


def save_checkpoint(model: AstroMAE, path: Path) -> None:
    """Our format: config and tensors only, so it loads with ``weights_only=True``."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save(
        {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict()},
        tmp,
    )
    tmp.replace(path)
