"""One interface over every fine-tuning method the CLI offers.

    method        built with                                  saved as (--out DIR/adapter)
    bone ...      flashbone.get_bone_model(BoneConfig)        PEFT MISS folder (bone, bone-mini, bat)
    (6 variants)                                              or flashbone's own (bat-row, ...)
    lora, dora    peft LoraConfig(r, lora_alpha[, use_dora])  PEFT LoRA folder
    pissa, olora  peft LoraConfig(init_lora_weights=...)      PEFT LoRA folder of rank 2r for the
                                                              ORIGINAL base (peft's conversion)
    full          every parameter trainable                   DIR/model: a whole HF checkpoint

:func:`attach_adapter` loads any of these folders back onto a base model (eval, merge).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from . import rwkv6
from .config import BoneConfig
from .errors import AdapterFileError, BoneConfigError
from .model import get_bone_model, load_adapter
from .variants import VARIANTS

PEFT_METHODS = ("lora", "pissa", "olora", "dora")


def bone_methods() -> tuple[str, ...]:
    """Every registered variant (:data:`flashbone.variants.VARIANTS`, read at call time)."""
    return tuple(VARIANTS)


def methods() -> tuple[str, ...]:
    """What ``--method`` accepts: the registered variants, the PEFT baselines and ``full``."""
    return bone_methods() + PEFT_METHODS + ("full",)


LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Adapted:
    """A model ready to train: call ``model(...)``; ``save(folder)`` writes the result."""

    model: nn.Module
    method: str
    save: Callable[[Path], Path]
    hf_model: nn.Module  # the transformers model inside (for gradient checkpointing, config)
    extra: dict = field(default_factory=dict)

    def named_trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.named_trainable().values())

    @property
    def n_total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def default_targets(model: nn.Module) -> list[str] | str:
    """The seven projections of Llama-like models (the papers' targets), else ``all-linear``."""
    if rwkv6.is_rwkv6(model):  # RWKV-PEFT's eight projections (flashbone.rwkv6)
        return rwkv6.default_targets()
    leaves = {name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return list(LLAMA_PROJECTIONS) if set(LLAMA_PROJECTIONS) <= leaves else "all-linear"


def parse_targets(spec: str | list | None, model: nn.Module) -> list[str] | str:
    """``--targets``: ``all-linear``, names separated by commas (``q,k,v`` means ``q_proj,...``
    when the model has those) or a YAML list; None means :func:`default_targets`."""
    if spec is None or spec == "":
        return default_targets(model)
    if isinstance(spec, str) and spec.strip() == "all-linear":
        return "all-linear"
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if rwkv6.is_rwkv6(model):  # RWKV-PEFT's names (att.key, ffn.value, key...) -> fla's
        names = rwkv6.translate(names)
    leaves = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    out = [f"{n}_proj" if n not in leaves and f"{n}_proj" in leaves else n for n in names]
    missing = [n for n in out if n not in leaves and not any(m.endswith("." + n) for m, _ in model.named_modules())]
    if missing:
        linear = sorted({name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise BoneConfigError(
            f"--targets: {missing} name no module of this model; its linear layers are named {linear}"
        )
    return out


def build(
    model: nn.Module,
    method: str,
    r: int,
    targets: list[str] | str,
    *,
    lora_alpha: float | None,
    mini_r: int | None,
    base_name: str,
    work_dir: Path | None = None,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
    bone_fields: dict | None = None,
    init_adapter: str | Path | None = None,
) -> Adapted:
    """Wrap ``model`` for training with ``method``; the caller seeds the RNG first.
    ``task_type`` (``CAUSAL_LM``, ``SEQ_CLS``) is written to the adapter's config;
    ``modules_to_save`` (e.g. a classification head) train in full and save with the adapter.

    Bone methods: ``bone_fields`` are further :class:`BoneConfig` fields (dropout, exclude_modules,
    layers_to_transform, adapter_dtype, modules_to_save); ``init_adapter`` starts from that
    adapter folder (loaded trainable) instead of a new adapter."""
    if method not in methods():
        raise BoneConfigError(f"--method {method!r} is unknown; choose one of {', '.join(methods())}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return Adapted(model, method, lambda folder: _save_full(model, folder), model)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise BoneConfigError(f"--r must be a positive integer, got {r!r}")
    if method in VARIANTS:
        if init_adapter:
            bm = load_adapter(model, init_adapter, is_trainable=True)
            bm.configs["default"] = bm.configs["default"].replace(
                base_model_name_or_path=base_name, task_type=task_type
            )
            bm.train()
            return Adapted(bm, method, lambda folder: bm.save_adapter(folder), model)
        fields = dict(bone_fields or {})
        if modules_to_save:  # the caller's (a classification head) and the user's
            fields["modules_to_save"] = list(dict.fromkeys([*modules_to_save, *(fields.get("modules_to_save") or [])]))
        cfg = BoneConfig(
            variant=method,
            r=r,
            mini_r=mini_r if VARIANTS[method].mini_r else None,
            target_modules=targets,
            base_model_name_or_path=base_name,
            task_type=task_type,
            **fields,
        )
        bm = get_bone_model(model, cfg)
        return Adapted(bm, method, lambda folder: bm.save_adapter(folder), model)
    return _build_peft(model, method, r, targets, lora_alpha, base_name, work_dir, task_type, modules_to_save)


@contextlib.contextmanager
def _peft_quiet():
    """Hide two upstream warnings that are not the user's concern: transformers' deprecation
    of ``is_gradient_checkpointing`` (peft calls it) and peft's advice to convert PiSSA/OLoRA
    adapters, which :func:`_build_peft` always does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(PiSSA|OLoRA) changes the base weights.*")
        yield


def _build_peft(
    model, method, r, targets, lora_alpha, base_name, work_dir, task_type="CAUSAL_LM", modules_to_save=None
) -> Adapted:
    from peft import LoraConfig, get_peft_model

    init = {"pissa": "pissa", "olora": "olora"}.get(method, True)
    alpha = lora_alpha if lora_alpha is not None else (2 * r if method in ("lora", "dora") else r)
    if any(
        m.weight.shape[0] < r or m.weight.shape[1] < r
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and (targets == "all-linear" or n.rpartition(".")[2] in targets)
    ):
        raise BoneConfigError(f"--r {r} is larger than a side of an adapted weight; pick a smaller --r")
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type=task_type,
        init_lora_weights=init,
        use_dora=method == "dora",
        modules_to_save=modules_to_save,
    )
    with _peft_quiet():
        pm = get_peft_model(model, cfg)
    # peft looks base_model_name_or_path up (locally, else on the Hub) when it saves: give it the
    # folder, and write the portable name into the saved adapter_config.json afterwards
    from .loading import resolve

    pm.peft_config["default"].base_model_name_or_path = resolve(base_name)
    extra = {"lora_alpha": alpha}
    init_dir = None
    if method in ("pissa", "olora"):
        # PiSSA/OLoRA change the base weights; keep the initial adapter so the result can be
        # saved as a plain LoRA adapter for the ORIGINAL base (peft's documented conversion).
        init_dir = Path(work_dir or ".") / ".initial_adapter" / "init"
        pm.peft_config["default"].init_lora_weights = True
        pm.save_pretrained(str(init_dir), save_embedding_layers=False)
        pm.peft_config["default"].init_lora_weights = init

    def save(folder: Path) -> Path:
        if init_dir is None:
            pm.save_pretrained(str(folder), save_embedding_layers=False)
        else:
            with _peft_quiet():
                pm.save_pretrained(
                    str(folder), path_initial_model_for_weight_conversion=str(init_dir), save_embedding_layers=False
                )
            shutil.rmtree(init_dir.parent, ignore_errors=True)
        cfg_file = Path(folder) / "adapter_config.json"
        saved = json.loads(cfg_file.read_text())
        saved["base_model_name_or_path"] = base_name
        cfg_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        return Path(folder)

    return Adapted(pm, method, save, model, extra)


def _save_full(model: nn.Module, folder: Path) -> Path:
    from .loading import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(str(folder))
    return Path(folder)


# -- loading back -------------------------------------------------------------------------------
def adapter_kind(folder: str | Path) -> str:
    """``bone`` (flashbone reads it: MISS, BONE, FLASHBONE), ``peft`` (another PEFT type) or
    ``model`` (a whole checkpoint, as ``--method full`` writes)."""
    p = Path(folder)
    if not p.exists():
        raise AdapterFileError(f"adapter folder {str(folder)!r} does not exist")
    if not p.is_dir():
        raise AdapterFileError(f"--adapter {folder}: is a file; pass the folder that holds adapter_config.json")
    cfg = p / "adapter_config.json"
    if not cfg.is_file():
        if (p / "config.json").is_file():
            return "model"
        raise AdapterFileError(f"--adapter {folder}: no adapter_config.json; is it an adapter folder?")
    try:
        peft_type = json.loads(cfg.read_text()).get("peft_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise AdapterFileError(f"{cfg} is not valid JSON ({e})") from None
    return "bone" if peft_type in ("MISS", "BONE", "FLASHBONE") else "peft"


def attach_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """``model`` with the adapter of ``folder`` applied (flashbone or PEFT), ready for inference."""
    kind = adapter_kind(folder)
    if kind == "model":
        raise AdapterFileError(
            f"--adapter {folder}: holds a whole model (config.json), not an adapter; pass it as --model instead"
        )
    if kind == "bone":
        return load_adapter(model, folder)
    from peft import PeftModel

    try:
        with _peft_quiet():
            return PeftModel.from_pretrained(model, str(folder))
    except Exception as e:  # corrupt file, other base model, unknown peft type...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AdapterFileError(
            f"--adapter {folder}: PEFT could not load it onto this model ({type(e).__name__}: {msg[:300]})"
        ) from None


def merge_into_base(model: nn.Module) -> nn.Module:
    """The plain transformers model with the attached adapter merged into its weights."""
    if hasattr(model, "merge_and_unload"):
        try:
            return model.merge_and_unload(safe_merge=True)
        except TypeError:
            return model.merge_and_unload()
    return model


__all__ = [
    "methods",
    "bone_methods",
    "PEFT_METHODS",
    "Adapted",
    "build",
    "default_targets",
    "parse_targets",
    "adapter_kind",
    "attach_adapter",
    "merge_into_base",
]
