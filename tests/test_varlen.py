"""Padding-free packing: a micro-batch's rows in one sequence with per-row attention gives the
loss and gradients of the same rows padded, in the model and in the training loop (fp32, CPU:
the per-row reference of the CUDA varlen kernel)."""

import pytest
import torch

from flashbone import varlen
from flashbone.batching import collate_packed
from flashbone.config import BoneConfig
from flashbone.data import collate
from flashbone.model import get_bone_model
from flashbone.training import Trainer, TrainSettings
from test_batching import _rel, _rows
from tiny_models import gpt2, llama, mistral, qwen2


def _loss_and_grads(model, batch, flat: bool):
    model.zero_grad()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    ctx = varlen.flat_attention(model, batch["cu_seqlens"], 30) if flat else torch.enable_grad()
    with ctx:
        logits = model(**inputs, use_cache=False).logits
        if flat:
            varlen.check_calls(varlen.num_layers(model))
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make", [llama, qwen2, mistral], ids=["llama", "qwen2", "mistral"])
def test_one_flat_sequence_gives_the_padded_rows_loss_and_gradients(make):
    torch.manual_seed(0)
    model = make()
    assert varlen.supported(model)
    ds = _rows(6, seed=4)
    rows = [{"input_ids": ds[i]["input_ids"], "n_prompt": ds[i]["n_prompt"]} for i in range(6)]
    ref_loss, ref = _loss_and_grads(model, collate(rows, 0), flat=False)
    flat = collate_packed(rows, [list(range(6))], 0)
    flat["cu_seqlens"] = varlen.cu_seqlens([len(r["input_ids"]) for r in rows])
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))  # no padding at all
    loss, grads = _loss_and_grads(model, flat, flat=True)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert _rel(grads, ref) <= 1e-5
    assert model.config._attn_implementation != varlen.NAME  # restored: generation keeps its attention


def test_models_outside_the_list_keep_masked_packing():
    assert not varlen.supported(gpt2())
    assert not varlen.supported(
        mistral().__class__(mistral().config.__class__(**{**mistral().config.to_dict(), "sliding_window": 8}))
    )


def test_a_layer_that_skipped_the_varlen_attention_is_an_error():
    model = llama()
    with varlen.flat_attention(model, varlen.cu_seqlens([3]), 3):
        with pytest.raises(RuntimeError, match="attention layers"):
            varlen.check_calls(varlen.num_layers(model))


def _train(tmp_path, name, checkpointing=False, **kw):
    torch.manual_seed(0)
    model = get_bone_model(llama(), BoneConfig(variant="bone", r=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    s = TrainSettings(lr=3e-3, batch_size=4, grad_accum=2, max_steps=6, seed=0, progress=False, **kw)
    trainer = Trainer(model, _rows(48), 0, s, tmp_path / name)
    trainer.run()
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_loop_packs_padding_free_and_reaches_the_plain_adapter(tmp_path):
    _, plain = _train(tmp_path, "plain")
    trainer, flat = _train(tmp_path, "flat", packing=True, micro_batch_tokens=120)
    assert trainer.flat
    assert _rel(flat, plain) <= 1e-5
    _, ckpt = _train(tmp_path, "ckpt", checkpointing=True, packing=True, chunked_loss=True)
    assert _rel(ckpt, plain) <= 1e-5
