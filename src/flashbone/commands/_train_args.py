"""The flags of ``flashbone train`` (see train.py for what they do together)."""

from __future__ import annotations

import argparse

from ..variants import VARIANTS
from ._train_options import add_method_arguments

# --micro-batch-tokens on CUDA when not given: a 1B model's step of 16 rows of ~400 tokens fits
# in one micro-batch; larger ones are cut, and halved again if the GPU runs short of memory
AUTO_MICRO_BATCH_TOKENS = 16384


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="HF hub name or local folder (default: flashbone-tiny, the built-in base)")
    g.add_argument("--data", help="a .jsonl/.json/.parquet/.csv file, a hub dataset, or tiny-math (default)")
    g.add_argument("--data-split", help="split of a hub dataset (default: train)")
    g.add_argument("--data-subset", help="configuration of a hub dataset (e.g. 'main' for gsm8k)")
    g.add_argument(
        "--query-field", help="field with the instruction (default: query, question, instruction or problem)"
    )
    g.add_argument("--response-field", help="field with the target (default: response, answer, output or solution)")
    g.add_argument("--max-samples", type=int, help="use only the first N rows (tiny-math: generate N)")
    g.add_argument(
        "--template", help="alpaca (the papers' instruction template, default), plain, or a prompt with {query}"
    )
    g.add_argument("--max-length", type=int, help="tokens per example; prompt cut first, response never dropped [512]")
    g.add_argument(
        "--cut-after-code",
        action="store_true",
        default=None,
        help="keep each response up to the end of its last ``` code block (the papers' CodeFeedback "
        "preprocessing: the explanation after the code removed) [off]",
    )
    g.add_argument(
        "--messages-field",
        help="field with multi-turn conversations (role/content or ShareGPT from/value) "
        "[messages or conversations, when the data has one]",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="let transformers run the model's own code from its folder or Hub repo",
    )
    g = p.add_argument_group("method")
    g.add_argument("--method", help=f"{', '.join(VARIANTS)} (bone is the default), lora, pissa, olora, dora, full")
    g.add_argument(
        "--r",
        "--adapter-r",
        type=int,
        help="block size / rank [paper: 64 for Bone/Bat, 36 for LoRA-like; "
        "tiny: 32/16]; under torchrun write --adapter-r (torchrun reads --r as one of its own flags)",
    )
    g.add_argument(
        "--mini-r", type=int, help="bone-mini: distinct output columns; bat-grouped: shared matrices g (default: r)"
    )
    g.add_argument(
        "--targets",
        help="comma-separated module names (q,k,v,o,gate,up,down) or all-linear "
        "[the 7 projections of Llama-like models, all-linear elsewhere]",
    )
    g.add_argument("--lora-alpha", type=float, help="LoRA scaling numerator [2r for lora/dora, r for pissa/olora]")
    g.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        help="load the base quantised with bitsandbytes: 4bit "
        "(NF4, double quantisation, bf16 compute) or 8bit (LLM.int8); implies --gradient-checkpointing",
    )
    add_method_arguments(g)
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="peak learning rate, cosine to 0 [paper 2e-5; tiny 2e-3]")
    g.add_argument("--batch-size", type=int, help="rows per micro-batch [paper 4; tiny 16]")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step [paper 16; tiny 1]")
    g.add_argument("--epochs", type=float, help="passes over the data [1]")
    g.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay [0]")
    g.add_argument("--max-grad-norm", type=float, help="gradient clipping [1.0]")
    g.add_argument(
        "--warmup-steps",
        type=int,
        help="lr rises linearly from 0 over N steps, then decays [0; classification: --warmup-ratio 0.06]",
    )
    g.add_argument(
        "--warmup-ratio",
        type=float,
        help="warmup over ceil(F x all steps) instead of --warmup-steps "
        "[0; classification 0.06, the LoRA repository's]",
    )
    g.add_argument(
        "--lr-for",
        action="append",
        metavar="NAME=LR",
        help="parameters whose name holds NAME train "
        "at LR (repeatable), e.g. the head in --modules-to-save: --lr-for score=1e-3",
    )
    g.add_argument("--seed", type=int, help="seed of initialisation and data order [0]")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="auto: bf16 on GPU, fp32 on CPU")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute activations in backward to save memory",
    )
    g.add_argument(
        "--micro-batch-tokens",
        type=int,
        help="regroup each step's rows into length-sorted micro-batches "
        f"of at most N tokens (padding counted); the step's rows and its gradient stay as asked; halved "
        f"when GPU memory runs out; 0: --batch-size rows each [CUDA: {AUTO_MICRO_BATCH_TOKENS}; CPU: 0]",
    )
    g.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lay rows end to end, attention within each row: padding-free (varlen flash attention) "
        "on Llama, Mistral and Qwen models, else sequences with per-row masks [CUDA: on where "
        "padding-free; else off]",
    )
    g.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record each packed micro-batch's forward and backward as a CUDA graph (one per padded "
        "shape) and replay it: the host stops being the bottleneck [on where it can run: one CUDA "
        "process, padding-free packing, no --max-memory; with --nproc: when asked, --strategy ddp]",
    )
    g.add_argument(
        "--max-memory",
        type=float,
        help="GiB of GPU memory training may use: micro-batches are halved "
        "until a step fits under it (with the --micro-batch-tokens budget) [the whole GPU]",
    )
    g.add_argument(
        "--liger",
        choices=["auto", "on", "off"],
        help="liger-kernel's fused RMSNorm and SwiGLU in the "
        "base model (same math, fewer kernels): auto = on CUDA when installed (pip install "
        '"flashbone[liger]") [auto]',
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", help="run folder (default: runs/<method>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (its old files are removed)")
    g.add_argument("--save-every", type=int, help="write a checkpoint every N steps under OUT/checkpoints [0: never]")
    g.add_argument("--keep-checkpoints", type=int, help="how many checkpoints to keep [2]")
    g.add_argument(
        "--report-to",
        help="tensorboard (default), wandb, both (tensorboard,wandb) or none; metrics.jsonl is always written",
    )
    g.add_argument("--resume", action="store_true", help="continue OUT's run from its last complete checkpoint")
    g.add_argument("--stop-after", type=int, help="end after N steps with a checkpoint (continue with --resume)")
    g = p.add_argument_group("several processes (docs/distributed.md)")
    g.add_argument(
        "--nproc",
        type=int,
        help="processes (one per GPU) this command starts through torch.distributed.run "
        "[1; under torchrun: its number]; the global batch stays batch x accum",
    )
    g.add_argument(
        "--strategy",
        choices=["ddp", "fsdp"],
        help="ddp: whole model in each process; fsdp: FSDP2, parameters sharded by decoder layer [ddp]",
    )
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    g = p.add_argument_group("validation loss during training")
    g.add_argument(
        "--val-split",
        type=float,
        metavar="F|N",
        help="hold out a fraction F (0 < F < 1) or N rows of --data (seeded) and report their loss during training",
    )
    g.add_argument(
        "--val-data",
        help="validation rows of their own (a file or hub dataset, its 'validation' split; "
        "same fields and template as --data) instead of --val-split",
    )
    g.add_argument(
        "--val-every",
        type=int,
        metavar="N",
        help="validation loss after every N-th step and the last "
        "[about 10 points per run]; in metrics.jsonl (val_loss), the progress bar, loss.png",
    )
    g = p.add_argument_group("evaluation before and after training")
    g.add_argument(
        "--eval-task",
        choices=["none", "gsm8k", "math", "tiny-math"],
        help="score generations before and after training [tiny-math with the built-in data, else none]",
    )
    g.add_argument("--eval-data", help="evaluation file (default for tiny-math: its held-out split)")
    g.add_argument("--eval-samples", type=int, help="evaluate on the first N rows [tiny: 200; else all]")
    g.add_argument("--eval-batch-size", type=int, help="prompts per generation batch")
    g.add_argument("--max-new-tokens", type=int, help="generation length limit [paper 512; tiny 80]")
    g = p.add_argument_group("sequence classification (--task classification; docs/cli.md)")
    g.add_argument(
        "--task",
        choices=["causal-lm", "classification"],
        help="causal-lm: instruction tuning (default); classification: AutoModelForSequenceClassification, "
        "the head trained in full (GLUE: --data glue/sst2)",
    )
    g.add_argument("--text-field", help="field with the text [GLUE's, else sentence1/premise/question/sentence/text]")
    g.add_argument(
        "--text-pair-field", help="field with the second text of a pair (MNLI hypothesis, MRPC sentence2...)"
    )
    g.add_argument("--label-field", help="field with the integer label [label]")


__all__ = ["AUTO_MICRO_BATCH_TOKENS", "add_arguments"]
