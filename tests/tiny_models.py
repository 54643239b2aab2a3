"""Tiny Hugging Face models built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import copy

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    RwkvConfig,
    RwkvForCausalLM,
)

VOCAB = 64
DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def llama(**kw) -> LlamaForCausalLM:
    """Llama with GQA: k_proj/v_proj are (16, 32), q/o (32, 32), MLP (64, 32)/(32, 64)."""
    return LlamaForCausalLM(LlamaConfig(**{**DECODER, **kw})).eval()


def mistral() -> MistralForCausalLM:
    return MistralForCausalLM(MistralConfig(**DECODER, sliding_window=None)).eval()


def qwen2() -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(**DECODER)).eval()


def gpt2() -> GPT2LMHeadModel:
    """GPT-2 adapts transformers' Conv1D layers (weights stored as (in, out))."""
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


def roberta_cls(num_labels: int = 3) -> RobertaForSequenceClassification:
    cfg = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return RobertaForSequenceClassification(cfg).eval()


def rwkv() -> RwkvForCausalLM:
    # rescale_every=0: RWKV otherwise rescales some weights in place when switching to eval
    cfg = RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        attention_hidden_size=32,
        intermediate_size=64,
        context_length=32,
        rescale_every=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return RwkvForCausalLM(cfg).eval()


def tokens(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def randomize_adapters(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """Give every adapter tensor non-zero values, so that comparisons mean something."""
    from flashbone import get_adapter_params

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in get_adapter_params(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)


def twin(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model and an untouched deep copy of it (the "same base" for loading)."""
    return model, copy.deepcopy(model)
