"""Token-budget micro-batches and packed rows keep the plain loop's math (fp32, CPU).

The loss of a step is normalised by the step's target tokens, so regrouping its rows into
other micro-batches, or laying them end to end, may change only the order of float sums.
"""

import random

import datasets
import torch
from safetensors.torch import load_file

from flashbone.batching import MicroBatch, collate_packed, plan_step, target_tokens
from flashbone.config import BoneConfig
from flashbone.data import collate
from flashbone.model import get_bone_model
from flashbone.training import Trainer, TrainSettings
from tiny_models import llama


def _rows(n: int, seed: int = 0) -> datasets.Dataset:
    rng = random.Random(seed)
    ids, n_prompt = [], []
    for _ in range(n):
        length = rng.randint(6, 30)
        ids.append([1] + [rng.randint(3, 63) for _ in range(length - 1)])
        n_prompt.append(rng.randint(1, length - 2))
    return datasets.Dataset.from_dict({"input_ids": ids, "n_prompt": n_prompt})


def _model():
    torch.manual_seed(0)
    return get_bone_model(llama(), BoneConfig(variant="bone", r=8, target_modules=["q_proj", "v_proj", "up_proj"]))


def _train(tmp_path, name: str, **kw) -> dict[str, torch.Tensor]:
    model = _model()
    s = TrainSettings(lr=3e-3, batch_size=4, grad_accum=4, max_steps=20, seed=0, progress=False, **kw)
    Trainer(model, _rows(160), 0, s, tmp_path / name).run()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in a)
    return (num / sum(float(b[n].pow(2).sum()) for n in b)) ** 0.5


def test_token_budget_and_packing_reach_the_plain_loops_adapter(tmp_path):
    plain = _train(tmp_path, "plain")
    assert sum(float(t.abs().sum()) for t in plain.values()) > 0  # bone starts at zero: it trained
    for name, kw in [
        ("one", {"micro_batch_tokens": 10**6}),
        ("few", {"micro_batch_tokens": 70}),
        ("packed", {"micro_batch_tokens": 200, "packing": True}),
    ]:
        assert _rel(_train(tmp_path, name, **kw), plain) <= 1e-5, name


def test_packed_rows_give_the_loss_and_gradients_of_padded_rows():
    ds = _rows(6, seed=3)
    rows = [{"input_ids": ds[i]["input_ids"], "n_prompt": ds[i]["n_prompt"]} for i in range(6)]
    model = _model().train()

    def loss_and_grads(batch):
        model.zero_grad()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        logits = model(**inputs, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = loss_and_grads(collate(rows, 0))
    packed = collate_packed(rows, [[0, 1, 2], [3, 4], [5]], 0)
    assert packed["input_ids"].shape[0] == 3 and (packed["position_ids"][0, 1:] == 0).sum() >= 2
    loss, grads = loss_and_grads(packed)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert _rel(grads, ref) <= 1e-5


def test_step_plans_keep_every_row_once_within_the_budget():
    rng = random.Random(1)
    lengths = [rng.randint(5, 600) for _ in range(64)]
    shares = [[list(range(p * 32 + k * 4, p * 32 + k * 4 + 4)) for k in range(8)] for p in range(2)]
    for budget, packing in [(0, False), (1500, False), (4096, False), (2000, True), (0, True)]:
        plans = [plan_step(shares, lengths, budget, packing, rank) for rank in range(2)]
        assert len(plans[0]) == len(plans[1])  # FSDP meets at every micro-batch
        for rank, plan in enumerate(plans):
            assert sorted(i for mb in plan for i in mb.rows) == sorted(i for mb in shares[rank] for i in mb)
            for mb in plan:
                width = (
                    max(lengths[i] for i in mb.rows)
                    if mb.bins is None
                    else max(sum(lengths[i] for i in b) for b in mb.bins)
                )
                if budget and len(mb.bins or mb.rows) > 1:
                    assert len(mb.bins or mb.rows) * width <= budget
                if mb.bins is not None:
                    assert width <= max(lengths[i] for m in shares[rank] for i in m)
    assert plan_step(shares, lengths, 0, False, 1) == [MicroBatch(mb) for mb in shares[1]]
    assert target_tokens(10, 4) == 6 and target_tokens(10, 0) == 9


def test_resume_is_exact_under_a_token_budget(tmp_path, capsys):
    from flashbone.cli import main

    base = [
        "train",
        "--max-samples",
        "64",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--max-steps",
        "6",
        "--eval-task",
        "none",
        "--no-progress",
        "--r",
        "8",
        "--micro-batch-tokens",
        "200",
    ]
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    assert main([*base, "--out", str(tmp_path / "parts"), "--stop-after", "3"]) == 0
    assert main(["train", "--out", str(tmp_path / "parts"), "--resume", "--no-progress"]) == 0
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
