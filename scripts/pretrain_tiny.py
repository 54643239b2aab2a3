"""Pretrain flashbone's built-in tiny base model ("flashbone-tiny") from scratch.

    corpus  = arithmetic facts ("37 + 45 = 82", 10 a document)
            + tiny-math TRAIN-split problems in plain prose (question, then the solution steps,
              then "So the result is N.")              -- flashbone.tinymath.plain_text
            + numberless everyday sentences over every word of the grammar, held-out names,
              objects and verbs included (8 a document) -- flashbone.tinymath.everyday_text
    never seen: the instruction template, "The answer is:", the held-out templates and numbers,
                any problem worded with a held-out phrasing, name or object (tiny-math:unseen)
    tokenizer = byte-level BPE (digits split one by one), trained here with `tokenizers`
    model     = LlamaForCausalLM (4 layers, hidden 256, tied embeddings), AdamW, cosine,
                packed 256-token windows, bf16 autocast on CUDA
    output    = a Hugging Face folder (config, model.safetensors, tokenizer) that
                AutoModelForCausalLM / AutoTokenizer.from_pretrained load

Usage (the shipped weights came from the first line, on one H100; see docs/cli.md):

    python scripts/pretrain_tiny.py --out src/flashbone/assets/tiny
    python scripts/pretrain_tiny.py --out /tmp/tiny --device cpu --steps 300   # a smoke run

Deterministic: a fixed seed, deterministic algorithms, eager attention; rerunning on the same
hardware and software versions gives the same weights (the script prints their sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from flashbone import tinymath  # noqa: E402
from flashbone.data import PAPER_PROMPT  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|pad|>"]


def build_corpus(seed: int, n_problems: int, n_fact_docs: int, n_everyday_docs: int) -> list[str]:
    rng = random.Random(seed)
    docs = [tinymath.plain_text(p) for p in tinymath.generate_problems("train", n_problems, seed)]
    docs += ["\n".join(tinymath.arithmetic_facts(rng, 10)) for _ in range(n_fact_docs)]
    docs += [tinymath.everyday_text(rng, 8) for _ in range(n_everyday_docs)]
    rng.shuffle(docs)
    return docs


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE; digits are always single tokens so arithmetic sees every digit.

    Besides the pretraining documents the tokenizer (not the model) also sees the
    instruction template and 2,000 formatted training examples, so that fine-tuning
    prompts are not spelled out letter by letter."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    extra = [
        PAPER_PROMPT.format(query=d["query"]) + d["response"] + "\n<|EOT|>"
        for d in tinymath.generate("train", 2000, seed=1)
    ]
    tok.train_from_iterator(docs[:80000] + extra, trainer=trainer)
    bos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B", special_tokens=[("<|endoftext|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def pack(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """Every document as ``<bos> text``, concatenated and cut into ``seq_len + 1`` windows."""
    ids: list[int] = []
    for i in range(0, len(docs), 10000):
        for row in tokenizer(docs[i : i + 10000])["input_ids"]:
            ids.extend(row)
    n = (len(ids) - 1) // seq_len
    t = torch.tensor(ids[: n * seq_len + 1], dtype=torch.long)
    return torch.stack([t[i * seq_len : (i + 1) * seq_len + 1] for i in range(n)])


def pretrain(data: torch.Tensor, tokenizer, args, device, steps: int, quiet: bool = False):
    """Train a fresh model from the seed for ``steps`` steps; returns (model, loss log, seconds)."""
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95)
    )
    warmup = max(1, args.steps // 20)  # the schedule always spans args.steps (also for short checks)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))),
    )
    gen = torch.Generator().manual_seed(args.seed)
    order, pos = torch.randperm(len(data), generator=gen), 0
    data = data.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    t_train, log = time.time(), []
    model.train()
    for step in range(steps):
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        batch = data[order[pos : pos + args.batch_size].to(device)]
        pos += args.batch_size
        with autocast:
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not quiet and (step % 100 == 0 or step == steps - 1):
            log.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"step {step:5d} loss {loss.item():.4f} {time.time() - t_train:.0f}s", flush=True)
    return model, log, time.time() - t_train


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], max_new: int, device) -> list[str]:
    tokenizer.padding_side = "left"
    outs = []
    for i in range(0, len(prompts), 128):
        enc = tokenizer(prompts[i : i + 128], return_tensors="pt", padding=True).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return outs


def probe(model, tokenizer, device, seed: int) -> dict:
    """What the base knows: arithmetic facts, and held-out problems asked in plain prose."""
    model.eval()
    rng = random.Random(seed + 7)
    facts = tinymath.arithmetic_facts(rng, 400)
    got = greedy(model, tokenizer, [f.split("=")[0] + "=" for f in facts], 5, device)
    fact_acc = sum(g.strip().split("\n")[0].strip() == f.split("= ")[1] for f, g in zip(facts, got)) / len(facts)
    res = {"facts": round(fact_acc, 4)}
    for split in ("train", "test", "unseen"):
        probs = tinymath.generate_problems(split, 200, seed=seed + 99)
        got = greedy(model, tokenizer, [p.query + "\n" for p in probs], 80, device)
        ok = [
            bool(m) and int(m.group(1)) == p.answer
            for p, m in ((p, re.search(r"So the result is (-?\d+)", g)) for p, g in zip(probs, got))
        ]
        res[f"plain_{split}"] = round(sum(ok) / len(ok), 4)
    model.train()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--problems", type=int, default=200000)
    ap.add_argument("--fact-docs", type=int, default=100000)
    ap.add_argument("--everyday-docs", type=int, default=60000)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument(
        "--check-determinism",
        action="store_true",
        help="also train twice for 30 steps and compare the weights bit for bit",
    )
    args = ap.parse_args()

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(args.device)
    docs = build_corpus(args.seed, args.problems, args.fact_docs, args.everyday_docs)
    tokenizer = train_tokenizer(docs, args.vocab_size)
    data = pack(tokenizer, docs, args.seq_len)
    print(
        f"corpus: {len(docs):,} documents, {data.numel():,} tokens, vocab {len(tokenizer)}; {time.time() - t0:.1f}s",
        flush=True,
    )

    model, log, train_s = pretrain(data, tokenizer, args, device, args.steps)
    n_params = sum(p.numel() for p in model.parameters())
    if args.check_determinism:
        a, _, _ = pretrain(data, tokenizer, args, device, 30, quiet=True)
        b, _, _ = pretrain(data, tokenizer, args, device, 30, quiet=True)
        same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        print(f"determinism check (two 30-step runs from the seed): {'identical' if same else 'DIFFERENT'}", flush=True)
    torch.use_deterministic_algorithms(False)  # generation only; the weights are final
    knows = probe(model, tokenizer, device, args.seed)
    print(f"probe: {knows}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to("cpu").save_pretrained(out)  # fp32 safetensors
    tokenizer.save_pretrained(out)
    # name the class that transformers 4.x and 5.x both know (5.x writes "TokenizersBackend")
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    info = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "corpus_tokens": data.numel(),
        "corpus_docs": {"problems": args.problems, "fact_docs": args.fact_docs, "everyday_docs": args.everyday_docs},
        "vocab_size": len(tokenizer),
        "hidden": args.hidden,
        "layers": args.layers,
        "params": n_params,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t0, 1),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "probe": knows,
        "model_sha256": digest,
        "loss_log": log,
    }
    (out / "pretrain_info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "loss_log"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
