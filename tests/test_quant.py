"""Quantised bases (bitsandbytes 4-bit NF4 and 8-bit) on the CPU: every variant trains, matches
the dense reference of the dequantised weights, never saves a dense weight, merges into a
dequantised full-precision copy (in place: refused); the CLI's --quantize; the error lines."""

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models as tm
from cli_helpers import flashbone, train
from flashbone import BoneConfig, BoneLayer, get_bone_model, loading, quant
from flashbone.errors import MergeError

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

VARIANTS = ["bone", "bone-mini", "bat-row", "bone-ab", "bat", "bat-hadamard"]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    # in_features >= 64: bnb's CPU repacking of 4-bit weights (eval, no grad) needs a whole 64-block;
    # vocab 96: no adapted weight shares a shape with the head
    tm.llama(hidden_size=64, intermediate_size=128, vocab_size=96).save_pretrained(folder)
    return folder


def _quantized(folder, mode):
    # float32 compute: the comparisons below are then exact up to float32 rounding
    return loading.load_model(str(folder), dtype=torch.float32, device="cpu", quantize=mode)


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_on_quantized_base(variant, mode, llama_folder):
    model = _quantized(llama_folder, mode).train()  # no dropout in it; in eval without grad bnb's CPU
    # backend repacks 4-bit weights for a kernel with bfloat16 scales (~1e-3 off its own dequantisation)
    assert sum(quant.is_quantized(m) for m in model.modules()) == 14
    x = torch.randint(3, 64, (2, 5))  # 10 tokens: no activation has a weight's shape
    with torch.no_grad():
        base_logits = model(x).logits
    bm = get_bone_model(model, BoneConfig(variant=variant, r=8, mini_r=8 if variant == "bone-mini" else None))
    assert all(layer.quantized == mode for _, layer in bm.bone_layers())
    with torch.no_grad():
        torch.testing.assert_close(bm(x).logits, base_logits)  # zero-initialised adapters
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=2e-2)
    shapes = {tuple(layer.weight.shape) for _, layer in bm.bone_layers()}
    saved = []
    bm.train()
    losses = []
    for _ in range(4):
        opt.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(tuple(t.shape) if t.is_floating_point() else None) or t, lambda t: t
        ):
            loss = bm(x, labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert not shapes & set(saved), "a dense (out, in) float weight was kept for backward"
    with torch.no_grad():
        y = bm(x).logits
    with pytest.raises(MergeError, match="merge_and_unload"):
        bm.merge_adapter()
    with pytest.warns(UserWarning, match="dequantised to float32"):
        merged = bm.merge_and_unload()
    assert not any(quant.is_quantized(m) or isinstance(m, BoneLayer) for m in merged.modules())
    # the quantised fast path equals the dense reference on the dequantised W (LLM.int8 also rounds
    # the activations to int8 inside its matmul: a looser bound there)
    tol = 1e-4 if mode == "4bit" else 1e-2
    with torch.no_grad():
        torch.testing.assert_close(merged.train()(x).logits, y, rtol=tol, atol=tol)


def test_bf16_compute_and_fp32_norms(llama_folder):
    model = loading.load_model(str(llama_folder), dtype=torch.bfloat16, device="cpu", quantize="4bit")
    assert model.model.norm.weight.dtype == torch.float32  # prepare_for_training
    bm = get_bone_model(model, BoneConfig(variant="bat", r=8))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bm.train()
    x = torch.randint(3, 64, (2, 6))
    loss = bm(x, labels=x).loss
    loss.backward()
    grads = [p.grad for p in bm.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_cli_quantize_train_then_merge(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = train(capsys, out, "--quantize", "4bit", "--method", "bat", "--r", "16")
    assert rc == 0, err
    assert "4bit base (bitsandbytes), gradient checkpointing" in stdout
    rc, stdout, err = flashbone(
        capsys, "merge", "--adapter", out / "adapter", "--out", tmp_path / "m", "--quantize", "4bit"
    )
    assert rc == 0, err
    assert "dequantised" in stdout and "full-precision" in stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not any(quant.is_quantized(m) for m in merged.modules())
    from flashbone import load_adapter

    adapted = load_adapter(loading.load_model(None, quantize="4bit"), out / "adapter")
    x = torch.randint(3, 700, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted(x).logits, rtol=1e-4, atol=1e-4)


def test_errors(tmp_path, capsys, monkeypatch):
    rc, _, err = train(capsys, tmp_path / "a", "--quantize", "4bit", "--method", "full")
    assert rc == 2 and "--method full" in err and "Traceback" not in err
    monkeypatch.setattr(bnb.functional, "quantize_4bit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    rc, _, err = train(capsys, tmp_path / "b", "--quantize", "4bit", "--device", "cpu")
    assert rc == 2 and "cannot quantise on cpu" in err and "leave out --quantize" in err
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    rc, _, err = train(capsys, tmp_path / "c", "--quantize", "8bit")
    assert rc == 2 and 'pip install "flashbone[quant]"' in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_on_quantized_base_cuda(variant, llama_folder):
    """The same checks on the GPU, bf16 compute (bitsandbytes' CUDA kernels, flashbone's GPU paths)."""
    model = loading.load_model(str(llama_folder), dtype=torch.bfloat16, device="cuda", quantize="4bit").train()
    x = torch.randint(3, 64, (2, 8), device="cuda")
    bm = get_bone_model(model, BoneConfig(variant=variant, r=8, mini_r=8 if variant == "bone-mini" else None))
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = bm(x, labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    with torch.no_grad():
        y = bm(x).logits.float()
    with pytest.warns(UserWarning, match="dequantised to bfloat16"):
        merged = bm.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits.float(), y, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_quantize_in_memory_matches_a_quantised_load(mode, llama_folder):
    """quant.quantize_ (flashbone bench's random-init bases) gives the layers that a quantised
    load of the same weights gives: same kinds, the same dequantised weights."""
    loaded = _quantized(llama_folder, mode)
    model = AutoModelForCausalLM.from_pretrained(llama_folder, dtype=torch.float32)
    targets = ["q_proj", "v_proj", "down_proj"]
    names = quant.quantize_(model, mode, targets, torch.float32)
    assert sorted(names) == sorted(n for n, _ in model.named_modules() if n.rpartition(".")[2] in targets)
    assert getattr(model, f"is_loaded_in_{mode}") is True
    for n in names:
        assert quant.kind(model.get_submodule(n)) == mode
        torch.testing.assert_close(quant.dequantize(model.get_submodule(n)), quant.dequantize(loaded.get_submodule(n)))
    assert quant.kind(model.model.layers[0].self_attn.k_proj) is None  # not named: left dense


def _adapted_pair(folder, variant: str, device: str):
    """The same random bone adapters on a 4-bit base and on its dequantised float32 weights."""
    cfg = BoneConfig(variant=variant, r=8, mini_r=8 if variant == "bone-mini" else None)
    load = lambda: loading.load_model(str(folder), dtype=torch.float32, device=device, quantize="4bit").train()  # noqa: E731
    qm, dense = get_bone_model(load(), cfg), load()
    quant.dequantize_(dense, torch.float32)
    dm = get_bone_model(dense, cfg)
    torch.manual_seed(1)
    for (n, p), (n2, p2) in zip(qm.named_parameters(), dm.named_parameters()):
        if p.requires_grad:
            assert n == n2
            p.data.normal_(0, 0.05)
            p2.data.copy_(p.data)
    return qm, dm


def _same_loss_and_grads(qm, dm, x, grouped: bool) -> None:
    """qm's loss and adapter gradients equal dm's; every 4-bit bone layer ran as a
    BoneGroupLinear node, q/k/v sharing one node when ``grouped``, each its own otherwise."""
    nodes = {}

    def hook(name):
        def record(module, args, out) -> None:  # returns None: the output stays as it is
            nodes.setdefault(name, out.grad_fn.next_functions[0][0])

        return record

    for name, layer in qm.bone_layers():
        layer.register_forward_hook(hook(name))
    lq, ld = qm(x, labels=x).loss, dm(x, labels=x).loss
    lq.backward()
    ld.backward()
    assert {type(n).__name__ for n in nodes.values()} == {"BoneGroupLinearBackward"}, nodes
    q, k, v = (
        next(n for name, n in nodes.items() if name.endswith(f"layers.0.self_attn.{p}"))
        for p in ("q_proj", "k_proj", "v_proj")
    )
    assert (q is k is v) == grouped and (grouped or len({id(q), id(k), id(v)}) == 3)
    torch.testing.assert_close(lq, ld, rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in dm.named_parameters() if p.requires_grad}
    for n, p in qm.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["bone", "bone-mini"])
def test_4bit_bone_is_one_node_with_the_dense_layers_gradients(variant, llama_folder):
    """On a 4-bit base bone and bone-mini run as one autograd node per layer (the weight
    dequantised in forward and backward, torch_ops.BoneGroupLinear with one member); loss and every adapter gradient
    equal those of the same adapters on the dequantised weights as plain nn.Linear layers."""
    qm, dm = _adapted_pair(llama_folder, variant, "cpu")
    _same_loss_and_grads(qm, dm, torch.randint(3, 64, (2, 5)), grouped=False)


def test_4bit_bone_under_checkpointing_keeps_w_from_the_recomputation(llama_folder, monkeypatch):
    """With gradient checkpointing the 4-bit node saves the weight it dequantised while its
    block recomputes, for the backward right after: each weight is dequantised twice per step
    (forward, recomputation), not three times, with the same loss and gradients as the dense
    model. Outside checkpointing nothing dense is saved (test_variant_on_quantized_base)."""
    qm, dm = _adapted_pair(llama_folder, "bone", "cpu")
    qm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    real = quant.dequantize
    monkeypatch.setattr(quant, "dequantize", lambda m: calls.append(m) or real(m))
    _same_loss_and_grads(qm, dm, torch.randint(3, 64, (2, 5)), grouped=False)
    n_layers = sum(1 for _ in qm.bone_layers())
    assert len(calls) == 2 * n_layers, (len(calls), n_layers)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", ["bone", "bone-mini"])
def test_4bit_bone_groups_on_the_gpu_match_the_dense_layers(variant, llama_folder):
    """On the GPU q/k/v and gate/up on a 4-bit base run as groups (after the forwards that
    learn them; with gradient checkpointing a block's recomputation groups exactly as its
    forward did): float32 compute, the same loss and gradients as the dequantised dense model."""
    qm, dm = _adapted_pair(llama_folder, variant, "cuda")
    qm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    x = torch.randint(3, 64, (2, 8), device="cuda")
    for _ in range(3):  # the steps that learn the groups, checkpointed
        qm(x, labels=x).loss.backward()
    qm.zero_grad(set_to_none=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    _same_loss_and_grads(qm, dm, x, grouped=True)


def test_4bit_siblings_run_as_one_node_with_the_layers_values(llama_folder):
    """q/k/v on a 4-bit base as one group (flashbone.siblings -> torch_ops.BoneGroupLinear; the layer
    takes this path on the GPU): outputs and gradients equal each layer run alone."""
    from flashbone import siblings

    bm = get_bone_model(_quantized(llama_folder, "4bit").train(), BoneConfig(variant="bone", r=8))
    for _, p in bm.named_parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    attn = bm.model.model.layers[0].self_attn
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    x = torch.randn(2, 5, 64, requires_grad=True)
    for _ in range(siblings.LEARN_CALLS):  # groups run once every member has finished learning
        assert siblings.run(layers[0], x, torch.float32) is None
        for layer in layers:
            siblings.learn(layer, x)
    assert siblings.siblings_of(layers[0]) == layers[1:]
    grouped = [siblings.run(layers[0], x, torch.float32)] + [siblings.take(m, x) for m in layers[1:]]
    assert "BoneGroupLinearBackward" in type(grouped[0].grad_fn.next_functions[0][0]).__name__
    alone = [layer(x) for layer in layers]  # on the CPU each layer runs its own node
    for g, a in zip(grouped, alone):
        torch.testing.assert_close(g, a, rtol=1e-5, atol=1e-6)
    weights = [torch.randn_like(a) for a in alone]
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    got = torch.autograd.grad(sum((g * w).sum() for g, w in zip(grouped, weights)), [x, *params])
    want = torch.autograd.grad(sum((a * w).sum() for a, w in zip(alone, weights)), [x, *params])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
