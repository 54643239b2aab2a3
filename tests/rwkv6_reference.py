"""A small pure-PyTorch RWKV6 with flash-linear-attention's module tree, for CPU tests only.

fla's RWKV6ForCausalLM runs Triton kernels (GPU only; fla does not import without triton), so
the CPU tests use this copy: the same config fields, module names, parameter shapes and
state-dict keys as ``fla.models.rwkv6`` (0.6), with the WKV recurrence written as the plain
loop of fla's ``naive_recurrent_rwkv6`` and its fused norms as torch's. :func:`register`
makes ``AutoModelForCausalLM`` load ``model_type: rwkv6`` folders with it when fla is absent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput


class RefRWKV6Config(PretrainedConfig):
    model_type = "rwkv6"

    def __init__(
        self,
        hidden_size=2048,
        expand_k=0.5,
        expand_v=1.0,
        hidden_ratio=3.5,
        intermediate_size=None,
        num_hidden_layers=24,
        num_heads=4,
        proj_low_rank_dim=32,
        gate_low_rank_dim=64,
        hidden_act="sqrelu",
        norm_first=True,
        norm_bias=True,
        norm_eps=1e-5,
        vocab_size=32000,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        **kw,
    ):
        self.hidden_size, self.expand_k, self.expand_v = hidden_size, expand_k, expand_v
        self.hidden_ratio, self.intermediate_size = hidden_ratio, intermediate_size
        self.num_hidden_layers, self.num_heads = num_hidden_layers, num_heads
        self.proj_low_rank_dim, self.gate_low_rank_dim = proj_low_rank_dim, gate_low_rank_dim
        self.hidden_act, self.norm_first, self.norm_bias, self.norm_eps = hidden_act, norm_first, norm_bias, norm_eps
        self.vocab_size = vocab_size
        kw.pop("attn_mode", None), kw.pop("fuse_norm", None), kw.pop("fuse_cross_entropy", None)
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kw,
        )


def _shift(x: torch.Tensor) -> torch.Tensor:
    """fla's token_shift: x[t-1] - x[t], with x[-1] = 0."""
    return F.pad(x, (0, 0, 1, -1)) - x


class LerpLinear(nn.Module):
    def __init__(self, i: int, o: int):
        super().__init__()
        self.linear = nn.Linear(i, o, bias=False)
        self.mu = nn.Parameter(torch.zeros(i))

    def forward(self, x, delta):
        return self.linear(x + delta * self.mu)


class LoRA(nn.Module):
    def __init__(self, i: int, o: int, low: int):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(i, low, bias=False), nn.Tanh(), nn.Linear(low, o, bias=True))

    def forward(self, x):
        return self.lora(x)


class DDLerpLinear(nn.Module):
    def __init__(self, i: int, o: int, low: int | None = None):
        super().__init__()
        self.linear = nn.Linear(i, o, bias=False) if low is None else LoRA(i, o, low)

    def forward(self, x, mu, delta):
        return self.linear(x + delta * mu)


def wkv(r, k, v, w, u):
    """o_t = r_t (S + u k_t v_t^T), S <- diag(exp(w_t)) S + k_t v_t^T, per head; (B, T, H, D)."""
    B, T, H, K = r.shape
    s = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float32, device=r.device)
    out = []
    for t in range(T):
        kv = k[:, t, :, :, None].float() * v[:, t, :, None, :].float()
        out.append(((s + u[None, :, :, None] * kv) * r[:, t, :, :, None].float()).sum(-2))
        s = s * w[:, t, :, :, None].float().exp() + kv
    return torch.stack(out, 1).to(r.dtype)


class RWKV6Attention(nn.Module):
    def __init__(self, c: RefRWKV6Config):
        super().__init__()
        d, self.heads = c.hidden_size, c.num_heads
        self.key_dim, self.value_dim = round(d * c.expand_k), round(d * c.expand_v)
        self.low = c.proj_low_rank_dim
        self.x_proj = nn.Sequential(LerpLinear(d, self.low * 5), nn.Tanh(), nn.Linear(self.low * 5, d, bias=False))
        self.x_bias = nn.Parameter(torch.zeros(5, d))
        self.r_proj = DDLerpLinear(d, self.key_dim)
        self.w_proj = DDLerpLinear(d, self.key_dim, c.gate_low_rank_dim)
        self.k_proj = DDLerpLinear(d, self.key_dim)
        self.v_proj = DDLerpLinear(d, self.value_dim)
        self.g_proj = DDLerpLinear(d, self.value_dim)
        self.bonus = nn.Parameter(torch.zeros(self.heads, self.key_dim // self.heads))
        self.g_norm = nn.GroupNorm(self.heads, self.value_dim, eps=c.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    def forward(self, x):
        B, T, d = x.shape
        delta = _shift(x)
        m = self.x_proj[0](x, delta).view(B, T, -1, self.low)
        m = torch.einsum("btnr,hnr->btnh", self.x_proj[1](m), self.x_proj[2].weight.view(d, 5, -1))
        r, w, k, v, g = (m + self.x_bias).unbind(-2)
        r, w, k = (p(x, mu, delta) for p, mu in ((self.r_proj, r), (self.w_proj, w), (self.k_proj, k)))
        v, g = self.v_proj(x, v, delta), self.g_proj(x, g, delta)
        hk, hv = self.key_dim // self.heads, self.value_dim // self.heads
        o = wkv(
            r.view(B, T, -1, hk),
            k.view(B, T, -1, hk),
            v.view(B, T, -1, hv),
            -torch.exp(w.view(B, T, -1, hk)),
            self.bonus,
        )
        o = self.g_norm(o.reshape(B * T, -1)).view(B, T, -1) * F.silu(g)
        return self.o_proj(o)


class RWKV6FeedForward(nn.Module):
    def __init__(self, c: RefRWKV6Config):
        super().__init__()
        d = c.hidden_size
        inter = c.intermediate_size or 32 * ((int(d * (c.hidden_ratio or 3.5)) + 31) // 32)
        self.key = LerpLinear(d, inter)
        self.value = nn.Linear(inter, d, bias=False)
        self.receptance = LerpLinear(d, d)

    def forward(self, x):
        delta = _shift(x)
        return self.receptance(x, delta).sigmoid() * self.value(F.relu(self.key(x, delta)) ** 2)


class RWKV6Block(GradientCheckpointingLayer):
    def __init__(self, c: RefRWKV6Config, idx: int):
        super().__init__()
        ln = lambda: nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)
        if c.norm_first and idx == 0:
            self.pre_norm = ln()
        self.attn_norm, self.attn, self.ffn_norm, self.ffn = ln(), RWKV6Attention(c), ln(), RWKV6FeedForward(c)

    def forward(self, h):
        residual = self.pre_norm(h) if hasattr(self, "pre_norm") else h
        h = residual + self.attn(self.attn_norm(residual))
        return h + self.ffn(self.ffn_norm(h))


class RWKV6Model(nn.Module):
    def __init__(self, c: RefRWKV6Config):
        super().__init__()
        self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size, c.pad_token_id)
        self.layers = nn.ModuleList(RWKV6Block(c, i) for i in range(c.num_hidden_layers))
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)


class RefRWKV6ForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RefRWKV6Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def __init__(self, config: RefRWKV6Config):
        super().__init__(config)
        self.model = RWKV6Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RWKV6Attention):  # small non-zero mixing, as a trained model has
            nn.init.uniform_(module.bonus, -0.5, 0.5)

    def get_input_embeddings(self):
        return self.model.embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kw):
        h = self.model.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:  # fla zeroes padded positions before each mixer
            h = h * attention_mask[..., None].to(h.dtype)
        for layer in self.model.layers:  # checkpointed when enabled (GradientCheckpointingLayer)
            h = layer(h)
        logits = self.lm_head(self.model.norm(h))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


def register() -> None:
    """Let AutoConfig / AutoModelForCausalLM load ``rwkv6`` folders with this reference."""
    AutoConfig.register("rwkv6", RefRWKV6Config, exist_ok=True)
    AutoModelForCausalLM.register(RefRWKV6Config, RefRWKV6ForCausalLM, exist_ok=True)


def tiny(**kw) -> RefRWKV6ForCausalLM:
    cfg = dict(
        hidden_size=32,
        expand_k=1.0,
        expand_v=1.0,
        num_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        proj_low_rank_dim=4,
        gate_low_rank_dim=8,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return RefRWKV6ForCausalLM(RefRWKV6Config(**{**cfg, **kw})).eval()
