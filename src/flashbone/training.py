"""The training loop: AdamW, cosine schedule (optional linear warmup), gradient clipping, accumulation,
atomic checkpoints and exact resume.

    step s uses micro-batches g = s*A + a  (a < A = grad_accum) of an endless, seeded stream:
        epoch e = g // M, rows order_e[(g % M)*b : ...]     (M micro-batches per epoch)
    loss_s = sum over the step's response tokens of -log p / (response tokens in the step)
    grads clipped to --max-grad-norm; lr_s = lr * 0.5 * (1 + cos(pi * s / S))   (after settings.warmup_steps
    of linear rise from 0, none by default)

How the step's rows are cut into micro-batches does not change that loss, so with
``micro_batch_tokens`` (``--micro-batch-tokens``) the loop regroups them by a token budget,
length-sorted, and with ``packing`` lays them end to end (batching.py); the global batch, in
rows, stays ``batch_size x grad_accum``. A step queues its GPU work without waiting on it:
token counts come from the row lengths the host already knows, and the step's loss and
gradient norm are read (one sync) after the next step is queued. On CUDA, running out of
memory under a token budget (one process) redoes the step at half the budget. With padding-free
packing in one CUDA process each micro-batch's forward and backward is a CUDA graph, recorded
once per padded shape and replayed (graphs.py): the host no longer paces the GPU. Asked for in
several processes (no DDP wrapper), the loop all-reduces the gradients itself once per step.

N processes (``Dist(rank, world)``, model wrapped by ``wrap``: DDP or FSDP2): rank r takes
micro-batches g*N + r, so the step's rows are a one-process step's. The step's token count n
is summed over all processes before backward; each process back-propagates
    sum of its token losses * N / n
and DDP/FSDP average the gradients over the N processes: the gradient is the one-process
gradient of sum(all token losses) / n. The logged loss is the same global mean.

The data position is a function of the step alone, so resuming needs only the step number,
the trainable tensors, the optimizer and scheduler states and the RNG states (full tensors,
gathered from the shards under FSDP, written by rank 0: the one-process format):
    DIR/checkpoints/step-00000040/{trainable.safetensors, trainer.pt, state.json}
written atomically by checkpoints.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .batching import MicroBatch, collate_packed, plan_step, target_tokens
from .data import IGNORE, DataError, collate, epoch_order
from .distributed import full_optimizer_state, full_tensor, gather_full, is_sharded, place_like, shard_optimizer_state
from .checkpoints import CheckpointError, check_resume, latest_checkpoint, load_checkpoint, save_checkpoint
from .errors import BoneError
from . import graphs, siblings, validation, varlen
from .loss import HeadCapture, chunked_loss_sum, target_positions
from .reporting import Reporters


@dataclass
class TrainSettings:
    lr: float = 2e-5
    batch_size: int = 4
    grad_accum: int = 16
    epochs: float = 1.0
    max_steps: int | None = None
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 0
    keep_checkpoints: int = 2
    stop_after: int | None = None
    bf16: bool = False
    progress: bool = True
    micro_batch_tokens: int = 0  # 0: micro-batches of batch_size rows as asked; else a token budget
    packing: bool | None = False  # rows end to end, attention within each row; None: padding-free where it can
    max_memory_gib: float | None = None  # CUDA: the allocator's cap; micro-batches halve to fit under it
    chunked_loss: bool | None = None  # head on target tokens in chunks (loss.py); None: on CUDA
    fingerprint: dict = field(default_factory=dict)  # settings a resumed run must share
    warmup_steps: int = 0  # lr rises linearly from 0 over these steps, then the cosine decay
    lr_for: dict[str, float] = field(default_factory=dict)  # name part -> lr of the parameters whose name holds it
    report_to: tuple[str, ...] = ("tensorboard",)  # also "wandb"; metrics.jsonl is always written
    run_config: dict = field(default_factory=dict)  # what a wandb run records as its config
    val_every: int = 0  # validation loss after every N-th step and the last (0: none; validation.py)
    cuda_graphs: bool | None = None  # packed micro-batches as CUDA graphs (graphs.py); None: where they can
    graph_bucket: int = 256  # graphs: a micro-batch's tokens are padded to a multiple of this


@dataclass
class Dist:
    """Which process this is; one process by default."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def total_steps(n_rows: int, s: TrainSettings, world: int = 1) -> int:
    if s.max_steps:
        return int(s.max_steps)
    per_epoch = math.ceil(n_rows / s.batch_size)
    return max(1, math.ceil(s.epochs * per_epoch / (s.grad_accum * world)))


def param_groups(params: dict[str, torch.nn.Parameter], lr: float, lr_for: dict[str, float]) -> list[dict]:
    """One optimizer group per learning rate: a parameter whose name holds a key of ``lr_for``
    (the first that matches) takes its lr, the others ``lr``. The schedule scales every group alike."""
    groups: dict[float, list] = {lr: []}
    for name, p in params.items():
        groups.setdefault(next((v for k, v in lr_for.items() if k in name), lr), []).append(p)
    return [{"params": ps, "lr": g} for g, ps in groups.items() if ps]


def graphs_obstacle(device: str, world: int, wrapped: bool, flat: bool, half: bool) -> str | None:
    """Why the loop cannot record its micro-batches as CUDA graphs (None: it can).

    ``wrapped``: several processes by default or under DDP/FSDP (the loop all-reduces the
    gradients itself, and only when asked until measured on several GPUs); ``flat``: padding-free
    packed rows; ``half``: attention in half precision (float32 packed rows are attended row by
    row, with the row boundaries read on the host)."""
    if device != "cuda":
        return "they need a CUDA device"
    if world > 1 and wrapped:
        return "under --nproc they need --strategy ddp (the loop all-reduces the gradients itself)"
    if not flat:
        return (
            "they need padding-free packed rows (--packing on a Llama, Mistral or Qwen model): "
            "padded rows carry attention masks that transformers checks on the host"
        )
    if not half:
        return "they need half precision (--precision bf16): float32 packed rows are attended row by row"
    return None


# -- the loop -------------------------------------------------------------------------------------
def row_lengths(rows) -> tuple[list[int], list[int]]:
    """Token count and prompt length of every row (read from the Arrow column where the rows
    are a :class:`datasets.Dataset`: no Python lists of ids)."""
    try:
        import pyarrow.compute as pc

        lengths = pc.list_value_length(rows.with_format("arrow")["input_ids"]).to_pylist()
    except (AttributeError, ImportError, TypeError):
        lengths = [len(x) for x in rows["input_ids"]]
    return [int(n) for n in lengths], [int(n) for n in rows["n_prompt"]]


@dataclass
class _Queued:
    """A step whose GPU work is queued; its loss and norm are read once the next is queued."""

    step: int
    loss: torch.Tensor  # summed over the step's target tokens (all processes)
    n_target: int
    grad_norm: torch.Tensor
    lr: float
    n_input: int  # non-padding tokens of the step (all processes)
    tokens: int  # cumulative, after this step
    val_loss: float | None = None  # on the held-out rows after this step, where measured
    end: object = None  # when its work ended: a :class:`_StepClock` mark


class _StepClock:
    """When each step's work ended: a CUDA event on the GPU (the host queues ahead of it), the
    host's clock elsewhere (there a step's work is done when it is queued). Tokens/s of a step
    is its tokens over the time between its end and the one before."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.last = self.mark()

    def mark(self):
        if not self.cuda:
            return time.time()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def since_last(self, end) -> float:
        """Seconds from the previous step's end to ``end``."""
        if self.cuda:
            end.synchronize()
            seconds = self.last.elapsed_time(end) / 1e3
        else:
            seconds = end - self.last
        self.last = end
        return seconds


class Trainer:
    """Train ``model``'s trainable parameters on tokenized ``rows`` (``input_ids``, ``n_prompt``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        rows,
        pad_id: int,
        settings: TrainSettings,
        out_dir: Path,
        dist: Dist | None = None,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        val_rows=None,
    ):
        self.model = wrap(model) if wrap else model
        self.rows, self.pad_id, self.s, self.out = rows, pad_id, settings, Path(out_dir)
        self.dist = dist or Dist()
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise BoneError("the model has no trainable parameters")
        self.device = next(model.parameters()).device
        self.per_epoch = math.ceil(len(rows) / settings.batch_size)
        self.total = total_steps(len(rows), settings, self.dist.world)
        # fused AdamW on CUDA: one kernel for all tensors (plain DTensor shards take the default)
        fused = self.device.type == "cuda" and not any(is_sharded(p) for p in self.params.values())
        self.opt = torch.optim.AdamW(
            param_groups(self.params, settings.lr, settings.lr_for),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            **({"fused": True} if fused else {}),
        )
        self.lengths, self.n_prompt = row_lengths(rows)
        # tokens each row's loss covers: after the prompt, or where a conversation's own labels say
        self.n_target = (
            [sum(1 for y in ys[1:] if y != IGNORE) for ys in rows["labels"]]
            if "labels" in getattr(rows, "column_names", ())
            else [target_tokens(n, p) for n, p in zip(self.lengths, self.n_prompt)]
        )
        self.budget = settings.micro_batch_tokens
        # packing on a model whose attention runs padding-free: each micro-batch is one sequence of
        # its rows (varlen.py); elsewhere packing lays rows in bins attended through dense masks
        self.unwrapped = model  # the transformers model (``self.model`` may be its DDP/FSDP wrapper)
        self.flat = (
            settings.packing is not False
            and varlen.supported(model)
            and (settings.packing or self.device.type == "cuda")
        )
        self.n_layers = varlen.num_layers(model) if self.flat else 0
        # HF causal LMs build a KV cache in forward unless told not to; packed rows need none
        self.no_cache = hasattr(getattr(model, "config", None), "use_cache")
        self.step_hook: Callable[[int], None] | None = None  # called after each step is queued
        chunked = settings.chunked_loss if settings.chunked_loss is not None else self.device.type == "cuda"
        # FSDP: the head's weight is a shard outside its own forward, so the loss takes the logits
        self.capture = (
            HeadCapture.attach(model) if chunked and not any(is_sharded(p) for p in model.parameters()) else None
        )
        from transformers import get_cosine_schedule_with_warmup

        self.sched = get_cosine_schedule_with_warmup(
            self.opt, num_warmup_steps=settings.warmup_steps, num_training_steps=self.total
        )
        self._orders: dict[int, list[int]] = {}
        # held-out rows scored every settings.val_every steps (validation.py)
        self.val_rows = val_rows if val_rows is not None and len(val_rows) and settings.val_every else None
        self.val_batches = (
            validation.micro_batches(row_lengths(val_rows)[0], settings.batch_size) if self.val_rows is not None else []
        )
        self.last_val_loss: float | None = None
        self.graphs = self._make_graphs(settings.cuda_graphs)
        self._grad_buffers: list[torch.Tensor] | None = None  # graphs in several processes: flat gradients

    def _make_graphs(self, asked: bool | None) -> graphs.MicroBatchGraphs | None:
        """The micro-batch graphs: where asked (else a clear error where the step cannot be
        one), by default wherever they can run and no memory cap asks to halve micro-batches."""
        if asked is False:
            return None
        half = self.s.bf16 or getattr(self.unwrapped, "dtype", None) in (torch.float16, torch.bfloat16)
        why = graphs_obstacle(
            self.device.type, self.dist.world, asked is None or self.model is not self.unwrapped, self.flat, half
        )
        if asked is None:
            return None if why or self.s.max_memory_gib else graphs.MicroBatchGraphs(self.device)
        if why:
            raise BoneError(f"--cuda-graphs: {why}; leave --cuda-graphs out")
        return graphs.MicroBatchGraphs(self.device)

    def _indices(self, g: int) -> list[int]:
        """Row indices of plain micro-batch ``g`` of the endless, seeded stream."""
        epoch, i = divmod(g, self.per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(len(self.rows), self.s.seed, epoch)}
        return self._orders[epoch][i * self.s.batch_size : (i + 1) * self.s.batch_size]

    def _step_plan(self, step: int) -> tuple[list[MicroBatch], int, int]:
        """This process's micro-batches of ``step``, and the step's target and input token
        counts over all processes (from row lengths: no communication, no device sync)."""
        a, w = self.s.grad_accum, self.dist.world
        shares = [[self._indices((step * a + k) * w + p) for k in range(a)] for p in range(w)]
        plan = plan_step(shares, self.lengths, self.budget, bool(self.s.packing) and not self.flat, self.dist.rank)
        rows = [i for share in shares for mb in share for i in mb]
        return (plan, sum(self.n_target[i] for i in rows), sum(self.lengths[i] for i in rows))

    def _collate(self, mb: MicroBatch, rows=None) -> dict[str, torch.Tensor]:
        """Micro-batch ``mb`` of the training rows (or of ``rows``: the validation rows) on the device."""
        batch = self._host_batch(mb, rows)
        if self.device.type == "cuda":  # pinned + non_blocking: the copy does not wait on the GPU
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def _host_batch(self, mb: MicroBatch, rows=None) -> dict[str, torch.Tensor]:
        """Micro-batch ``mb`` as CPU tensors (see :meth:`_collate`)."""
        cols = (self.rows if rows is None else rows)[mb.rows]
        lengths = [self.lengths[i] for i in mb.rows] if rows is None else [len(a) for a in cols["input_ids"]]
        rows = [{"input_ids": a, "n_prompt": n} for a, n in zip(cols["input_ids"], cols["n_prompt"])]
        for r, y in zip(rows, cols.get("labels") or []):  # conversations carry their own labels
            r["labels"] = y
        if self.flat:  # one sequence, no padding; cu_seqlens delimit its rows
            batch = collate_packed(rows, [list(range(len(rows)))], self.pad_id)
            batch["cu_seqlens"] = varlen.cu_seqlens(lengths)
        elif mb.bins is None:
            batch = collate(rows, self.pad_id)
        else:
            where = {i: k for k, i in enumerate(mb.rows)}
            batch = collate_packed(rows, [[where[i] for i in b] for b in mb.bins], self.pad_id)
        if self.capture is not None:  # picked here, on the host: the device never syncs for them
            batch["loss_positions"], batch["loss_targets"] = target_positions(batch["labels"])
        return batch

    def _autocast(self):
        """bf16 autocast where the run asked for bf16, else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.s.bf16 else contextlib.nullcontext()

    def _loss_sum(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        amp = self._autocast()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        if self.flat:
            inputs.pop("attention_mask", None)
        if self.no_cache:
            inputs["use_cache"] = False
        if self.capture is not None:
            with amp:
                with self.capture:
                    out = self.model(**inputs)
                if self.capture.hidden is not None:  # else the head was not called as hooked: plain loss
                    return chunked_loss_sum(
                        self.capture.head, self.capture.take(), batch["loss_positions"], batch["loss_targets"]
                    )
            logits = out.logits
        else:
            with amp:
                logits = self.model(**inputs).logits
        labels = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all processes (on the device: no host sync)."""
        if self.dist.world == 1:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t

    def _backward_step(self, step: int) -> tuple[torch.Tensor, int, int]:
        """Forward and backward of every micro-batch of ``step`` (gradients accumulated);
        returns the summed loss (on the device) and the step's target and input tokens."""
        plan, n_tok, n_in = self._step_plan(step)
        n_tok = max(1, n_tok)
        if self.graphs is not None:
            return self._graphed_step(plan, n_tok), n_tok, n_in
        loss_sum = torch.zeros((), device=self.device)
        batch = self._collate(plan[0])
        for k in range(len(plan)):
            with self._accumulating(last=k == len(plan) - 1), self._attention(plan[k], batch):
                loss = self._loss_sum(batch)
                if self.flat:
                    varlen.check_calls(self.n_layers)
                if k + 1 < len(plan):  # the next micro-batch's copy overlaps this backward
                    batch = self._collate(plan[k + 1])
                (loss * (self.dist.world / n_tok)).backward()  # DDP/FSDP then average over world
            loss_sum += loss.detach()
        return loss_sum, n_tok, n_in

    def _graphed_step(self, plan: list[MicroBatch], n_tok: int) -> torch.Tensor:
        """:meth:`_backward_step` with every micro-batch padded to a bucket and run as a CUDA
        graph (graphs.py); the same loss and gradients as the unpadded micro-batches."""
        if self.dist.world > 1 and self._grad_buffers is None:
            self._share_gradients()
        loss_sum = torch.zeros((), device=self.device)
        for mb in plan:
            host = graphs.pad_packed(self._host_batch(mb), [self.lengths[i] for i in mb.rows], self.s.graph_bucket)
            if self.device.type == "cuda":  # copied into the graph's buffers without waiting
                host = {k: v.pin_memory() for k, v in host.items()}
            loss_sum += self.graphs(self._graph_body, host, self.dist.world / n_tok)
        if self.dist.world > 1:  # what DDP would do, once per step: the mean over processes
            import torch.distributed as dist

            for flat in self._grad_buffers:
                dist.all_reduce(flat)
                flat.div_(self.dist.world)
        return loss_sum

    def _share_gradients(self) -> None:
        """Graphs in several processes (no DDP wrapper): rank 0's parameters to every process,
        and every gradient a view into one flat buffer per dtype, allocated before anything is
        recorded (graphs accumulate into these very tensors), all-reduced once per step. The
        adapter gradients are small: one all-reduce after backward costs little against
        overlapping many with it."""
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in self.params.values():
            dist.broadcast(p.data, 0)
            by_dtype.setdefault(p.dtype, []).append(p)
        self._grad_buffers = []
        for dtype, ps in by_dtype.items():
            flat = torch.zeros(sum(p.numel() for p in ps), dtype=dtype, device=self.device)
            at = 0
            for p in ps:
                view = flat[at : at + p.numel()].view_as(p)
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
                at += p.numel()
            self._grad_buffers.append(flat)

    def _graph_body(self, batch: dict[str, torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        """One padded packed micro-batch's forward and backward: what a graph records."""
        cu = batch["cu_seqlens"]
        with varlen.flat_attention(self.unwrapped, cu, batch["input_ids"].shape[1]):
            loss = self._loss_sum(batch)
            varlen.check_calls(self.n_layers)
            (loss * scale).backward()
        return loss.detach()

    def _backward_step_fitting(self, step: int) -> tuple[torch.Tensor, int, int]:
        """:meth:`_backward_step`; on CUDA out of memory under a token budget (one process), the
        step again from zero gradients and the same RNG state at half the budget."""
        if self.budget <= 0 or self.dist.world > 1 or self.device.type != "cuda" or self.graphs is not None:
            return self._backward_step(step)
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(self.device)
        while True:
            try:
                return self._backward_step(step)
            except torch.OutOfMemoryError:
                pass  # recover outside the handler: its traceback holds the step's tensors
            self.opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if all(len(mb.bins or mb.rows) == 1 for mb in self._step_plan(step)[0]):
                raise BoneError(
                    f"out of GPU memory with one row (or packed sequence) per micro-batch at step "
                    f"{step + 1}; use --gradient-checkpointing or a smaller --max-length"
                )
            self.budget //= 2
            torch.set_rng_state(rng[0])
            torch.cuda.set_rng_state(rng[1], self.device)
            if self.dist.is_main:
                print(
                    f"out of GPU memory: micro-batches now hold at most {self.budget} tokens (--micro-batch-tokens)",
                    flush=True,
                )

    def _attention(self, mb: MicroBatch, batch: dict[str, torch.Tensor]):
        """Padding-free attention over ``mb``'s rows for its forward and backward (gradient
        checkpointing recomputes attention in backward)."""
        if not self.flat:
            return contextlib.nullcontext()
        return varlen.flat_attention(self.unwrapped, batch["cu_seqlens"], max(self.lengths[i] for i in mb.rows))

    def _accumulating(self, last: bool):
        """DDP: all-reduce gradients only at the step's last micro-batch (FSDP reduce-scatters
        each one: unsharded gradients are not kept between micro-batches)."""
        from torch.nn.parallel import DistributedDataParallel

        if last or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _checkpoint(self, step: int, elapsed: float, tokens: int, loss: float | None = None) -> None:
        main = self.dist.is_main  # every process takes part in gathering the shards
        params = gather_full(self.params, keep=main)
        optimizer = full_optimizer_state(self.opt.state_dict(), keep=main)
        if not main:
            return
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        trainer = {"optimizer": optimizer, "scheduler": self.sched.state_dict(), "rng": rng}
        state = {
            "step": step,
            "total_steps": self.total,
            "elapsed_s": elapsed,
            "tokens": tokens,
            "world": self.dist.world,
            "fingerprint": self.s.fingerprint,
            "loss": loss,
        }
        save_checkpoint(self.out / "checkpoints", step, params, trainer, state, self.s.keep_checkpoints)

    def _resume(self) -> tuple[int, float, int]:
        path = check_resume(self.out / "checkpoints", self.s.fingerprint, self.dist.world)
        tensors, trainer, state = load_checkpoint(path)
        if set(tensors) != set(self.params):
            raise CheckpointError(f"--resume: {path} holds other tensors than this model trains")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(place_like(tensors[n].to(p.dtype), p))
        self.opt.load_state_dict(shard_optimizer_state(trainer["optimizer"], list(self.params.values())))
        self.sched.load_state_dict(trainer["scheduler"])
        if int(state.get("total_steps", self.total)) != self.total:  # extended: the cosine now ends later
            for g, base, fn in zip(self.opt.param_groups, self.sched.base_lrs, self.sched.lr_lambdas):
                g["lr"] = base * fn(self.sched.last_epoch)
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
        self.resumed_loss = state.get("loss")
        torch.set_rng_state(trainer["rng"]["cpu"])
        if "cuda" in trainer["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
        return int(state["step"]), float(state.get("elapsed_s", 0.0)), int(state.get("tokens", 0))

    def _metrics_file(self, start: int):
        path = self.out / "metrics.jsonl"
        if start and path.exists():  # drop lines written after the checkpoint we resume from
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
            path.write_text("".join(ln + "\n" for ln in keep))
        elif not start and path.exists():
            path.unlink()
        return open(path, "a")

    def _settle(self) -> None:
        """The model's first forwards, on a few tokens without gradients, before the first step.

        Layers learn on their first forwards (siblings.py: q/k/v then run as one node whose
        backward sums their input gradients in another order than autograd would), so without
        this the first micro-batches of a run round differently from later ones, and a resumed
        run would part from the uninterrupted one at its first step. The random state is left
        as it was."""
        ids = torch.tensor([list(self.rows[[0]]["input_ids"][0][:16])], device=self.device)
        extra = {"use_cache": False} if self.no_cache else {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
            for _ in range(siblings.LEARN_CALLS):
                self.model(input_ids=ids, **extra)

    def run(self, resume: bool = False) -> dict:
        """Train to the last step (or ``stop_after``); returns a summary."""
        start, elapsed0, tokens = self._resume() if resume else (0, 0.0, 0)
        if start >= self.total:  # its last checkpoint is its last step: only the outputs are left to write
            return {
                "steps": start,
                "total_steps": self.total,
                "stopped": False,
                "final_loss": getattr(self, "resumed_loss", None),
                "tokens": tokens,
                "train_seconds": elapsed0,
                "resumed_seconds": elapsed0,
            }
        self._settle()
        self.out.mkdir(parents=True, exist_ok=True)
        main = self.dist.is_main
        metrics = self._metrics_file(start) if main else None
        report = Reporters.open(self.out, start, self.s.report_to, self.s.run_config) if main else None
        end = min(self.total, self.s.stop_after) if self.s.stop_after else self.total
        bar = tqdm(
            total=self.total, initial=start, desc="train", disable=not (self.s.progress and main), dynamic_ncols=True
        )
        t0, loss_v = time.time() - elapsed0, None
        if self.device.type == "cuda":  # the training peak, not loading's (FSDP loads whole, then shards)
            torch.cuda.reset_peak_memory_stats(self.device)
            if self.s.max_memory_gib:  # past the cap the allocator raises out-of-memory: the budget halves
                total = torch.cuda.get_device_properties(self.device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, self.s.max_memory_gib * 2**30 / total), self.device)
        self.model.train()
        attention = contextlib.ExitStack()
        if self.device.type == "cuda":  # cuDNN attention plans each new (rows, width) shape on the host
            from torch.nn.attention import SDPBackend, sdpa_kernel

            attention.enter_context(
                sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
            )
        pending: _Queued | None = None
        clock = _StepClock(self.device)
        shown: dict[str, str] = {}  # the latest validation loss, kept in the progress bar

        def log(q: _Queued) -> float:
            """Read a queued step's loss and gradient norm (waits for it), write its record."""
            loss = float(q.loss) / q.n_target
            now = time.time()
            rec = {
                "step": q.step,
                "loss": round(loss, 6),
                "lr": q.lr,
                "grad_norm": round(float(q.grad_norm), 6),
                "tokens": q.tokens,
                "tokens_per_s": round(q.n_input / max(clock.since_last(q.end), 1e-9), 1),
                "elapsed_s": round(now - t0, 3),
                "epoch": round(q.step * self.s.grad_accum * self.dist.world / self.per_epoch, 4),
            }
            if q.val_loss is not None:
                rec["val_loss"] = round(q.val_loss, 6)
                shown["val_loss"] = f"{q.val_loss:.4f}"
            if main:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                report.scalars("train", {k: rec[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s")}, q.step)
                if q.val_loss is not None:
                    report.scalars("eval", {"loss": q.val_loss}, q.step)
            bar.set_postfix(loss=f"{loss:.4f}", **shown, lr=f"{q.lr:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
            bar.update(1)
            if not math.isfinite(loss):
                raise BoneError(f"the loss became {loss} at step {q.step}; lower --lr")
            return loss

        try:
            for step in range(start, end):
                lr = self.sched.get_last_lr()[0]
                loss_sum, n_tok, n_in = self._backward_step_fitting(step)
                grad_norm = full_tensor(
                    torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.s.max_grad_norm)
                )
                self.opt.step()
                self.sched.step()
                # graphs accumulate into the gradients' own memory: zeroed, kept
                self.opt.zero_grad(set_to_none=self.graphs is None)
                tokens += n_in
                if pending is not None:  # the step before, while this one runs on the GPU
                    loss_v = log(pending)
                pending = _Queued(step + 1, self._all_sum(loss_sum), n_tok, grad_norm, lr, n_in, tokens)
                if self.val_rows is not None and validation.is_val_step(step + 1, self.s.val_every, self.total):
                    pending.val_loss = self.last_val_loss = validation.validation_loss(
                        self, self.val_rows, self.val_batches
                    )
                pending.end = clock.mark()  # after its validation: the step's time holds it
                # with --save-every the last step is saved too: the finished run can be extended
                at_save = self.s.save_every and ((step + 1) % self.s.save_every == 0 or step + 1 == self.total)
                if at_save or (step + 1 == end and end < self.total):
                    loss_v, pending = log(pending), None
                    self._checkpoint(step + 1, time.time() - t0, tokens, loss_v)
                if self.step_hook is not None:
                    self.step_hook(step + 1)
            if pending is not None:
                loss_v, pending = log(pending), None
        finally:
            attention.close()
            bar.close()
            if metrics:
                metrics.close()
            if report is not None:
                report.close()
        peak = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3) if self.device.type == "cuda" else None
        if self.graphs is not None:  # their pool holds a step's activations: free it for what runs
            self.graphs.reset()  # next (evaluation, a merge that moves weights); a later run records again
        return {
            "steps": end,
            "total_steps": self.total,
            "stopped": end < self.total,
            "final_loss": loss_v,
            "val_loss": self.last_val_loss,
            "tokens": tokens,
            "train_seconds": round(time.time() - t0, 2),
            "peak_gpu_memory_gib": peak,
            "resumed_seconds": elapsed0,
            "cuda_graphs": None if self.graphs is None else self.graphs.summary(),
        }


__all__ = [
    "TrainSettings",
    "Trainer",
    "Dist",
    "total_steps",
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "check_resume",
    "CheckpointError",
    "DataError",
]
