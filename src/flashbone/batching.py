"""How one optimizer step's rows become micro-batches (the rows themselves never change).

The loss of a step is normalised by the step's count of target tokens (training.py):

    loss_s = sum over the step's rows and their response tokens of -log p / n_s

so any split of the step's rows into micro-batches gives the same gradient (up to the order
of floating-point sums). ``plan_step`` uses that freedom:

    token_budget 0 (plain):  micro-batches of ``batch_size`` rows in stream order (the recipe as asked)
    token_budget T > 0:      the step's rows sorted by length (longest first), cut greedily into
                             micro-batches of at most T padded tokens (rows x longest row), each
                             at least one row: few, large micro-batches and little padding
    packing:                 rows laid end to end (first-fit decreasing) in sequences as long as
                             the step's longest row; positions restart at 0 for each row and no
                             attention mask is passed, so transformers attends within each row
                             only (its packed-sequence masks); then sequences grouped by T

With several processes every process plans every process's share of the step (row lengths
are known to all), so they agree on the number of micro-batches (FSDP meets in a collective
at each one) and on the step's token counts, with no communication.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class MicroBatch:
    """Row indices (into the dataset) of one micro-batch; ``bins`` set when packed: each
    inner list is one sequence of rows laid end to end."""

    rows: list[int]
    bins: list[list[int]] | None = None


def target_tokens(length: int, n_prompt: int) -> int:
    """Tokens a row's loss covers: positions 1..length-1 at or after the prompt (the first
    token is never a target: the loss reads ``labels[:, 1:]``)."""
    return max(0, length - max(n_prompt, 1))


def group_by_budget(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """``order``'s rows sorted longest first, cut into groups with rows x longest <= ``budget``
    (a row longer than the budget goes alone)."""
    ranked = sorted(order, key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in ranked:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def pack_bins(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: rows laid end to end in sequences of at most ``capacity`` tokens."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(order, key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def _split_largest(groups: list[list], count: int) -> list[list] | None:
    """Halve the largest groups until there are ``count`` (the processes' shares must have
    the same number of micro-batches); None when groups of one are all that is left."""
    groups = list(groups)
    while len(groups) < count:
        k = max(range(len(groups)), key=lambda j: len(groups[j]))
        g = groups[k]
        if len(g) < 2:
            return None
        groups[k : k + 1] = [g[: len(g) // 2], g[len(g) // 2 :]]
    return groups


def _equalize(plan: list[MicroBatch], count: int) -> list[MicroBatch] | None:
    if len(plan) == count:
        return plan
    if plan[0].bins is None:
        parts = _split_largest([m.rows for m in plan], count)
        return None if parts is None else [MicroBatch(g) for g in parts]
    parts = _split_largest([m.bins for m in plan], count)
    if parts is None:  # packed: then one row per sequence
        parts = _split_largest([[[i] for i in m.rows] for m in plan], count)
    return None if parts is None else [MicroBatch([i for b in bins for i in b], bins) for bins in parts]


def plan_share(share: list[int], lengths: list[int], budget: int, packing: bool) -> list[MicroBatch]:
    """One process's rows of a step as micro-batches under a token ``budget`` (> 0)."""
    if not packing:
        return [MicroBatch(g) for g in group_by_budget(share, lengths, budget)]
    capacity = max(lengths[i] for i in share)
    bins = pack_bins(share, lengths, capacity)
    per = max(1, budget // capacity)
    return [MicroBatch([i for b in bins[k : k + per] for i in b], bins[k : k + per]) for k in range(0, len(bins), per)]


def plan_step(
    shares: list[list[list[int]]], lengths: list[int], budget: int, packing: bool, rank: int
) -> list[MicroBatch]:
    """This process's micro-batches. ``shares[p]``: the plain micro-batches (row indices) of
    process ``p`` in this step; ``budget`` 0 keeps them as they are."""
    if budget <= 0 and not packing:
        return [MicroBatch(mb) for mb in shares[rank]]
    if budget <= 0:  # packing alone: the plain micro-batch's padded volume per micro-batch
        budget = max(len(mb) for s in shares for mb in s) * max(lengths[i] for s in shares for mb in s for i in mb)
    plans = [plan_share([i for mb in s for i in mb], lengths, budget, packing) for s in shares]
    count = max(len(p) for p in plans)
    plans = [_equalize(p, count) for p in plans]
    if any(p is None for p in plans):  # a share too small to split that far: the plain plan
        return [MicroBatch(mb) for mb in shares[rank]]
    return plans[rank]


def collate_packed(rows: list[dict], bins: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Sequences of rows laid end to end (``bins`` index into ``rows``), right-padded.

    ``position_ids`` restart at 0 for each row (and for the padding), which is how
    transformers tells packed rows apart; the first token of each row is never a target."""
    width = max(sum(len(rows[i]["input_ids"]) for i in b) for b in bins)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    labels = torch.full((len(bins), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(bins), width), dtype=torch.long)
    for k, b in enumerate(bins):
        at = 0
        for i in b:
            t = torch.tensor(rows[i]["input_ids"], dtype=torch.long)
            n, p = len(t), max(rows[i]["n_prompt"], 1)
            ids[k, at : at + n] = t
            if rows[i].get("labels") is not None:  # conversations: their own mask, never the first token
                labels[k, at + 1 : at + n] = torch.tensor(rows[i]["labels"][1:n], dtype=torch.long)
            else:
                labels[k, at + p : at + n] = t[p:]
            pos[k, at : at + n] = torch.arange(n)
            at += n
        pos[k, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


__all__ = ["MicroBatch", "target_tokens", "group_by_budget", "pack_bins", "plan_share", "plan_step", "collate_packed"]
