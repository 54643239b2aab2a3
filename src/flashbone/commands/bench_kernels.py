"""``flashbone bench --kernels``: one decoder layer's projections, forward and backward, per variant.

    for each projection shape of the layer (q/k/v/o, gate/up, down) and each method:
        check  y, dx, dB against the dense reference (float32, fresh random inputs): ||d||/||ref||
        time   forward, forward+backward (CUDA events, median after warm-up)
        ideal  max(flops / measured GEMM rate, fewest bytes / measured copy bandwidth)
    layer total = sum over the 7 projections; "x frozen" = total / frozen total

Methods: ``frozen`` (no weight gradient, the floor), ``full`` (weight gradient too), each
variant on the default path (GPU kernels where they apply) and ``<variant>@torch``.
``--sweep r|tokens|width`` repeats the layer totals over r (16..256), tokens per step
(1k..32k) or width (hidden 2048..8192, LLaMA's intermediate rule) without the checks or
the ``@torch`` twins.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from ..layer import BlockAdapter
from ..ops import adapted_linear, use_backend
from ..variants import VARIANTS

SWEEPS = {"r": [16, 32, 64, 128, 256], "tokens": [1024, 2048, 4096, 8192, 16384, 32768], "width": [2048, 4096, 8192]}


def _timer(dev: torch.device):
    """``measure(fn, calls) -> ms per call``: 5 samples of ``calls // 5`` back-to-back calls
    (the host queues work ahead, so launch overhead overlaps as in training), median."""
    import time

    def measure(fn, calls: int) -> float:
        inner = max(1, calls // 5)
        ts = []
        for _ in range(5):
            if dev.type == "cuda":
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                for _ in range(inner):
                    fn()
                e1.record()
                e1.synchronize()
                ts.append(e0.elapsed_time(e1) / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                ts.append((time.perf_counter() - t0) * 1e3 / inner)
        return statistics.median(ts)

    return measure


def ceilings(dev: torch.device, dtype: torch.dtype, measure) -> dict:
    """Measured copy bandwidth (bytes read + written) and dense GEMM rate on this device."""
    n = (1 << 28) if dev.type == "cuda" else (1 << 24)
    a = torch.empty(n, dtype=torch.uint8, device=dev).random_()
    b = torch.empty_like(a)
    b.copy_(a)
    bw = 2 * n / (measure(lambda: b.copy_(a), 20) * 1e-3)
    m = 8192 if dev.type == "cuda" else 512
    x = torch.randn(m, m, device=dev, dtype=dtype)
    y = torch.randn(m, m, device=dev, dtype=dtype)
    x @ y
    rate = 2 * m**3 / (measure(lambda: x @ y, 10) * 1e-3)

    return {"copy_bytes_per_s": bw, "gemm_flops_per_s": rate}


def layer_shapes(hidden: int, inter: int, kv: int) -> list[tuple[str, int, int, int]]:
    """``(name, in, out, count)`` of the 7 projections, identical shapes merged."""
    shapes: dict[tuple[int, int], list] = {}
    for name, i, o in [
        ("q", hidden, hidden),
        ("k", hidden, kv),
        ("v", hidden, kv),
        ("o", hidden, hidden),
        ("gate", hidden, inter),
        ("up", hidden, inter),
        ("down", inter, hidden),
    ]:
        shapes.setdefault((i, o), [[], i, o])[0].append(name)
    return [("/".join(n), i, o, len(n)) for n, i, o in shapes.values()]


def cost(method: str, t: int, i: int, o: int, r: int, elt: int) -> tuple[float, float]:
    """(flops, fewest bytes) of forward + backward of one projection."""
    base = method.split("@")[0]
    gemm = 2.0 * t * i * o
    io = elt * (2 * t * i + 2 * t * o + 2 * i * o)  # fwd: x, W -> y; bwd: dy, W -> dx
    extra = {
        "frozen": 0.0,
        "full": gemm,
        "bone": 6.0 * t * r * o,
        "bone-mini": 6.0 * t * r * o,
        "bat-row": 6.0 * t * i * r,
        "bone-ab": 10.0 * t * i * r,
        "bat": gemm + 6.0 * i * o * r,
        "bat-hadamard": gemm + 6.0 * i * o,
    }.get(base)
    if extra is None:  # a variant on the generic dense path: it builds W' like bat does
        extra = gemm + 6.0 * i * o * r
    reads_x_again = base == "full" or (base in VARIANTS and VARIANTS[base].reads_weight)
    return 2 * gemm + extra, io + (elt * t * i if reads_x_again else 0)


class Case:
    """One projection with one method: inputs, adapter, and the closures to time."""

    def __init__(self, method: str, t: int, i: int, o: int, r: int, mini_r: int, dev: torch.device, dtype: torch.dtype):
        self.method, base = method, method.split("@")[0]
        self.backend = "torch" if method.endswith("@torch") else "auto"
        self.x = torch.randn(t, i, device=dev, dtype=dtype, requires_grad=True)
        self.w = (torch.randn(o, i, device=dev, dtype=dtype) * i**-0.5).requires_grad_(base == "full")
        self.dy = torch.randn(t, o, device=dev, dtype=dtype)
        self.ad = None
        if base in VARIANTS:
            self.ad = BlockAdapter(base, r, o, i, mini_r if VARIANTS[base].mini_r else None, init="random", device=dev)

    def forward(self) -> torch.Tensor:
        with use_backend(self.backend):
            if self.ad is None:
                return torch.nn.functional.linear(self.x, self.w)
            return adapted_linear(self.x, self.w, None, [self.ad.call(self.x.dtype)])

    def step(self) -> None:
        self.x.grad = self.w.grad = None
        if self.ad is not None:
            for p in self.ad.parameters():
                p.grad = None
        self.forward().backward(self.dy)

    def check(self) -> dict:
        """Relative errors of y, dx and the adapter gradients against float32 dense math."""
        if self.ad is None:
            return {}
        with torch.no_grad():
            self.x.normal_()
            self.dy.normal_()
            for p in self.ad.parameters():
                p.normal_(0, 0.02)
        self.x.grad = None
        for p in self.ad.parameters():
            p.grad = None
        y = self.forward()
        y.backward(self.dy)
        got = [y.detach(), self.x.grad] + [p.grad for p in self.ad.parameters()]
        x32 = self.x.detach().float().requires_grad_()
        ps = {n: p.detach().clone().requires_grad_() for n, p in self.ad.tensors().items()}
        from ..ops import AdapterCall

        with use_backend("reference"):
            ref = adapted_linear(
                x32, self.w.detach().float(), None, [AdapterCall(self.ad.variant, self.ad.r, ps, None, self.ad.mini_r)]
            )
        ref.backward(self.dy.float())
        want = [ref.detach(), x32.grad] + [p.grad for p in ps.values()]
        errs = [float((g.float() - w).norm() / w.norm().clamp_min(1e-30)) for g, w in zip(got, want)]
        return {"err_y": errs[0], "err_dx": errs[1], "err_dparams": max(errs[2:])}


def time_layer(methods, shapes, t, r, mini_r, dev, dtype, measure, reps, check=False, rates=None):
    """Per method: per-shape rows and the layer total (forward+backward ms)."""
    out = {}
    for m in methods:
        rows, total = [], 0.0
        for name, i, o, count in shapes:
            try:
                case = Case(m, t, i, o, r, mini_r, dev, dtype)
                for _ in range(3):
                    case.step()
                row = {
                    "shape": name,
                    "in": i,
                    "out": o,
                    "count": count,
                    "fwd_ms": measure(lambda: case.forward(), reps),
                    "fwdbwd_ms": measure(case.step, reps),
                }
                if rates:
                    flops, nbytes = cost(m, t, i, o, r, torch.finfo(dtype).bits // 8)
                    row["ideal_ms"] = 1e3 * max(flops / rates["gemm_flops_per_s"], nbytes / rates["copy_bytes_per_s"])
                if check:
                    row.update(case.check())
                case = None  # free its tensors before the next case
            except (RuntimeError, ValueError) as e:
                row = {"shape": name, "in": i, "out": o, "count": count, "error": str(e)[:200]}
            rows.append(row)
            total += row.get("fwdbwd_ms", float("nan")) * count
        out[m] = {"rows": rows, "layer_ms": total}
    frozen = out.get("frozen", {}).get("layer_ms")
    for m in out:
        out[m]["x_frozen"] = out[m]["layer_ms"] / frozen if frozen else None
    return out


def run_kernels(args: argparse.Namespace, dev: torch.device, dtype: torch.dtype) -> int:
    measure = _timer(dev)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    torch_twins = [v + "@torch" for v in variants] if dev.type == "cuda" and args.sweep == "none" else []
    methods = ["frozen", "full", *variants, *torch_twins]
    kv = args.hidden // args.heads * args.kv_heads
    t = args.batch * args.seq
    reps = max(10, args.steps * 3)
    rates = ceilings(dev, dtype, measure)
    print(
        f"# ceilings: copy {rates['copy_bytes_per_s'] / 1e9:,.0f} GB/s (read+write), "
        f"GEMM {rates['gemm_flops_per_s'] / 1e12:,.1f} TFLOP/s; T={t}, r={args.r}",
        flush=True,
    )
    result = {"args": vars(args), "ceilings": rates}
    if args.sweep == "none":
        main = time_layer(
            methods,
            layer_shapes(args.hidden, args.intermediate, kv),
            t,
            args.r,
            args.mini_r,
            dev,
            dtype,
            measure,
            reps,
            check=True,
            rates=rates,
        )
        result["layer"] = main
        print(
            f"{'method':<20}{'shape':<10}{'fwd ms':>8}{'f+b ms':>8}{'ideal':>8}{'eff':>6}"
            f"{'err y':>9}{'err dx':>9}{'err dB':>9}"
        )
        for m, res in main.items():
            for row in res["rows"]:
                if "error" in row:
                    print(f"{m:<20}{row['shape']:<10} error: {row['error']}")
                    continue
                eff = row["ideal_ms"] / row["fwdbwd_ms"]
                errs = "".join(
                    f"{row[k]:>9.1e}" if k in row else f"{'-':>9}" for k in ("err_y", "err_dx", "err_dparams")
                )
                print(
                    f"{m:<20}{row['shape']:<10}{row['fwd_ms']:>8.3f}{row['fwdbwd_ms']:>8.3f}"
                    f"{row['ideal_ms']:>8.3f}{eff:>6.2f}{errs}"
                )
            ratio = f"{res['x_frozen']:.3f}" if res["x_frozen"] else "-"
            print(f"{m:<20}{'LAYER':<10}{'':>8}{res['layer_ms']:>8.3f}   x frozen {ratio}", flush=True)
    else:
        points = SWEEPS[args.sweep]
        result["sweep"] = {"kind": args.sweep, "points": []}
        for p in points:
            r, tt, h, inter = args.r, t, args.hidden, args.intermediate
            if args.sweep == "r":
                r = p
            elif args.sweep == "tokens":
                tt = p
            else:
                h, inter = p, 256 * -(-(8 * p // 3) // 256)  # LLaMA's rule: 4096 -> 11008
            shapes = layer_shapes(h, inter, h)
            res = time_layer(methods, shapes, tt, r, r, dev, dtype, measure, reps)
            pt = {
                "value": p,
                "r": r,
                "tokens": tt,
                "hidden": h,
                "intermediate": inter,
                "layer_ms": {m: v["layer_ms"] for m, v in res.items()},
                "x_frozen": {m: v["x_frozen"] for m, v in res.items()},
            }
            result["sweep"]["points"].append(pt)
            print(
                f"{args.sweep}={p}: " + "  ".join(f"{m} {v:.3f}" for m, v in pt["x_frozen"].items() if v is not None),
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0
