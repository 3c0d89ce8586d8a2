"""Feature benchmark reproducing the seed table (natten-mps vs natten-mlx, NATTEN PR #312 features).

Columns: this project (measured), natten-mlx (measured when ``mlx`` and ``natten_mlx`` import),
and the published natten-mps figures from ``shared/seeds/natten-mps-vs-mlx-new-features.md``
(reference only, not measured here). Without MPS it also prints, per row, the cost of the Metal
kernels that configuration launches, counted by the CPU emulator: forward dispatches and device
bytes, and the same for the backward, each also as a multiple of the minimum (every input read
once, every output written once).

    python benchmarks/bench_new_features.py [--features gqa fmha ...] [--json out.json] [--markdown]
        [--device cpu|mps|cuda] [--backward] [--repeats 30] [--warmup 5] [--plot out.png] [--tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import natten_mps  # noqa: E402
from natten_mps.optional_peers import import_natten_mlx  # noqa: E402

FEATURES = ["baseline", "gqa", "return_lse", "additional_kv", "bf16", "fmha", "merge"]


@dataclass
class Case:
    feature: str
    label: str
    rank: int
    spatial: tuple
    kernel: int
    heads: int = 8
    heads_kv: Optional[int] = None
    batch: int = 2
    dim: int = 32
    dtype: torch.dtype = torch.float32
    return_lse: bool = False
    extra_tokens: int = 0
    merge: bool = False
    published_ms: Optional[float] = None     # natten-mps column of the seed table
    published_mlx_ms: Optional[float] = None  # natten-mlx column of the seed table


def cases(tiny: bool = False) -> List[Case]:
    L1, S2 = ((32,), (8, 8)) if tiny else ((256,), (32, 32))
    K = 3 if tiny else 7
    c = [
        Case("baseline", f"1D L={L1[0]} K={K}", 1, L1, K, 8, published_ms=0.58, published_mlx_ms=0.26),
        Case("baseline", f"2D {S2[0]}x{S2[1]} K={K}", 2, S2, K, 4, published_ms=0.65, published_mlx_ms=0.29),
        Case("gqa", f"GQA4 1D L={L1[0]} K={K}", 1, L1, K, 8, 2, published_ms=0.29, published_mlx_ms=0.18),
        Case("gqa", f"MQA 1D L={L1[0]} K={K}", 1, L1, K, 8, 1, published_ms=0.30, published_mlx_ms=0.16),
        Case("gqa", f"GQA4 2D {S2[0]}x{S2[1]} K={K}", 2, S2, K, 4, 1, published_ms=0.86, published_mlx_ms=0.38),
        Case("gqa", f"MQA 2D {S2[0]}x{S2[1]} K={K}", 2, S2, K, 4, 1, published_ms=0.88, published_mlx_ms=0.39),
        Case("return_lse", f"1D L={L1[0]} K={K}", 1, L1, K, 8, return_lse=True, published_ms=0.43, published_mlx_ms=0.24),
        Case("return_lse", f"2D {S2[0]}x{S2[1]} K={K}", 2, S2, K, 4, return_lse=True, published_ms=1.24, published_mlx_ms=0.83),
        Case("additional_kv", f"1 token, 1D L={L1[0]} K={K}", 1, L1, K, 8, extra_tokens=1, published_ms=1.25, published_mlx_ms=0.54),
        Case("additional_kv", f"4 tokens, 1D L={L1[0]} K={K}", 1, L1, K, 8, extra_tokens=4, published_ms=1.25, published_mlx_ms=0.58),
        Case("additional_kv", f"1 token, 2D {S2[0]}x{S2[1]} K={K}", 2, S2, K, 4, extra_tokens=1, published_ms=2.71, published_mlx_ms=0.79),
        Case("additional_kv", "1 token + GQA4, 1D", 1, L1, K, 8, 2, extra_tokens=1, published_ms=1.09, published_mlx_ms=0.46),
        Case("bf16", f"1D L={L1[0]} K={K}", 1, L1, K, 8, dtype=torch.bfloat16, published_ms=0.66, published_mlx_ms=0.26),
        Case("bf16", f"2D {S2[0]}x{S2[1]} K={K}", 2, S2, K, 4, dtype=torch.bfloat16, published_ms=2.14, published_mlx_ms=0.45),
        Case("bf16", f"GQA4 1D L={L1[0]} K={K}", 1, L1, K, 8, 2, dtype=torch.bfloat16, published_ms=0.61, published_mlx_ms=0.27),
        Case("fmha", "1D L=16 full", 1, (16,), 16, 8, published_ms=0.27, published_mlx_ms=0.19),
        Case("fmha", "1D L=64 full", 1, (64,), 64, 8, published_ms=0.33, published_mlx_ms=0.23),
        Case("fmha", "2D 8x8 full", 2, (8, 8), 8, 4, published_ms=0.31, published_mlx_ms=0.22),
        Case("fmha", "2D 16x16 full", 2, (16, 16), 16, 4, published_ms=0.30, published_mlx_ms=0.22),
        Case("merge", f"2-way, 1D L={L1[0]}", 1, L1, K, 8, merge=True, published_ms=0.89, published_mlx_ms=0.40),
        Case("merge", f"2-way, 2D {S2[0]}x{S2[1]}", 2, S2, K, 4, merge=True, published_ms=1.33, published_mlx_ms=0.60),
    ]
    return c


def make_inputs(case: Case, device: str):
    g = torch.Generator().manual_seed(0)
    hkv = case.heads_kv or case.heads
    q = torch.randn(case.batch, *case.spatial, case.heads, case.dim, generator=g)
    k = torch.randn(case.batch, *case.spatial, hkv, case.dim, generator=g)
    v = torch.randn(case.batch, *case.spatial, hkv, case.dim, generator=g)
    ak = av = None
    if case.extra_tokens:
        ak = torch.randn(case.batch, case.extra_tokens, hkv, case.dim, generator=g)
        av = torch.randn(case.batch, case.extra_tokens, hkv, case.dim, generator=g)
    conv = lambda t: None if t is None else t.to(device=device, dtype=case.dtype)  # noqa: E731
    return conv(q), conv(k), conv(v), conv(ak), conv(av)


def ours(case: Case, device: str, backward: bool):
    q, k, v, ak, av = make_inputs(case, device)
    fn = {1: natten_mps.na1d, 2: natten_mps.na2d, 3: natten_mps.na3d}[case.rank]
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)

    def run():
        if case.merge:
            o1, l1 = fn(q, k, v, case.kernel, return_lse=True)
            o2, l2 = fn(q, k, v, case.kernel, dilation=2, return_lse=True)
            out, _ = natten_mps.merge_attentions([o1, o2], [l1, l2])
        else:
            res = fn(q, k, v, case.kernel, additional_keys=ak, additional_values=av, return_lse=case.return_lse)
            out = res[0] if case.return_lse else res
        if backward:
            out.float().sum().backward()
        return out
    return run


def mlx_runner(case: Case, backward: bool):
    """natten-mlx call-through; None when mlx/natten_mlx are not installed or lack the feature."""
    try:
        mx, natten_mlx = import_natten_mlx()
    except Exception:  # noqa: BLE001 - any import failure means the peer is absent
        return None, None
    if backward:
        return None, None
    q, k, v, ak, av = make_inputs(case, "cpu")
    dt = {torch.float32: mx.float32, torch.bfloat16: mx.bfloat16, torch.float16: mx.float16}[case.dtype]
    to_mx = lambda t: None if t is None else mx.array(t.float().numpy()).astype(dt)  # noqa: E731
    mq, mk, mv, mak, mav = (to_mx(t) for t in (q, k, v, ak, av))
    fn = getattr(natten_mlx, f"na{case.rank}d", None)
    if fn is None:
        return None, None

    def run():
        if case.merge:
            o1, l1 = fn(mq, mk, mv, case.kernel, return_lse=True)
            o2, l2 = fn(mq, mk, mv, case.kernel, dilation=2, return_lse=True)
            out = natten_mlx.merge_attentions([o1, o2], [l1, l2])
        elif case.extra_tokens:
            out = fn(mq, mk, mv, case.kernel, additional_keys=mak, additional_values=mav)
        else:
            out = fn(mq, mk, mv, case.kernel, return_lse=case.return_lse)
        mx.eval(out)
    return run, lambda: None


def minimum_bytes(case: Case, backward: bool) -> int:
    """Device bytes of reading each input once and writing each output once (one attention).

    Forward: q, k, v (and additional keys/values) read, out and the float32 LSE written. Backward:
    q, k, v, out, dout, LSE (and additional keys/values) read, their gradients written. A merge row
    runs two attentions: twice this.
    """
    q, k, v, ak, av = make_inputs(case, "cpu")
    size = lambda *ts: sum(t.numel() * t.element_size() for t in ts if t is not None)  # noqa: E731
    lse = q[..., 0].numel() * 4
    fwd = size(q, k, v, ak, av) + size(q) + lse
    n = fwd if not backward else 2 * size(q, k, v, ak, av) + 2 * size(q) + lse
    return n * (2 if case.merge else 1)


def emulator_costs(case: Case) -> Optional[Dict[str, int]]:
    """Run the configuration through the Metal path under the emulator and count its kernels:
    the forward alone, then forward+backward (the backward is the difference)."""
    from natten_mps.metal import emulator
    was = natten_mps.emulation_enabled()
    natten_mps.set_emulation(True)
    try:
        with emulator.counting() as c:
            ours(case, "cpu", backward=False)()
        t = c.total()
        kernels = {name: {"dispatches": st.dispatches, "threads": st.threads, "bytes_read": st.bytes_read,
                          "bytes_written": st.bytes_written} for name, st in c.by_kernel().items()}
        with emulator.counting() as cb:
            ours(case, "cpu", backward=True)()
        tb = cb.total()
        bwd_bytes = tb.bytes_read + tb.bytes_written - t.bytes_read - t.bytes_written
        return {"dispatches": t.dispatches, "threads": t.threads, "bytes_read": t.bytes_read,
                "bytes_written": t.bytes_written, "kernels": kernels,
                "x_minimum": (t.bytes_read + t.bytes_written) / minimum_bytes(case, False),
                "backward_dispatches": tb.dispatches - t.dispatches, "backward_bytes": bwd_bytes,
                "backward_x_minimum": bwd_bytes / minimum_bytes(case, True)}
    finally:
        natten_mps.set_emulation(was)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", nargs="+", choices=FEATURES, default=FEATURES)
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table like the seed's")
    ap.add_argument("--device", choices=["mps", "cuda", "cpu"], default=harness.best_device())
    ap.add_argument("--backward", action="store_true", help="time forward+backward")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--plot", help="draw grouped bars to this PNG (needs matplotlib)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--no-emulator-costs", action="store_true")
    args = ap.parse_args(argv)

    notes = []
    try:
        import_natten_mlx()
    except Exception as e:  # noqa: BLE001 - e.g. not installed, or natten-mlx refusing a non-macOS host
        notes.append(f"natten-mlx not measured: cannot import mlx/natten_mlx ({type(e).__name__}: {e})")
    show_costs = args.device != "mps" and not args.no_emulator_costs
    if show_costs:
        notes.append("emulator columns: Metal kernels this row launches on a Mac, counted by the CPU emulator")

    rows, records = [], []
    for case in cases(args.tiny):
        if case.feature not in args.features:
            continue
        t_ours = harness.time_ms(ours(case, args.device, args.backward), args.device, args.warmup, args.repeats)
        mlx_run, _ = mlx_runner(case, args.backward)
        t_mlx = None
        if mlx_run is not None:
            try:
                t_mlx = harness.time_ms(mlx_run, "cpu", args.warmup, args.repeats, sync=lambda: None)
            except Exception as e:  # noqa: BLE001 - a peer lacking a feature is a note
                notes.append(f"natten-mlx failed on {case.feature} {case.label}: {e}")
        costs = emulator_costs(case) if show_costs else None
        rec = {"feature": case.feature, "config": case.label, "device": args.device,
               "dtype": str(case.dtype).replace("torch.", ""), "backward": args.backward,
               "ours_ms": t_ours, "natten_mlx_ms": t_mlx, "published_natten_mps_ms": case.published_ms,
               "published_natten_mlx_ms": case.published_mlx_ms, "emulator": costs,
               "path": natten_mps.last_backend()}
        records.append(rec)
        row = [case.feature, case.label, harness.fmt_ms(t_ours), harness.fmt_ms(t_mlx),
               harness.fmt_ratio(t_ours, t_mlx), harness.fmt_ms(case.published_ms)]
        if show_costs:
            launched = ", ".join(f"{n} x{k['dispatches']}" for n, k in costs["kernels"].items()) or "none (pure path)"
            row += [launched, f"{(costs['bytes_read'] + costs['bytes_written']) / 1e6:.2f} MB",
                    f"{costs['x_minimum']:.2f}x", str(costs["backward_dispatches"]),
                    f"{costs['backward_bytes'] / 1e6:.2f} MB", f"{costs['backward_x_minimum']:.2f}x"]
        rows.append(row)

    headers = ["feature", "config", f"this project ({args.device})", "natten-mlx", "mlx/ours",
               "published natten-mps (M-series, ref.)"]
    if show_costs:
        headers += ["Metal kernels launched (emu)", "device bytes (emu)", "x min", "bwd dispatches",
                    "bwd bytes", "bwd x min"]
    print(f"\nbench_new_features: device={args.device}, median of {args.repeats} after {args.warmup} warm-up, "
          f"{'forward+backward' if args.backward else 'forward'}\n")
    harness.print_table(headers, rows, markdown=args.markdown)
    for n in notes:
        print(f"note: {n}")
    payload = {"device": args.device, "repeats": args.repeats, "warmup": args.warmup, "notes": notes,
               "results": records}
    if args.json:
        harness.write_json(args.json, payload)
    if args.plot:
        plot(records, args.plot)
    return payload


def plot(records, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        print("note: --plot needs matplotlib (pip install -e '.[bench]')")
        return
    labels = [f"{r['feature']}\n{r['config']}" for r in records]
    series = [("this project", "ours_ms"), ("natten-mlx", "natten_mlx_ms"),
              ("natten-mps (published)", "published_natten_mps_ms")]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 5))
    width = 0.8 / len(series)
    for i, (name, key) in enumerate(series):
        vals = [r[key] or 0 for r in records]
        ax.bar([x + i * width for x in range(len(labels))], vals, width, label=name)
    ax.set_xticks([x + width for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms (median)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
