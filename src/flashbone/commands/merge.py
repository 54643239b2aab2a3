"""Merge an adapter into its base model and save a plain Hugging Face checkpoint.

  flashbone merge --base meta-llama/Llama-2-7b-hf --adapter runs/x/adapter --out merged --dtype bfloat16

Accepts flashbone adapters, PEFT MISS and legacy BONE folders, and PEFT LoRA folders (lora,
pissa, olora, dora runs). The merge is computed in float32, then cast to --dtype; the result
(safetensors, config, tokenizer) loads with AutoModelForCausalLM.from_pretrained and gives the
logits of the unmerged adapter. The folder is written as a temporary sibling and renamed into
place (flashbone.outputs), so an interrupted merge never leaves a half-written --out, and
--overwrite replaces only a folder flashbone wrote.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from ..errors import CLIError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="base model: HF hub name or folder (default: the adapter's base_model_name_or_path)")
    p.add_argument("--adapter", help="adapter folder to merge")
    p.add_argument("--out", help="output folder (must be empty or absent unless --overwrite)")
    p.add_argument("--dtype", choices=DTYPES, help="dtype of the saved weights [auto: the base's dtype]")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that flashbone wrote")
    p.add_argument("--device", help="where to merge: auto, cpu (default), cuda")
    p.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        help="the adapter was trained on a quantised base "
        "(train --quantize): merge into that base's dequantised weights, written in full precision",
    )


def _base_from_adapter(adapter: str) -> str:
    try:
        name = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError):
        name = None
    if not name:
        raise CLIError("--base is needed: the adapter does not name its base model")
    return name


def _base_dtype(base: str):
    """The dtype the base checkpoint declares (float32 when it declares none)."""
    import torch
    from transformers import AutoConfig

    from ..loading import resolve

    try:
        cfg = AutoConfig.from_pretrained(resolve(base))
    except Exception:  # the model loaded, so only an odd config ends here
        return torch.float32
    d = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(d, str):
        d = getattr(torch, d, None)
    return d if isinstance(d, torch.dtype) else torch.float32


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import baselines, loading, outputs

    if not args.adapter or not args.out:
        raise CLIError("needs --adapter DIR and --out DIR (and --base MODEL unless the adapter names it)")
    folder = outputs.plan_folder(
        args.out, overwrite=args.overwrite, inputs={"--adapter": args.adapter, "--base": args.base}
    )
    if baselines.adapter_kind(args.adapter) == "model":
        raise CLIError(f"--adapter {args.adapter} is a whole model already (nothing to merge)")
    base = args.base or _base_from_adapter(args.adapter)
    device = loading.pick_device(args.device or "cpu")
    tok = loading.load_tokenizer(base)
    if args.quantize and baselines.adapter_kind(args.adapter) != "bone":
        raise CLIError(
            f"--quantize {args.quantize}: only flashbone/MiSS adapters merge into a dequantised base "
            "here (peft would round the merge back to the quantised format); leave out --quantize "
            "to merge into the full-precision base"
        )
    model = loading.load_model(base, dtype=torch.float32, device=device, quantize=args.quantize)
    if args.quantize:
        print(
            f"the base is loaded {args.quantize} as in training; its layers are dequantised and the adapter "
            "merged into them: the result is a full-precision checkpoint",
            flush=True,
        )
    dtype = _base_dtype(base) if args.dtype in (None, "auto") else getattr(torch, args.dtype)
    with warnings.catch_warnings():  # the line above said what happens to a quantised base
        warnings.filterwarnings("ignore", message="the base is quantised")
        model = baselines.merge_into_base(baselines.attach_adapter(model, args.adapter))
    model = model.to(dtype=dtype, device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)

    def write(tmp: Path) -> None:
        with loading.quiet_transformers():
            model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    out = args.out
    outputs.write_folder(folder, "merge", write)
    print(
        f"merged {args.adapter} into {base}: {out} ({str(dtype).replace('torch.', '')}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters); load it with "
        f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return 0


__all__ = ["add_arguments", "run"]
