"""Model surgery: put adapters into a model, manage them, merge them, save and load them.

get_bone_model(hf_model, BoneConfig(...))  ->  BoneModel
    plan:   find targets, build every adapter (shape errors surface here)
    commit: swap nn.Linear/Conv1D -> BoneLayer, modules_to_save -> SavedModule,
            freeze the rest                                  (all or nothing)

BoneModel: forward/generate pass through; add/set/disable/delete adapters;
           merge/unmerge/merge_and_unload/unload; save_adapter/export_lora;
           a PreTrainedModel for Trainer/TRL/accelerate (save_pretrained writes
           the adapter folder; see pretrained.py)
load_adapter(hf_model, folder)  ->  BoneModel   (ours, PEFT MISS, legacy PEFT BONE)
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from . import adapter_files, quant
from .config import BoneConfig
from .errors import BoneConfigError, MergeError
from .layer import AdapterModule, BlockAdapter, BoneLayer, SavedModule, compact_weights, features
from .pretrained import PretrainedAdapterFiles, PreTrainedModel, pass_through_pretrained_attributes, signed_forward
from .targets import find_targets, modules_to_save_names


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
        return (
            f"trainable params: {self.trainable:,} (adapters {self.adapter:,}, "
            f"modules_to_save {self.modules_to_save:,}) || all params: {self.total:,} "
            f"|| trainable%: {pct:.4f}"
        )


def get_adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter parameter (all adapters, active or not) by its full name.

    Any module that follows the :class:`AdapterModule` protocol (``adapter_params()``
    lists its adapter parameter names) is included, as in torchtune.
    """
    return {
        f"{name}.{p}" if name else p: mod.get_parameter(p)
        for name, mod in model.named_modules()
        if isinstance(mod, AdapterModule)
        for p in mod.adapter_params()
    }


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name or ""):
        raise BoneConfigError(f"adapter name {name!r} is invalid: use letters, digits, '_' or '-', no dots")


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


@pass_through_pretrained_attributes
class BoneModel(PretrainedAdapterFiles, PreTrainedModel):
    """A model with block-affine adapters in its linear layers.

    The wrapped model is changed in place (its target layers become :class:`BoneLayer`,
    its ``modules_to_save`` become :class:`SavedModule`); attributes not found here are
    looked up on it, so ``bone_model.config`` and ``bone_model.generate(...)`` work as on
    the original. It is a ``transformers.PreTrainedModel`` (see ``flashbone.pretrained``):
    ``Trainer``/``SFTTrainer`` save adapter-folder checkpoints through
    :meth:`save_pretrained` and resume from them.
    """

    def __init__(self, model: nn.Module, config: BoneConfig, adapter_name: str = "default"):
        nn.Module.__init__(self)  # not PreTrainedModel's: the config and its checks are the wrapped model's
        self.model = model
        self.configs: dict[str, BoneConfig] = {}
        self.active_adapters: list[str] = []
        self.forward = signed_forward(self, model, BoneModel.forward)
        self.add_adapter(adapter_name, config)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default", *, is_trainable: bool = False
    ) -> "BoneModel":
        """``load_adapter(model, folder, ...)``, named as ``PeftModel.from_pretrained``."""
        return load_adapter(model, folder, adapter_name, is_trainable=is_trainable)

    def load_adapter(self, folder: str | os.PathLike, adapter_name: str, *, is_trainable: bool = False) -> None:
        """Load a further adapter folder into this model (inactive, as in PEFT)."""
        load_adapter(self, folder, adapter_name, is_trainable=is_trainable)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def bone_layers(self) -> Iterator[tuple[str, BoneLayer]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, BoneLayer))

    def saved_modules(self) -> Iterator[tuple[str, SavedModule]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, SavedModule))

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
        planned: list[tuple[str, nn.Module, BlockAdapter]] = []
        for tname in find_targets(self.model, config):  # plan: nothing changes before commit
            mod = self.model.get_submodule(tname)
            if isinstance(mod, BoneLayer) and name in mod.adapters:
                raise BoneConfigError(f"{tname} already holds an adapter named {name!r}")
            out_f, in_f = features(mod)
            w = mod.weight
            planned.append(
                (
                    tname,
                    mod,
                    BlockAdapter(
                        config.variant,
                        config.r,
                        out_f,
                        in_f,
                        config.mini_r,
                        config.dropout,
                        config.init,
                        config.torch_dtype(w.dtype),
                        w.device,
                        where=tname,
                    ),
                )
            )
        save = modules_to_save_names(self.model, config)
        for tname, mod, adapter in planned:  # commit
            if not isinstance(mod, BoneLayer):
                mod = BoneLayer(mod)
                _replace(self.model, tname, mod)
            mod.add_adapter(name, adapter, active=False)
        for sname in save:
            mod = self.model.get_submodule(sname)
            if not isinstance(mod, SavedModule):
                mod = SavedModule(mod)
                _replace(self.model, sname, mod)
            mod.add_copy(name)
        self.configs[name] = config
        if active or (active is None and len(self.configs) == 1):
            self.set_adapter(name)
        else:
            self.set_adapter(self.active_adapters)

    def set_adapter(self, names: str | list[str]) -> None:
        """Make ``names`` the active (and trainable) adapters, in this order."""
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            if n not in self.configs:
                raise BoneConfigError(f"no adapter named {n!r}; adapters: {self.adapter_names}")
        self.active_adapters = names
        for p in self.model.parameters():  # freeze everything, then unfreeze the active
            p.requires_grad_(False)
        for _, mod in [*self.bone_layers(), *self.saved_modules()]:
            mod.set_active(names)
            for n, sub in (mod.adapters if isinstance(mod, BoneLayer) else mod.copies).items():
                sub.requires_grad_(n in names)

    @property
    def active_adapter(self) -> str | None:
        """The first active adapter (PEFT's name for it)."""
        return self.active_adapters[0] if self.active_adapters else None

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter everywhere (it must not be merged)."""
        if name not in self.configs:
            raise BoneConfigError(f"no adapter named {name!r}; adapters: {self.adapter_names}")
        merged = [n for n, layer in self.bone_layers() if name in layer.merged_adapters]
        if merged:
            raise MergeError(f"adapter {name!r} is merged into {merged[0]!r}; call unmerge_adapter() first")
        for _, layer in self.bone_layers():
            if name in layer.adapters:
                layer.delete_adapter(name)
        for sname, mod in list(self.saved_modules()):
            if name in mod.copies:
                del mod.copies[name]
            if not mod.copies:
                _replace(self.model, sname, mod.original_module)
        del self.configs[name]
        self.set_adapter([a for a in self.active_adapters if a != name] or self.adapter_names[:1])

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """``with model.disable_adapter(): ...`` runs the base model (original heads too)."""
        if any(layer.merged_adapters for _, layer in self.bone_layers()):
            raise MergeError("cannot disable adapters while some are merged; call unmerge_adapter() first")
        mods = [m for _, m in [*self.bone_layers(), *self.saved_modules()]]
        for m in mods:
            m.adapters_disabled = True
        try:
            yield
        finally:
            for m in mods:
                m.adapters_disabled = False

    # -- parameters -----------------------------------------------------------------------
    def trainable_report(self) -> TrainableReport:
        adapter = sum(p.numel() for p in get_adapter_params(self.model).values() if p.requires_grad)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return TrainableReport(adapter, trainable - adapter, total)

    def print_trainable_parameters(self) -> None:
        print(self.trainable_report())

    # -- merge ----------------------------------------------------------------------------
    def merge_adapter(
        self, adapter_names: list[str] | None = None, *, safe_merge: bool = False, keep_original: bool = False
    ) -> None:
        """Merge adapters (default: the active ones) into the base weights.

        ``safe_merge`` computes every merged weight on a copy first and refuses NaN/Inf
        before any layer changes. ``keep_original`` stores the old weights, so that
        :meth:`unmerge_adapter` is exact and needs no inverse.
        """
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        for n in names:
            if n not in self.configs:
                raise BoneConfigError(f"no adapter named {n!r}; adapters: {self.adapter_names}")
        todo = [
            (lname, layer, [n for n in names if n in layer.adapters and n not in layer.merged_adapters])
            for lname, layer in self.bone_layers()
        ]
        if safe_merge:
            for lname, layer, ns in todo:
                w = layer.merged_weight(ns).to(layer.weight.dtype) if ns else None
                if w is not None and not torch.isfinite(w).all():
                    raise MergeError(f"merging {ns} into {lname!r} gives NaN/Inf weights; nothing was merged")
        for _, layer, ns in todo:
            layer.merge(ns, keep_original=keep_original)

    def unmerge_adapter(self) -> None:
        """Undo every merge; checks every layer first, so a singular block changes nothing."""
        layers = [(n, layer) for n, layer in self.bone_layers() if layer.merged_adapters]
        for lname, layer in layers:
            try:
                layer.unmerged_weight()
            except MergeError as e:
                raise MergeError(f"{lname}: {e}") from None
        for _, layer in layers:
            layer.unmerge()

    def _unwrap(self, merged: bool) -> nn.Module:
        for name, layer in list(self.bone_layers()):
            compact_weights(layer.base_layer)  # weights padded for the GPU kernels: contiguous again
            _replace(self.model, name, layer.base_layer)
        for name, mod in list(self.saved_modules()):
            _replace(self.model, name, mod.current if merged else mod.original_module)
        return self.model

    def merge_and_unload(self, *, safe_merge: bool = False, adapter_names: list[str] | None = None) -> nn.Module:
        """Merge adapters (default: the active ones) and return the plain model.

        Trained ``modules_to_save`` copies of the active adapter replace the originals. A
        quantised (bitsandbytes) base is first dequantised into full-precision ``nn.Linear``
        layers (:func:`flashbone.quant.dequantize_`, with a warning): the result is a plain
        full-precision model holding the weights the adapter was trained against.
        """
        self._dequantize_base()
        self.merge_adapter(adapter_names, safe_merge=safe_merge)
        return self._unwrap(merged=True)

    def _dequantize_base(self) -> None:
        if not any(quant.is_quantized(m) for m in self.model.modules()):
            return
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        dtype = emb.weight.dtype if emb is not None and emb.weight.is_floating_point() else torch.bfloat16
        names = quant.dequantize_(self.model, dtype)
        for _, layer in self.bone_layers():
            layer.refresh_base()
        warnings.warn(
            f"the base is quantised (bitsandbytes): its {len(names)} quantised layers were dequantised "
            f"to {str(dtype).replace('torch.', '')} and the adapter merged into them; the result is a "
            "full-precision model (save_pretrained writes a full-precision checkpoint)",
            stacklevel=3,
        )

    def unload(self) -> nn.Module:
        """Return the original model: adapters removed, merges undone, original heads back."""
        self.unmerge_adapter()
        return self._unwrap(merged=False)

    # -- files ----------------------------------------------------------------------------
    def _name(self, name: str | None) -> str:
        name = name or self.active_adapter
        if name not in self.configs:
            raise BoneConfigError(f"no adapter named {name!r}; adapters: {self.adapter_names}")
        return name

    def adapter_tensors(self, name: str | None = None) -> dict[str, dict[str, Tensor]]:
        """``{module name: {"B": tensor, ...}}`` of one adapter (default: the active one)."""
        name = self._name(name)
        return {lname: layer.adapters[name].tensors() for lname, layer in self.bone_layers() if name in layer.adapters}

    def saved_module_state(self, name: str | None = None) -> dict[str, Tensor]:
        """The adapter's ``modules_to_save`` copies, keyed as in the unwrapped model."""
        name = self._name(name)
        return {
            f"{sname}.{k}": v
            for sname, mod in self.saved_modules()
            if name in mod.copies
            for k, v in mod.copies[name].state_dict().items()
        }

    def save_adapter(self, folder: str | os.PathLike, adapter_name: str | None = None) -> Path:
        """Save adapters in PEFT's layout.

        With ``adapter_name``: that adapter, in ``folder``. Without: every adapter,
        ``"default"`` in ``folder`` and each other one in ``folder/<name>``, as PEFT's
        ``save_pretrained`` does; load one with ``load_adapter(model, folder/<name>)``.
        """
        folder = Path(folder)
        names = [self._name(adapter_name)] if adapter_name else self.adapter_names
        for n in names:
            sub = folder if adapter_name or n == "default" else folder / n
            conv = any(layer.is_conv1d for _, layer in self.bone_layers() if n in layer.adapters)
            adapter_files.save_adapter_folder(
                sub, self.configs[n], self.adapter_tensors(n), self.saved_module_state(n), peft_loadable=not conv
            )
        return folder

    def export_lora(self, folder: str | os.PathLike, adapter_name: str | None = None) -> Path:
        """Write a ``bone`` / ``bone-mini`` adapter as an exact PEFT LoRA adapter."""
        name = self._name(adapter_name)
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
                factors[lname] = adapter_files.lora_tensors(full, layer.in_features)
                conv = conv or layer.is_conv1d
        return adapter_files.save_lora_folder(folder, cfg, factors, conv, self.saved_module_state(name))


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


def load_adapter(
    model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default", *, is_trainable: bool = False
) -> BoneModel:
    """Load an adapter folder (ours, PEFT ``MISS`` or legacy PEFT ``BONE``) onto ``model``.

    Everything is read and checked against the model before the model changes: a folder
    whose module names or shapes do not fit raises :class:`AdapterFileError` naming the
    first bad key, and leaves ``model`` as it was. On a plain model the adapter is active,
    and without ``is_trainable`` everything is frozen and the model is put in eval mode
    (as ``PeftModel.from_pretrained``). On a :class:`BoneModel` the adapter joins inactive
    and frozen, as in PEFT: ``set_adapter`` activates it (and makes it trainable).
    """
    file = adapter_files.load_adapter_folder(folder)
    base = model.model if isinstance(model, BoneModel) else model
    config = file.config.replace(
        target_modules=sorted(file.tensors),
        exclude_modules=None,
        layers_to_transform=None,
        modules_to_save=adapter_files.present_modules(base, file.config.modules_to_save),
    )
    adapter_files.check_fits(base, file, config, str(folder))
    bm = get_bone_model(model, config, adapter_name)
    with torch.no_grad():
        for lname, layer in bm.bone_layers():
            for pname, t in file.tensors.get(lname, {}).items():
                layer.adapters[adapter_name].get_parameter(pname).copy_(t)
        for sname, mod in bm.saved_modules():
            state = {k[len(sname) + 1 :]: t for k, t in file.saved.items() if k.startswith(sname + ".")}
            if adapter_name in mod.copies and state:
                mod.copies[adapter_name].load_state_dict(state, strict=False)
    if not is_trainable and bm.active_adapters == [adapter_name]:
        for p in bm.model.parameters():
            p.requires_grad_(False)
        bm.eval()
    return bm


__all__ = ["BoneModel", "get_bone_model", "load_adapter", "get_adapter_params", "TrainableReport"]
