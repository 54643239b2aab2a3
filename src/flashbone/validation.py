"""Validation loss during training: held-out rows, scored every N optimizer steps.

    rows held out     --val-split F (0 < F < 1: ceil(F x rows)) or N (rows), chosen by a seeded
                      permutation of the training rows, or --val-data (rows of their own)
    val_loss(step)    sum over the held-out rows' target tokens of -log p / (their target tokens)
                      -- the training loss's definition, on the model in eval mode (no dropout),
                      without gradients
    when              after every ``val_every``-th step and after the last step

With N processes, micro-batch k of the held-out rows goes to process k mod N; every process
runs the same number of forwards (FSDP gathers parameters in lockstep: a process with no
micro-batch left reruns its first with weight 0), and the loss and token sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .batching import MicroBatch
from .data import IGNORE, DataError


def split_rows(rows, spec: float | int, seed: int):
    """(training rows, held-out rows) of a :class:`datasets.Dataset`; ``spec`` is a fraction
    (0 < spec < 1, rounded up to whole rows) or a count of rows. At least one row stays on each side."""
    n = len(rows)
    k = math.ceil(spec * n) if 0 < spec < 1 else int(spec)
    if k < 1 or k >= n:
        raise DataError(
            f"--val-split {spec:g}: holds out {k} of the {n} training rows; at least one row must "
            "stay on each side (use a fraction such as 0.05, or a smaller count)"
        )
    g = torch.Generator().manual_seed(seed * 100003 + 7919)  # not the epochs' orders (data.epoch_order)
    order = torch.randperm(n, generator=g).tolist()
    held = sorted(order[:k])
    keep = sorted(order[k:])
    return rows.select(keep), rows.select(held)


def default_every(total_steps: int) -> int:
    """About ten validation points over a run."""
    return max(1, math.ceil(total_steps / 10))


def is_val_step(step: int, every: int, total: int) -> bool:
    """``step`` counted from 1: every ``every``-th step, and the last."""
    return every > 0 and (step % every == 0 or step == total)


def micro_batches(lengths: list[int], batch_size: int) -> list[MicroBatch]:
    """The held-out rows in length order, ``batch_size`` rows a micro-batch (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [MicroBatch(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def _attention(trainer, batch: dict[str, torch.Tensor]):
    """Padding-free packing (the trainer's ``flat`` batches: one sequence, rows delimited by
    ``cu_seqlens``) needs the varlen attention around the forward, as training has."""
    if not getattr(trainer, "flat", False):
        return contextlib.nullcontext()
    from . import varlen

    cu = batch["cu_seqlens"]
    return varlen.flat_attention(trainer.unwrapped, cu, int((cu[1:] - cu[:-1]).max()))


@torch.no_grad()
def validation_loss(trainer, rows, batches: list[MicroBatch]) -> float:
    """Mean target-token loss of ``rows`` under ``trainer``'s model (see the module docstring)."""
    d = trainer.dist
    mine = batches[d.rank :: d.world]
    rounds = math.ceil(len(batches) / d.world)
    loss = torch.zeros((), device=trainer.device, dtype=torch.float64)
    count = torch.zeros((), device=trainer.device, dtype=torch.float64)
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        for k in range(rounds):
            weight = 1.0 if k < len(mine) else 0.0  # a process out of rows keeps FSDP in step
            batch = trainer._collate(mine[k] if k < len(mine) else batches[0], rows)
            with _attention(trainer, batch):
                loss += weight * trainer._loss_sum(batch).double()
            count += weight * (batch["labels"][:, 1:] != IGNORE).sum().double()
    finally:
        trainer.model.train(was_training)
    loss, count = trainer._all_sum(loss), trainer._all_sum(count)
    return float(loss) / max(float(count), 1.0)


__all__ = ["split_rows", "default_every", "is_val_step", "micro_batches", "validation_loss"]
