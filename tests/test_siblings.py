"""Layers that read one input, grouped for the GPU (flashbone.siblings): what is learned and
when a waiting output is handed out. The grouped GPU math is in tests/test_kernels.py (CUDA)."""

import weakref

import pytest

import torch

from flashbone import BoneConfig, get_bone_model, siblings
from flashbone.layer import BoneLayer
from tiny_models import llama


def _attention_layers():
    model = get_bone_model(llama(), BoneConfig(variant="bone", r=16))
    attn = model.model.model.layers[0].self_attn
    return model, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj


def test_layers_reading_the_first_readers_input_become_its_siblings():
    _, q, k, v, o = _attention_layers()
    x, h = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    for layer in (q, k, v):
        siblings.learn(layer, x)
    siblings.learn(o, h)  # another input: o_proj reads the attention output
    assert siblings.siblings_of(q) == [k, v]
    assert siblings.siblings_of(k) == [] and siblings.siblings_of(o) == []
    siblings.learn(k, x)  # a second read by the same layer adds nothing
    assert siblings.siblings_of(q) == [k, v]


def test_learning_stops_after_the_first_forwards():
    _, q, k, _, _ = _attention_layers()
    for _ in range(siblings.LEARN_CALLS):
        siblings.learn(q, torch.randn(3, 32))
    x = torch.randn(3, 32)
    siblings.learn(q, x)  # q no longer records itself as x's first reader
    siblings.learn(k, x)
    assert siblings.siblings_of(q) == []


def test_a_waiting_output_goes_only_to_the_same_input_and_adapter_once():
    _, _, k, _, _ = _attention_layers()
    x, y = torch.randn(2, 5, 32), torch.randn(2, 5, 16)
    adapter = k.adapters["default"]

    def wait(x):
        siblings._waiting[k] = (weakref.ref(x), x._version, y, adapter)

    wait(x)
    assert siblings.take(k, x) is y
    assert siblings.take(k, x) is None  # handed out once
    wait(x)
    assert siblings.take(k, x.clone()) is None  # another tensor with the same values
    wait(x)
    x.add_(1)  # changed in place since the group ran
    assert siblings.take(k, x) is None
    wait(x)
    k.adapters_disabled = True
    assert siblings.take(k, x) is None


def test_without_a_gpu_group_path_layers_run_alone():
    model, q, k, v, _ = _attention_layers()
    x = torch.randn(2, 5, 32)
    for layer in (q, k, v):
        siblings.learn(layer, x)
    assert siblings.run(q, x, torch.float32) is None  # CPU: no group path, no waiting outputs
    assert k not in siblings._waiting and v not in siblings._waiting
    ids = torch.randint(3, 64, (2, 8))
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_copied_model_learns_its_own_groups():
    import copy

    model, q, k, v, _ = _attention_layers()
    x = torch.randn(4, 32)
    for layer in (q, k, v):
        siblings.learn(layer, x)
    twin = copy.deepcopy(model)
    tq = twin.model.model.layers[0].self_attn.q_proj
    assert isinstance(tq, BoneLayer) and siblings.siblings_of(tq) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_small_groups_on_the_gpu_equal_the_layers_alone():
    """Below the kernels' size (here float32, which they do not take) q/k/v and gate/up still
    run as one node each (ops.bone_group) once learned; loss and gradients equal the model
    with grouping off."""
    from flashbone.settings import SETTINGS

    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randint(3, 60, (2, 12), device="cuda")
    results = []
    for groups in (True, False):
        SETTINGS.groups = groups
        torch.manual_seed(0)
        model = get_bone_model(llama().cuda(), BoneConfig(variant="bone", r=16)).train()
        for p in model.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.05)
        seen = set()
        for _, layer in model.bone_layers():
            layer.register_forward_hook(
                lambda m, i, o: seen.update(type(f).__name__ for f, _ in o.grad_fn.next_functions)
            )
        for _ in range(siblings.LEARN_CALLS):
            model(x)
        seen.clear()
        loss = model(x, labels=x).loss
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters() if p.requires_grad], seen))
    SETTINGS.groups = True
    (lg, gg, seen_g), (la, ga, seen_a) = results
    assert "BoneGroupLinearBackward" in seen_g and "BoneGroupLinearBackward" not in seen_a
    torch.testing.assert_close(lg, la)
    for g, a in zip(gg, ga):
        torch.testing.assert_close(g, a, rtol=1e-5, atol=1e-6)


def test_a_run_settles_its_layers_before_the_first_step(tmp_path):
    """Layers learn on their first forwards, so a run first spends those on a few tokens without
    gradients: the first micro-batch of a resumed run then groups as the uninterrupted run's
    did (on the GPU a group sums q/k/v's input gradients in another order). It leaves the random
    state and the weights as they were."""
    from flashbone.training import Trainer, TrainSettings
    from test_batching import _rows

    model = get_bone_model(llama(), BoneConfig(variant="bone", r=16))
    trainer = Trainer(model, _rows(8), 0, TrainSettings(progress=False), tmp_path)
    seen = []
    q = model.model.model.layers[0].self_attn.q_proj
    q.register_forward_pre_hook(lambda m, args: seen.append(torch.is_grad_enabled()))
    rng, weights = torch.get_rng_state(), {n: p.clone() for n, p in trainer.params.items()}
    trainer._settle()
    assert seen == [False] * siblings.LEARN_CALLS
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, weights[n]) for n, p in trainer.params.items())
