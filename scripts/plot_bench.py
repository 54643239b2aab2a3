"""Draw docs/benchmarks.png from the JSON that `flashbone bench` wrote on the device.

    python scripts/plot_bench.py [docs/bench_results] [docs/benchmarks.png]

Panels: (a) step time and peak memory over the floor, 8 layers of LLaMA2-7B width (run 4, with
bat-row from run 5, the final code); (b) tokens/s on the full LLaMA2-7B shape with gradient
checkpointing (run 3); (c) one layer's forward+backward over the frozen layer against tokens
per step (run 3 sweep).
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path: Path) -> dict:
    return {r["method"]: r for r in json.loads(path.read_text())["rows"] if "error" not in r}


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench_results")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks.png")
    main_rows = rows(src / "run4_main.json")
    main_rows["bat-row"] = rows(src / "run5_main.json")["bat-row"]
    order = ["bone", "bone-mini", "bat", "bat-row", "bat-hadamard", "bone-ab", "peft-miss",
             "peft-lora", "full"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    x = range(len(order))
    t = [main_rows[m]["time_ratio"] for m in order]
    mem = [main_rows[m]["mem_ratio"] for m in order]
    ax[0].bar([i - 0.2 for i in x], t, 0.4, label="step time / floor", color="#3b6ea5")
    ax[0].bar([i + 0.2 for i in x], mem, 0.4, label="peak memory / floor", color="#e0a030")
    ax[0].axhline(1.0, color="k", lw=0.8)
    ax[0].set_xticks(list(x), order, rotation=45, ha="right")
    ax[0].set_ylim(0.9, 2.0)
    ax[0].set_title("8 layers of LLaMA2-7B width, 4x1024 tokens, r=64", fontsize=10)
    ax[0].legend(fontsize=8)

    big = rows(src / "run3_llama7b.json")
    names = [m for m in ["floor", "bone", "bat", "bat-row", "peft-miss-bf16", "peft-lora-bf16",
                         "peft-bat-bf16", "peft-miss", "peft-lora"] if m in big]
    ax[1].barh(names[::-1], [big[m]["tokens_per_s"] for m in names[::-1]],
               color=["#3b6ea5" if not m.startswith("peft") else "#999999" for m in names[::-1]])
    ax[1].set_xlabel("tokens / s")
    ax[1].set_title("LLaMA2-7B (32 layers), grad. checkpointing, 8x512", fontsize=10)

    sweep = json.loads((src / "run3_sweep_tokens.json").read_text())["sweep"]["points"]
    toks = [p["tokens"] for p in sweep]
    for m in ["bone", "bat-row", "bone-ab", "bat", "full"]:
        ax[2].plot(toks, [p["x_frozen"][m] for p in sweep], marker="o", label=m)
    ax[2].set_xscale("log", base=2)
    ax[2].set_xlabel("tokens per step")
    ax[2].set_ylabel("layer fwd+bwd / frozen")
    ax[2].set_ylim(1.0, 3.0)
    ax[2].set_title("one decoder layer's 7 projections (kernel bench)", fontsize=10)
    ax[2].legend(fontsize=8)
    fig.suptitle("flashbone on one H100 (bf16, AdamW, ratios to the frozen base measured in the same run)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(out, out.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
