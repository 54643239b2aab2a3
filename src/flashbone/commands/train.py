"""Fine-tune a causal LM with Bone/Bat (flashbone), LoRA/PiSSA/OLoRA/DoRA (peft) or in full.

With no arguments: the built-in tiny base (flashbone-tiny) learns the papers' instruction
format on tiny-math with `bone`, and its held-out accuracy is measured before and after.

  flashbone train                                          # built-in demo, a few minutes on a CPU
  flashbone train --model meta-llama/Llama-2-7b-hf --data meta-math/MetaMathQA --method bat --r 64
  flashbone train --out runs/x --save-every 50 ... ; flashbone train --out runs/x --resume
  flashbone train --nproc 4 --strategy fsdp ...            # 4 processes (GPUs); or torchrun -m flashbone

Defaults marked [paper] follow the papers (AdamW, lr 2e-5, cosine, no warmup, weight decay 0,
clip 1.0, effective batch 64, max length 512). With the built-in tiny base the [tiny] recipe
applies instead (higher lr, small batch); the resolved values are printed and saved in
OUT/config.yaml. Flags given explicitly always win.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from ..errors import CLIError
from ..outputs import OutputFolder
from ..variants import VARIANTS
from ._train_args import AUTO_MICRO_BATCH_TOKENS, add_arguments
from ._train_state import RunContext, TrainOptions
from ._train_options import apply_init_adapter, bone_options, check_validation, lr_for, report_to, warmup_steps

# The papers' recipe, for any model the user names.
PAPER_RECIPE = {
    "lr": 2e-5,
    "batch_size": 4,
    "grad_accum": 16,
    "epochs": 1.0,
    "r_bone": 64,
    "r_lora": 36,
    "max_new_tokens": 512,
    "eval_batch_size": 16,
}
# The built-in tiny base: a 3.6M-parameter model needs a larger step size to learn in minutes.
TINY_RECIPE = {
    "lr": 2e-3,
    "batch_size": 16,
    "grad_accum": 1,
    "epochs": 1.0,
    "r_bone": 32,
    "r_lora": 16,
    "train_rows": 3200,
    "eval_samples": 200,
    "max_new_tokens": 80,
    "eval_batch_size": 100,
}
# flags whose values a resumed run must share with the run it continues
FINGERPRINT = (
    "model",
    "data",
    "method",
    "r",
    "mini_r",
    "targets",
    "lora_alpha",
    "lr",
    "batch_size",
    "grad_accum",
    "epochs",
    "max_steps",
    "seed",
    "max_length",
    "template",
    "max_samples",
    "weight_decay",
    "max_grad_norm",
    "dropout",
    "modules_to_save",
    "exclude",
    "layers_to_transform",
    "adapter_dtype",
    "init_adapter",
    "warmup_steps",
    "warmup_ratio",
    "lr_for",
    "val_split",
    "val_data",
    "cut_after_code",
)
NOT_SAVED = ("config", "resume", "overwrite", "stop_after", "progress")


def _resolve(args: argparse.Namespace, env=None) -> TrainOptions:
    """Every setting with its final value; the tiny recipe replaces the paper's for the tiny base.
    ``env``: the torchrun environment of this process (None: started alone)."""
    from ..baselines import PEFT_METHODS, bone_methods, methods
    from ..distributed import split_batch
    from ..data import BUILTIN_DATA
    from ..loading import BUILTIN_MODEL, is_builtin

    v = TrainOptions.from_namespace(args)
    tiny = is_builtin(v.model)
    rec = TINY_RECIPE if tiny else PAPER_RECIPE
    v.model = v.model or BUILTIN_MODEL
    v.data = v.data or BUILTIN_DATA
    apply_init_adapter(v)  # the folder's variant and r, before the defaults below
    v.method = v.method or "bone"
    if v.method not in methods():
        raise CLIError(f"--method {v.method!r} is unknown; choose one of {', '.join(methods())}")
    bone_like = v.method in bone_methods()
    if v.r is None:
        v.r = rec["r_bone"] if bone_like else rec["r_lora"]
    if isinstance(v.r, bool) or not isinstance(v.r, int) or v.r <= 0:
        raise CLIError(f"--r must be a positive integer, got {v.r!r}")
    if bone_like and v.mini_r is None and VARIANTS[v.method].mini_r is not None:
        v.mini_r = v.r
    for k in ("lr", "batch_size", "grad_accum", "epochs"):
        if getattr(v, k) is None:
            setattr(v, k, rec[k])
    if v.max_samples is None and v.data == BUILTIN_DATA and tiny:
        v.max_samples = rec["train_rows"]
    if v.quantize:
        if v.method == "full":
            raise CLIError(
                f"--quantize {v.quantize}: --method full would train the quantised weights "
                "themselves; use an adapter method, or leave out --quantize"
            )
        if v.gradient_checkpointing is None:  # QLoRA practice: a quantised base is for small memory
            v.gradient_checkpointing = True
    defaults = {
        "data_split": "train",
        "template": "alpaca",
        "max_length": 512,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": 0,
        "precision": "auto",
        "device": "auto",
        "gradient_checkpointing": False,
        "save_every": 0,
        "keep_checkpoints": 2,
    }
    for k, d in defaults.items():
        if getattr(v, k) is None:
            setattr(v, k, d)
    if v.eval_task is None:
        v.eval_task = "tiny-math" if v.data.startswith(BUILTIN_DATA) else "none"
    if v.eval_task != "none":
        if v.eval_data is None:
            if v.eval_task != "tiny-math":
                raise CLIError(f"--eval-task {v.eval_task} needs --eval-data FILE")
            v.eval_data = BUILTIN_DATA + ":test"
        if v.eval_samples is None and tiny:
            v.eval_samples = rec["eval_samples"]
        v.max_new_tokens = v.max_new_tokens or rec["max_new_tokens"]
        v.eval_batch_size = v.eval_batch_size or rec["eval_batch_size"]
    for k in ("batch_size", "grad_accum", "max_length", "keep_checkpoints"):
        if not isinstance(getattr(v, k), int) or getattr(v, k) < 1:
            raise CLIError(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(v, k)!r}")
    # a count of steps or rows is positive when given (0 would mean "nothing to do"); only
    # --save-every takes 0, for "no checkpoints"
    for k in ("max_steps", "stop_after", "max_samples", "eval_samples"):
        if getattr(v, k) is not None and (
            isinstance(getattr(v, k), bool) or not isinstance(getattr(v, k), int) or getattr(v, k) < 1
        ):
            raise CLIError(
                f"--{k.replace('_', '-')} must be a positive integer (leave it out for all), got {getattr(v, k)!r}"
            )
    if isinstance(v.save_every, bool) or not isinstance(v.save_every, int) or v.save_every < 0:
        raise CLIError(f"--save-every must be 0 (no checkpoints) or a positive integer, got {v.save_every!r}")
    if v.lora_alpha is not None and v.method not in PEFT_METHODS:
        raise CLIError(
            f"--lora-alpha scales LoRA-like methods ({', '.join(PEFT_METHODS)}); {v.method} has no "
            "such scaling: leave --lora-alpha out"
        )
    mem = v.max_memory
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or not mem > 0):
        raise CLIError(f"--max-memory must be a positive number of GiB, got {mem!r}")
    if mem is not None and (v.nproc or 1) > 1:
        raise CLIError(
            "--max-memory works with one process (micro-batches are re-planned there alone); leave it out under --nproc"
        )
    mbt = v.micro_batch_tokens
    if mbt is not None and (isinstance(mbt, bool) or not isinstance(mbt, int) or mbt < 0):
        raise CLIError(
            f"--micro-batch-tokens must be 0 (plain --batch-size micro-batches) or a positive integer, got {mbt!r}"
        )
    if not v.lr > 0 or not v.epochs > 0:
        raise CLIError(f"--lr and --epochs must be positive, got {v.lr} and {v.epochs}")
    bone_options(v)  # checked now, used when the method is attached
    warmup_steps(v, 1)  # checked now; the step count is known after the data loads
    lr_for(v)
    report_to(v)
    check_validation(v)
    v.recipe = "tiny" if tiny else "paper"
    if v.nproc is not None and (not isinstance(v.nproc, int) or v.nproc < 1):
        raise CLIError(f"--nproc must be a positive integer, got {v.nproc!r}")
    if env is not None and v.nproc not in (None, env.world):
        raise CLIError(
            f"--nproc {v.nproc}, but {env.world} processes were started (torchrun); leave --nproc out under torchrun"
        )
    v.nproc = env.world if env is not None else (v.nproc or 1)
    v.strategy = v.strategy or "ddp"
    if v.strategy == "fsdp" and v.method in PEFT_METHODS:
        raise CLIError(
            f"--strategy fsdp does not support the peft method {v.method} (its save reads "
            "unsharded tensors); use --strategy ddp"
        )
    v.proc_batch = split_batch(v.batch_size, v.grad_accum, v.nproc)
    if v.out is None:
        v.out = f"runs/{v.method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return v


def _plan_out(v: TrainOptions) -> OutputFolder:
    """Where the run is written (flashbone.outputs): a new run in a temporary sibling of --out,
    renamed into place when it ends or stops at a checkpoint; --resume continues the run where
    its newest checkpoint is (the sibling of an interrupted run, else --out itself)."""
    from ..outputs import partial_of, plan_folder, recover
    from ..training import latest_checkpoint

    final = Path(v.out).expanduser().absolute()
    partial = partial_of(final)
    if final.parent.is_dir():
        recover(final)
    interrupted = latest_checkpoint(partial / "checkpoints")
    if v.resume:
        if interrupted:
            return OutputFolder(final, partial)
        if (final / "checkpoints").is_dir():
            return OutputFolder(final, final)
        raise CLIError(f"--resume: {v.out} has no checkpoints folder; nothing to resume")
    if interrupted and not v.overwrite:
        raise CLIError(
            f"--out {v.out}: an interrupted run of it is in {partial} (last checkpoint "
            f"{interrupted.name}); continue it with --resume, or pass --overwrite to start over"
        )
    return plan_folder(
        v.out,
        overwrite=v.overwrite,
        other_ways=", --resume to continue it",
        inputs={"--data": v.data, "--model": v.model, "--eval-data": v.eval_data, "--val-data": v.val_data},
    )


def _say_resume(v: TrainOptions, ckpt: Path, out: Path) -> bool:
    """Print where --resume continues; True when there is nothing left to do (a finished run)."""
    state = json.loads((ckpt / "state.json").read_text())
    step, total = int(state["step"]), int(state["total_steps"])
    new_total = v.max_steps or total  # the same data and epochs (checked): the same length
    if step >= new_total and (out / "summary.json").is_file():
        print(
            f"{v.out} is finished (step {step} of {total}; results in {Path(v.out) / 'summary.json'}); "
            f"nothing to resume. To train longer, pass a larger --max-steps, e.g. --max-steps {2 * step}"
        )
        return True
    extend = (
        f" (the finished {total}-step run extended: its cosine schedule now ends at step {new_total})"
        if new_total > total and step >= total
        else ""
    )
    print(f"resume     from {ckpt.name}: step {step} of {new_total} done{extend}", flush=True)
    return False


def _argv(args: argparse.Namespace) -> list[str]:
    """``args`` as flags again (--config files already merged), for the processes to start."""
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p)
    argv = []
    for a in p._actions:
        val = getattr(args, a.dest, None)
        if not a.option_strings or a.dest == "help" or val is None:
            continue
        flag = a.option_strings[0]
        if isinstance(a, argparse.BooleanOptionalAction):
            argv.append(flag if val else "--no-" + flag[2:])
        elif a.nargs == 0:  # store_true
            argv += [flag] if val else []
        else:
            argv += [flag, ",".join(map(str, val)) if isinstance(val, (list, tuple)) else str(val)]
    return argv


def _apply_saved_config(args: argparse.Namespace) -> None:
    """On --resume, flags not given take the values in OUT/config.yaml."""
    if not args.resume or not args.out:
        if args.resume:
            raise CLIError("--resume needs --out, the folder of the run to continue")
        return
    from ..outputs import partial_of

    path = Path(args.out) / "config.yaml"
    interrupted = partial_of(Path(args.out).expanduser().absolute()) / "config.yaml"
    path = interrupted if interrupted.is_file() else path
    if path.is_file():
        saved = yaml.safe_load(path.read_text()) or {}
        for k, val in saved.items():
            dest = k.replace("-", "_")
            if hasattr(args, dest) and getattr(args, dest) is None:
                setattr(args, dest, val)


def _warmup_text(v: TrainOptions) -> str:
    n = warmup_steps(v, v.steps)
    return f"warmup {n} steps" if n else "no warmup"


def _print_config(v: TrainOptions, ctx: RunContext) -> None:
    from ..loading import builtin_model_path, is_builtin

    model = f"{v.model} (built-in tiny base, {builtin_model_path()})" if is_builtin(v.model) else v.model
    recipe = (
        "built-in tiny recipe (the papers' lr 2e-5 and batch 64 suit 7B bases; they would not move a "
        "3.6M-parameter model in minutes)"
        if v.recipe == "tiny"
        else "the papers' recipe"
    )
    lines = [
        f"model      {model}",
        f"data       {v.data}: {len(ctx.rows)} rows ({ctx.n_cut} cut to --max-length {v.max_length}), "
        f"template {v.template}, fields {v.query_field_resolved} -> {v.response_field_resolved}",
        f"recipe     {recipe}: AdamW lr {v.lr:g}, cosine to 0, {_warmup_text(v)}, weight decay {v.weight_decay:g}, "
        f"clip {v.max_grad_norm:g}, batch {v.batch_size} x accum {v.grad_accum} "
        f"= {v.batch_size * v.grad_accum}, {v.steps} steps, seed {v.seed}",
        f"compute    {ctx.device}, {'bf16' if ctx.bf16 else 'fp32'}"
        + (f", {v.quantize} base (bitsandbytes)" if v.quantize else "")
        + (", gradient checkpointing" if v.gradient_checkpointing else "")
        + (f", micro-batches of <= {v.micro_batch_tokens_resolved} tokens" if v.micro_batch_tokens_resolved else "")
        + (", packed rows" if v.packing else "")
        + (", CUDA graphs" if v.cuda_graphs else "")
        + (
            f"; {v.nproc} processes, {v.strategy}, each batch {v.proc_batch[0]} x accum {v.proc_batch[1]} per step"
            if v.nproc > 1
            else ""
        ),
        *(
            [
                f"validation {len(ctx.val_rows)} rows ("
                + (f"--val-split {v.val_split:g} of --data" if v.val_split is not None else f"--val-data {v.val_data}")
                + f"), loss after every {v.val_every_resolved} steps and the last"
            ]
            if ctx.val_rows is not None
            else []
        ),
        f"out        {v.out}",
    ]
    print("\n".join(lines), flush=True)


def _print_method(v: TrainOptions, adapted) -> None:
    t = v.targets_resolved
    alpha = f" lora_alpha={adapted.extra['lora_alpha']:g}" if "lora_alpha" in adapted.extra else ""
    print(
        f"method     {v.method}"
        + ("" if v.method == "full" else f" r={v.r}{alpha} on {t if isinstance(t, str) else ','.join(t)}")
        + f": {adapted.n_trainable:,} trainable of {adapted.n_total:,} parameters",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..training import check_resume

    if args.task == "classification":
        from . import _classify

        return _classify.train(args)
    t_wall = time.time()
    _apply_saved_config(args)
    env = distributed.process_env()
    v = _resolve(args, env)
    if env is None and v.nproc > 1:  # start the processes; each runs this command again
        folder = _plan_out(v)
        if v.resume:
            check_resume(folder.work / "checkpoints", v.pick(FINGERPRINT), v.nproc)
        distributed.launch(v.nproc, _argv(args))
        return 0
    if env is None:
        return _train(args, v, t_wall)
    with contextlib.ExitStack() as stack:
        if env.rank:  # rank 0 alone prints
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        rc = _train(args, v, t_wall, env)
    distributed.finish()
    return rc


def _micro_batch_tokens(v: TrainOptions, device) -> int:
    """--micro-batch-tokens as given, else the automatic budget on CUDA and plain micro-batches elsewhere."""
    if v.micro_batch_tokens is not None:
        return v.micro_batch_tokens
    return AUTO_MICRO_BATCH_TOKENS if device.type == "cuda" else 0


def _train(args: argparse.Namespace, v: TrainOptions, t_wall: float, env=None) -> int:
    from .. import distributed, loading, outputs

    dist_main = env is None or env.rank == 0
    device = loading.pick_device(v.device)
    if v.cuda_graphs:  # refused before anything loads (the loop checks the model's side again)
        needs = [
            (device.type != "cuda", "a CUDA device"),
            (v.nproc > 1 and v.strategy != "ddp", "--strategy ddp under --nproc (the loop all-reduces itself)"),
            (v.packing is False, "--packing"),
            (v.precision == "fp32", "--precision bf16 (float32 packed rows are attended row by row)"),
            (bool(v.max_memory), "no --max-memory (a graph's micro-batches keep their size)"),
        ]
        why = next((text for missing, text in needs if missing), None)
        if why:
            raise CLIError(f"--cuda-graphs needs {why}; leave --cuda-graphs out")
    if env:
        device = distributed.init(env, device)
    folder = _plan_out(v)
    if dist_main and not v.resume:
        outputs.begin(folder, "train")
    if env:  # rank 0 has created the run's folder
        import torch.distributed

        torch.distributed.barrier()
    v.work = str(folder.work)
    try:
        return _train_in(args, v, t_wall, env, folder, device)
    except BaseException:
        from ..training import latest_checkpoint

        # a new run that fails before its first checkpoint leaves nothing behind; one with a
        # checkpoint stays where it is, for --resume
        if dist_main and not v.resume and latest_checkpoint(folder.work / "checkpoints") is None:
            outputs.abort(folder)
        raise


def _train_in(args: argparse.Namespace, v: TrainOptions, t_wall: float, env, folder, device) -> int:
    from .. import distributed, outputs
    from ..commands.evaluate import eval_rows
    from ..training import Dist, Trainer, TrainSettings, check_resume, total_steps
    from . import _train_steps as st

    dist = Dist(env.rank, env.world) if env else Dist()
    out = folder.work
    if v.resume:  # before anything loads or is written: same settings as the checkpoint's run?
        ckpt = check_resume(out / "checkpoints", v.pick(FINGERPRINT), dist.world)
        if _say_resume(v, ckpt, out):
            if not folder.in_place and dist.is_main:  # finished, but killed before it was renamed into place
                outputs.finish(folder)
            return 0
    ctx = st.load_base(v, device, dist)
    if ctx.n_cut * 2 > len(ctx.rows):
        print(
            f"flashbone train: warning: {ctx.n_cut} of {len(ctx.rows)} rows cut to --max-length "
            f"{v.max_length} (prompt tokens dropped first); raise --max-length to keep them whole",
            file=sys.stderr,
            flush=True,
        )
    batch, accum = v.proc_batch
    v.micro_batch_tokens_resolved = _micro_batch_tokens(v, device)
    settings = TrainSettings(
        lr=v.lr,
        batch_size=batch,
        grad_accum=accum,
        epochs=v.epochs,
        max_steps=v.max_steps or None,
        seed=v.seed,
        weight_decay=v.weight_decay,
        max_grad_norm=v.max_grad_norm,
        save_every=v.save_every,
        keep_checkpoints=v.keep_checkpoints,
        stop_after=v.stop_after or None,
        bf16=ctx.bf16,
        progress=v.progress,
        micro_batch_tokens=v.micro_batch_tokens_resolved,
        packing=v.packing,
        cuda_graphs=v.cuda_graphs,
        max_memory_gib=v.max_memory,
        fingerprint=v.pick(FINGERPRINT),
    )
    v.steps = total_steps(len(ctx.rows), settings, dist.world)
    settings.warmup_steps = warmup_steps(v, v.steps)
    if ctx.val_rows is not None:
        from ..validation import default_every

        v.val_every_resolved = settings.val_every = v.val_every or default_every(v.steps)
    _print_config(v, ctx)
    if dist.is_main:
        (out / "config.yaml").write_text(
            yaml.safe_dump(
                {k.replace("_", "-"): getattr(v, k) for k in vars(args) if k not in NOT_SAVED}, sort_keys=False
            )
        )
    before = st.eval_before(v, ctx, out, eval_rows)
    st.attach_method(v, ctx)
    adapted = ctx.adapted
    _print_method(v, adapted)
    # graphs in several processes: no DDP wrapper, the loop all-reduces once per step (training.py)
    wrap = distributed.wrapper(v.strategy, device, ctx.bf16, adapted.hf_model) if env and not v.cuda_graphs else None
    settings.lr_for = lr_for(v, list(adapted.named_trainable()))
    settings.report_to = report_to(v)
    settings.run_config = {k: getattr(v, k) for k in vars(args) if k not in NOT_SAVED}
    result = Trainer(
        adapted.model, ctx.rows, ctx.tokenizer.pad_token_id, settings, out, dist=dist, wrap=wrap, val_rows=ctx.val_rows
    ).run(resume=v.resume)
    if env:  # one figure per process
        result["peak_gpu_memory_gib"] = distributed.all_gather_objects(result.get("peak_gpu_memory_gib"), dist.world)
    if result["stopped"]:
        if dist.is_main:
            outputs.finish(folder)
        print(
            f"stopped after step {result['steps']} of {result['total_steps']}; checkpoint in "
            f"{Path(v.out) / 'checkpoints'}; continue with: flashbone train --out {v.out} --resume"
        )
        return 0
    saved_to = st.save_result(adapted, ctx.tokenizer, out, dist)
    result["trainable_params"], result["total_params"] = adapted.n_trainable, adapted.n_total  # before a merge
    after = st.eval_after(v, ctx, out, eval_rows, saved_to)
    if not dist.is_main:
        return 0
    wall = time.time() - t_wall + result.get("resumed_seconds", 0.0)  # earlier runs' training time counts too
    summary = st.summarize(
        v, adapted, result, before, after, Path(v.out) / saved_to.name, ctx.device, ctx.bf16, wall, len(ctx.rows)
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    st.loss_plot(out, title=Path(v.out).name)
    outputs.finish(folder)
    print(st.report(summary, Path(v.out)))
    return 0


__all__ = ["add_arguments", "run", "PAPER_RECIPE", "TINY_RECIPE"]
