"""BoneModel inside transformers.Trainer, TRL's SFTTrainer and accelerate, with default arguments."""

import copy
import inspect

import pytest
import torch
from tiny_models import llama, randomize_adapters, tokens

from flashbone import BoneConfig, BoneModel, get_bone_model, load_adapter
from flashbone.pretrained import CHECKPOINT_INDEX

datasets = pytest.importorskip("datasets")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainingArguments  # noqa: E402

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", CHECKPOINT_INDEX}


def _same_adapters(a: BoneModel, b: BoneModel) -> None:
    ta, tb = a.adapter_tensors(), b.adapter_tensors()
    assert ta.keys() == tb.keys()
    for name in ta:
        for p in ta[name]:
            assert torch.equal(ta[name][p], tb[name][p]), name


def test_forward_signature_is_the_wrapped_models():
    bm = get_bone_model(llama(), BoneConfig(r=8))
    params = inspect.signature(bm.forward).parameters
    assert {"input_ids", "attention_mask", "labels"} <= set(params)
    x = tokens()
    torch.testing.assert_close(bm(input_ids=x, labels=x).logits, bm.model(input_ids=x).logits)
    copied = copy.deepcopy(bm)  # the per-instance forward follows the copy, not the original
    with torch.no_grad():
        next(p for p in copied.parameters() if p.requires_grad).add_(1.0)
    assert not torch.allclose(copied(x).logits, bm(x).logits)


def test_save_pretrained_writes_the_adapter_folder(tmp_path):
    model = llama(tie_word_embeddings=True)
    base = copy.deepcopy(model)
    bm = get_bone_model(model, BoneConfig(variant="bat-row", r=8))
    randomize_adapters(bm)
    bm.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == ADAPTER_FILES | {"README.md"}  # bat-row: a FLASHBONE folder
    back = BoneModel.from_pretrained(base, tmp_path)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, bm(x).logits, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    bm = get_bone_model(llama(), BoneConfig(variant="bat", r=8))
    randomize_adapters(bm)
    bm.train()
    x = tokens()

    def grads():
        bm.zero_grad()
        bm(x, labels=x).loss.backward()
        return [p.grad.clone() for p in bm.parameters() if p.requires_grad]

    plain = grads()
    bm.activation_checkpointing_enable()
    assert bm.model.model.gradient_checkpointing
    for g, h in zip(plain, grads()):
        torch.testing.assert_close(g, h)


def _trainer(model, out, ds, **kw):
    args = TrainingArguments(
        str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        save_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **kw,
    )
    return Trainer(model=model, args=args, train_dataset=ds)


def test_trainer_checkpoints_are_adapter_folders_and_resume_exactly(tmp_path):
    base = llama(tie_word_embeddings=True)  # tied: the full-state save used to fail
    ids = tokens(16, 12).tolist()
    # an extra column: Trainer drops what forward does not take, so forward must show its arguments
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids, "note": ["x"] * 16})

    def fresh():
        return get_bone_model(copy.deepcopy(base), BoneConfig(variant="bat", r=8))

    full = fresh()
    _trainer(full, tmp_path / "a", ds).train()
    ckpt = tmp_path / "a" / "checkpoint-4"
    weights = {p.name for p in ckpt.iterdir() if p.suffix in (".json", ".safetensors", ".bin") or "model" in p.name}
    assert weights - {"trainer_state.json", "training_args.bin"} == ADAPTER_FILES
    assert (ckpt / "adapter_model.safetensors").stat().st_size < 20_000  # adapters only, no base
    full.eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(copy.deepcopy(base), ckpt)(x).logits, full(x).logits, rtol=0, atol=0)

    resumed = fresh()
    _trainer(resumed, tmp_path / "a", ds).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    _same_adapters(resumed, full)


def test_sft_trainer_with_gradient_checkpointing(tmp_path):
    trl = pytest.importorskip("trl")
    from flashbone.loading import load_model, load_tokenizer

    tok = load_tokenizer("flashbone-tiny")  # tied embeddings, a real tokenizer
    model = get_bone_model(load_model("flashbone-tiny"), BoneConfig(variant="bone", r=16))
    ds = datasets.Dataset.from_dict({"text": [f"{a} + {b} = {a + b}" for a in range(6) for b in range(4)]})
    args = trl.SFTConfig(
        str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        save_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=True,
    )
    trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()
    ckpt = tmp_path / "checkpoint-2"
    assert not (ckpt / "model.safetensors").exists() and (ckpt / "adapter_config.json").is_file()
    assert any(t.abs().sum() > 0 for ts in model.adapter_tensors().values() for t in ts.values())
    x = torch.tensor([tok("1 + 2 = 3")["input_ids"]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            load_adapter(load_model("flashbone-tiny"), ckpt)(x).logits, model.model(x).logits, rtol=0, atol=0
        )
