"""Several processes: launch, process group, DDP / FSDP2 wrapping, full tensors for rank 0.

flashbone train --nproc N ...                        torch.distributed.run (torchrun's own
torchrun --nproc_per_node N -m flashbone train ...   code) starts N x `python -m flashbone train`
each process: RANK, LOCAL_RANK, WORLD_SIZE from the environment
    init_process_group: nccl on CUDA (device cuda:LOCAL_RANK), gloo on CPU
    global batch B x A (as asked) = per-process micro-batch b x accumulation a x N  (split_batch)
    ddp:  DistributedDataParallel(model)               every process holds the whole model
    fsdp: fully_shard(each decoder layer), then fully_shard(root)
          a decoder layer's unit holds its base weights AND its adapters, so a weight-reading
          adapter (bat, bone-ab...) sees the whole W of its layer, gathered, in forward
          bf16: MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32); fp32 shards stay
rank 0 writes: tensors gathered to full ones first (DTensor.full_tensor, a collective that
every process calls), so checkpoints and adapters look exactly like a one-process run's.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .errors import BoneError
from .layer import compact_weights as compact_

STRATEGIES = ("ddp", "fsdp")


class DistributedError(BoneError):
    """A multi-process run that cannot start or whose processes failed."""


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process sits, as torchrun's environment variables say."""

    rank: int
    world: int
    local_rank: int


def process_env() -> ProcessEnv | None:
    """The torchrun environment of this process, or None when it was started alone."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return ProcessEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def launch(nproc: int, argv: list[str], command: str = "train") -> None:
    """Run ``python -m flashbone <command> argv...`` in ``nproc`` processes on this machine through
    torch.distributed.run (what ``torchrun --standalone`` does); returns when all have ended."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # the processes inherit this environment (NCCL_* and the like included); CPU threads are
    # shared out between them unless the user chose (torchrun would set 1 and warn)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "--module", "flashbone"])
    args.training_script_args = [command, *argv]  # not parsed: torchrun would read --r as its own --rdzv...
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise DistributedError(
            f"the process of rank {rank} failed (exit code {failure.exitcode}), so the others "
            "were stopped; its error is printed above"
        ) from None


def init(env: ProcessEnv, device: torch.device) -> torch.device:
    """Join the process group (nccl for CUDA, gloo for CPU); returns this process's device."""
    import torch.distributed as dist

    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {env.local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per machine"
            )
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return device


def finish() -> None:
    """Wait for every process, then leave the group (gloo aborts at exit without the barrier)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def split_batch(batch_size: int, grad_accum: int, world: int) -> tuple[int, int]:
    """Per-process (micro-batch, accumulation) with ``b * a * world == batch_size * grad_accum``.

    The accumulation is divided first (the micro-batch, hence the memory per step, stays what
    was asked); what ``world`` leaves over divides the micro-batch."""
    g = math.gcd(grad_accum, world)
    rest = world // g
    if batch_size % rest:
        raise DistributedError(
            f"--batch-size {batch_size} x --grad-accum {grad_accum} = {batch_size * grad_accum} rows per step "
            f"cannot be split evenly over {world} processes; make --grad-accum (or --batch-size) a multiple of {world}"
        )
    return batch_size // rest, grad_accum // g


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model: the classes its ``_no_split_modules`` names
    (what accelerate's FSDP auto-wrap uses), else the children of its longest ModuleList."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        layers = list(max(lists, key=len)) if lists else []
    if not layers:
        raise DistributedError(
            f"--strategy fsdp: found no decoder layers in {type(model).__name__} to shard; use --strategy ddp"
        )
    return layers


def wrapper(strategy: str, device: torch.device, bf16: bool, hf_model: nn.Module) -> Callable[[nn.Module], nn.Module]:
    """The ``wrap`` hook of :class:`flashbone.training.Trainer` for ``strategy``.

    Weights padded by an earlier forward on the GPU kernels get a contiguous storage first
    (:func:`flashbone.layer.compact_weights`): DDP broadcasts and FSDP shards parameters as
    they are."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        def ddp(m: nn.Module) -> nn.Module:
            compact_(m)
            return DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None)

        return ddp
    if strategy != "fsdp":
        raise DistributedError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )

    def shard(m: nn.Module) -> nn.Module:
        compact_(m)
        for layer in decoder_layers(hf_model):  # adapters live inside: same unit as their weight
            fully_shard(layer, mp_policy=mp)
        fully_shard(m, mp_policy=mp)  # embeddings, final norm, head (tied ones stay together)
        return m

    return shard


# -- full tensors ------------------------------------------------------------------------------
def is_sharded(t: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor: gathered from every process for a DTensor (all must call), else ``t``."""
    return t.full_tensor() if is_sharded(t) else t


def gather_full(tensors: dict[str, Tensor], keep: bool) -> dict[str, Tensor]:
    """Full CPU copies of ``tensors`` (in a fixed order: a collective); ``{}`` where not ``keep``."""
    out = {}
    for n, t in tensors.items():
        if keep or is_sharded(t):
            full = full_tensor(t.detach())
            if keep:
                out[n] = full.to("cpu", copy=True)
    return out


def full_optimizer_state(sd: dict, keep: bool) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered (the one-process format)."""
    state = {}
    for i in sorted(sd["state"]):
        st = {
            k: full_tensor(v).cpu() if torch.is_tensor(v) and (keep or is_sharded(v)) else v
            for k, v in sd["state"][i].items()
        }
        if keep:
            state[i] = st
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


def place_like(full: Tensor, p: Tensor) -> Tensor:
    """``full`` on ``p``'s device, sharded as ``p`` is (this process's piece of a DTensor)."""
    full = full.to(device=p.device)
    if is_sharded(p):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, p.device_mesh, p.placements)
    return full


def shard_optimizer_state(sd: dict, params: list[Tensor]) -> dict:
    """A full (one-process format) optimizer state laid out like the (sharded) ``params``."""
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: place_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in st.items()}
    return {"state": state, "param_groups": sd["param_groups"]}


@contextlib.contextmanager
def full_parameters(model: nn.Module, full: dict[str, Tensor]) -> Iterator[None]:
    """Put the full tensors in place of ``model``'s (sharded) parameters of those names, tied
    ones included, while the body runs: save functions then read ordinary tensors."""
    named = dict(model.named_parameters())
    new = {id(named[n]): nn.Parameter(t, requires_grad=named[n].requires_grad) for n, t in full.items()}
    swapped = []
    for mod in model.modules():
        for leaf, p in list(mod._parameters.items()):
            if p is not None and id(p) in new:
                swapped.append((mod, leaf, p))
                mod._parameters[leaf] = new[id(p)]
    try:
        yield
    finally:
        for mod, leaf, p in swapped:
            mod._parameters[leaf] = p


def all_gather_objects(obj, world: int) -> list:
    """Every process's ``obj``, in rank order."""
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


__all__ = [
    "STRATEGIES",
    "DistributedError",
    "ProcessEnv",
    "process_env",
    "launch",
    "init",
    "finish",
    "split_batch",
    "decoder_layers",
    "wrapper",
    "is_sharded",
    "full_tensor",
    "gather_full",
    "full_optimizer_state",
    "place_like",
    "shard_optimizer_state",
    "full_parameters",
    "all_gather_objects",
]
