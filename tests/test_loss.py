"""The chunked loss (head on target tokens, chunks recomputed in backward) equals the plain
loss over full logits: value and gradients, in the model and in the training loop (fp32, CPU)."""

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from flashbone.config import BoneConfig
from flashbone.data import collate
from flashbone.loss import HeadCapture, chunked_loss_sum, target_positions
from flashbone.model import get_bone_model
from flashbone.training import Trainer, TrainSettings
from test_batching import _rel, _rows, _train
from tiny_models import DECODER, gpt2, llama, qwen2


def test_target_positions_pick_the_tokens_that_predict_a_label():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    pos, y = target_positions(labels)
    assert pos.tolist() == [1, 2, 4] and y.tolist() == [5, 6, 7]  # (0,1)->5, (0,2)->6, (1,0)->7


def _plain_and_chunked(model, batch, chunk):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    model.zero_grad()
    logits = model(**inputs, use_cache=False).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    capture = HeadCapture.attach(model)
    assert capture is not None
    with capture:
        out = model(**inputs, use_cache=False)
    assert out.logits.shape[-2] == 0  # no full logits were computed
    pos, y = target_positions(batch["labels"])
    loss = chunked_loss_sum(capture.head, capture.take(), pos, y, chunk=chunk)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return ref.detach(), ref_grads, loss.detach(), grads


@pytest.mark.parametrize("make", [llama, qwen2, gpt2], ids=["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("adapter", [True, False], ids=["bone", "full"])
def test_chunked_loss_equals_the_plain_loss_and_gradients(make, adapter):
    torch.manual_seed(0)
    model = make()  # eval mode: GPT-2's dropout would make the two forwards differ
    if adapter:
        targets = ["c_attn", "c_fc"] if make is gpt2 else ["q_proj", "up_proj"]
        model = get_bone_model(model, BoneConfig(variant="bone", r=8, target_modules=targets))
        with torch.no_grad():  # bone starts at zero; make its gradients depend on its weights
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    ds = _rows(5, seed=2)
    batch = collate([{"input_ids": ds[i]["input_ids"], "n_prompt": ds[i]["n_prompt"]} for i in range(5)], 0)
    ref, ref_grads, loss, grads = _plain_and_chunked(model, batch, chunk=7)  # several chunks, one partial
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert set(grads) == set(ref_grads) and _rel(grads, ref_grads) <= 1e-5


def test_softcapped_logits_keep_the_plain_loss():
    cfg = Gemma2Config(**{**DECODER, "head_dim": 8}, final_logit_softcapping=30.0)
    assert HeadCapture.attach(Gemma2ForCausalLM(cfg)) is None


def test_the_loop_with_the_chunked_loss_reaches_the_plain_loops_adapter(tmp_path):
    plain = _train(tmp_path, "plain", chunked_loss=False)
    chunked = _train(tmp_path, "chunked", chunked_loss=True)
    assert _rel(chunked, plain) <= 1e-5
    assert _rel(_train(tmp_path, "packed", chunked_loss=True, micro_batch_tokens=200, packing=True), plain) <= 1e-5


def test_a_head_the_forward_does_not_call_falls_back_to_the_logits(tmp_path):
    def run(name, bogus):
        torch.manual_seed(0)
        model = get_bone_model(llama(), BoneConfig(variant="bone", r=8, target_modules=["q_proj"]))
        s = TrainSettings(lr=1e-3, batch_size=2, grad_accum=1, max_steps=3, progress=False, chunked_loss=bogus)
        trainer = Trainer(model, _rows(8), 0, s, tmp_path / name)
        if bogus:  # a capture on a module the forward never calls: the loss must come from the logits
            trainer.capture = HeadCapture(torch.nn.Linear(1, 1))
        trainer.run()
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    assert _rel(run("bogus", True), run("plain", False)) <= 1e-6
