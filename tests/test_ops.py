"""Every fast path equals the dense reference (float64, random non-zero weights), and
builds and keeps only what its cheap form promises."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.pytorch_utils import Conv1D

from flashbone.layer import BlockAdapter, BoneLayer
from flashbone.ops import adapted_linear, use_backend
from flashbone.ops.torch_ops import add_to_blocks_, block_sum
from flashbone.variants import VARIANTS

# (variant, out, in, r, mini_r): batch dims, in % r != 0 for bone, GQA-like out (k/v smaller)
CASES = [
    ("bone", 48, 64, 16, None),
    ("bone", 24, 70, 16, None),  # in % r != 0: padded last block
    ("bone", 16, 64, 8, None),  # GQA-like out < in
    ("bone-mini", 48, 64, 16, 12),
    ("bone-mini", 24, 50, 8, 6),
    ("bat", 48, 64, 16, None),
    ("bat", 16, 64, 8, None),
    ("bat-row", 48, 64, 16, None),
    ("bat-row", 16, 64, 8, None),
    ("bat-hadamard", 48, 64, 16, None),
    ("bone-ab", 48, 64, 16, None),
    ("bone-ab", 16, 64, 8, None),
    ("bat-grouped", 48, 64, 16, 4),  # no hand-written path: the dense fallback (12 blocks, g = 4)
    ("bat-grouped", 16, 64, 8, 8),
]


def _random_adapter(variant, out, inn, r, mini_r):
    ad = BlockAdapter(variant, r, out, inn, mini_r, dtype=torch.float64)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_(0, 0.3)
    return ad


def _run(variant, out, inn, r, mini_r, backend, bias=True, extra=()):
    torch.manual_seed(1)
    w = torch.randn(out, inn, dtype=torch.float64)
    b = torch.randn(out, dtype=torch.float64) if bias else None
    x = torch.randn(2, 3, inn, dtype=torch.float64, requires_grad=True)
    ads = [_random_adapter(variant, out, inn, r, mini_r)] + [_random_adapter(*e) for e in extra]
    calls = [a.call(torch.float64) for a in ads]
    with use_backend(backend):
        y = adapted_linear(x, w, b, calls)
    dy = torch.randn_like(y)
    params = [p for a in ads for p in a.parameters()]
    grads = torch.autograd.grad(y, [x, *params], dy)
    return y, grads


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-r{c[3]}")
@pytest.mark.parametrize("bias", [True, False])
def test_fast_path_matches_reference(case, bias):
    y_ref, g_ref = _run(*case, backend="reference", bias=bias)
    y, g = _run(*case, backend="torch", bias=bias)
    assert y.shape == (2, 3, case[1])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("first", ["bat", "bat-row", "bone-ab", "bat-hadamard"])
def test_mixed_adapters_match_reference(first):
    extra = [("bone", 48, 64, 16, None), ("bat", 48, 64, 8, None)]
    y_ref, g_ref = _run(first, 48, 64, 16, None, "reference", extra=extra)
    y, g = _run(first, 48, 64, 16, None, "torch", extra=extra)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_reference_is_not_trivial():
    """The random deltas really change the output (so the comparisons above mean something)."""
    for variant, out, inn, r, m in CASES:
        ad = _random_adapter(variant, out, inn, r, m)
        w = torch.randn(out, inn, dtype=torch.float64)
        d = VARIANTS[variant].delta(w, ad.tensors(), r)
        assert d.shape == w.shape and d.abs().mean() > 1e-3


@pytest.mark.parametrize("inn,r", [(64, 16), (70, 16), (5, 4)])
def test_block_sum_and_adjoint(inn, r):
    x = torch.randn(7, inn, dtype=torch.float64)
    pad = torch.nn.functional.pad(x, (0, (-inn) % r))
    torch.testing.assert_close(block_sum(x, r), pad.view(7, -1, r).sum(1))
    ds = torch.randn(7, r, dtype=torch.float64)
    # <block_sum(x), ds> == <x, add_to_blocks(0, ds)>
    lhs = (block_sum(x, r) * ds).sum()
    rhs = (x * add_to_blocks_(torch.zeros_like(x), ds, r)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_bone_delta_pins_index_convention():
    """dW[o, i] = B[i mod r, o], checked element by element (PEFT's convention)."""
    r, out, inn = 3, 4, 7
    b = torch.arange(r * out, dtype=torch.float64).view(r, out)
    d = VARIANTS["bone"].delta(torch.zeros(out, inn, dtype=torch.float64), {"B": b}, r)
    for o in range(out):
        for i in range(inn):
            assert d[o, i] == b[i % r, o]


def test_bat_delta_pins_block_convention():
    """dW_ab = (W_ab + I) @ B_a for every block, from explicit slicing."""
    r, out, inn = 2, 4, 6
    w = torch.randn(out, inn, dtype=torch.float64)
    b = torch.randn(out // r, r, r, dtype=torch.float64)
    d = VARIANTS["bat"].delta(w, {"B": b}, r)
    eye = torch.eye(r, dtype=torch.float64)
    for a in range(out // r):
        for bb in range(inn // r):
            blk = w[a * r : (a + 1) * r, bb * r : (bb + 1) * r]
            torch.testing.assert_close(d[a * r : (a + 1) * r, bb * r : (bb + 1) * r], (blk + eye) @ b[a])


# -- memory behaviour: what the fast paths build and what they keep for backward -----------


class _Sizes(TorchDispatchMode):
    """Records the numel of every new tensor an aten op allocates (forward and backward);
    views of existing tensors (``W.t()``) allocate nothing and are skipped."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.numels.append(t.numel())
        return out


def _saved_during(fn):
    """Tensors autograd saves for backward while ``fn`` runs."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn()
    return y, saved


# out=16, in=64, r=8, T=6 tokens: a (out, in) tensor is larger than anything else involved
@pytest.mark.parametrize("variant", ["bone", "bat-row"])
def test_cheap_forms_never_build_a_weight_sized_tensor(variant):
    out, inn, r = 16, 64, 8
    w = torch.randn(out, inn, dtype=torch.float64)
    x = torch.randn(2, 3, inn, dtype=torch.float64, requires_grad=True)
    ad = _random_adapter(variant, out, inn, r, None)
    with _Sizes() as sizes:
        y = adapted_linear(x, w, None, [ad.call(torch.float64)])
        y.sum().backward()
    assert ad.B.grad is not None and x.grad is not None
    assert max(sizes.numels) < out * inn, "a weight-sized tensor (dW or W') was built"


def test_bone_saves_only_the_block_sum_not_x():
    out, inn, r = 16, 64, 8
    w = torch.randn(out, inn, dtype=torch.float64)
    x = torch.randn(6, inn, dtype=torch.float64, requires_grad=True)
    ad = _random_adapter("bone", out, inn, r, None)
    _, saved = _saved_during(lambda: adapted_linear(x, w, None, [ad.call(torch.float64)]))
    assert all(t.data_ptr() != x.data_ptr() for t in saved)
    assert sorted(t.numel() for t in saved) == sorted([out * inn, r * out, 6 * r])  # W, B, s


@pytest.mark.parametrize("variant", ["bat", "bat-hadamard"])
def test_weight_space_path_does_not_keep_w_prime(variant):
    """bat builds W' in forward but saves only x, the base W and B: W' is rebuilt."""
    out, inn, r = 16, 64, 8
    w = torch.randn(out, inn, dtype=torch.float64)
    x = torch.randn(6, inn, dtype=torch.float64, requires_grad=True)
    ad = _random_adapter(variant, out, inn, r, None)
    y, saved = _saved_during(lambda: adapted_linear(x, w, None, [ad.call(torch.float64)]))
    big = [t for t in saved if t.numel() == out * inn]
    assert len(big) == 1 and big[0].data_ptr() == w.data_ptr()
    # and backward still gives the reference gradients after W' was thrown away
    y.backward(torch.ones_like(y))
    with use_backend("reference"):
        ref = adapted_linear(x.detach().requires_grad_(), w, None, [ad.call(torch.float64)])
    g_ref = torch.autograd.grad(ref, ad.B, torch.ones_like(ref))[0]
    torch.testing.assert_close(ad.B.grad, g_ref, rtol=1e-10, atol=1e-10)


# -- the layer-level path: BoneLayer over nn.Linear and GPT-2 Conv1D ---------------------


def _layer(kind, variant, out, inn, r, mini_r=None, names=("a",)):
    torch.manual_seed(3)
    base = torch.nn.Linear(inn, out, dtype=torch.float64) if kind == "linear" else Conv1D(out, inn)
    base = base.double().requires_grad_(False)
    if kind == "conv1d":
        torch.nn.init.normal_(base.weight)
        torch.nn.init.normal_(base.bias)
    layer = BoneLayer(base)
    for n in names:
        layer.add_adapter(n, _random_adapter(variant, out, inn, r, mini_r))
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("case", CASES[::2], ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-r{c[3]}")
def test_bone_layer_matches_reference_and_dense_weight(kind, case):
    variant, out, inn, r, m = case
    layer = _layer(kind, variant, out, inn, r, m)
    x = torch.randn(2, 3, inn, dtype=torch.float64, requires_grad=True)
    params = [x, *layer.adapters["a"].parameters()]
    y = layer(x)
    g = torch.autograd.grad(y.square().sum(), params)
    with use_backend("reference"):
        y_ref = layer(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), params)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and the layer's (out, in) view of a Conv1D weight is the right one: the plain
    # layer with the dense adapted weight gives the same output
    dense = VARIANTS[variant].delta(layer.weight, layer.adapters["a"].tensors(), r)
    expect = torch.nn.functional.linear(x, layer.weight + dense, layer.bias)
    torch.testing.assert_close(y, expect, rtol=1e-10, atol=1e-10)


def test_bone_dropout_applies_to_the_adapter_input_only():
    layer = _layer("linear", "bone", 16, 32, 8)
    layer.adapters["a"].dropout = torch.nn.Dropout(0.5)
    x = torch.randn(4, 32, dtype=torch.float64)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    xd = torch.nn.functional.dropout(x, 0.5, training=True)
    expect = layer.base_layer(x) + block_sum(xd, 8) @ layer.adapters["a"].B
    torch.testing.assert_close(y, expect)
    layer.eval()  # no dropout at eval: the fast path
    no_drop = layer.base_layer(x) + block_sum(x, 8) @ layer.adapters["a"].B
    torch.testing.assert_close(layer(x), no_drop)


@pytest.mark.parametrize("variant", ["bone", "bat", "bat-row"])
def test_autocast_computes_in_bf16_like_nn_linear(variant):
    """Under autocast the layer returns what nn.Linear returns there, and trains its
    float32 master tensors."""
    base = torch.nn.Linear(32, 16).requires_grad_(False)
    layer = BoneLayer(base)
    ad = BlockAdapter(variant, 8, 16, 32)
    with torch.no_grad():
        ad.B.normal_(0, 0.1)
    layer.add_adapter("a", ad)
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        plain = base(x)
    assert y.dtype == plain.dtype == torch.bfloat16
    y.float().sum().backward()
    assert ad.B.dtype == ad.B.grad.dtype == torch.float32
    dense = base.weight + VARIANTS[variant].delta(base.weight, {"B": ad.B.detach()}, 8)
    ref = torch.nn.functional.linear(x, dense, base.bias)
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)


def test_adapter_call_casts_lazily_once_and_keeps_the_master():
    ad = BlockAdapter("bone", 8, 16, 16, init="random")
    call = ad.call(torch.bfloat16)
    assert call.master("B") is ad.B  # a GPU path may take the float32 master as it is
    b = call.params["B"]
    assert b.dtype == torch.bfloat16 and call.params["B"] is b  # one cast, reused
    assert list(call.params) == ["B"] and len(call.params) == 1
    b.float().sum().backward()  # the cast is inside autograd: the master gets the gradient
    assert ad.B.grad is not None and ad.B.grad.dtype == torch.float32


def test_bone_group_equals_its_members_alone():
    """ops.bone_group (q/k/v or gate/up below the kernels' size: one node) gives each member's
    output and every gradient (input, B, bias) of the members run one by one."""
    from flashbone.ops import AdapterCall, adapted_linear, bone_group

    torch.manual_seed(0)
    x = torch.randn(6, 32, dtype=torch.float64, requires_grad=True)
    members = []
    for out, variant, mini in ((32, "bone", None), (16, "bone-mini", 8), (16, "bone", None)):
        w = torch.randn(out, 32, dtype=torch.float64)
        bias = torch.randn(out, dtype=torch.float64, requires_grad=True)
        b = torch.randn(8, mini or out, dtype=torch.float64, requires_grad=True)
        members.append((w, bias, AdapterCall(variant, 8, {"B": b}, mini_r=mini)))
    grouped = bone_group(x, members)
    alone = [adapted_linear(x, w, bias, [c]) for w, bias, c in members]
    leaves = [x] + [t for _, bias, c in members for t in (bias, c.params["B"])]
    weights = [torch.randn_like(a) for a in alone]
    got = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grouped, weights)), leaves)
    want = torch.autograd.grad(sum((a * v).sum() for a, v in zip(alone, weights)), leaves)
    for g, a in zip(grouped, alone):
        torch.testing.assert_close(g, a)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    not_bone = [(w, bias, AdapterCall("bat", 8, {"B": torch.zeros(4, 8, 8)})) for w, bias, _ in members[:1]]
    assert bone_group(x, not_bone) is None  # not a bone group: the caller runs the layers alone
