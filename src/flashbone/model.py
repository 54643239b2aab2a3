"""Model surgery: put adapters into a model, manage them, merge them, save and load them.

    get_bone_model(hf_model, BoneConfig(...))  ->  BoneModel
        plan:   find targets, build every adapter (shape errors surface here)
        commit: swap nn.Linear/Conv1D -> BoneLayer, freeze the rest   (all or nothing)

    BoneModel: forward/generate pass through; add/set/disable/delete adapters;
               merge/unmerge/merge_and_unload/unload; save_adapter/export_lora
    load_adapter(hf_model, folder)  ->  BoneModel   (ours, PEFT MISS, legacy PEFT BONE)
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from . import io
from .config import BoneConfig
from .errors import AdapterFileError, BoneConfigError, MergeError, TargetError
from .layer import AdapterModule, BlockAdapter, BoneLayer, is_supported
from .targets import find_targets, modules_to_save_names
from .variants import VARIANTS


@dataclass
class TrainableReport:
    """Trainable parameters of a model, split into adapters and fully trained modules."""

    adapter: int
    modules_to_save: int
    total: int

    @property
    def trainable(self) -> int:
        return self.adapter + self.modules_to_save

    def __str__(self) -> str:
        pct = 100.0 * self.trainable / max(self.total, 1)
        return (f"trainable params: {self.trainable:,} (adapters {self.adapter:,}, "
                f"modules_to_save {self.modules_to_save:,}) || all params: {self.total:,} "
                f"|| trainable%: {pct:.4f}")


def get_adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """All adapter parameters of any module that follows the :class:`AdapterModule` protocol."""
    out: dict[str, nn.Parameter] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, AdapterModule) and not isinstance(mod, nn.ModuleDict):
            for pname in mod.adapter_params():
                out[f"{name}.{pname}" if name else pname] = mod.get_parameter(pname)
    return out


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name or ""):
        raise BoneConfigError(
            f"adapter name {name!r} is invalid: use letters, digits, '_' or '-', no dots"
        )


class BoneModel(nn.Module):
    """A model with block-affine adapters in its linear layers.

    The wrapped model is changed in place (its target layers become :class:`BoneLayer`);
    attributes not found here are looked up on it, so ``bone_model.config`` and
    ``bone_model.generate(...)`` work as on the original.
    """

    def __init__(self, model: nn.Module, config: BoneConfig, adapter_name: str = "default"):
        super().__init__()
        self.model = model
        self.configs: dict[str, BoneConfig] = {}
        self._saved_modules: dict[str, list[str]] = {}
        self.active_adapter = adapter_name
        self.add_adapter(adapter_name, config)

    # -- pass-through ---------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    # -- layers ---------------------------------------------------------------------------
    def bone_layers(self) -> Iterator[tuple[str, BoneLayer]]:
        for name, mod in self.model.named_modules():
            if isinstance(mod, BoneLayer):
                yield name, mod

    @property
    def adapter_names(self) -> list[str]:
        return list(self.configs)

    # -- adapters -------------------------------------------------------------------------
    def add_adapter(self, name: str, config: BoneConfig, *, active: bool | None = None) -> None:
        """Add an adapter to every target of ``config``; all or nothing.

        The first adapter becomes active and trainable. Later ones are added inactive and
        frozen unless ``active=True``; use :meth:`set_adapter` to switch.
        """
        _check_name(name)
        if name in self.configs:
            raise BoneConfigError(f"adapter {name!r} already exists; delete it first or pick another name")
        active = (not self.configs) if active is None else active
        targets = find_targets(self.model, config)
        save = modules_to_save_names(self.model, config)
        planned: list[tuple[str, nn.Module, BlockAdapter]] = []
        for tname in targets:  # plan: every shape check happens before anything changes
            mod = self.model.get_submodule(tname)
            base = mod.base_layer if isinstance(mod, BoneLayer) else mod
            layer = mod if isinstance(mod, BoneLayer) else None
            out_f, in_f = (layer.out_features, layer.in_features) if layer else _features(base)
            w = base.weight
            planned.append((tname, mod, BlockAdapter(
                config.variant, config.r, out_f, in_f, config.mini_r, config.dropout,
                config.init, config.torch_dtype(w.dtype), w.device, where=tname)))
        for tname, mod, adapter in planned:  # commit
            if not isinstance(mod, BoneLayer):
                layer = BoneLayer(mod)
                parent, _, leaf = tname.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, leaf, layer)
                mod = layer
            mod.add_adapter(name, adapter, active=False)
        self.configs[name] = config
        self._saved_modules[name] = save
        if active:
            self.set_adapter(name)
        else:
            self._refresh_trainable()

    def set_adapter(self, names: str | list[str]) -> None:
        """Make ``names`` the active (and trainable) adapters, in this order."""
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            if n not in self.configs:
                raise BoneConfigError(f"no adapter named {n!r}; adapters: {self.adapter_names}")
        for _, layer in self.bone_layers():
            layer.set_active(names)
        self.active_adapter = names[0] if len(names) == 1 else names
        self._refresh_trainable()

    @property
    def active_adapters(self) -> list[str]:
        a = self.active_adapter
        return [a] if isinstance(a, str) else list(a)

    def _refresh_trainable(self) -> None:
        """Freeze everything, then unfreeze the active adapters and their saved modules."""
        active = set(self.active_adapters)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for _, layer in self.bone_layers():
            for name, ad in layer.adapters.items():
                ad.requires_grad_(name in active)
        for name in active:
            for m in self._saved_modules.get(name, []):
                self.model.get_submodule(m).requires_grad_(True)

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter everywhere (it must not be merged)."""
        if name not in self.configs:
            raise BoneConfigError(f"no adapter named {name!r}; adapters: {self.adapter_names}")
        for _, layer in self.bone_layers():
            if name in layer.adapters:
                layer.delete_adapter(name)
        del self.configs[name]
        self._saved_modules.pop(name, None)
        remaining = [a for a in self.active_adapters if a != name] or self.adapter_names[:1]
        if remaining:
            self.set_adapter(remaining)
        else:
            self.active_adapter = []

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """``with model.disable_adapter(): ...`` runs the base model."""
        layers = [layer for _, layer in self.bone_layers()]
        if any(layer.merged_adapters for layer in layers):
            raise MergeError("cannot disable adapters while some are merged; call unmerge_adapter() first")
        for layer in layers:
            layer.adapters_disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.adapters_disabled = False

    # -- parameters -----------------------------------------------------------------------
    def trainable_report(self) -> TrainableReport:
        adapter = sum(p.numel() for p in get_adapter_params(self.model).values() if p.requires_grad)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return TrainableReport(adapter, trainable - adapter, total)

    def print_trainable_parameters(self) -> None:
        print(self.trainable_report())

    # -- merge ----------------------------------------------------------------------------
    def merge_adapter(self, names: list[str] | None = None, *, safe_merge: bool = False,
                      keep_original: bool = False) -> None:
        """Merge adapters (default: the active ones) into the base weights.

        ``safe_merge`` computes every merged weight first and refuses NaN/Inf before any
        layer changes. ``keep_original`` stores the old weights for an exact unmerge.
        """
        names = self.active_adapters if names is None else names
        layers = [layer for _, layer in self.bone_layers()]
        if safe_merge:
            for lname, layer in self.bone_layers():
                todo = [n for n in names if n in layer.adapters and n not in layer.merged_adapters]
                if todo and not torch.isfinite(layer.merged_weight(todo).to(layer.weight.dtype)).all():
                    raise MergeError(
                        f"merging {todo} into {lname!r} gives NaN/Inf weights; nothing was merged"
                    )
        for layer in layers:
            layer.merge([n for n in names if n in layer.adapters], keep_original=keep_original)

    def unmerge_adapter(self) -> None:
        for _, layer in self.bone_layers():
            layer.unmerge()

    def _replace_layers(self, merge: bool, safe_merge: bool = False) -> nn.Module:
        if merge:
            self.merge_adapter(safe_merge=safe_merge)
        for name, layer in list(self.bone_layers()):
            parent, _, leaf = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, layer.base_layer)
        return self.model

    def merge_and_unload(self, *, safe_merge: bool = False) -> nn.Module:
        """Merge the active adapters and return the plain model (adapters removed)."""
        return self._replace_layers(merge=True, safe_merge=safe_merge)

    def unload(self) -> nn.Module:
        """Return the plain model without merging (unmerges anything merged first)."""
        self.unmerge_adapter()
        return self._replace_layers(merge=False)

    # -- files ----------------------------------------------------------------------------
    def adapter_tensors(self, name: str | None = None) -> dict[str, dict[str, Tensor]]:
        name = name or self.active_adapters[0]
        return {lname: layer.adapters[name].tensors()
                for lname, layer in self.bone_layers() if name in layer.adapters}

    def saved_module_state(self, name: str | None = None) -> dict[str, Tensor]:
        name = name or self.active_adapters[0]
        out = {}
        for m in self._saved_modules.get(name, []):
            for k, v in self.model.get_submodule(m).state_dict().items():
                out[f"{m}.{_unwrap_key(k)}"] = v
        return out

    def save_adapter(self, folder: str | os.PathLike, adapter_name: str | None = None) -> Path:
        """Save one adapter; other adapters go to ``folder/<name>`` when ``adapter_name`` is None
        and several exist, as PEFT does."""
        names = [adapter_name] if adapter_name else self.adapter_names
        folder = Path(folder)
        for n in names:
            if n not in self.configs:
                raise BoneConfigError(f"no adapter named {n!r}; adapters: {self.adapter_names}")
            sub = folder if (adapter_name or n == "default" or len(names) == 1) else folder / n
            io.save_adapter_folder(sub, self.configs[n], self.adapter_tensors(n), self.saved_module_state(n))
        return folder

    def export_lora(self, folder: str | os.PathLike, adapter_name: str | None = None) -> Path:
        """Write a ``bone`` / ``bone-mini`` adapter as an exact PEFT LoRA adapter."""
        name = adapter_name or self.active_adapters[0]
        cfg = self.configs[name]
        if cfg.variant not in ("bone", "bone-mini"):
            raise BoneConfigError(
                f"only bone and bone-mini are exactly LoRA; adapter {name!r} is {cfg.variant!r}. "
                "Merge it instead (merge_and_unload) to serve it without adapters."
            )
        factors, conv = {}, False
        for lname, layer in self.bone_layers():
            if name in layer.adapters:
                b = layer.adapters[name].B.detach()
                full = b.repeat(1, layer.out_features // b.shape[1])
                factors[lname] = io.lora_tensors(full, layer.in_features)
                conv = conv or layer.is_conv1d
        return io.save_lora_folder(folder, cfg, factors, conv, self.saved_module_state(name))


def _unwrap_key(k: str) -> str:
    return k.replace("base_layer.", "")


def _features(mod: nn.Module) -> tuple[int, int]:
    w = mod.weight
    return (w.shape[1], w.shape[0]) if not isinstance(mod, nn.Linear) else (w.shape[0], w.shape[1])


def get_bone_model(model: nn.Module, config: BoneConfig, adapter_name: str = "default") -> BoneModel:
    """Add a block-affine adapter to ``model`` (changed in place) and freeze everything else.

    Example::

        model = get_bone_model(hf_model, BoneConfig(variant="bat", r=64))
        model.print_trainable_parameters()
    """
    if isinstance(model, BoneModel):
        model.add_adapter(adapter_name, config)
        return model
    return BoneModel(model, config, adapter_name)


def load_adapter(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default",
                 *, is_trainable: bool = False) -> BoneModel:
    """Load an adapter folder (ours, PEFT ``MISS`` or legacy PEFT ``BONE``) onto ``model``.

    Everything is read and checked against the model before the model changes: a folder
    whose module names or shapes do not fit raises :class:`AdapterFileError` naming the
    first bad key, and leaves ``model`` as it was.
    """
    file = io.load_adapter_folder(folder)
    base = model.model if isinstance(model, BoneModel) else model
    _check_fits(base, file, str(folder))
    config = file.config.replace(
        target_modules=sorted(file.tensors), exclude_modules=None, layers_to_transform=None,
        modules_to_save=_present(base, file.config.modules_to_save))
    if isinstance(model, BoneModel):
        model.add_adapter(adapter_name, config, active=True)
        bm = model
    else:
        bm = BoneModel(model, config, adapter_name)
    with torch.no_grad():
        for lname, layer in bm.bone_layers():
            if lname in file.tensors:
                for pname, t in file.tensors[lname].items():
                    getattr(layer.adapters[adapter_name], pname).copy_(t)
        for key, t in file.saved.items():
            _find_param(base, key).copy_(t)
    if not is_trainable:
        for p in bm.model.parameters():
            p.requires_grad_(False)
    return bm


def _present(model: nn.Module, names: list[str] | None) -> list[str] | None:
    """The entries of ``modules_to_save`` that name a module here (PEFT adds defaults)."""
    if not names:
        return None
    mods = [n for n, _ in model.named_modules()]
    kept = [n for n in dict.fromkeys(names) if any(m == n or m.endswith("." + n) for m in mods)]
    return kept or None


def _find_param(model: nn.Module, key: str) -> Tensor:
    """A parameter or buffer by name, tolerating ``base_layer.`` inside adapted modules."""
    for cand in (key, re.sub(r"\.(weight|bias)$", r".base_layer.\1", key)):
        try:
            return model.get_parameter(cand)
        except AttributeError:
            try:
                return model.get_buffer(cand)
            except AttributeError:
                continue
    raise KeyError(key)


def _check_fits(model: nn.Module, file: io.AdapterFile, where: str) -> None:
    cfg, v = file.config, VARIANTS[file.config.variant]
    for module, params in sorted(file.tensors.items()):
        try:
            mod = model.get_submodule(module)
        except AttributeError:
            raise AdapterFileError(
                f"{where}: key {module!r} names no module of {type(model).__name__}; "
                "was this adapter trained on another base model?"
            ) from None
        layer = mod if isinstance(mod, BoneLayer) else None
        if layer is None and not is_supported(mod):
            raise AdapterFileError(f"{where}: module {module!r} is a {type(mod).__name__}, not a linear layer")
        out_f, in_f = (layer.out_features, layer.in_features) if layer else _features(mod)
        try:
            expected = v.shapes(out_f, in_f, cfg.r, cfg.mini_r)
        except Exception:
            expected = {}
        for pname, t in params.items():
            if tuple(t.shape) != tuple(expected.get(pname, ())):
                raise AdapterFileError(
                    f"{where}: tensor for {module!r}.{pname} has shape {tuple(t.shape)} but "
                    f"{cfg.variant} r={cfg.r} on a ({out_f}, {in_f}) weight needs "
                    f"{expected.get(pname)}; was this adapter trained on another base model?"
                )
    for key, t in file.saved.items():
        try:
            target = _find_param(model, key)
        except KeyError:
            raise AdapterFileError(f"{where}: saved module key {key!r} names no parameter of the model") from None
        if tuple(target.shape) != tuple(t.shape):
            raise AdapterFileError(
                f"{where}: saved module key {key!r} has shape {tuple(t.shape)}, the model's is {tuple(target.shape)}"
            )


__all__ = ["BoneModel", "get_bone_model", "load_adapter", "get_adapter_params", "TrainableReport"]
