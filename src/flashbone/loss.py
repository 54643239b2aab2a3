"""The step's loss without the full logits tensor: the output head on target tokens only, in
chunks whose logits are recomputed in backward instead of kept.

    model forward, head hooked:  h = the head's input (B, T, H); the head itself gets h[:, :0]
    targets (picked on the host while collating, no device sync):
        pos = {b*T + t : labels[b, t+1] != -100},   y = labels[b, t+1]
    loss_sum = sum over chunks k of CE_sum(head(h.flat[pos_k]).float(), y_k)    (chunks of C tokens;
               each chunk is checkpointed: only h is kept, its logits are recomputed in backward)

The plain loss keeps bf16 logits, their float32 copy and the log-softmax for backward: about
10 bytes x B*T*V (9.6k tokens x 32000 classes: 3 GB) and spends the head on prompt and padding
tokens too. Chunked: about 10 bytes x C*V at any time and the head on target tokens only.

Only for models whose forward is ``logits = head(hidden)`` and nothing after it
(``CHUNKED_MODEL_TYPES``): softcapped or scaled logits (Gemma 2/3, Cohere, Granite) take the
plain loss, since computing ``head(h)`` here would leave their scaling out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .batching import IGNORE

CHUNK_TOKENS = 4096  # 4096 x 32000 float32 logits: 0.5 GB per chunk
# causal LMs whose forward ends in ``logits = self.<head>(hidden_states[:, slice, :])``
CHUNKED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gpt2", "gpt_neox", "starcoder2", "smollm3"}
)
# config fields that change logits after the head in some architecture: any set one means plain
_POST_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions ``b*T + t`` of the tokens that predict a target (``labels[b, t+1]`` is
    not ignored), and those targets; from a (CPU) labels tensor of shape (B, T)."""
    width = labels.shape[1]
    shifted = labels[:, 1:]
    b, t = (shifted != IGNORE).nonzero(as_tuple=True)
    return b * width + t, shifted[b, t]


def _output_head(model: nn.Module) -> tuple[nn.Module, object] | None:
    """The first transformers model inside ``model`` with an output head, and its config."""
    for m in model.modules():
        get = getattr(m, "get_output_embeddings", None)
        cfg = getattr(m, "config", None)
        if get is None or cfg is None or not hasattr(cfg, "model_type"):
            continue
        try:
            head = get()
        except (AttributeError, NotImplementedError):
            head = None
        if isinstance(head, nn.Module):
            return head, cfg
    return None


class HeadCapture:
    """A forward pre-hook on the output head: while active, it keeps the head's input and
    passes the head an empty slice of it, so the model computes no logits."""

    def __init__(self, head: nn.Module):
        self.head = head
        self.hidden: torch.Tensor | None = None
        self.active = False
        head.register_forward_pre_hook(self._hook)

    @classmethod
    def attach(cls, model: nn.Module) -> HeadCapture | None:
        """A capture on ``model``'s output head when its architecture allows the chunked loss."""
        found = _output_head(model)
        if found is None:
            return None
        head, cfg = found
        if cfg.model_type not in CHUNKED_MODEL_TYPES or any(getattr(cfg, f, None) for f in _POST_HEAD_FIELDS):
            return None
        return cls(head)

    def _hook(self, module: nn.Module, args: tuple):
        if not self.active:
            return None
        self.hidden = args[0]
        return (args[0].narrow(-2, 0, 0),) + tuple(args[1:])

    def __enter__(self) -> HeadCapture:
        self.active, self.hidden = True, None
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def take(self) -> torch.Tensor:
        hidden, self.hidden = self.hidden, None
        if hidden is None:
            raise RuntimeError("the model's forward did not call its output head")
        return hidden


def _chunk_ce(head: nn.Module, flat: torch.Tensor, pos: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = head(flat.index_select(0, pos))
    return F.cross_entropy(logits.float(), y, reduction="sum")


def chunked_loss_sum(
    head: nn.Module, hidden: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK_TOKENS
) -> torch.Tensor:
    """Sum of the token cross-entropies at ``positions`` of ``hidden`` (B, T, H) against
    ``targets``, ``chunk`` tokens at a time (see the module docstring)."""
    flat = hidden.flatten(0, -2)
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for s in range(0, positions.shape[0], chunk):
        p, y = positions[s : s + chunk], targets[s : s + chunk]
        if torch.is_grad_enabled() and flat.requires_grad:
            # (no random op inside: no RNG state to save and restore per chunk)
            total = total + checkpoint(_chunk_ce, head, flat, p, y, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + _chunk_ce(head, flat, p, y)
    return total


__all__ = ["HeadCapture", "chunked_loss_sum", "target_positions", "CHUNKED_MODEL_TYPES", "CHUNK_TOKENS"]
