"""The training loop's CUDA-only fast paths against their references, on a small Llama (bf16).

    PYTHONPATH=src python scripts/gpu_checks.py

- padding-free packing: one flat sequence through ``torch.nn.attention.varlen`` against the
  same rows padded (SDPA with a mask): loss and adapter gradients;
- ``flashbone.fused`` (liger-kernel RMSNorm, SwiGLU) against the model's own modules: logits
  and gradients;
- the chunked loss against the plain loss over full logits.
Prints one line per check with the relative differences; exits 1 if one is off by more
than bf16 allows (2e-2).
"""

import copy
import inspect
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flashbone import fused, varlen
from flashbone.batching import collate_packed
from flashbone.config import BoneConfig
from flashbone.data import collate
from flashbone.loss import HeadCapture, chunked_loss_sum, target_positions
from flashbone.model import get_bone_model

TOL = 2e-2


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=4000,
        max_position_embeddings=1024,
    )
    cfg._attn_implementation = "sdpa"
    m = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
    m = get_bone_model(m, BoneConfig(variant="bone", r=64, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return m


def _rows(n=12):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        length = int(torch.randint(40, 600, (1,), generator=g))
        out.append({"input_ids": torch.randint(3, 4000, (length,), generator=g).tolist(), "n_prompt": length // 3})
    return out


def _run(model, batch, flat=False, chunked=False):
    model.zero_grad()
    b = {k: v.cuda() for k, v in batch.items()}
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids") if k in b}
    ctx = varlen.flat_attention(model, b["cu_seqlens"], 600) if flat else torch.enable_grad()
    with ctx, torch.autocast("cuda", torch.bfloat16):
        if chunked:
            cap = HeadCapture.attach(model)
            with cap:
                model(**inputs, use_cache=False)
            pos, y = target_positions(batch["labels"])
            loss = chunked_loss_sum(cap.head, cap.take(), pos.cuda(), y.cuda())
        else:
            logits = model(**inputs, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), reduction="sum"
            )
        if flat:
            varlen.check_calls(varlen.num_layers(model))
        loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach().float(), grads


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def main() -> int:
    from torch.nn.attention.varlen import varlen_attn

    print("varlen_attn", inspect.signature(varlen_attn))
    print("liger-kernel installed:", fused.available())
    rows = _rows()
    padded = collate(rows, 0)
    flat = collate_packed(rows, [list(range(len(rows)))], 0)
    flat["cu_seqlens"] = varlen.cu_seqlens([len(r["input_ids"]) for r in rows])
    model = _model()
    ref_loss, ref_g = _run(model, padded)
    bad = 0
    checks = {
        "varlen": _run(model, flat, flat=True),
        "chunked loss": _run(model, padded, chunked=True),
        "varlen + chunked": _run(model, flat, flat=True, chunked=True),
    }
    if fused.available():
        liger = copy.deepcopy(model)
        print("fused modules:", fused.apply(liger, "on"))
        checks["liger"] = _run(liger, padded)
        checks["liger + varlen + chunked"] = _run(liger, flat, flat=True, chunked=True)
    from flashbone.settings import SETTINGS

    SETTINGS.groups = False  # q and v read one input: grouped above, one by one here
    checks["q/v grouped vs alone"] = _run(copy.deepcopy(model), padded)
    SETTINGS.groups = True
    refs = {name: (ref_loss, ref_g) for name in checks}
    model32 = copy.deepcopy(model).float()  # full fine-tuning's float32 weights under bf16 autocast
    refs["varlen, float32 weights"] = _run(model32, padded)
    checks["varlen, float32 weights"] = _run(model32, flat, flat=True)
    for name, (loss, g) in checks.items():
        r_loss, r_g = refs[name]
        dl, dg = abs(float(loss - r_loss)) / abs(float(r_loss)), _rel(g, r_g)
        ok = dl <= TOL and dg <= TOL
        bad += not ok
        print(f"{name:<26} loss rel {dl:.2e}  grad rel {dg:.2e}  {'ok' if ok else 'OFF'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
