"""Where does a small micro-batch's time go? (device script)

Times fwd+bwd of a Llama-shaped model (TinyLlama width, bf16, random init) on micro-batches of
8 x 100 tokens, the size `flashbone train` used in the multi-GPU measurement, for the frozen base,
bone/bat on the GPU kernels and on the PyTorch path, and PEFT MiSS; then profiles one bone step
(top self-CPU ops) to show whether the step is bound by the GPU or by the host.

    python scripts/profile_small_batch.py [--layers 22] [--shapes 8x100,2x512,4x512,8x512] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flashbone import BoneConfig, get_bone_model
from flashbone.ops import use_backend

T7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(layers: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=1024)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16)


def wrap(model, method: str):
    if method == "floor":
        model.requires_grad_(False)
        model.enable_input_require_grads()
        return model
    if method.startswith("peft"):
        import peft

        return peft.get_peft_model(model, peft.MissConfig(r=64, target_modules=T7))
    return get_bone_model(model, BoneConfig(variant=method.split("@")[0], r=64, target_modules=T7))


def time_steps(model, ids, n: int = 12) -> float:
    times = []
    for i in range(n + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:]) * 1e3


def gpu_time(model, ids) -> float:
    """Sum of kernel times of one fwd+bwd (what the GPU alone needs)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages()) / 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--shapes", default="8x100,2x512,4x512,8x512", help="micro-batches rows x seq")
    p.add_argument("--methods", default="floor,bone,bone@torch,bat,bat@torch,bat-row,bat-row@torch,peft-miss")
    p.add_argument("--profile", action="store_true", help="print the top self-CPU ops of one bone step")
    a = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    print(torch.__version__, torch.cuda.get_device_name(), f"layers={a.layers}")
    rows = {}
    for method in a.methods.split(","):
        model = wrap(build(a.layers), method)
        with use_backend("torch" if method.endswith("@torch") else "auto"):
            for b, t in shapes:
                ids = torch.randint(0, 1024, (b, t), device="cuda")
                rows.setdefault(method, []).append((time_steps(model, ids), gpu_time(model, ids)))
            if a.profile and method == "bone":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    model(input_ids=ids, labels=ids).loss.backward()
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
        print(method, " ".join(f"{w:.1f}/{g:.1f}" for w, g in rows[method]), flush=True)
        del model
        torch.cuda.empty_cache()
    print("\nwall ms / GPU-busy ms per fwd+bwd; ratio = wall / floor wall")
    print(f"{'method':15s}" + "".join(f"{f'{b}x{t}={b * t} tok':>22s}" for b, t in shapes))
    for method, vals in rows.items():
        cells = [f"{w:7.1f}/{g:6.1f} {w / rows['floor'][i][0]:5.2f}" for i, (w, g) in enumerate(vals)]
        print(f"{method:15s}" + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
