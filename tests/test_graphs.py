"""CUDA graphs of packed micro-batches (graphs.py): padding to a bucket keeps the loss and the
gradients (CPU, fp32: the padded steps run eagerly), the training loop with graphs reaches the
plain loop's adapter, and on CUDA the captured and replayed steps do too."""

import pytest
import torch

from flashbone import graphs, varlen
from flashbone.batching import collate_packed
from flashbone.errors import BoneError
from flashbone.loss import target_positions
from test_batching import _rel, _rows
from test_varlen import _loss_and_grads, _train
from tiny_models import llama


def _packed(n_rows=5, seed=3):
    ds = _rows(n_rows, seed=seed)
    rows = [{"input_ids": ds[i]["input_ids"], "n_prompt": ds[i]["n_prompt"]} for i in range(n_rows)]
    batch = collate_packed(rows, [list(range(n_rows))], 0)
    return batch, [len(r["input_ids"]) for r in rows]


def test_padding_to_a_bucket_keeps_the_loss_and_gradients():
    torch.manual_seed(0)
    model = llama()
    batch, lengths = _packed()
    batch["cu_seqlens"] = varlen.cu_seqlens(lengths)
    ref_loss, ref = _loss_and_grads(model, batch, flat=True)
    padded = graphs.pad_packed({k: v for k, v in batch.items() if k != "cu_seqlens"}, lengths, 64)
    n = sum(lengths)
    assert padded["input_ids"].shape == (1, graphs.padded_width(n, 64)) and n % 64  # really padded
    assert padded["cu_seqlens"].shape[0] % graphs.ROW_MULTIPLE == 0
    assert padded["cu_seqlens"][-1] == padded["input_ids"].shape[1]
    loss, grads = _loss_and_grads(model, padded, flat=True)
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    assert _rel(grads, ref) <= 1e-6


def test_padded_target_positions_are_ignored():
    batch, lengths = _packed()
    batch["loss_positions"], batch["loss_targets"] = target_positions(batch["labels"])
    padded = graphs.pad_packed(batch, lengths, 64)
    k = batch["loss_positions"].shape[0]
    assert padded["loss_positions"].shape[0] == padded["input_ids"].shape[1] >= k
    assert torch.equal(padded["loss_positions"][:k], batch["loss_positions"])
    assert (padded["loss_targets"][k:] == -100).all()


def test_padded_widths_are_few_and_close():
    widths = {graphs.padded_width(n, 256) for n in range(4097, 8193)}
    assert len(widths) == graphs.PER_OCTAVE
    assert all(n <= graphs.padded_width(n, 256) <= 1.125 * n for n in range(4097, 20000, 37))
    assert graphs.padded_width(300, 256) == 512


def test_one_graph_per_bucket():
    a, la = _packed(5, seed=3)
    b, lb = _packed(6, seed=5)
    ka = graphs.shape_key(graphs.pad_packed(a, la, 4096))
    kb = graphs.shape_key(graphs.pad_packed(b, lb, 4096))
    assert ka == kb  # different row counts and lengths, one padded shape


def _train_graphed(tmp_path, name, train=None, **kw):
    """The loop of test_varlen._train (or ``train``) with its micro-batches through MicroBatchGraphs."""
    from flashbone.training import Trainer

    real_init = Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.graphs = graphs.MicroBatchGraphs(self.device, eager_first=1)
        self.s.graph_bucket = 32

    Trainer.__init__ = init
    try:
        return (train or _train)(tmp_path, name, packing=True, **kw)
    finally:
        Trainer.__init__ = real_init


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_the_padded_loop_reaches_the_plain_adapter(tmp_path, checkpointing):
    _, plain = _train(tmp_path, "plain")
    trainer, padded = _train_graphed(tmp_path, "padded", checkpointing=checkpointing, chunked_loss=True)
    assert trainer.flat and trainer.graphs.eager_left < 0  # every micro-batch went through it
    assert _rel(padded, plain) <= 1e-5


def test_the_padded_loop_reaches_the_plain_micro_batch_4_adapter_in_20_steps(tmp_path):
    """Issue 12's bar: 20 steps of micro-batch 4 x accumulation 4, fp32, CPU, relative <= 1e-5."""
    import test_batching

    plain = test_batching._train(tmp_path, "plain")
    padded = _train_graphed(tmp_path, "padded", train=test_batching._train, micro_batch_tokens=200)
    assert _rel(padded, plain) <= 1e-5


def test_cuda_graphs_are_refused_where_they_cannot_run(tmp_path):
    from flashbone.config import BoneConfig
    from flashbone.model import get_bone_model
    from flashbone.training import Trainer, TrainSettings

    model = get_bone_model(llama(), BoneConfig(variant="bone", r=8, target_modules=["q_proj"]))
    with pytest.raises(BoneError, match="--cuda-graphs: they need a CUDA device"):
        Trainer(model, _rows(8), 0, TrainSettings(cuda_graphs=True, packing=True, progress=False), tmp_path)


def test_why_graphs_cannot_run_names_the_first_obstacle():
    from flashbone.training import graphs_obstacle

    assert graphs_obstacle("cuda", 1, True, True, True) is None
    assert graphs_obstacle("cuda", 2, False, True, True) is None  # --nproc with --strategy ddp, asked for
    assert "CUDA device" in graphs_obstacle("cpu", 1, True, True, True)
    assert "--strategy ddp" in graphs_obstacle("cuda", 2, True, True, True)
    assert "packed rows" in graphs_obstacle("cuda", 1, True, False, True)
    # float32 packed rows are attended row by row from boundaries read on the host (seen on an H200)
    assert "--precision bf16" in graphs_obstacle("cuda", 1, True, True, False)


def _cuda_train(tmp_path, name, eager_first, checkpointing=False, quantize=None, bucket=256):
    """A tiny Llama with bone on CUDA (bf16 autocast: the varlen flash kernel), packed rows."""
    from flashbone.config import BoneConfig
    from flashbone.model import get_bone_model
    from flashbone.training import Trainer, TrainSettings

    torch.manual_seed(0)
    base = llama().cuda()
    if quantize:
        from flashbone import quant

        quant.quantize_(base, quantize, ["q_proj", "v_proj", "up_proj"], torch.bfloat16)
        quant.prepare_for_training(base)
    model = get_bone_model(base, BoneConfig(variant="bone", r=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    s = TrainSettings(lr=3e-3, batch_size=4, grad_accum=2, max_steps=6, seed=0, progress=False, bf16=True, packing=True)
    s.graph_bucket = bucket  # 256: every micro-batch one shape, one capture, then replays
    trainer = Trainer(model, _rows(48), 0, s, tmp_path / name)
    trainer.graphs = graphs.MicroBatchGraphs(trainer.device, eager_first=eager_first)
    result = trainer.run()
    return trainer, result, {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@needs_cuda
@pytest.mark.parametrize(
    "checkpointing,bucket", [(False, 256), (True, 256), (False, 16)], ids=["plain", "checkpointing", "many-shapes"]
)
def test_captured_and_replayed_steps_train_as_the_eager_ones(tmp_path, checkpointing, bucket):
    kw = dict(checkpointing=checkpointing, bucket=bucket)
    _, eager_result, eager = _cuda_train(tmp_path, "eager", eager_first=10**9, **kw)
    trainer, result, graphed = _cuda_train(tmp_path, "graphs", eager_first=2, **kw)
    assert (trainer.graphs.captures == 1) if bucket == 256 else (trainer.graphs.captures > 2)
    assert trainer.graphs.replays >= 12 - 2 - 1  # every micro-batch after the eager ones and the first capture
    assert _rel(graphed, eager) <= 1e-3
    assert abs(result["final_loss"] - eager_result["final_loss"]) <= 1e-3 * abs(eager_result["final_loss"])


@needs_cuda
def test_captured_steps_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    _, _, eager = _cuda_train(tmp_path, "eager", eager_first=10**9, checkpointing=True, quantize="4bit")
    trainer, _, graphed = _cuda_train(tmp_path, "graphs", eager_first=2, checkpointing=True, quantize="4bit")
    assert trainer.graphs.captures == 1
    assert _rel(graphed, eager) <= 1e-3


@needs_cuda
@pytest.mark.parametrize("which", ["first", "later"])
def test_a_step_that_cannot_be_recorded_trains_on_eagerly(tmp_path, monkeypatch, which):
    """A step that waits on the GPU (here: ``.item()`` while recording) cannot be a graph: the
    loop warns once and trains on eagerly, to the adapter of a run without graphs."""
    from flashbone.training import Trainer

    real_body = Trainer._graph_body

    def syncing_body(self, batch, scale):
        if torch.cuda.is_current_stream_capturing() and (which == "first" or self.graphs.captures >= 1):
            batch["input_ids"].sum().item()  # a host sync: recording fails here
        return real_body(self, batch, scale)

    _, _, eager = _cuda_train(tmp_path, "eager", eager_first=10**9, bucket=16)
    monkeypatch.setattr(Trainer, "_graph_body", syncing_body)
    with pytest.warns(RuntimeWarning, match="cannot be recorded as a CUDA graph"):
        trainer, result, graphed = _cuda_train(tmp_path, "graphs", eager_first=2, bucket=16)
    assert trainer.graphs.failed and result["cuda_graphs"]["failed"]
    assert trainer.graphs.captures == (0 if which == "first" else 1)
    assert _rel(graphed, eager) <= 1e-3


def test_the_closing_lines_say_what_ran_as_graphs(tmp_path):
    from flashbone.commands._train_steps import report

    s = {"saved": "x", "val_loss": None, "accuracy_after": None}
    assert "CUDA graphs" not in report({**s, "cuda_graphs": None}, tmp_path)
    text = report({**s, "cuda_graphs": {"captured": 3, "replayed": 40, "failed": None}}, tmp_path)
    assert "CUDA graphs: 3 micro-batch shapes recorded, 40 micro-batches replayed" in text
    text = report({**s, "cuda_graphs": {"captured": 0, "replayed": 0, "failed": "operation not permitted"}}, tmp_path)
    assert "new shapes ran without graphs: operation not permitted" in text


def _graphed_process(rank: int, world: int, out: str, port: int) -> None:
    """One of ``world`` gloo processes: the padded (graph) loop without a DDP wrapper, which
    all-reduces the gradients itself once per step; rank 0 saves the trained adapter."""
    import os

    import torch.distributed as dist

    from flashbone.config import BoneConfig
    from flashbone.model import get_bone_model
    from flashbone.training import Dist, Trainer, TrainSettings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same base everywhere (as loaded from one checkpoint)
        model = get_bone_model(llama(), BoneConfig(variant="bone", r=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        torch.manual_seed(100 + rank)  # different initial adapters: rank 0's must reach every process
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        s = TrainSettings(
            lr=3e-3, batch_size=2, grad_accum=4 // world, max_steps=6, seed=0, progress=False, packing=True
        )
        trainer = Trainer(model, _rows(48), 0, s, f"{out}/rank{rank}", dist=Dist(rank, world))
        trainer.graphs = graphs.MicroBatchGraphs(trainer.device, eager_first=1)
        trainer.s.graph_bucket = 32
        trainer.run()
        if rank == 0:
            torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, f"{out}/adapter.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_graphs_in_two_processes_follow_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    _graphed_process(0, 1, str(tmp_path / "one"), port())
    mp.spawn(_graphed_process, args=(2, str(tmp_path / "two"), port()), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "adapter.pt")
    two = torch.load(tmp_path / "two" / "adapter.pt")
    assert _rel(two, one) <= 1e-5
