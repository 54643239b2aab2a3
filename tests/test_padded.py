"""The padded frozen weight of :mod:`flashbone.kernels.padded` (any machine).

On CUDA the kernels re-home a frozen weight into ``[W | X]`` on first use; here the same
re-homing is applied by hand on CPU to check that nothing else about the model changes: same
values and Parameter objects, the PyTorch path still exact, merge and unload give contiguous
weights back. The GPU math with the padding is checked in tests/test_kernels.py (CUDA only).
"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from flashbone import BoneConfig, get_bone_model
from flashbone.kernels import padded, registry
from flashbone.ops import AdapterCall
from flashbone.settings import SETTINGS
from tiny_models import llama, tokens


def _frozen(out=48, inn=32, dtype=torch.float32):
    return nn.Parameter(torch.randn(out, inn, dtype=dtype), requires_grad=False)


def test_rehome_keeps_values_and_the_parameter_and_adds_r_columns():
    w = _frozen()
    before = w.detach().clone()
    ext = padded.rehome(w, 16)
    assert ext.shape == (48, 48) and w.stride() == (48, 1) and not w.is_contiguous()
    assert torch.equal(w, before) and ext.data_ptr() == w.data_ptr()
    ext[:, 32:].fill_(7)  # the spare columns are outside the weight
    assert torch.equal(w, before)
    assert padded.view_of(w, 16) is not None
    assert padded.view_of(w, 32) is None  # another r: not this padding


def test_only_frozen_plain_parameters_owning_their_storage_are_rehomable():
    assert padded.rehomable(_frozen())
    assert not padded.rehomable(torch.randn(4, 4))  # not a Parameter (e.g. a cast copy)
    assert not padded.rehomable(nn.Parameter(torch.randn(4, 4)))  # trainable
    big = torch.randn(8, 4)
    assert not padded.rehomable(nn.Parameter(big[:4], requires_grad=False))  # a view (FSDP, tied)
    assert not padded.rehomable(nn.Parameter(big.t(), requires_grad=False))


def test_extended_leaves_cpu_weights_and_switched_off_alone(monkeypatch):
    w = _frozen()

    def call(variant):
        return AdapterCall(variant, 16, {})

    assert padded.extended(w, 16) is None and w.is_contiguous()  # CPU: no padding
    padded.rehome(w, 16)
    assert padded.extended(w, 16) is not None
    assert registry.extended_weight(w, call("bat-row")) is not None
    assert registry.extended_weight(w, call("bat")) is None  # bat builds W' instead: no padding
    assert registry.extended_weight(w, call("bat-grouped")) is None  # no kernels: never pads
    monkeypatch.setattr(SETTINGS, "padded", ())  # FLASHBONE_PADDED=0
    assert registry.extended_weight(w, call("bat-row")) is None


@pytest.mark.parametrize(
    "env,want",
    [
        ("0", ()),
        ("1", ("bone", "bone-mini", "bat-row", "bone-ab")),
        ("", ("bone", "bone-mini", "bat-row", "bone-ab")),
        ("bat-row, bone-ab", ("bat-row", "bone-ab")),
    ],
)
def test_the_env_switch_names_the_padded_variants(env, want):
    code = "from flashbone import kernels; print(','.join(kernels.padded_variants()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "FLASHBONE_PADDED": env},
    ).stdout.strip()
    assert tuple(v for v in out.split(",") if v) == want


def test_a_stray_view_with_the_same_stride_is_not_taken_for_padding():
    big = torch.zeros(48, 48)
    w = nn.Parameter(big[:, :32], requires_grad=False)  # row stride 48 = 32 + 16, not ours
    assert padded.view_of(w, 16) is None


def test_moving_the_model_drops_the_padding_and_it_is_detected():
    w = _frozen()
    padded.rehome(w, 16)
    m = nn.Linear(32, 48, bias=False)
    m.weight = w
    m.to(torch.float64)  # .to() copies: contiguous again, the stale mark must not be trusted
    assert m.weight.is_contiguous() and padded.view_of(m.weight, 16) is None


@pytest.mark.parametrize("variant", ["bone", "bat-row", "bat"])
def test_padded_weights_change_nothing_then_unload_compacts_them(variant):
    torch.manual_seed(0)
    m = llama()
    cfg = BoneConfig(variant=variant, r=16, init="random")
    bm = get_bone_model(m, cfg)
    ids = tokens()
    want = bm(input_ids=ids).logits
    layers = [layer for _, layer in bm.bone_layers()]
    for layer in layers:
        padded.rehome(layer.base_layer.weight, 16)
    got = bm(input_ids=ids).logits  # the PyTorch path on strided weights
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    merged = bm.merge_and_unload()
    for layer in layers:
        assert layer.base_layer.weight.is_contiguous()
        assert padded.view_of(layer.base_layer.weight, 16) is None
    assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)


def test_compact_restores_contiguous_storage_in_place():
    m = nn.Linear(32, 48)
    m.weight.requires_grad_(False)
    p = m.weight
    before = p.detach().clone()
    padded.rehome(p, 16)
    assert padded.compact_(m) == 1
    assert m.weight is p and p.is_contiguous() and torch.equal(p, before)
    assert padded.compact_(m) == 0
