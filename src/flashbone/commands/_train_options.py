"""``flashbone train`` flags for what the library already has: BoneConfig fields and --init-adapter.

--dropout P                     BoneConfig.dropout (bone, bone-mini)
--modules-to-save a,b           BoneConfig.modules_to_save (trained in full, saved with the adapter)
--exclude a,b | REGEX           BoneConfig.exclude_modules
--layers-to-transform 0,1       BoneConfig.layers_to_transform
--adapter-dtype float32|auto|.. BoneConfig.adapter_dtype
--init-adapter DIR              start from an adapter folder (ours, PEFT MISS, legacy BONE): its
                                variant, r, mini_r and targets, unless flags say the same thing
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ..errors import CLIError
from ._train_state import TrainOptions

BONE_FLAGS = ("dropout", "modules_to_save", "exclude", "layers_to_transform", "adapter_dtype", "init_adapter")


def add_method_arguments(g: argparse._ArgumentGroup) -> None:
    """Append the flags to the "method" group."""
    g.add_argument("--dropout", type=float, help="Bone/Bat: dropout on the adapter's input (bone, bone-mini) [0]")
    g.add_argument(
        "--modules-to-save",
        help="comma-separated modules trained in full and saved with the adapter (e.g. score, lm_head)",
    )
    g.add_argument("--exclude", help="comma-separated module names, or a regex, never to adapt")
    g.add_argument("--layers-to-transform", help="comma-separated decoder-layer indices to adapt (default: all)")
    g.add_argument(
        "--adapter-dtype",
        help="storage dtype of adapter tensors: float32 (default), auto (the base's), bfloat16, float16",
    )
    g.add_argument(
        "--init-adapter",
        metavar="DIR",
        help="start from this adapter folder (flashbone, PEFT MISS or "
        "legacy BONE); keeps its variant, r and targets (flags may repeat them, not contradict them)",
    )


@dataclass
class BoneOptions:
    """The BoneConfig fields the train flags set (None: the library's default)."""

    dropout: float | None = None
    modules_to_save: list[str] | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | None = None
    adapter_dtype: str | None = None
    init_adapter: str | None = None

    def config_fields(self) -> dict:
        """The BoneConfig fields besides ``modules_to_save`` (which every adapter method takes)."""
        fields = {
            "dropout": self.dropout,
            "exclude_modules": self.exclude_modules,
            "layers_to_transform": self.layers_to_transform,
            "adapter_dtype": self.adapter_dtype,
        }
        return {k: val for k, val in fields.items() if val is not None}


def _names(value) -> list[str] | None:
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    return [str(s).strip() for s in items if str(s).strip()] or None


def bone_options(v: TrainOptions) -> BoneOptions:
    """Parse and check the flags (before any model loads). --modules-to-save applies to every
    adapter method (PEFT's LoraConfig has the same field); the others to the Bone/Bat variants."""
    from ..baselines import PEFT_METHODS, bone_methods

    bone_only = [k for k in BONE_FLAGS if k != "modules_to_save" and getattr(v, k) is not None]
    if bone_only and v.method not in bone_methods():
        raise CLIError(
            f"--{bone_only[0].replace('_', '-')} applies to the Bone/Bat methods "
            f"({', '.join(bone_methods())}), not --method {v.method}"
        )
    if v.modules_to_save is not None and v.method not in (*bone_methods(), *PEFT_METHODS):
        raise CLIError(f"--modules-to-save applies to adapter methods; --method {v.method} already trains every module")
    if v.dropout is not None and not 0.0 <= v.dropout < 1.0:
        raise CLIError(f"--dropout must be in [0, 1), got {v.dropout}")
    layers = _names(v.layers_to_transform)
    try:
        layers = [int(n) for n in layers] if layers else None
    except ValueError:
        raise CLIError(f"--layers-to-transform takes comma-separated integers, got {v.layers_to_transform!r}") from None
    exclude = v.exclude  # a regex when it looks like one, else names
    if not (isinstance(exclude, str) and any(c in exclude for c in "\\^$*+?()[]{}|")):
        exclude = _names(exclude)
    opts = BoneOptions(
        dropout=v.dropout,
        modules_to_save=_names(v.modules_to_save),
        exclude_modules=exclude or None,
        layers_to_transform=layers,
        adapter_dtype=v.adapter_dtype,
        init_adapter=v.init_adapter,
    )
    if v.method in bone_methods() and not opts.init_adapter:  # the library's own checks, before loading
        from ..config import BoneConfig
        from ..errors import BoneConfigError
        from ..variants import VARIANTS

        try:
            BoneConfig(
                variant=v.method, r=v.r, mini_r=v.mini_r if VARIANTS[v.method].mini_r else None, **opts.config_fields()
            )
        except BoneConfigError as e:
            flag = next((f"--{k.replace('_', '-')}" for k in ("dropout", "adapter_dtype") if k in str(e)), "")
            raise CLIError(f"{flag + ': ' if flag else ''}{e}") from None
    return opts


def apply_init_adapter(v: TrainOptions) -> None:
    """With --init-adapter: the folder's variant, r and mini_r, unless flags contradict them (one error)."""
    if not v.init_adapter:
        return
    from .. import adapter_files
    from ..errors import AdapterFileError

    folder = v.init_adapter
    try:
        cfg = adapter_files.load_adapter_folder(folder).config
    except AdapterFileError as e:
        raise CLIError(f"--init-adapter {folder}: {e}") from None
    for flag, key, have in (
        ("--method", "method", cfg.variant),
        ("--r", "r", cfg.r),
        ("--mini-r", "mini_r", cfg.mini_r),
    ):
        if getattr(v, key) is not None and getattr(v, key) != have:
            raise CLIError(
                f"--init-adapter {folder} holds a {cfg.variant} adapter with r={cfg.r}"
                + (f", mini_r={cfg.mini_r}" if cfg.mini_r else "")
                + f"; {flag} {getattr(v, key)} contradicts it (leave {flag} out to keep the adapter's)"
            )
    fixed = [k for k in ("targets", *BONE_FLAGS[:-1]) if getattr(v, k) is not None]
    if fixed:
        raise CLIError(
            f"--init-adapter {folder} fixes the adapter's settings; leave --{fixed[0].replace('_', '-')} out"
        )
    v.method, v.r, v.mini_r = cfg.variant, cfg.r, cfg.mini_r


def warmup_steps(v: TrainOptions, total: int) -> int:
    """--warmup-steps, or --warmup-ratio of ``total`` steps (rounded up); one of them at most."""
    steps, ratio = v.warmup_steps, v.warmup_ratio
    if steps is not None and ratio is not None:
        raise CLIError("--warmup-steps and --warmup-ratio both set; give one of them")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise CLIError(f"--warmup-steps must be a non-negative integer, got {steps!r}")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise CLIError(f"--warmup-ratio must be in [0, 1), got {ratio}")
    return int(steps) if steps is not None else math.ceil(ratio * total) if ratio else 0


def check_validation(v: TrainOptions) -> None:
    """--val-split / --val-data / --val-every: one source of held-out rows, sizes in range."""
    split, data, every = v.val_split, v.val_data, v.val_every
    if split is not None and data is not None:
        raise CLIError("--val-split and --val-data both set; give one of them")
    if split is not None and not (0 < split < 1 or (split >= 1 and float(split).is_integer())):
        raise CLIError(f"--val-split must be a fraction in (0, 1) or a whole number of rows, got {split:g}")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise CLIError(f"--val-every must be a positive integer, got {every!r}")
        if split is None and data is None:
            raise CLIError("--val-every needs held-out rows: add --val-split F|N or --val-data FILE")


def lr_for(v: TrainOptions, names: list[str] | None = None) -> dict[str, float]:
    """--lr-for NAME=LR (repeatable): parameters whose name holds NAME train at LR.

    With ``names`` (the trainable parameter names), a NAME that matches none is an error."""
    out: dict[str, float] = {}
    items = [part for chunk in v.lr_for or [] for part in str(chunk).split(",") if part.strip()]
    for item in items:  # several processes get "a=1e-3,b=1e-4" back as one flag value
        key, sep, val = str(item).partition("=")
        try:
            out[key.strip()] = float(val)
            if not sep or not key.strip() or not out[key.strip()] > 0:
                raise ValueError
        except ValueError:
            raise CLIError(
                f"--lr-for {item!r}: expected NAME=LR with a positive LR, e.g. --lr-for lm_head=1e-4"
            ) from None
    for key in out:
        if names is not None and not any(key in n for n in names):
            raise CLIError(f"--lr-for {key}: no trainable parameter's name holds {key!r}")
    return out


def report_to(v: TrainOptions) -> tuple[str, ...]:
    """--report-to: ``tensorboard`` (default), ``wandb``, both comma-separated, or ``none``."""
    spec = v.report_to or "tensorboard"
    names = tuple(dict.fromkeys(s.strip() for s in str(spec).split(",") if s.strip()))
    bad = [n for n in names if n not in ("tensorboard", "wandb", "none")]
    if bad or ("none" in names and len(names) > 1):
        raise CLIError(f"--report-to {spec!r}: use tensorboard, wandb, tensorboard,wandb or none")
    if "wandb" in names:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise CLIError("--report-to wandb: wandb is not installed; pip install wandb")
    return () if names == ("none",) else names


__all__ = [
    "check_validation",
    "BONE_FLAGS",
    "warmup_steps",
    "lr_for",
    "report_to",
    "BoneOptions",
    "add_method_arguments",
    "apply_init_adapter",
    "bone_options",
]
