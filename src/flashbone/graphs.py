"""CUDA graphs of the training loop's micro-batches: the forward and backward of a packed
micro-batch recorded once per shape and replayed, so the host queues one graph instead of
thousands of kernels.

    micro-batch: rows of n_1 .. n_k tokens, packed (varlen.py)
      -> padded to a bucket (static shapes):   N   -> round_up(N, step)   tokens, step = the
                                                     larger of ``bucket`` and 1/8 of N's octave
                                                     (under 12.5% padding, 8 shapes per doubling)
                                              k+1 -> round_up(k+1, 8)    rows in cu_seqlens
         the padding is one extra row (no targets; its ids never matter) and empty rows after it,
         target positions padded with position 0 and target -100 (ignored by the loss)
      -> key = the padded shapes; a micro-batch of a new key is recorded (its forward and
         backward) and replayed; the very first runs eagerly on a side stream before recording
      -> every later one: copy the inputs into the key's buffers, replay

Gradients accumulate in place into ``.grad`` tensors that exist before the first capture and
are zeroed, never freed, between steps (``zero_grad(set_to_none=False)``); the loss scale
``world / n_tokens`` is a device scalar refilled per micro-batch. All graphs share one memory
pool: they never run at once and each one's outputs are read before the next replays.

Why: at the papers' micro-batches the step is host-bound (docs/benchmarks.md): the GPU waits
for Python in every layer, and more so under gradient checkpointing, which runs each block's
forward twice. A replay costs the host microseconds. A graph cannot hold a step that waits on
the GPU (padded rows' attention masks are checked on the host by transformers: hence packed rows
only; a model that still syncs trains on eagerly), nor DDP's or FSDP's collectives inside
backward (several processes: the loop all-reduces the gradients itself, after the replays).
Random ops (dropout) are fine: PyTorch advances a recorded graph's RNG offsets on each replay.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .batching import IGNORE
from .kernels import any_size

ROW_MULTIPLE = 8  # cu_seqlens entries are padded to a multiple of this (fewer shapes, fewer graphs)
PER_OCTAVE = 8  # padded widths per doubling of the token count


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_width(n: int, bucket: int) -> int:
    """``n`` tokens rounded up to a multiple of ``bucket`` or of 1/``PER_OCTAVE`` of the power of
    two below ``n``, whichever is larger: few shapes (hence graphs) and little padding."""
    return round_up(n, max(bucket, (1 << (max(n, 1).bit_length() - 1)) // PER_OCTAVE))


def pad_packed(batch: dict[str, torch.Tensor], lengths: list[int], bucket: int) -> dict[str, torch.Tensor]:
    """A packed micro-batch (``input_ids``/``labels``/``position_ids`` of shape (1, N), and the
    optional ``loss_positions``/``loss_targets``) padded to static shapes, with its
    ``cu_seqlens``: the same loss and gradients (tests/test_graphs.py), shapes from a few buckets."""
    n = batch["input_ids"].shape[1]
    width = padded_width(n, bucket)
    out: dict[str, torch.Tensor] = {}
    for name, fill in (("input_ids", None), ("labels", IGNORE), ("position_ids", None)):
        t = batch[name]
        padded = torch.full((1, width), IGNORE if fill is not None else 0, dtype=t.dtype)
        padded[:, :n] = t
        out[name] = padded
    if width > n:  # the padding as one row of its own: positions from 0, no targets
        out["position_ids"][0, n:] = torch.arange(width - n)
        out["input_ids"][0, n:] = batch["input_ids"][0, -1]
    rows = list(lengths) + ([width - n] if width > n else [])
    cu = torch.full((round_up(len(rows) + 1, ROW_MULTIPLE),), width, dtype=torch.int32)
    cu[0] = 0
    cu[1 : len(rows) + 1] = torch.tensor(rows, dtype=torch.int64).cumsum(0).to(torch.int32)
    out["cu_seqlens"] = cu
    if "loss_positions" in batch:
        pos, tgt = batch["loss_positions"], batch["loss_targets"]
        size = width  # at most every token is a target: one shape less to vary
        out["loss_positions"] = torch.zeros(size, dtype=pos.dtype)
        out["loss_positions"][: pos.shape[0]] = pos
        out["loss_targets"] = torch.full((size,), IGNORE, dtype=tgt.dtype)
        out["loss_targets"][: tgt.shape[0]] = tgt
    return out


def shape_key(batch: dict[str, torch.Tensor]) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # the buffers the graph reads
    loss: torch.Tensor  # the buffer it writes the micro-batch's summed loss into


class MicroBatchGraphs:
    """Forward + backward of a micro-batch, ``body(inputs, scale) -> loss`` (its summed loss,
    detached; the backward of ``loss * scale`` done inside), captured per input shape.

    ``eager_first``: micro-batches run eagerly before any capture (the adapters' layer groups
    settle there, the kernels pad their weights, and the gradients get allocated). Off CUDA nothing
    is captured: the padded micro-batches run eagerly (what the CPU tests check)."""

    def __init__(self, device: torch.device, eager_first: int = 3):
        self.device = device
        self.eager_left = eager_first
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = None
        self.scale = torch.zeros((), device=device, dtype=torch.float32)
        self.captures = 0
        self.replays = 0
        self.failed: str | None = None  # why a recording failed: new shapes run eagerly since

    def __call__(
        self, body: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], host: dict, scale: float
    ) -> torch.Tensor:
        """Run ``body`` on ``host`` (pinned CPU tensors) with the loss scale ``scale``. Every run
        of ``body`` (eager, recorded) takes the kernels at every size (:func:`.kernels.any_size`):
        replays pay no launches, and one path for all micro-batches keeps resume exact."""
        with any_size():
            return self._run(body, host, scale)

    def _run(self, body, host: dict, scale: float) -> torch.Tensor:
        self.scale.fill_(scale)
        key = shape_key(host)
        g = self.graphs.get(key)
        if g is not None:
            for k, buf in g.inputs.items():
                buf.copy_(host[k], non_blocking=True)
            g.graph.replay()
            self.replays += 1
            return g.loss.clone()
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
        if self.eager_left > 0 or self.device.type != "cuda" or self.failed:  # (off CUDA: padded, eagerly)
            self.eager_left -= 1
            return body(inputs, self.scale)
        if self.pool is None:
            # the first capture: this micro-batch eagerly on a side stream first (what PyTorch
            # asks before capturing a backward), its memory handed back before the graph's pool
            # is laid out; the recording then computes nothing until it is replayed
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss = body(inputs, self.scale)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self._try_capture(key, body, inputs)
            return loss
        # a later shape: record it and replay it at once (no autotuning or lazy state is left,
        # and recording costs the host what one eager micro-batch does)
        g = self._try_capture(key, body, inputs)
        if g is None:  # recording computed nothing: this micro-batch eagerly, as the loop would
            return body(inputs, self.scale)
        g.graph.replay()
        self.replays += 1
        return g.loss.clone()

    def reset(self) -> None:
        """Drop every recording (they read the tensors' current memory; a weight moved since,
        e.g. by :func:`flashbone.layer.compact_weights`, needs a new one). Counts stay."""
        self.graphs.clear()
        self.pool = None

    def summary(self) -> dict:
        """What ran as graphs: shapes recorded, micro-batches replayed, and whether recording
        failed (then the loop went on without graphs)."""
        return {"captured": self.captures, "replayed": self.replays, "failed": self.failed}

    def _try_capture(self, key: tuple, body, inputs: dict[str, torch.Tensor]) -> _Graph | None:
        """The recording of ``body`` on this shape, or None (and graphs off for new shapes, one
        warning) when something in the step cannot be recorded, e.g. it waits on the GPU."""
        try:
            return self._capture(key, body, inputs)
        except RuntimeError as e:
            self.failed = str(e).splitlines()[0][:200]
            warnings.warn(
                f"flashbone: this model's training step cannot be recorded as a CUDA graph ({self.failed}); "
                "training goes on without recording new shapes (--no-cuda-graphs turns graphs off)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _capture(self, key: tuple, body, inputs: dict[str, torch.Tensor]) -> _Graph:
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            out = body(inputs, self.scale)
        g = self.graphs[key] = _Graph(graph, inputs, out)
        self.captures += 1
        return g


__all__ = ["MicroBatchGraphs", "pad_packed", "padded_width", "round_up", "shape_key", "ROW_MULTIPLE"]
