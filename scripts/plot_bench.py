"""Draw docs/benchmarks.png from the JSON that `flashbone bench` wrote on the device.

    python scripts/plot_bench.py RESULTS_DIR [docs/benchmarks.png]

Panels: (a) step time and peak memory over the floor, 8 layers of LLaMA2-7B width
(RESULTS_DIR/run57_68/run68_main.json); (b) tokens/s on the full LLaMA2-7B shape with gradient
checkpointing and (c) training-step time over the floor against tokens per step (both from
RESULTS_DIR/run14/, before bat-row's padded weight). The raw JSON behind the current plot left
the tree; git history keeps it: ``git archive fe5cc2b docs/bench_results | tar -x`` and pass
``docs/bench_results``.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path: Path) -> dict:
    return {r["method"]: r for r in json.loads(path.read_text())["rows"] if "error" not in r}


def sweeps(log: Path) -> dict[str, dict[str, float]]:
    """``{sweep name: {method: time / floor}}`` from the ``== sweep NAME`` tables of a log."""
    out: dict[str, dict[str, float]] = {}
    name = None
    for line in log.read_text().splitlines():
        if line.startswith("== sweep "):
            name = line.split()[-1]
            out[name] = {}
        elif name and line and not line.startswith(("-", "method", "#")):
            cells = line.split()
            if len(cells) >= 7:
                out[name][cells[0]] = float(cells[4])
    return out


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench_results")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks.png")
    run = src / "run14"
    main_rows = rows(src / "run57_68" / "run68_main.json")
    order = ["bone", "bone-mini", "bat", "bat-row", "bat-hadamard", "bone-ab", "peft-miss", "peft-lora", "full"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    x = range(len(order))
    t = [main_rows[m]["time_ratio"] for m in order]
    mem = [main_rows[m]["mem_ratio"] for m in order]
    ax[0].bar([i - 0.2 for i in x], t, 0.4, label="step time / floor", color="#3b6ea5")
    ax[0].bar([i + 0.2 for i in x], mem, 0.4, label="peak memory / floor", color="#e0a030")
    ax[0].axhline(1.0, color="k", lw=0.8)
    ax[0].set_xticks(list(x), order, rotation=45, ha="right")
    ax[0].set_ylim(0.9, 2.0)
    ax[0].set_title("8 layers of LLaMA2-7B width, 4x1024 tokens, r=64 (call 68)", fontsize=10)
    ax[0].legend(fontsize=8)

    big = rows(run / "llama7b.json")
    names = [m for m in ["floor", "bone", "bat-row", "bat", "peft-miss", "peft-lora"] if m in big]
    ax[1].barh(
        names[::-1],
        [big[m]["tokens_per_s"] for m in names[::-1]],
        color=["#3b6ea5" if not m.startswith("peft") else "#999999" for m in names[::-1]],
    )
    ax[1].set_xlabel("tokens / s")
    ax[1].set_title("LLaMA2-7B (32 layers), grad. checkpointing, 8x512 (call 14)", fontsize=10)

    sw = sweeps(run / "run14.log")
    sw["tokens4k"] = {m: r["time_ratio"] for m, r in rows(run / "main.json").items()}
    toks = [2048, 4096, 8192, 16384]
    for m in ["bone", "bat-row", "bat"]:
        ax[2].plot(toks, [sw[f"tokens{t // 1024}k"][m] for t in toks], marker="o", label=m)
    ax[2].set_xscale("log", base=2)
    ax[2].set_xlabel("tokens per step (8 layers, hidden 4096)")
    ax[2].set_ylabel("step time / floor")
    ax[2].set_ylim(1.0, 2.1)
    ax[2].set_title("training step against tokens per step (call 14)", fontsize=10)
    ax[2].legend(fontsize=8)
    fig.suptitle("flashbone on one H100 (bf16, AdamW, ratios to the frozen base measured in the same run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(out, out.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
