"""Every fast path equals the dense reference (float64, random non-zero weights)."""

import pytest
import torch

from flashbone.layer import BlockAdapter
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
            blk = w[a * r:(a + 1) * r, bb * r:(bb + 1) * r]
            torch.testing.assert_close(d[a * r:(a + 1) * r, bb * r:(bb + 1) * r], (blk + eye) @ b[a])
