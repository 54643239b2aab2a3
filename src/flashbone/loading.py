"""Load base models and tokenizers by name: the built-in tiny base, a local folder, or a Hub id.

    "flashbone-tiny"      -> flashbone/assets/tiny (shipped in the package, see scripts/pretrain_tiny.py)
    "./path/to/folder"    -> that folder (must hold config.json)
    "owner/name"          -> Hugging Face Hub (when no local folder has that name)

Errors name the model and the way out, as :class:`ModelLoadError` (a :class:`BoneError`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Iterator

import torch

from . import quant, rwkv6
from .errors import BoneError

BUILTIN_MODEL = "flashbone-tiny"


class ModelLoadError(BoneError):
    """A model or tokenizer that cannot be found or read."""


def builtin_model_path() -> Path:
    return Path(str(resources.files("flashbone") / "assets" / "tiny"))


def is_builtin(name: str | None) -> bool:
    return name in (None, BUILTIN_MODEL)


def resolve(name: str | None) -> str:
    """A local folder path or Hub id for ``name``; local folders are checked to be HF folders."""
    if is_builtin(name):
        p = builtin_model_path()
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"the built-in model is missing from {p}; reinstall flashbone")
        return str(p)
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"--model {name}: is a file; pass a model folder (with config.json) or a Hub id")
        if not (p / "config.json").is_file():
            raise ModelLoadError(
                f"--model {name}: the folder has no config.json; is it a Hugging Face model "
                "folder? (an adapter folder goes to --adapter)"
            )
        return str(p)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_local or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name):
        raise ModelLoadError(f"--model {name}: no such folder")
    return name


def _hub_error(name: str, what: str, e: Exception) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelLoadError(
        f"--model {name}: no local folder of that name, and the {what} could not be loaded "
        f"from the Hugging Face Hub ({type(e).__name__}: {first[:200]})"
    )


def load_tokenizer(name: str | None, *, trust_remote_code: bool = False):
    """The tokenizer, with a pad token (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # missing files, offline, gated repo...
        if Path(path).is_dir():
            raise ModelLoadError(
                f"--model {name}: could not load its tokenizer ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        raise _hub_error(name, "tokenizer", e) from None
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"--model {name}: its tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars and no info logs inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _local_model_type(path: str) -> str | None:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _known_to_transformers(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        CONFIG_MAPPING[model_type]
    except KeyError:
        return False
    return True


def _register_rwkv6(name: str) -> None:
    """RWKV6 comes from flash-linear-attention, which registers it with the Auto classes on import."""
    if not _known_to_transformers(rwkv6.MODEL_TYPE) and not rwkv6.register():
        raise ModelLoadError(f"--model {name}: an RWKV6 model needs flash-linear-attention: {rwkv6.INSTALL}")


def load_model(
    name: str | None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quantize: str | None = None,
    *,
    trust_remote_code: bool = False,
):
    """An ``AutoModelForCausalLM`` in ``dtype`` on ``device``; with ``quantize`` ("4bit" / "8bit")
    its linear layers are bitsandbytes-quantised (compute in ``dtype``) and prepared for adapter
    training (:func:`flashbone.quant.prepare_for_training`); ``trust_remote_code``: let
    transformers run the model repository's own code."""
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    if _local_model_type(path) == rwkv6.MODEL_TYPE:
        _register_rwkv6(name)
    kw: dict = {}
    if quantize is not None:
        if quantize not in quant.MODES:
            raise ModelLoadError(f"--quantize {quantize!r}: use 4bit or 8bit")
        try:
            quant.check_backend(quantize, torch.device(device))
        except quant.QuantizationError as e:
            raise ModelLoadError(str(e)) from None
        kw = {"quantization_config": quant.bnb_config(quantize, dtype), "device_map": {"": torch.device(device)}}
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **kw)
    except Exception as e:
        if rwkv6.MODEL_TYPE in str(e) and not _known_to_transformers(rwkv6.MODEL_TYPE):
            _register_rwkv6(name)  # a hub RWKV6 model: retry once fla has registered it
            return load_model(name, dtype, device, quantize, trust_remote_code=trust_remote_code)
        if Path(path).is_dir():
            raise ModelLoadError(
                f"--model {name}: could not load the model ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        raise _hub_error(name, "model", e) from None
    if quantize is not None:
        quant.prepare_for_training(model)
        return model  # placed by device_map; .to() is refused for quantised models
    return model.to(device)


def pick_device(spec: str | None) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ModelLoadError(f"--device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return dev


def use_bf16(precision: str | None, device: torch.device) -> bool:
    """bf16 compute on GPUs that support it (``auto``), never on CPU unless asked."""
    if precision in (None, "auto"):
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    raise ModelLoadError(f"--precision {precision!r}: use auto, bf16 or fp32")


__all__ = [
    "BUILTIN_MODEL",
    "ModelLoadError",
    "builtin_model_path",
    "is_builtin",
    "resolve",
    "load_tokenizer",
    "load_model",
    "quiet_transformers",
    "pick_device",
    "use_bf16",
]
