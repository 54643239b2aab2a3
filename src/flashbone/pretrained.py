"""What makes a :class:`~flashbone.BoneModel` a good citizen of transformers, TRL and accelerate.

``transformers.Trainer`` (and TRL's trainers, built on it) special-case exactly two model types:
``PreTrainedModel`` and PEFT's ``PeftModel``. A ``BoneModel`` is a ``PreTrainedModel`` whose
inherited attributes all read through to the wrapped model (its config, embeddings, gradient
checkpointing, device...), except for the few that define the adapter's files:

    save_pretrained(dir)       writes the adapter folder (adapter_config.json +
                               adapter_model.safetensors), as PeftModel does; Trainer calls it for
                               every checkpoint, save_model and push_to_hub
    model.safetensors.index.json
                               a few lines naming adapter_model.safetensors as the checkpoint's only
                               shard, so that ``Trainer.train(resume_from_checkpoint=...)`` loads it
                               through transformers' own ``load_sharded_checkpoint``
    load_state_dict(sd)        accepts an adapter file's keys (``base_model.model.<m>.miss_block``)
    _keys_to_ignore_on_save    the frozen base weights: a checkpoint never holds them

The forward's signature is the wrapped model's (set per instance), so Trainer keeps the dataset
columns the model takes, as it does for a PeftModel.
"""

from __future__ import annotations

import inspect
import json
import os
import types
from pathlib import Path

from torch import Tensor, nn
from transformers import PreTrainedModel

from . import adapter_files

CHECKPOINT_INDEX = "model.safetensors.index.json"

# PreTrainedModel's own file methods stay (push_to_hub calls our save_pretrained)
_KEEP = {"push_to_hub", "_upload_modified_files", "_get_files_timestamps", "_is_overridden"}


def pass_through_pretrained_attributes(cls: type) -> type:
    """Make every attribute ``cls`` inherits from ``PreTrainedModel`` read (and write) the wrapped model's.

    Without this, ``bone_model.supports_gradient_checkpointing`` or ``.get_input_embeddings()``
    would run ``PreTrainedModel``'s generic defaults on the wrapper instead of the real model's.
    """
    own = {n for k in cls.__mro__ if k not in PreTrainedModel.__mro__ for n in vars(k)}
    for name in set(dir(PreTrainedModel)) - set(dir(nn.Module)) - own - _KEEP:
        setattr(
            cls,
            name,
            property(
                lambda self, n=name: getattr(self.model, n), lambda self, value, n=name: setattr(self.model, n, value)
            ),
        )
    return cls


def signed_forward(owner: nn.Module, model: nn.Module, impl) -> types.MethodType:
    """``impl`` bound to ``owner``, with ``model.forward``'s signature (what Trainer inspects)."""
    fn = types.FunctionType(impl.__code__, impl.__globals__, "forward", impl.__defaults__, impl.__closure__)
    fn.__doc__ = getattr(model.forward, "__doc__", None)
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C forward: keep *args, **kwargs
        return types.MethodType(impl, owner)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fn.__signature__ = inspect.Signature([self_param, *params])
    return types.MethodType(fn, owner)


class PretrainedAdapterFiles:
    """``save_pretrained`` / ``load_state_dict`` of a BoneModel in terms of adapter folders."""

    def _root_adapter(self) -> str | None:
        """The adapter stored in a folder's root: ``"default"``, else the active one (PEFT's layout)."""
        return "default" if "default" in self.configs else self.active_adapter

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        adapter_name: str | None = None,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        **kwargs,
    ) -> Path:
        """Write the adapter folder(s) as :meth:`save_adapter`, plus Trainer's resume index.

        ``state_dict`` and other ``PreTrainedModel.save_pretrained`` arguments (which Trainer
        passes) are accepted and not needed: the adapters are read from the model itself.
        """
        folder = Path(save_directory)
        if not is_main_process:
            return folder
        self.save_adapter(folder, adapter_name)
        root = adapter_name or self._root_adapter()
        if root in self.configs:
            keys = [
                f"model.{lname}.adapters.{root}.{p}" for lname, ps in self.adapter_tensors(root).items() for p in ps
            ]
            keys += list(self._saved_state_keys(root))
            index = {
                "metadata": {"format": "flashbone adapter"},
                "weight_map": {k: adapter_files.WEIGHTS_NAME for k in sorted(keys)},
            }
            (folder / CHECKPOINT_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return folder

    def _saved_state_keys(self, name: str) -> dict[str, str]:
        """``{our state_dict key: key in the adapter file}`` for the adapter's modules_to_save copies."""
        return {
            f"model.{sname}.copies.{name}.{k}": f"{sname}.{k}"
            for sname, mod in self.saved_modules()
            if name in mod.copies
            for k in mod.copies[name].state_dict()
        }

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        """The frozen base weights: adapter checkpoints never hold them (Trainer reads this on resume)."""
        root = self._root_adapter()
        kept = {
            f"model.{lname}.adapters.{root}.{p}" for lname, ps in self.adapter_tensors(root).items() for p in ps
        } | set(self._saved_state_keys(root))
        return [k for k in nn.Module.state_dict(self) if k not in kept]

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; an adapter file's keys load into the root adapter.

        ``base_model.model.<module>.miss_block`` (and ``.miss_A``, and ``modules_to_save``
        parameters) become that adapter's parameters, so Trainer's resume restores it exactly.
        """
        if not any(k.startswith(adapter_files.PREFIX) for k in state_dict):
            return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)
        root = self._root_adapter()
        saved = {v: k for k, v in self._saved_state_keys(root).items()}
        ours: dict[str, Tensor] = {}
        for key, t in state_dict.items():
            m = adapter_files.KEY_RE.match(key)
            if m is not None:
                ours[f"model.{m['module']}.adapters.{root}.{adapter_files.param_name(m['kind'])}"] = t
            elif key.removeprefix(adapter_files.PREFIX) in saved:
                ours[saved[key.removeprefix(adapter_files.PREFIX)]] = t
            else:
                ours[key] = t  # reported as unexpected
        return nn.Module.load_state_dict(self, ours, strict=strict, assign=assign)


__all__ = [
    "CHECKPOINT_INDEX",
    "PretrainedAdapterFiles",
    "pass_through_pretrained_attributes",
    "signed_forward",
    "PreTrainedModel",
]
