"""Try a model, with or without an adapter: prompts in, generated text out (greedy).

  flashbone generate --prompt "What is 3 + 4?"                      # built-in tiny base
  flashbone generate --adapter runs/x/adapter --prompt "What is 3 + 4?"
  echo "Hello" | flashbone generate --model Qwen/Qwen2.5-0.5B-Instruct --prompt -

The prompt is formatted with --template when given (alpaca, plain, or a prompt with {query});
otherwise with the tokenizer's chat template when it has one (--no-chat to send it as is);
otherwise as is. Generation stops at eos, --max-new-tokens, or the template's stop string.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base model: HF hub name or folder (default: flashbone-tiny)")
    p.add_argument("--adapter", help="adapter folder (flashbone, PEFT MISS/BONE or another PEFT adapter)")
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="a prompt; repeat for several; '-' reads one from standard input",
    )
    p.add_argument("--template", help="alpaca, plain, or a prompt with {query} (default: the chat template, if any)")
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the tokenizer's chat template when it has one and no --template is given [on]",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation length limit [128]")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")


def format_prompts(tok, queries: list[str], template: str | None, chat: bool) -> tuple[list[str], list[str]]:
    """The prompts as the model sees them, and the stop strings."""
    from ..data import get_template

    if template is None and chat and getattr(tok, "chat_template", None):
        return [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in queries
        ], []
    t = get_template(template or "plain")
    return [t.prompt_text(q) for q in queries], t.stop


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import baselines, loading
    from ..generation import generate

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    queries = [sys.stdin.read().rstrip("\n") if q == "-" else q for q in args.prompt]
    if args.adapter:  # a bad folder fails before the model loads
        baselines.adapter_kind(args.adapter)
    device = loading.pick_device(args.device)
    tok = loading.load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    dtype = torch.bfloat16 if loading.use_bf16("auto", device) else torch.float32
    model = loading.load_model(args.model, dtype=dtype, device=device, trust_remote_code=args.trust_remote_code)
    if args.adapter:
        model = baselines.attach_adapter(model, args.adapter)
    prompts, stops = format_prompts(tok, queries, args.template, args.chat)
    texts = generate(
        model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=len(prompts), stops=stops, progress=False
    )
    for text in texts:
        print(text.strip(), flush=True)
    return 0


__all__ = ["add_arguments", "run", "format_prompts"]
