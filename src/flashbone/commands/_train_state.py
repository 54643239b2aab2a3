"""The typed state of ``flashbone train``: its settings (:class:`TrainOptions`) and what a run
builds from them (:class:`RunContext`).

    TrainOptions  one field per flag of _train_args.py (None: not given), filled in by
                  train._resolve with the recipe's defaults, then the values derived while the
                  run starts (resolved targets and fields, step count...)
    RunContext    device, precision, tokenizer, tokenized rows, the base model, held-out rows,
                  the processes, and the model with its method once attached
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..baselines import Adapted
    from ..data import Template
    from ..training import Dist


@dataclass
class TrainOptions:
    """Every setting of a training run (the flags' names; see ``flashbone train --help``)."""

    # model and data
    model: str | None = None
    data: str | None = None
    data_split: str | None = None
    data_subset: str | None = None
    query_field: str | None = None
    response_field: str | None = None
    max_samples: int | None = None
    template: str | None = None
    max_length: int | None = None
    cut_after_code: bool | None = None
    messages_field: str | None = None
    trust_remote_code: bool | None = None
    # method
    method: str | None = None
    r: int | None = None
    mini_r: int | None = None
    targets: str | list[str] | None = None
    lora_alpha: float | None = None
    quantize: str | None = None
    dropout: float | None = None
    modules_to_save: str | list[str] | None = None
    exclude: str | list[str] | None = None
    layers_to_transform: str | list[int] | None = None
    adapter_dtype: str | None = None
    init_adapter: str | None = None
    # optimisation
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    epochs: float | None = None
    max_steps: int | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    lr_for: list[str] | None = None
    seed: int | None = None
    precision: str | None = None
    device: str | None = None
    gradient_checkpointing: bool | None = None
    micro_batch_tokens: int | None = None
    packing: bool | None = None
    cuda_graphs: bool | None = None
    max_memory: float | None = None
    liger: str | None = None
    # output
    out: str | None = None
    overwrite: bool = False
    save_every: int | None = None
    keep_checkpoints: int | None = None
    report_to: str | None = None
    resume: bool = False
    stop_after: int | None = None
    nproc: int | None = None
    strategy: str | None = None
    progress: bool = True
    config: str | None = None
    # validation loss during training
    val_split: float | None = None
    val_data: str | None = None
    val_every: int | None = None
    # evaluation before and after training
    eval_task: str | None = None
    eval_data: str | None = None
    eval_samples: int | None = None
    eval_batch_size: int | None = None
    max_new_tokens: int | None = None
    # sequence classification
    task: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None

    # -- derived while the run starts (not flags) -------------------------------------------
    recipe: str = "paper"  # "tiny" for the built-in base
    proc_batch: tuple[int, int] = (1, 1)  # this process's (batch, accum) of the global batch
    work: str | None = None  # the folder the run is written into (a temp sibling of --out)
    targets_resolved: list[str] | str | None = None
    query_field_resolved: str | None = None
    response_field_resolved: str | None = None
    steps: int = 0
    micro_batch_tokens_resolved: int = 0
    val_every_resolved: int | None = None
    liger_modules: int = 0  # modules fused.apply replaced in the base (liger-kernel)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "TrainOptions":
        """The flags as parsed; a flag this class lacks is an error (a new flag needs a field)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(vars(args)) - known)
        if unknown:
            raise TypeError(f"TrainOptions has no field for the flag(s) {unknown}; add them")
        return cls(**vars(args))

    def pick(self, names) -> dict[str, Any]:
        """``{name: value}`` of the given fields (a fingerprint, a saved config)."""
        return {k: getattr(self, k) for k in names}


@dataclass
class RunContext:
    """What a run has built: filled by _train_steps.load_base, then attach_method."""

    device: "torch.device"
    bf16: bool
    tokenizer: Any
    template: "Template"
    rows: Any  # datasets.Dataset of input_ids, n_prompt (and labels for conversations)
    n_cut: int  # rows cut to --max-length
    model: "torch.nn.Module"  # the base
    eval_rows: Any = None  # rows of the accuracy evaluation before and after (--eval-task)
    val_rows: Any = None  # rows of the validation loss (--val-split / --val-data)
    dist: "Dist | None" = None  # load_base sets it (one process by default)
    adapted: "Adapted | None" = field(default=None)


__all__ = ["TrainOptions", "RunContext"]
