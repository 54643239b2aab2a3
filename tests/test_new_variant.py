"""docs/library.md's "Adding a variant", followed literally, gives a variant that works everywhere;
and the variant added that way to the library, the v1 paper's grouped Block Affine (bat-grouped).
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from flashbone import BoneConfig, get_bone_model, kernels, load_adapter, num_params
from flashbone.errors import BoneShapeError
from flashbone.ops import TORCH_PATHS, adapted_linear, torch_path, use_backend
from flashbone.ops.quantized import quantized_linear
from flashbone.variants import VARIANTS, Variant, bat_grouped_delta, bat_grouped_undo, bat_row_delta
from tiny_models import llama, tokens


# -- step 1 of the recipe, for a variant defined here: ΔW[o, i] = (W[o, i] + 1) * D[i] ---------
def column_scale_delta(w, params, r):
    """Each input column of W scaled, plus a bias: W' = W (1 + D) + D (weight-reading)."""
    return w * params["D"] + params["D"]


def column_scale_undo(w_merged, params, r):
    return (w_merged - params["D"]) / (1 + params["D"])


def low_rank_delta(w, params, r):
    """An additive variant: ΔW = U V (LoRA-like), independent of W."""
    return params["U"] @ params["V"]


COLUMN_SCALE = Variant(
    "column-scale", lambda o, i, r, m: {"D": (i,)}, column_scale_delta, column_scale_undo, False, None, "a test variant"
)
LOW_RANK = Variant(
    "low-rank", lambda o, i, r, m: {"U": (o, r), "V": (r, i)}, low_rank_delta, None, False, None, "a test variant"
)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(VARIANTS, COLUMN_SCALE.name, COLUMN_SCALE)
    monkeypatch.setitem(VARIANTS, LOW_RANK.name, LOW_RANK)


@pytest.mark.parametrize("variant", ["column-scale", "low-rank", "bat-grouped"])
def test_dense_path_matches_the_reference(variant, registered):
    """A variant without a hand-written path computes exactly, forward and gradients, alone and
    after a second adapter of its kind (the additive loop)."""
    from flashbone.layer import BlockAdapter

    assert variant not in TORCH_PATHS
    out, inn, r, g = 32, 48, 8, 6
    w = torch.randn(out, inn, dtype=torch.float64)
    x = torch.randn(3, 5, inn, dtype=torch.float64, requires_grad=True)
    ads = [BlockAdapter(variant, r, out, inn, g, init="random", dtype=torch.float64) for _ in range(2)]
    for calls in ([ads[0].call(torch.float64)], [a.call(torch.float64) for a in ads]):
        got = [adapted_linear(x, w, None, calls)]
        with use_backend("reference"):
            want = [adapted_linear(x, w, None, calls)]
        params = [x] + [p for a in ads for p in a.parameters()]
        got += torch.autograd.grad(got[0].sum(), params, allow_unused=True)
        want += torch.autograd.grad(want[0].sum(), params, allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch_path(variant) is not None


@pytest.mark.parametrize("variant", ["column-scale", "low-rank", "bat-grouped"])
def test_dense_only_variant_on_the_kernel_side_and_a_quantized_base(variant, registered):
    """The kernel registry knows nothing of it, and nothing there trips on it: no GPU path, never
    supported, never padded, never grouped; over a quantised base (``ops.quantized``, here with a
    dense stand-in for the dequantised weight) it computes the same as the reference."""
    from flashbone.layer import BlockAdapter

    out, inn, r, g = 32, 48, 8, 6
    w = torch.randn(out, inn, dtype=torch.float64)
    ad = BlockAdapter(variant, r, out, inn, g, init="random", dtype=torch.float64)
    call = ad.call(torch.float64)
    x = torch.randn(10, inn, dtype=torch.float64)
    assert variant not in kernels.KERNELS and variant not in kernels.GPU_PATHS
    assert variant not in kernels.padded_variants()
    assert not kernels.supported(variant, x.half(), w.half(), 16)
    assert kernels.layer_group(x, [(w, None, call), (w, None, call)]) is None
    for calls in (
        [call],
        [
            ad.call(torch.float64),
            BlockAdapter("bone", r, out, inn, init="random", dtype=torch.float64).call(torch.float64),
        ],
    ):
        xs = x.clone().requires_grad_()
        got = quantized_linear(xs, lambda t: t @ w.t(), lambda: w, None, out, calls, torch.float64)
        with use_backend("reference"):
            want = adapted_linear(xs, w, None, calls)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        grads = [torch.autograd.grad(y.sum(), [xs, *ad.parameters()]) for y in (got, want)]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_recipe_variant_trains_saves_loads_and_merges(registered, tmp_path):
    """The recipe's promise: config checks, layers, training, files and merging just work."""
    torch.manual_seed(0)
    model = llama()
    base = copy.deepcopy(model)
    bm = get_bone_model(model, BoneConfig(variant="column-scale", r=8))
    assert bm.trainable_report().adapter == sum(
        num_params("column-scale", *layer.base_layer.weight.shape, 8) for _, layer in bm.bone_layers()
    )
    ids = tokens()
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=1e-2)
    bm.train()
    losses = []
    for _ in range(8):
        loss = bm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    bm.eval()
    with torch.no_grad():
        trained = bm(ids).logits
        bm.save_adapter(tmp_path)
        assert json.loads((tmp_path / "adapter_config.json").read_text())["variant"] == "column-scale"
        torch.testing.assert_close(load_adapter(base, tmp_path)(ids).logits, trained, rtol=0, atol=0)
        torch.testing.assert_close(bm.merge_and_unload()(ids).logits, trained, rtol=1e-4, atol=1e-4)


# -- bat-grouped: W as (gn, g, r, r) blocks, one B (g, r, r) shared by the gn groups -------------
def test_bat_grouped_with_g_in_over_r_is_bat_row():
    out, inn, r = 32, 48, 8
    w = torch.randn(out, inn, dtype=torch.float64)
    b = torch.randn(inn // r, r, r, dtype=torch.float64)
    torch.testing.assert_close(bat_grouped_delta(w, {"B": b}, r), bat_row_delta(w, {"B": b}, r))


def test_bat_grouped_pins_the_block_order_and_inverts():
    """Block (a, b) is number a * in/r + b in row-major order and uses B[that mod g]."""
    out, inn, r, g = 16, 24, 4, 3  # 4 x 6 = 24 blocks, 8 groups of 3
    w = torch.randn(out, inn, dtype=torch.float64)
    b = torch.randn(g, r, r, dtype=torch.float64)
    d = bat_grouped_delta(w, {"B": b}, r)
    for a in range(out // r):
        for c in range(inn // r):
            k = (a * (inn // r) + c) % g
            blk = w[a * r : (a + 1) * r, c * r : (c + 1) * r]
            torch.testing.assert_close(d[a * r : (a + 1) * r, c * r : (c + 1) * r], blk @ b[k] + b[k])
    small = {"B": 0.1 * b}  # I + B invertible
    torch.testing.assert_close(bat_grouped_undo(w + bat_grouped_delta(w, small, r), small, r), w)


def test_bat_grouped_parameter_count():
    """g r^2 per layer, whatever the layer's shape; LLaMA2-7B's seven projections, r = g = 64."""
    from test_param_counts import adapter_count, llama2_7b

    assert num_params("bat-grouped", 4096, 11008, 64, 64) == 64 * 64 * 64
    assert adapter_count(llama2_7b(), variant="bat-grouped", r=64, mini_r=64) == 7 * 32 * 64**3


def test_bat_grouped_needs_g_to_divide_the_block_count():
    with pytest.raises(
        BoneShapeError,
        match=r"q_proj: bat-grouped needs mini_r \(g\) to divide the layer's 16 blocks of 8 x 8 \(weight "
        r"shape \(32, 32\)\), but mini_r=3 does not; g values near it that divide 16: \[1, 2, 4, 8\]",
    ):
        get_bone_model(llama(), BoneConfig(variant="bat-grouped", r=8, mini_r=3))


def test_bat_grouped_file_round_trip(tmp_path):
    """Saved in the PEFT layout with flashbone's own type, g kept; loading gives the same model."""
    torch.manual_seed(0)
    model = llama()
    base = copy.deepcopy(model)
    bm = get_bone_model(model, BoneConfig(variant="bat-grouped", r=8, mini_r=4, init="random"))
    bm.save_adapter(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["variant"], cfg["r"], cfg["mini_r"]) == ("FLASHBONE", "bat-grouped", 8, 4)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.miss_block"].shape == (4, 8, 8)
    ids = tokens()
    with torch.no_grad():
        want = bm(ids).logits
        assert not torch.allclose(want, base(ids).logits)
        torch.testing.assert_close(load_adapter(base, tmp_path)(ids).logits, want, rtol=0, atol=0)
