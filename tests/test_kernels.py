"""GPU kernels: dispatch and input replay on any machine; kernel correctness on CUDA only.

CUDA tests (``-m cuda``) compare bf16/fp16 outputs and gradients with float32 dense math on
fresh random inputs, by relative error ``||got - ref|| / ||ref||``.
"""

import zlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flashbone import kernels
from flashbone.kernels import padded, replay
from flashbone.layer import BlockAdapter
from flashbone.ops import AdapterCall, _GPU_PATHS, adapted_linear, torch_path, use_backend
from flashbone.settings import SETTINGS
from flashbone.variants import VARIANTS

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not (CUDA and kernels.available()), reason="needs CUDA and Triton")


@pytest.fixture(autouse=True)
def _kernels_at_any_size(monkeypatch):
    """The tests use small shapes; let the kernels take them (production skips tiny calls)."""
    monkeypatch.setattr(SETTINGS, "kernel_min_elements", 0)


def _seed(case) -> int:
    """A seed fixed per test case (``hash`` of a tuple of strings changes every run)."""
    return zlib.crc32(repr(case).encode())


def _adapter(variant, out, inn, r, dev="cpu", mini_r=None, std=0.02):
    ad = BlockAdapter(variant, r, out, inn, mini_r or (r if variant == "bone-mini" else None), device=dev)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_(0, std)
    return ad


# ----------------------------------------------------------------------------- any machine
def test_the_kernels_register_their_gpu_paths():
    """Importing the layers registers every kernel path; variants without one (bat-grouped)
    take their PyTorch path on CUDA too."""
    assert set(kernels.KERNELS) == set(kernels.GPU_PATHS) <= set(VARIANTS)
    assert set(_GPU_PATHS) == set(kernels.GPU_PATHS)
    assert all(_GPU_PATHS[v] is kernels.GPU_PATHS[v] for v in kernels.GPU_PATHS)
    assert "bat-grouped" not in _GPU_PATHS


def test_a_variant_registering_kernels_is_picked_up_everywhere(monkeypatch):
    """One register() call is all the kernel side needs: dispatch, size rules, padding and
    grouping read the registry (here for bat-grouped with bat-row's limits, off CUDA)."""
    from flashbone.kernels import registry

    monkeypatch.setattr(registry, "KERNELS", dict(registry.KERNELS))
    monkeypatch.setattr(registry, "GPU_PATHS", dict(registry.GPU_PATHS))
    monkeypatch.setitem(_GPU_PATHS, "bat-grouped", None)  # restored (then dropped) by monkeypatch
    ran = []
    spec = kernels.VariantKernels(
        "bat-grouped",
        lambda *a: ran.append(a),
        min_elements_factor=2,
        pads_by_default=True,
        group=kernels.GroupKind("g", lambda *a: a),
    )
    kernels.register(spec)
    assert _GPU_PATHS["bat-grouped"] is registry.GPU_PATHS["bat-grouped"]
    assert "bat-grouped" in kernels.padded_variants()
    out, inn, r = 32, 48, 16
    x, w = torch.randn(5, inn, dtype=torch.float64), torch.randn(out, inn, dtype=torch.float64)
    call = _adapter("bat-grouped", out, inn, r, mini_r=2).call(torch.float64)
    assert not kernels.supported("bat-grouped", x, w, r)  # CPU: its PyTorch path, not the kernel
    torch.testing.assert_close(
        _GPU_PATHS["bat-grouped"](x, w, None, call), torch_path("bat-grouped")(x, w, None, call), rtol=0, atol=0
    )
    assert not ran and kernels.layer_group(x, [(w, None, call)] * 2) is None


@pytest.mark.parametrize("variant", list(kernels.GPU_PATHS))
def test_gpu_path_falls_back_to_pytorch_off_cuda(variant):
    out, inn, r = 32, 48, 16
    x = torch.randn(5, inn, dtype=torch.float64)
    w = torch.randn(out, inn, dtype=torch.float64)
    ad = _adapter(variant, out, inn, r)
    call = ad.call(torch.float64)
    assert not kernels.supported(variant, x, w, r)
    torch.testing.assert_close(
        _GPU_PATHS[variant](x, w, None, call), torch_path(variant)(x, w, None, call), rtol=0, atol=0
    )


def _tiny_llama(dtype=torch.bfloat16, layers=2):
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=50,
    )
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        m = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    m.requires_grad_(False)
    m.enable_input_require_grads()
    return m


class _Probe(torch.autograd.Function):
    """Identity that asks for a replay plan and checks it in backward."""

    plans: dict = {}

    @staticmethod
    def forward(ctx, x, name):
        p = replay.plan(x.reshape(-1, x.shape[-1]))
        ctx.rp = None if p is None else p[0]
        _Probe.plans[name] = ctx.rp
        ctx.save_for_backward(*(p[1] if p else []))
        ctx.copy = x.detach().clone()
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.rp is not None:
            got = ctx.rp.acquire(ctx.saved_tensors)
            assert torch.equal(got, ctx.copy.reshape(got.shape))
        return g, None


def _probe_model(m):
    _Probe.plans = {}
    for name, mod in m.named_modules():
        if name.endswith("_proj"):
            mod.register_forward_pre_hook(lambda mod, inp, name=name: (_Probe.apply(inp[0], name),))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_replay_recomputes_llama_inputs_bitwise_and_shares_them(dtype):
    m = _tiny_llama(dtype)
    _probe_model(m)
    ids = torch.randint(0, 50, (2, 8))
    m(input_ids=ids, labels=ids).loss.backward()  # _Probe.backward asserts equality
    p = {k.split(".", 3)[-1]: v for k, v in _Probe.plans.items() if ".layers.1." in k}
    assert p["self_attn.q_proj"] is p["self_attn.k_proj"] is p["self_attn.v_proj"] is not None
    assert p["mlp.gate_proj"] is p["mlp.up_proj"] is not None
    assert p["mlp.down_proj"] is not None and p["mlp.down_proj"] is not p["mlp.gate_proj"]
    assert p["self_attn.o_proj"] is None  # attention output: saved as usual


def test_replay_sees_rmsnorm_as_one_fusable_expression():
    """The graph walk must yield ``w * (h * s).to(bf16)`` with three saved sources: the shape
    that the one-pass Triton recompute matches on CUDA (a PyTorch change here would silently
    fall back to the eager ops)."""
    h = torch.randn(2, 5, 16, requires_grad=True)
    rs = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    w = torch.randn(16, dtype=torch.bfloat16)
    x = w * (h * rs).to(torch.bfloat16)
    sources = []
    expr = replay._build(x.grad_fn, sources, 0)
    assert expr == ("mul", ("src", 0), ("to", torch.bfloat16, ("mul", ("src", 1), ("src", 2))))
    assert sources[0] is not None and sources[0].dtype == torch.bfloat16
    assert torch.equal(replay._evaluate(expr, sources), x)
    assert replay._rmsnorm_operands(expr, sources) is None  # CPU tensors: the eager ops


def test_replay_walks_views_between_the_producer_and_the_layer():
    """A producer's output reshaped before the layer reads it (e.g. heads merged back) is still
    recomputed, through the view node."""
    a, b = torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 3, 8, requires_grad=True)
    a2, b2 = a * 1.5, b * 0.5
    x = (a2 * b2).view(6, 8).reshape(2, 24)
    sources = []
    expr = replay._build(x.grad_fn, sources, 0)
    assert expr[:2] == ("reshape", (2, 24)) and expr[2][:2] == ("reshape", (6, 8))
    assert len(sources) == 2 and torch.equal(replay._evaluate(expr, sources), x)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_replay_learns_the_node_classes_from_the_ops_even_without_grad(mode):
    """The walk knows PyTorch's nodes by the ops that make them, not by their internal names;
    learned on first use, which may come from inside a Function's forward (grad mode off)."""
    replay._node_kinds.cache_clear()
    try:
        with mode():
            kinds = replay._node_kinds()
        h = torch.randn(3, 4, requires_grad=True)
        w = torch.randn(4, dtype=torch.bfloat16)
        x = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True))).to(torch.bfloat16)
        assert type(x.grad_fn) is kinds.mul
        assert type(x.grad_fn.next_functions[1][0]) is kinds.cast
        assert type(x.view(12).grad_fn) in kinds.views
    finally:
        replay._node_kinds.cache_clear()


class _Saver(torch.autograd.Function):
    """Identity that keeps its input for backward through replay.save_input."""

    @staticmethod
    def forward(ctx, x):
        replay.save_input(ctx, x.reshape(-1, x.shape[-1]))
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = replay.saved_input(ctx)
        return g + 0 * x.reshape(g.shape)


def test_replay_holds_no_tensor_outside_save_for_backward():
    h = torch.randn(4, 8, requires_grad=True)
    a, b = h * 2.0, h * 3.0  # each saved by its mul node
    x = a * b
    y = _Saver.apply(x)
    node = y.grad_fn
    assert node.replay is not None and node.n_src == 2  # x itself is not saved
    assert not any(isinstance(v, torch.Tensor) for v in vars(node.replay).values())
    assert id(x) in replay._SHARED
    del x  # the shared entry (the only other holder of the sources) goes with the input
    assert not replay._SHARED
    y.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_per_input_cache_lives_with_its_input_and_version():
    x = torch.randn(6, 8)
    replay.store(x.view(-1, 8), "tag", torch.ones(1))
    assert replay.cached(x.view(-1, 8), "tag") is not None
    assert replay.cached(x.view(-1, 8), "other") is None
    x.add_(1)  # a new version: stale
    assert replay.cached(x.view(-1, 8), "tag") is None
    replay.store(x, "tag", torch.ones(1))
    n = len(replay._PER_INPUT)
    del x
    assert len(replay._PER_INPUT) == n - 1


def test_replay_steps_aside_for_saved_tensor_hooks_and_unknown_producers():
    w, h = torch.randn(8), torch.randn(4, 8, requires_grad=True)
    x = w * (h * 2.0).to(torch.bfloat16)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert replay.plan(x) is None  # e.g. non-reentrant gradient checkpointing
    assert replay.plan(torch.randn(4, 8, requires_grad=True)) is None  # a leaf
    assert replay.plan(torch.sin(h)) is None  # producer not replayable


def test_replay_hands_a_sole_consumer_the_factors_of_a_product():
    """down_proj's input ``silu(gate) * up``: its only consumer gets ``(a, b)`` to form the
    product in its kernel; with two consumers, or for RMSNorm's output, they get ``x``."""
    h = torch.randn(2, 3, 8, requires_grad=True)
    a, b = torch.nn.functional.silu(h * 2.0), h * 3.0
    x = a * b
    rp, sources = replay.plan(x.view(-1, 8))
    fa, fb = rp.factors(sources)
    assert fa.shape == fb.shape == (6, 8) and torch.equal(fa * fb, x.view(-1, 8))
    assert rp.pending == 0 and rp.value is None  # nothing was recomputed into memory
    rp2, src2 = replay.plan(x.view(-1, 8))  # the same input planned again: shared
    rp2.pending += 1  # and a second consumer of it
    assert rp2.factors(src2) is None and torch.equal(rp2.acquire(src2), x.view(-1, 8))
    rs = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    xn = torch.randn(8, dtype=torch.bfloat16) * (h * rs).to(torch.bfloat16)  # RMSNorm's output
    rp3, src3 = replay.plan(xn.view(-1, 8))
    assert rp3.product is None and rp3.factors(src3) is None


def test_replay_refuses_a_source_changed_in_place():
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    a2, b2 = a * 1.0, b * 1.0
    x = a2 * b2
    rp, sources = replay.plan(x)
    with torch.no_grad():
        a2.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        rp.acquire(sources)


def test_kernel_launch_config_overrides(monkeypatch):
    """``SETTINGS.kernel_config`` (``FLASHBONE_KERNEL_CONFIG``) overrides single launch
    parameters; an unknown kernel name is refused by name."""
    K = pytest.importorskip("flashbone.kernels.triton_kernels")  # needs Triton, not CUDA
    saved = {k: dict(v) for k, v in K.CONFIG.items()}
    try:
        monkeypatch.setattr(SETTINGS, "kernel_config", {"expand": {"BT": 32}})
        K._apply_overrides()
        assert K.CONFIG["expand"]["BT"] == 32 and K.CONFIG["expand"]["BN"] == saved["expand"]["BN"]
        monkeypatch.setattr(SETTINGS, "kernel_config", {"expnd": {"BT": 32}})
        with pytest.raises(ValueError, match="unknown kernel 'expnd'"):
            K._apply_overrides()
    finally:
        K.CONFIG.clear()
        K.CONFIG.update(saved)


@pytest.mark.parametrize("k,r", [(256, 64), (200, 64), (48, 16)])
def test_block_ones_gives_the_block_sum_and_the_tile(k, r):
    K = pytest.importorskip("flashbone.kernels.triton_kernels")
    x = torch.randn(7, k, dtype=torch.float64)
    p = K.block_ones(k, r, torch.float64, "cpu")
    ref = torch.nn.functional.pad(x, (0, (-k) % r)).view(7, -1, r).sum(1)
    torch.testing.assert_close(x @ p, ref)
    v = torch.randn(7, r, dtype=torch.float64)
    torch.testing.assert_close(v @ p.t(), v.repeat(1, -(-k // r))[:, :k])
    assert K.block_ones(k, r, torch.float64, "cpu") is p  # cached


# ----------------------------------------------------------------------------- CUDA only
def _rel(got, want):
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm())


def _check_layer(variant, t, out, inn, r, dtype, tol=1e-2, pad=False):
    """One adapted projection on the kernels against float32 dense math. ``pad``: the weight
    is a frozen ``nn.Parameter``, which the kernels re-home into ``[W | X]`` (kernels.padded)."""
    dev = "cuda"
    ad = _adapter(variant, out, inn, r, dev)
    x = torch.randn(t, inn, device=dev, dtype=dtype, requires_grad=True)
    w = torch.randn(out, inn, device=dev, dtype=dtype) * inn**-0.5
    if pad:
        w = torch.nn.Parameter(w, requires_grad=False)
    w0 = w.detach().clone()
    bias = torch.randn(out, device=dev, dtype=dtype)
    dy = torch.randn(t, out, device=dev, dtype=dtype)
    y = adapted_linear(x, w, bias, [ad.call(dtype)])
    node = y.grad_fn  # adapted_linear views the 2-D result: the kernel's node is next
    assert "Cuda" in type(node).__name__ or "Cuda" in type(node.next_functions[0][0]).__name__
    if pad:  # re-homed with r spare columns (bone: only where out >= in), values untouched
        assert (padded.view_of(w, r) is not None) == (variant not in ("bone", "bone-mini") or out >= inn)
        assert torch.equal(w, w0)
    y.backward(dy)
    assert torch.equal(w, w0)
    assert x.grad.is_contiguous()  # strided input gradients once broke SDPA's backward upstream
    got = [y, x.grad] + [p.grad for p in ad.parameters()]
    x32 = x.detach().float().requires_grad_()
    ps = {n: p.detach().clone().requires_grad_() for n, p in ad.tensors().items()}
    with use_backend("reference"):
        ref = adapted_linear(x32, w.float(), bias.float(), [AdapterCall(variant, r, ps, None, ad.mini_r)])
    ref.backward(dy.float())
    want = [ref, x32.grad] + [p.grad for p in ps.values()]
    for name, g, wv in zip(["y", "dx", *ps], got, want):
        assert torch.isfinite(g).all(), name
        assert _rel(g, wv) < tol, (variant, name, _rel(g, wv))


CASES = [  # (variant, T, out, in, r): T not a multiple of the tiles, GQA-like out < in
    ("bone", 1000, 384, 256, 64),
    ("bone", 333, 128, 200, 64),
    ("bone-mini", 300, 256, 256, 32),
    ("bat", 1000, 384, 256, 64),
    ("bat", 300, 128, 512, 32),
    ("bat-hadamard", 300, 256, 128, 64),
    ("bat-row", 1000, 384, 256, 64),
    ("bat-row", 300, 128, 512, 16),
    ("bone-ab", 1000, 256, 384, 64),
    ("bone-ab", 257, 128, 256, 128),
    # enough rows for the row-parallel block sum (bone fwd, bat-row bwd), in % r != 0
    ("bone", 2500, 256, 320, 64),
    ("bat-row", 2500, 256, 256, 32),
]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-T{c[1]}-{c[2]}x{c[3]}-r{c[4]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_match_dense_reference(case, dtype):
    torch.manual_seed(_seed(case))
    _check_layer(*case, dtype)


PADDED_CASES = [  # the variants that use W_ext = [W | X]; out >= in builds [x | x P] for bone
    ("bone", 1000, 384, 256, 64),
    ("bone", 333, 128, 200, 64),
    ("bone", 2500, 256, 320, 64),
    ("bone-mini", 300, 256, 256, 32),
    ("bone", 777, 256, 256, 128),
    ("bat-row", 1000, 384, 256, 64),
    ("bat-row", 300, 128, 512, 16),
    ("bone-ab", 1000, 256, 384, 64),
    ("bone-ab", 257, 128, 256, 128),
]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("case", PADDED_CASES, ids=lambda c: f"{c[0]}-T{c[1]}-{c[2]}x{c[3]}-r{c[4]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_padded_weight_kernels_match_dense_reference(case, dtype, monkeypatch):
    monkeypatch.setattr(SETTINGS, "padded", ("bone", "bone-mini", "bat-row", "bone-ab"))
    torch.manual_seed(_seed(case))
    _check_layer(*case, dtype, pad=True)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("variant", ["bone", "bat-row"])
def test_padded_weight_survives_two_forwards_before_one_backward(variant, monkeypatch):
    """The spare columns are rewritten by every call; saved tensors must not see that as an
    in-place change, and each backward must use its own adapter's columns."""
    monkeypatch.setattr(SETTINGS, "padded", ("bone", "bat-row"))
    dev, dt, r = "cuda", torch.bfloat16, 32
    w = torch.nn.Parameter(torch.randn(256, 256, device=dev, dtype=dt) / 16, requires_grad=False)
    ads = [_adapter(variant, 256, 256, r, dev) for _ in range(2)]
    x = torch.randn(300, 256, device=dev, dtype=dt, requires_grad=True)
    y = sum(adapted_linear(x, w, None, [ad.call(dt)]) for ad in ads)
    y.float().square().mean().backward()
    assert padded.view_of(w, r) is not None
    got = [x.grad] + [p.grad for ad in ads for p in ad.parameters()]
    x.grad = None
    for ad in ads:
        ad.zero_grad(set_to_none=True)
    with use_backend("torch"):
        y = sum(adapted_linear(x, w, None, [ad.call(dt)]) for ad in ads)
        y.float().square().mean().backward()
    want = [x.grad] + [p.grad for ad in ads for p in ad.parameters()]
    for g, wv in zip(got, want):
        assert _rel(g, wv) < 2e-2


@pytest.mark.cuda
@cuda
def test_unsupported_shapes_take_the_pytorch_path_on_cuda():
    x = torch.randn(64, 96, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(96, 96, device="cuda", dtype=torch.bfloat16)
    assert not kernels.supported("bat", x, w, 48)  # r not a power of two
    assert not kernels.supported("bat", x.float(), w.float(), 32)  # float32 activations
    assert kernels.supported("bat", x, w, 32)
    SETTINGS.kernel_min_elements = x.numel()  # row-affine variants need twice the size
    assert kernels.supported("bat", x, w, 32) and kernels.supported("bone", x, w, 32)
    assert not kernels.supported("bat-row", x, w, 32) and not kernels.supported("bone-ab", x, w, 32)
    SETTINGS.kernel_min_elements = x.numel() + 1  # a call this small is host-bound: the PyTorch path
    assert not kernels.supported("bat", x, w, 32)


@pytest.mark.cuda
@cuda
def test_recorded_steps_take_the_atomic_free_kernels_at_every_size():
    x = torch.randn(64, 96, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(96, 96, device="cuda", dtype=torch.bfloat16)
    SETTINGS.kernel_min_elements = x.numel() + 1
    assert not kernels.supported("bone", x, w, 32)
    with kernels.any_size():  # graphs pay no launches; bone's kernels repeat bit for bit
        assert kernels.supported("bone", x, w, 32) and kernels.supported("bone-mini", x, w, 32)
        for variant in ("bat", "bat-hadamard", "bat-row", "bone-ab"):  # float32 atomics: not here
            assert not kernels.supported(variant, x, w, 32)
    assert not kernels.supported("bone", x, w, 32)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("variant", list(kernels.GPU_PATHS))
def test_tiny_llama_on_kernels_matches_pytorch_path(variant):
    from flashbone import BoneConfig, get_bone_model

    grads = {}
    for backend in ("auto", "torch"):
        torch.manual_seed(0)
        m = _tiny_llama(torch.bfloat16, layers=2).cuda()
        cfg = BoneConfig(variant=variant, r=16, mini_r=16 if variant == "bone-mini" else None, init="random")
        bm = get_bone_model(m, cfg)
        ids = torch.randint(0, 50, (2, 64), device="cuda")
        with use_backend(backend):
            bm(input_ids=ids, labels=ids).loss.backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in bm.parameters() if p.requires_grad])
    assert _rel(grads["auto"], grads["torch"]) < 3e-2


def _graph_nodes(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        n = stack.pop()
        if n is not None and n not in seen:
            seen.add(n)
            stack.extend(f for f, _ in n.next_functions)
    return {type(n).__name__ for n in seen}


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("variant", ["bone", "bone-mini", "bat-row", "bone-ab"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_sibling_groups_match_the_pytorch_path(variant, checkpointing):
    # step 1 learns that q/k/v and gate/up read one input, step 2 runs them as groups (one
    # BoneGroupCuda / RowAffineGroupCuda node each); under non-reentrant checkpointing the
    # groups stand aside
    from flashbone import BoneConfig, get_bone_model, siblings

    grads = {}
    for backend in ("auto", "torch"):
        torch.manual_seed(0)
        m = _tiny_llama(torch.bfloat16, layers=2).cuda()
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
        cfg = BoneConfig(variant=variant, r=16, mini_r=16 if variant == "bone-mini" else None, init="random")
        bm = get_bone_model(m, cfg)
        params = [p for p in bm.parameters() if p.requires_grad]
        ids = torch.randint(0, 50, (2, 64), device="cuda")
        with use_backend(backend):
            for _ in range(2):
                for p in params:
                    p.grad = None
                loss = bm(input_ids=ids, labels=ids).loss
                loss.backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in params])
        if backend == "auto":
            attn = bm.model.model.layers[0].self_attn
            assert siblings.siblings_of(attn.q_proj) == [attn.k_proj, attn.v_proj]
            node = "RowAffine" if variant in ("bat-row", "bone-ab") else "Bone"
            nodes = _graph_nodes(bm(input_ids=ids, labels=ids).loss)
            grouped = f"{node}GroupCudaBackward" in nodes
            assert grouped == (not checkpointing and variant in kernels.padded_variants())
    assert _rel(grads["auto"], grads["torch"]) < 3e-2


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("variant", ["bone", "bat-row"])
def test_padded_kernels_see_every_optimizer_step(variant):
    # fused AdamW updates B without bumping its version; after each step the padded weight's
    # spare columns must hold the new B (bone) and every layer's adapter term must match the
    # dense reference computed from the current parameters
    from flashbone import BoneConfig, get_bone_model
    from flashbone.layer import BoneLayer

    torch.manual_seed(0)
    bm = get_bone_model(_tiny_llama(torch.bfloat16, layers=2).cuda(), BoneConfig(variant=variant, r=16, init="random"))
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=1e-2, fused=True)
    ids = torch.randint(0, 50, (2, 64), device="cuda")
    layers = [m for m in bm.modules() if isinstance(m, BoneLayer)]
    for step in range(3):
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].detach(), o.detach()))) for m in layers]
        loss = bm(input_ids=ids, labels=ids).loss
        for h in hooks:
            h.remove()
        if variant in kernels.padded_variants():
            assert any(getattr(p, "_flashbone_padded_width", None) for p in bm.parameters())
        for m, x, y in seen:  # the adapter's term alone: a stale B would be off by its update
            base = x @ m.weight.t()
            with use_backend("reference"):
                want = m(x) - base
            assert _rel(y - base, want) < 3e-2, (step, m)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("t,k,r", [(3000, 4096, 64), (2100, 200, 64), (333, 1024, 16)])
def test_block_sum_gemm_and_triton_reduce_agree_with_reference(t, k, r):
    from flashbone.kernels import triton_kernels as K

    x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
    ref = torch.nn.functional.pad(x.float(), (0, (-k) % r)).view(t, -1, r).sum(1)
    for s in (K.block_sum(x, r), K.rank_r(x, r, store_v=True)[0]):
        assert s.shape == (t, r) and torch.isfinite(s).all()
        assert _rel(s, ref) < 1e-2
    v = torch.randn(t, r, device="cuda", dtype=torch.bfloat16)  # tile = v P^T
    tile = K.rank_r(None, r, v=v, expand="tile", n=k)[1]
    assert torch.equal(tile, v @ K.block_ones(k, r, v.dtype, "cuda").t())


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_recompute_kernel_is_bitwise_eager(dtype):
    from flashbone.kernels.triton_kernels import mul_cast_mul

    for shape in [(2, 700, 4096), (1, 37, 300), (5, 64)]:
        h = torch.randn(*shape, device="cuda") * 3
        rs = torch.rand(*shape[:-1], 1, device="cuda") + 0.1
        w = torch.randn(shape[-1], device="cuda", dtype=dtype)
        assert torch.equal(mul_cast_mul(w, h, rs), w * (h * rs).to(dtype))


@pytest.mark.cuda
@cuda
def test_replay_on_cuda_uses_the_fused_rmsnorm_pass_bitwise(monkeypatch):
    from flashbone.kernels import triton_kernels as K

    calls = []
    real = K.mul_cast_mul
    monkeypatch.setattr(K, "mul_cast_mul", lambda *a: calls.append(1) or real(*a))
    m = _tiny_llama(torch.bfloat16).cuda()
    _probe_model(m)
    ids = torch.randint(0, 50, (2, 8), device="cuda")
    m(input_ids=ids, labels=ids).loss.backward()  # _Probe.backward asserts equality
    assert calls  # q/k/v and gate/up inputs came from the fused pass


def test_gpu_paths_find_their_autograd_functions():
    """The dispatch imports these lazily on CUDA: a missing one would only fail on a GPU."""
    pytest.importorskip("triton")
    from flashbone.kernels import functions

    for name in (
        "BoneCuda",
        "BonePaddedCuda",
        "RowAffineCuda",
        "WeightSpaceCuda",
        "has_extended_input",
        "shared_extended_input",
    ):
        assert callable(getattr(functions, name)), name
