"""Two GPU measurements of issue 16 (results in docs/benchmarks.md, "RWKV6 and quantised bases").

  python scripts/bench_rwkv6_qlora.py table7 [--layers N]   # the papers' Table 7 row
  python scripts/bench_rwkv6_qlora.py qlora  [--layers N]   # LLaMA2-7B shape on a 4-bit base

table7: fla's RWKV6ForCausalLM with the RWKV6-3B config, random init, bf16, batch 1 x 512 tokens,
the eight RWKV-PEFT projections, no gradient checkpointing (the papers' single-GPU rows): PEFT LoRA
r=32 (alpha 64), flashbone bone r=64, flashbone bat r=64; each on a fresh model.
qlora: LLaMA2-7B shape, random init, every projection NF4 4-bit (double quantisation, bf16 compute),
gradient checkpointing, batch 4 x 512 tokens: flashbone bone r=64 against PEFT MiSS r=64 on the same
base in the same process (flashbone's adapter is unloaded before PEFT's is attached).

Both: AdamW over the trainable parameters, 3 warm-up steps then the median of 5 timed steps;
peak = torch.cuda.max_memory_allocated over the timed steps, reset before each method. One JSON
line per method on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flashbone import BoneConfig, get_bone_model, rwkv6  # noqa: E402

LLAMA_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def measure(name: str, model: nn.Module, batch: int, ctx: int, vocab: int, steps: int = 5) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    x = torch.randint(0, vocab, (batch, ctx), device="cuda")
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3
    row = {
        "method": name,
        "trainable": sum(p.numel() for p in params),
        "step_ms": round(ms, 1),
        "tokens_per_s": round(batch * ctx / ms * 1e3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def table7(layers: int | None) -> None:
    import peft
    from fla.models import RWKV6Config, RWKV6ForCausalLM

    cfg = rwkv6.paper_config("3B") | ({"num_hidden_layers": layers} if layers else {})
    for method in ("lora", "bone", "bat"):
        torch.manual_seed(0)
        with torch.device("cuda"), _default_dtype(torch.bfloat16):
            model = RWKV6ForCausalLM(RWKV6Config(**cfg))
        for p in model.parameters():
            p.requires_grad_(False)
        targets = rwkv6.default_targets()
        if method == "lora":
            model = peft.get_peft_model(model, peft.LoraConfig(r=32, lora_alpha=64, target_modules=targets))
        else:
            model = get_bone_model(model, BoneConfig(variant=method, r=64, target_modules=targets))
        measure(f"rwkv6-3b {method}", model, 1, 512, cfg["vocab_size"])
        del model
        torch.cuda.empty_cache()


def qlora(layers: int | None) -> None:
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    from flashbone import quant

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers or 32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    torch.manual_seed(0)
    with torch.device("cuda"), _default_dtype(torch.bfloat16):
        model = LlamaForCausalLM(cfg)
    quant.quantize_(model, "4bit", LLAMA_PROJ)  # NF4, double quantisation, bf16 compute
    torch.cuda.empty_cache()
    quant.prepare_for_training(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    bm = get_bone_model(model, BoneConfig(variant="bone", r=64, target_modules=LLAMA_PROJ))
    measure("llama2-7b-shape nf4 flashbone bone r=64", bm, 4, 512, cfg.vocab_size)
    model = bm.unload()
    torch.cuda.empty_cache()
    try:
        pm = peft.get_peft_model(model, peft.MissConfig(r=64, target_modules=LLAMA_PROJ))
        measure("llama2-7b-shape nf4 peft MiSS r=64", pm, 4, 512, cfg.vocab_size)
    except Exception as e:  # report what PEFT does with a 4-bit base, whatever it is
        print(json.dumps({"method": "llama2-7b-shape nf4 peft MiSS r=64", "error": f"{type(e).__name__}: {e}"[:300]}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["table7", "qlora"])
    p.add_argument("--layers", type=int, help="fewer decoder layers than the full model")
    a = p.parse_args()
    import transformers

    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        ),
        flush=True,
    )
    (table7 if a.what == "table7" else qlora)(a.layers)


if __name__ == "__main__":
    main()
