"""Several GPUs, measured: `flashbone train` of a ~1.1B-parameter Llama (random init) with bone and
bat on 1 GPU, on 2 GPUs with DDP (`--nproc 2`) and with FSDP2 (`torchrun ... -m flashbone train`),
all with the same global batch; then the built-in tiny demo for --max-steps 20 on one GPU (bf16).

    python scripts/multi_gpu_bench.py --out $OUT         (on nvidia-h200-x2; ~5 minutes)
    python scripts/multi_gpu_bench.py --out /tmp/x --dry-run   (CPU, a small config: checks the script)

Reports, per method: the loss-curve difference of each 2-GPU run from the 1-GPU run (max abs and
relative over the steps), tokens/s per GPU (steps 6..N, non-pad tokens of all processes / seconds /
GPUs) and the training peak of torch.cuda.max_memory_allocated per GPU. Writes OUT/multi_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STEPS, SKIP = 50, 5
# Llama-2-style shapes (multi-head attention), TinyLlama's width/depth: 1.13B parameters
BIG = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)
SMALL = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


def make_model(folder: Path, shape: dict, device: str) -> int:
    """A random-init LlamaForCausalLM (seed 0, bf16) with the built-in tokenizer, saved in ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from flashbone.loading import builtin_model_path

    tok = AutoTokenizer.from_pretrained(builtin_model_path())
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def train(cmd: list[str], out: Path, env: dict, log) -> dict:
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    wall = time.time() - t
    log.write(f"$ {' '.join(cmd)}  [{wall:.1f}s, rc={p.returncode}]\n{p.stdout[-1500:]}\n")
    if p.returncode:
        log.write(p.stderr[-4000:] + "\n")
    log.flush()
    if p.returncode:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    world = summary.get("processes") or 1
    a, b = metrics[SKIP - 1], metrics[-1]
    peak = summary.get("peak_gpu_memory_gib")
    return {
        "losses": [m["loss"] for m in metrics],
        "grad_norms": [m["grad_norm"] for m in metrics],
        "tokens_per_s_per_gpu": round((b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]) / world, 1),
        "peak_gib_per_gpu": peak if isinstance(peak, list) else [peak],
        "world": world,
        "strategy": summary.get("strategy"),
        "train_s": summary["train_seconds"],
        "wall_s": round(wall, 1),
        "trainable": summary["trainable_params"],
        "total": summary["total_params"],
        "device": summary["device"],
        "versions": summary["versions"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/mgpu")
    ap.add_argument("--dry-run", action="store_true", help="CPU, small model, few steps: check the script")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = open(out / "multi_gpu.log", "a")
    steps = 8 if a.dry_run else STEPS
    py = [sys.executable, "-m"]
    res: dict = {"command": " ".join(sys.argv), "steps": steps, "skip": SKIP}
    t0 = time.time()
    res["params"] = make_model(work / "model", SMALL if a.dry_run else BIG, "cpu" if a.dry_run else "cuda")
    res["make_model_s"] = round(time.time() - t0, 1)
    # global batch 8 rows x 4 micro-batches = 32 rows (~3.5k tokens) per step; 2 GPUs: 8 x 2 each
    common = [
        "--model",
        str(work / "model"),
        "--data",
        "tiny-math",
        "--max-samples",
        str(32 * steps),
        "--max-length",
        "256",
        "--batch-size",
        "8",
        "--grad-accum",
        "4",
        "--max-steps",
        str(steps),
        "--lr",
        "2e-4",
        "--eval-task",
        "none",
        "--no-progress",
        "--overwrite",
    ]
    runs = {}

    def one_gpu(method: str, gpu: str):
        o = work / f"{method}-1gpu"
        return train(
            py + ["flashbone", "train", *common, "--method", method, "--r", "64", "--out", str(o)],
            o,
            {"CUDA_VISIBLE_DEVICES": gpu},
            log,
        )

    with ThreadPoolExecutor(2) as ex:  # the two 1-GPU runs side by side, one per GPU
        f = {m: ex.submit(one_gpu, m, g) for m, g in (("bone", "0"), ("bat", "1"))}
        for m in f:
            runs[f"{m}/1gpu"] = f[m].result()
    for m in ("bone", "bat"):
        o = work / f"{m}-ddp"
        runs[f"{m}/ddp"] = train(
            py
            + [
                "flashbone",
                "train",
                *common,
                "--method",
                m,
                "--r",
                "64",
                "--nproc",
                "2",
                "--strategy",
                "ddp",
                "--out",
                str(o),
            ],
            o,
            {},
            log,
        )
        o = work / f"{m}-fsdp"
        runs[f"{m}/fsdp"] = train(
            py
            + [
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                "-m",
                "flashbone",
                "train",
                *common,
                "--method",
                m,
                "--adapter-r",
                "64",
                "--strategy",
                "fsdp",
                "--out",
                str(o),
            ],
            o,
            {},
            log,
        )
        (out / "multi_gpu.json").write_text(json.dumps({**res, "runs": runs}, indent=1))
    for m in ("bone", "bat"):
        ref = runs[f"{m}/1gpu"].get("losses")
        for s in ("ddp", "fsdp"):
            r = runs[f"{m}/{s}"]
            if ref and r.get("losses") and len(r["losses"]) == len(ref):
                d = [abs(x - y) for x, y in zip(r["losses"], ref)]
                r["loss_max_abs_diff"] = round(max(d), 6)
                r["loss_max_rel_diff"] = round(max(x / abs(y) for x, y in zip(d, ref)), 6)
    # (b) the built-in tiny demo, 20 steps, one GPU, bf16 (evaluation before/after included)
    o = work / "tiny"
    t = time.time()
    p = subprocess.run(
        py
        + ["flashbone", "train", "--max-steps", "20", "--out", str(o), "--overwrite", "--no-progress"]
        + (["--max-samples", "64", "--eval-samples", "10"] if a.dry_run else []),
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"},
        timeout=200,
    )
    log.write(
        f"$ flashbone train --max-steps 20 [{time.time() - t:.1f}s rc={p.returncode}]\n{p.stdout}\n{p.stderr[-3000:]}\n"
    )
    if p.returncode == 0:
        res["tiny"] = json.loads((o / "summary.json").read_text())
        (out / "tiny_metrics.jsonl").write_text((o / "metrics.jsonl").read_text())
    else:
        res["tiny"] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
    res["runs"] = runs
    res["total_s"] = round(time.time() - t0, 1)
    (out / "multi_gpu.json").write_text(json.dumps(res, indent=1))
    print(f"model {res['params'] / 1e9:.3f}B params, {steps} steps, global batch 32 rows, bf16")
    print(
        f"{'run':12} {'GPUs':>4} {'tok/s/GPU':>10} {'peak GiB/GPU':>14} {'max|dloss|':>11} {'max rel':>9} {'train s':>8}"
    )
    for k, r in runs.items():
        if "error" in r:
            print(f"{k:12} ERROR {r['error'][:150]}")
            continue
        peak = "/".join(f"{x:.2f}" for x in r["peak_gib_per_gpu"] if x is not None) or "-"
        print(
            f"{k:12} {r['world']:>4} {r['tokens_per_s_per_gpu']:>10.0f} {peak:>14} "
            f"{r.get('loss_max_abs_diff', '-'):>11} {r.get('loss_max_rel_diff', '-'):>9} {r['train_s']:>8}"
        )
    t = res["tiny"]
    print(
        "tiny demo:",
        t.get("error")
        or f"{t['device']} {t['precision']}, {t['steps']} steps, final loss "
        f"{t['final_loss']:.4f}, accuracy {t['accuracy_before']} -> {t['accuracy_after']}, train {t['train_seconds']}s",
    )


if __name__ == "__main__":
    main()
