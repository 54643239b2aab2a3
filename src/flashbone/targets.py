"""Which modules of a model an adapter goes into.

Rules follow PEFT so that configs mean the same thing in both libraries:

* ``"all-linear"``: every ``nn.Linear`` / ``Conv1D`` except the output head
  (``model.get_output_embeddings()``, and the task heads ``classifier``, ``score`` or
  ``qa_outputs`` of classification/QA models: randomly initialised, they must train in
  full through ``modules_to_save``) and anything inside ``modules_to_save``;
* a list of names: a module matches when its full name equals an entry or ends with
  ``"." + entry``;
* any other string: a regular expression that must match the full module name.

``layers_to_transform`` then keeps modules whose name holds ``<layers_pattern>.<index>.``.
"""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

from . import rwkv6
from .config import BoneConfig
from .errors import TargetError
from .layer import BoneLayer, SavedModule, is_supported

LAYER_PATTERNS = ("layers", "h", "layer", "blocks", "block", "encoder.layer", "decoder.layers")
TASK_HEADS = ("classifier", "score", "qa_outputs")  # PEFT's modules_to_save for those tasks


def _matches_names(name: str, names: str | Sequence[str] | None) -> bool:
    if names is None:
        return False
    if isinstance(names, str):
        return re.fullmatch(names, name) is not None
    return any(name == n or name.endswith("." + n) for n in names)


def layer_index(name: str, pattern: str | None = None) -> int | None:
    """The decoder-layer index in a module name such as ``model.layers.3.mlp.up_proj``."""
    patterns = [pattern] if pattern else LAYER_PATTERNS
    for p in patterns:
        m = re.search(rf"(?:^|\.){re.escape(p)}\.(\d+)(?:\.|$)", name)
        if m:
            return int(m.group(1))
    return None


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules_to_save_names(model: nn.Module, config: BoneConfig) -> list[str]:
    """Full names of the modules matched by ``config.modules_to_save`` (outermost only)."""
    if not config.modules_to_save:
        return []
    found: list[str] = []
    for name, _ in model.named_modules():
        if name and _matches_names(name, list(config.modules_to_save)) and not _inside(name, found):
            found.append(name)
    missing = [m for m in config.modules_to_save if not any(f == m or f.endswith("." + m) for f in found)]
    if missing:
        raise TargetError(
            f"modules_to_save {missing} match no module of {type(model).__name__}; "
            f"top-level modules: {[n for n, _ in model.named_children()]}"
        )
    return found


def _wrapped(model: nn.Module) -> list[str]:
    """Names of flashbone wrappers: the modules inside them are never targets."""
    return [n for n, m in model.named_modules() if isinstance(m, (BoneLayer, SavedModule))]


def linear_names(model: nn.Module) -> list[str]:
    """Distinct last parts of the names of adaptable layers (for error messages)."""
    wrapped, seen = _wrapped(model), {}
    for name, mod in model.named_modules():
        if (is_supported(mod) or isinstance(mod, BoneLayer)) and not _inside_any(name, wrapped):
            seen[name.rsplit(".", 1)[-1]] = None
    return list(seen)


def _inside_any(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p + ".") for p in prefixes)


def _weight_read_directly(model: nn.Module) -> tuple[str, ...]:
    """Linear layers whose weight the model uses without calling them (never targets)."""
    return rwkv6.DIRECT_WEIGHT if rwkv6.is_rwkv6(model) else ()


def find_targets(model: nn.Module, config: BoneConfig) -> list[str]:
    """Full names of the modules ``config`` adapts; raises :class:`TargetError` if none.

    A target that is already a :class:`BoneLayer` is returned by its own name (the new
    adapter joins it); modules inside a ``BoneLayer`` are never targets themselves.
    """
    save = modules_to_save_names(model, config)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = [n for n, _ in model.named_children() if n in TASK_HEADS]
    wrapped = _wrapped(model)
    direct = _weight_read_directly(model)
    found: list[str] = []
    for name, mod in model.named_modules():
        if not name or _inside(name, save) or _inside_any(name, wrapped):
            continue
        if any(name == d or name.endswith("." + d) for d in direct):
            if config.target_modules != "all-linear" and _matches_names(name, config.target_modules):
                raise TargetError(
                    f"target module {name!r}: {type(model).__name__} reads its weight directly "
                    "(not through its forward), so an adapter there would do nothing; leave it out"
                )
            continue
        if config.target_modules == "all-linear":
            hit = (is_supported(mod) or isinstance(mod, BoneLayer)) and mod is not head and not _inside(name, heads)
        else:
            hit = _matches_names(name, config.target_modules)
        if not hit or _matches_names(name, config.exclude_modules):
            continue
        if config.layers_to_transform is not None:
            idx = layer_index(name, config.layers_pattern)
            if idx is None or idx not in config.layers_to_transform:
                continue
        if not (is_supported(mod) or isinstance(mod, BoneLayer)):
            raise TargetError(
                f"target module {name!r} is a {type(mod).__name__}, which cannot be adapted: "
                "flashbone adapts nn.Linear and transformers' Conv1D. Narrow target_modules "
                f"to linear layers, e.g. {linear_names(model)[:8]}"
            )
        found.append(name)
    if not found:
        raise TargetError(
            f"target_modules={config.target_modules!r}"
            + (
                f" with layers_to_transform={config.layers_to_transform}"
                if config.layers_to_transform is not None
                else ""
            )
            + f" matched no module of {type(model).__name__}; its linear layers are named "
            f"{linear_names(model)}"
        )
    return found
