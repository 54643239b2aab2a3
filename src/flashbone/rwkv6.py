"""RWKV6 ("Finch") models as flash-linear-attention (fla) provides them.

fla's ``RWKV6ForCausalLM`` (model_type ``"rwkv6"``) registers itself with transformers' Auto
classes when ``fla.models`` is imported; :func:`register` does that import. Its linear layers
carry other names than the authors' RWKV-PEFT code, which the papers' scripts use::

    RWKV-PEFT (papers)     fla module                      shape (out, in), RWKV6 checkpoints
    att.receptance         attn.r_proj.linear              (d, d)
    att.key                attn.k_proj.linear              (d, d)
    att.value              attn.v_proj.linear              (d, d)
    att.gate               attn.g_proj.linear              (d, d)
    att.output             attn.o_proj                     (d, d)
    ffn.key                ffn.key.linear                  (3.5 d, d)
    ffn.value              ffn.value                       (d, 3.5 d)
    ffn.receptance         ffn.receptance.linear           (d, d)

RWKV-PEFT adapts all eight (``parts = {"att", "ffn"}``): they are the default targets here.
``--targets`` accepts either spelling; a bare ``key`` / ``value`` / ``receptance`` means both
the time-mix and the channel-mix layer, as in RWKV-PEFT. fla reads the weight of
``attn.x_proj.2`` directly (``x_proj[2].weight.view(...)``), bypassing its forward, so an
adapter there would be silently ignored: it is never a target.

fla's kernels are Triton kernels that need a GPU (the package does not even import without
``triton``). The CPU tests use a small pure-PyTorch RWKV6 of our own with fla's module names
(``tests/rwkv6_reference.py``).
"""

from __future__ import annotations

from torch import nn

MODEL_TYPE = "rwkv6"
INSTALL = 'pip install "flashbone[rwkv]"  (flash-linear-attention; its kernels need a GPU and triton)'

# RWKV-PEFT name -> fla module name (suffix of the full name)
PAPER_NAMES: dict[str, str] = {
    "att.receptance": "attn.r_proj.linear",
    "att.key": "attn.k_proj.linear",
    "att.value": "attn.v_proj.linear",
    "att.gate": "attn.g_proj.linear",
    "att.output": "attn.o_proj",
    "ffn.key": "ffn.key.linear",
    "ffn.value": "ffn.value",
    "ffn.receptance": "ffn.receptance.linear",
}
# modules whose weight fla reads without calling their forward: adapters there would do nothing
DIRECT_WEIGHT = ("attn.x_proj.2",)

# The RWKV-LM "x060" checkpoints the papers fine-tune (RWKV-x060-World-{1B6,3B,7B}), in fla's
# config terms: attention dims equal hidden (expand 1), heads of 64, FFN 3.5 x hidden, vocab 65536;
# the token-shift / decay LoRA sizes double at d=4096, as in RWKV-LM.
PAPER_CONFIGS: dict[str, dict] = {
    "1.6B": dict(hidden_size=2048, num_hidden_layers=24, num_heads=32, intermediate_size=7168),
    "3B": dict(hidden_size=2560, num_hidden_layers=32, num_heads=40, intermediate_size=8960),
    "7B": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_heads=64,
        intermediate_size=14336,
        proj_low_rank_dim=64,
        gate_low_rank_dim=128,
    ),
}
COMMON = dict(
    expand_k=1.0,
    expand_v=1.0,
    vocab_size=65536,
    hidden_act="sqrelu",
    norm_first=True,
    norm_eps=1e-5,
    proj_low_rank_dim=32,
    gate_low_rank_dim=64,
    tie_word_embeddings=False,
)


def paper_config(size: str) -> dict:
    """Config keywords of the papers' RWKV6 ``size`` ("1.6B", "3B" or "7B") for fla's RWKV6Config."""
    return {**COMMON, **PAPER_CONFIGS[size]}


def is_rwkv6(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == MODEL_TYPE


def register() -> bool:
    """Import fla so that transformers' Auto classes know ``rwkv6``; False when fla is missing."""
    try:
        import fla.models  # noqa: F401  (registers RWKV6Config / RWKV6ForCausalLM)
    except ImportError:
        return False
    return True


def translate(names: list[str]) -> list[str]:
    """RWKV-PEFT names (``att.key``, or bare ``key`` for both mixers) to fla's; others pass."""
    out: list[str] = []
    for n in names:
        if n in PAPER_NAMES:
            hits = [PAPER_NAMES[n]]
        else:
            hits = [fla for paper, fla in PAPER_NAMES.items() if paper.split(".")[1] == n] or [n]
        out += [h for h in hits if h not in out]
    return out


def default_targets() -> list[str]:
    """The eight projections RWKV-PEFT adapts."""
    return list(PAPER_NAMES.values())


__all__ = [
    "DIRECT_WEIGHT",
    "INSTALL",
    "MODEL_TYPE",
    "PAPER_CONFIGS",
    "PAPER_NAMES",
    "default_targets",
    "is_rwkv6",
    "paper_config",
    "register",
    "translate",
]
