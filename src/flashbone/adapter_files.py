"""Adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

    variant                  written as                      tensor keys
    bone, bone-mini, bat     PEFT "MISS" (PEFT loads it)     base_model.model.<module>.miss_block
      on nn.Linear only
    bat-row, bat-hadamard,   "FLASHBONE" (same layout,       ...<module>.miss_block (B)
    bone-ab; any variant     our own peft_type)              ...<module>.miss_A (A, bone-ab)
      on a GPT-2 Conv1D      (PEFT's MiSS adapts nn.Linear only)
    read only: legacy PEFT "BONE" folders                    ...<module>.bone_block
    export: bone/bone-mini as an exact PEFT "LORA" adapter   ...<module>.lora_A.weight / lora_B.weight

Modules trained in full (``modules_to_save``) are stored under their parameter names, as
PEFT does. Only JSON and safetensors are read: never pickle. :func:`check_fits` tells
whether a parsed folder fits a model before the model is touched.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import BoneConfig
from .errors import AdapterFileError, BoneConfigError
from .layer import BoneLayer, SavedModule, features, is_supported
from .targets import modules_to_save_names
from .variants import VARIANTS, get_variant
from .version import __version__

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
PEFT_TYPE = "FLASHBONE"
README_NAME = "README.md"  # written in FLASHBONE folders only (PEFT writes its own for MISS ones)
# Tensor key suffix per trainable tensor: PEFT's ``miss_block`` for B, ``miss_<name>`` for any
# other (``miss_A`` for bone-ab's A, and whatever a newly registered variant names its tensors).
_PARAM_KEYS = {"B": "miss_block"}
KEY_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>miss_[A-Za-z0-9]+|bone_block)(?:\.[A-Za-z0-9_\-]+)?$"
)


def _param_key(name: str) -> str:
    return _PARAM_KEYS.get(name, f"miss_{name}")


def param_name(kind: str) -> str:
    """Our parameter name for a file key's kind (``miss_block``/``bone_block`` -> ``B``, ``miss_X`` -> ``X``)."""
    return "B" if kind in ("miss_block", "bone_block") else kind.removeprefix("miss_")


@dataclass
class AdapterFile:
    """A parsed adapter folder: its config and tensors by module path."""

    config: BoneConfig
    tensors: dict[str, dict[str, Tensor]]  # module path -> {"B": ..., "A": ...}
    saved: dict[str, Tensor] = field(default_factory=dict)  # modules_to_save parameters
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (module, "B") -> file key


# PEFT's init_weights -> our variant (False is PEFT's random init of the same variant)
_FROM_INIT_WEIGHTS = {True: "bone", False: "bone", "bat": "bat", "mini": "bone-mini"}


def config_to_json(config: BoneConfig, modules: list[str], peft_loadable: bool = True) -> dict[str, Any]:
    """The ``adapter_config.json`` dict; ``modules`` are the adapted modules' full names.

    PEFT's ``MISS`` type is written only where PEFT loads it: a variant PEFT has, on layers
    PEFT's MiSS adapts (``peft_loadable``: all ``nn.Linear``; PEFT refuses a ``Conv1D``).
    Everything else is our own ``FLASHBONE`` type, which flashbone reads.
    """
    common = {
        "task_type": config.task_type,
        "base_model_name_or_path": config.base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "target_modules": sorted(modules),
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "bias": "none",
        "modules_to_save": config.modules_to_save,
    }
    if peft_loadable and get_variant(config.variant).peft_init_weights is not None:
        return {
            "peft_type": "MISS",
            "auto_mapping": None,
            **common,
            "miss_dropout": config.dropout,
            "mini_r": config.mini_r or 1,
            "init_weights": get_variant(config.variant).peft_init_weights,
        }
    return {
        "peft_type": PEFT_TYPE,
        "flashbone_version": __version__,
        **common,
        "variant": config.variant,
        "mini_r": config.mini_r,
        "dropout": config.dropout,
        "adapter_dtype": config.adapter_dtype,
    }


def config_from_json(d: dict[str, Any], where: str) -> tuple[BoneConfig, str]:
    """Our config from any supported ``adapter_config.json``; returns ``(config, format)``."""
    peft_type = d.get("peft_type")
    try:
        if peft_type in ("MISS", "BONE"):
            init = d.get("init_weights", True)
            variant = _FROM_INIT_WEIGHTS.get(init) if isinstance(init, (bool, str)) else None
            if variant is None or (peft_type == "BONE" and init == "mini"):
                raise AdapterFileError(
                    f"{where}: init_weights={init!r} is not a {peft_type} variant; expected "
                    f"true, false, 'bat'" + (" or 'mini'" if peft_type == "MISS" else "")
                )
            # PEFT accepts miss_dropout with bat and ignores it there: so do we
            dropout = 0.0 if variant == "bat" else d.get("miss_dropout", 0.0) or 0.0
            cfg = BoneConfig(
                variant=variant,
                r=int(d["r"]),
                mini_r=d.get("mini_r") if variant == "bone-mini" else None,
                target_modules=d.get("target_modules") or "all-linear",
                modules_to_save=d.get("modules_to_save"),
                dropout=float(dropout),
                base_model_name_or_path=d.get("base_model_name_or_path"),
                task_type=d.get("task_type"),
            )
            return cfg, peft_type
        if peft_type == PEFT_TYPE:
            cfg = BoneConfig(
                variant=d["variant"],
                r=int(d["r"]),
                mini_r=d.get("mini_r"),
                target_modules=d.get("target_modules") or "all-linear",
                modules_to_save=d.get("modules_to_save"),
                dropout=float(d.get("dropout", 0.0)),
                adapter_dtype=d.get("adapter_dtype", "float32"),
                base_model_name_or_path=d.get("base_model_name_or_path"),
                task_type=d.get("task_type"),
            )
            return cfg, peft_type
    except KeyError as e:
        raise AdapterFileError(f"{where}: field {e.args[0]!r} is missing") from None
    except (BoneConfigError, TypeError, ValueError) as e:
        raise AdapterFileError(f"{where}: {e}") from None
    raise AdapterFileError(
        f"{where}: peft_type {peft_type!r} is not a Bone-family adapter; flashbone reads "
        f"'MISS', legacy 'BONE' and '{PEFT_TYPE}' folders"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file gets the umask's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_adapter_folder(
    folder: str | os.PathLike,
    config: BoneConfig,
    tensors: dict[str, dict[str, Tensor]],
    saved: dict[str, Tensor] | None = None,
    *,
    peft_loadable: bool = True,
) -> Path:
    """Write one adapter (config + tensors) to ``folder``, each file atomically.

    ``peft_loadable=False`` (adapters on GPT-2 ``Conv1D`` layers) writes our own peft_type.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat: dict[str, Tensor] = {}
    for module, params in tensors.items():
        for name, t in params.items():
            flat[f"{PREFIX}{module}.{_param_key(name)}"] = t.detach().to("cpu").contiguous()
    for name, t in (saved or {}).items():
        flat[f"{PREFIX}{name}"] = t.detach().to("cpu").contiguous()
    meta = {"format": "pt", "flashbone_variant": config.variant}
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(flat, p, metadata=meta))
    cfg = config_to_json(config, list(tensors), peft_loadable)
    js = json.dumps(cfg, indent=2, sort_keys=True)
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(js + "\n"))
    if cfg["peft_type"] == PEFT_TYPE:  # a PEFT-based tool would stop at KeyError: 'FLASHBONE': say why, and the way
        readme = readme_text(config, peft_loadable)
        _atomic_write(folder / README_NAME, lambda p: Path(p).write_text(readme))
    return folder


def readme_text(config: BoneConfig, peft_loadable: bool = True) -> str:
    """README.md of a ``FLASHBONE`` folder: why PEFT cannot load it, and the ways through."""
    why = (
        f"PEFT's MiSS has no `{config.variant}` variant"
        if peft_loadable
        else "the adapted layers are GPT-2 `Conv1D`, which PEFT's MiSS does not adapt"
    )
    base = config.base_model_name_or_path or "BASE"
    return f"""---
library_name: flashbone
base_model: {base}
tags: [flashbone, bone, {config.variant}]
---
# flashbone adapter: {config.variant}, r={config.r}

`peft_type` is `FLASHBONE`: {why}, so PEFT and the tools built on it (lm-evaluation-harness's
`peft=`, vLLM, TGI) stop with `KeyError: 'FLASHBONE'`. Ways through:

- load it with flashbone (`pip install flashbone`):
  `flashbone.load_adapter(base_model, "THIS_FOLDER")`, or
  `flashbone generate --model {base} --adapter THIS_FOLDER --prompt "..."` /
  `flashbone eval --model {base} --adapter THIS_FOLDER ...`;
- for any other tool, merge it into the base first and hand the tool the plain model folder:
  `flashbone merge --base {base} --adapter THIS_FOLDER --out MERGED`, then e.g.
  `lm_eval --model hf --model_args pretrained=MERGED --tasks gsm8k`.
"""


def resolve_folder(path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a Hugging Face Hub repo id, downloaded."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise AdapterFileError(f"{p} is a file; pass the adapter folder that holds {CONFIG_NAME}")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", str(path)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(path), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
        except Exception as e:  # offline, missing repo, no permission...
            raise AdapterFileError(
                f"adapter {str(path)!r} is not a local folder and could not be fetched from "
                f"the Hugging Face Hub ({type(e).__name__}: {e})"
            ) from None
    raise AdapterFileError(f"adapter folder {str(path)!r} does not exist")


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; a corrupt or truncated file raises ``AdapterFileError``."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFileError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt: save the adapter again"
        ) from None


def load_adapter_folder(path: str | os.PathLike) -> AdapterFile:
    """Parse an adapter folder of any supported format (no model needed)."""
    folder = resolve_folder(path)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise AdapterFileError(f"{folder} has no {CONFIG_NAME}; is it an adapter folder?")
    if not w_path.is_file():
        pickles = [p.name for p in folder.glob("*.bin")]
        hint = (
            f" It holds {pickles}: flashbone never loads pickle files; convert them with peft/safetensors first."
            if pickles
            else ""
        )
        raise AdapterFileError(f"{folder} has no {WEIGHTS_NAME}.{hint}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{cfg_path} is not valid JSON ({e})") from None
    config, _ = config_from_json(raw, str(cfg_path))
    tensors: dict[str, dict[str, Tensor]] = {}
    saved: dict[str, Tensor] = {}
    keys: dict[tuple[str, str], str] = {}
    for key, t in read_safetensors(w_path).items():
        m = KEY_RE.match(key)
        if m is None:
            saved[key.removeprefix(PREFIX)] = t
            continue
        name = param_name(m["kind"])
        tensors.setdefault(m["module"], {})[name] = t
        keys[(m["module"], name)] = key
    if not tensors:
        raise AdapterFileError(f"{w_path} holds no adapter tensors (no '*.miss_block' keys)")
    expected = set(VARIANTS[config.variant].param_names)
    for module, params in tensors.items():
        if set(params) != expected:
            raise AdapterFileError(
                f"{w_path}: module {module!r} has tensors {sorted(params)} but variant "
                f"{config.variant!r} needs {sorted(expected)}"
            )
    return AdapterFile(config, tensors, saved, keys)


def lora_tensors(b_full: Tensor, in_features: int) -> tuple[Tensor, Tensor]:
    """Exact LoRA factors of a ``bone`` delta: ``A[j, i] = 1 iff i mod r == j``, ``B = B^T``.

    ``b_full`` is ``(r, out)``. Then ``lora_B @ lora_A = dW`` with scaling 1.
    """
    r = b_full.shape[0]
    idx = torch.arange(in_features) % r
    a = (idx[None, :] == torch.arange(r)[:, None]).to(b_full.dtype)
    return a, b_full.t().contiguous()


def save_lora_folder(
    folder: str | os.PathLike,
    config: BoneConfig,
    factors: dict[str, tuple[Tensor, Tensor]],
    fan_in_fan_out: bool,
    saved: dict[str, Tensor] | None = None,
) -> Path:
    """Write a PEFT ``LORA`` folder (``lora_alpha = r``, so scaling is exactly 1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {}
    for module, (a, b) in factors.items():
        flat[f"{PREFIX}{module}.lora_A.weight"] = a.detach().cpu().contiguous()
        flat[f"{PREFIX}{module}.lora_B.weight"] = b.detach().cpu().contiguous()
    for name, t in (saved or {}).items():
        flat[f"{PREFIX}{name}"] = t.detach().cpu().contiguous()
    cfg = {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": config.base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.r,
        "lora_dropout": 0.0,
        "target_modules": sorted(factors),
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": config.modules_to_save,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(flat, p, metadata={"format": "pt"}))
    js = json.dumps(cfg, indent=2, sort_keys=True)
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(js + "\n"))
    return folder


# ----------------------------------------------------------------------------- fit


def present_modules(model: nn.Module, names: list[str] | None) -> list[str] | None:
    """The entries of ``modules_to_save`` that name a module here.

    PEFT adds ``["classifier", "score"]`` for classification tasks, whichever exists.
    """
    if not names:
        return None
    mods = [n for n, _ in model.named_modules()]
    kept = [n for n in dict.fromkeys(names) if any(m == n or m.endswith("." + n) for m in mods)]
    return kept or None


def check_fits(model: nn.Module, file: AdapterFile, config: BoneConfig, where: str) -> None:
    """Raise :class:`AdapterFileError` naming the first key that does not fit ``model``."""
    v = VARIANTS[config.variant]
    for module, params in sorted(file.tensors.items()):
        key = file.keys[(module, next(iter(params)))]
        try:
            mod = model.get_submodule(module)
        except AttributeError:
            raise AdapterFileError(
                f"{where}: key {key!r} names module {module!r}, which {type(model).__name__} "
                "does not have; was this adapter trained on another base model?"
            ) from None
        if not (isinstance(mod, BoneLayer) or is_supported(mod)):
            raise AdapterFileError(f"{where}: key {key!r} names {module!r}, a {type(mod).__name__}, not a linear layer")
        out_f, in_f = features(mod)
        expected = v.shapes(out_f, in_f, config.r, config.mini_r)
        for pname, t in params.items():
            if tuple(t.shape) != tuple(expected[pname]):
                raise AdapterFileError(
                    f"{where}: key {file.keys[(module, pname)]!r} has shape {tuple(t.shape)}, but "
                    f"{config.variant} r={config.r} on {module!r} (weight ({out_f}, {in_f})) needs "
                    f"{expected[pname]}; was this adapter trained on another base model?"
                )
    saved = modules_to_save_names(model, config) if config.modules_to_save else []
    for key, t in sorted(file.saved.items()):
        owner = next((s for s in saved if key.startswith(s + ".")), None)
        target = _saved_state(model, owner).get(key[len(owner) + 1 :]) if owner else None
        if target is None:
            raise AdapterFileError(
                f"{where}: key {PREFIX + key!r} is neither an adapter tensor nor a parameter "
                f"of the modules_to_save {saved} of {type(model).__name__}"
            )
        if target.shape != t.shape:
            raise AdapterFileError(
                f"{where}: key {PREFIX + key!r} has shape {tuple(t.shape)}, the model's "
                f"{key!r} has {tuple(target.shape)}"
            )


def _saved_state(model: nn.Module, name: str) -> dict[str, Tensor]:
    mod = model.get_submodule(name)
    return (mod.original_module if isinstance(mod, SavedModule) else mod).state_dict()
