"""SageAttention benchmark, in the layout of the seed table (shared/seeds/sageattention-mlx-benchmark.md).

    python benchmarks/bench_sage.py [--seq-len 256 512 ...] [--iterations 10] [--device mps|cuda|cpu]
        [--accuracy] [--json out.json] [--plot out.png] [--no-emulator-costs]

B=2, H=8, D=64, float16 (float32 on CPU, where float16 matmuls are not what a user runs); per
sequence length: manual attention (matmul + softmax + matmul), PyTorch SDPA, ``sage_mps.sageattn``
with ``smooth_k=True``, and the ratios (vs manual: manual time / sage time; vs SDPA: SDPA time / sage
time, above 1 = sage faster), medians of ``--iterations`` calls after a warm-up, timed in interleaved
rounds. The seed's published MLX figures are printed beside ours as reference (another framework,
another machine). Without MPS it also prints the Metal kernels each row would launch on a Mac,
counted by the CPU emulator (dispatches, device bytes). ``--accuracy`` prints max / mean absolute
difference, cosine similarity and relative L1 of sageattn with and without smoothing, float and
INT8 (``qk_quant="int8"``), against float64 attention, on inputs with a large common key offset.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

import natten_mps  # noqa: E402
import sage_mps  # noqa: E402

SEQ_LENS = [256, 512, 1024, 2048, 4096, 8192]
# seed table: seq_len -> (manual, MLX SDPA, SageAttn MLX) in ms, Apple Silicon, float16
PUBLISHED = {256: (1.61, 0.96, 1.09), 512: (3.39, 2.38, 2.78), 1024: (9.83, 4.82, 4.40),
             2048: (19.46, 7.53, 7.37), 4096: (68.74, 27.20, 27.75), 8192: (298.87, 107.77, 108.46)}
B, H, D = 2, 8, 64


def inputs(L: int, device: str, dtype, offset: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, H, L, D, generator=g) + offset
    v = torch.randn(B, H, L, D, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def manual_attention(q, k, v):
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def contenders(L: int, device: str, dtype):
    q, k, v = inputs(L, device, dtype)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return {
        "manual": lambda: manual_attention(q, k, v),
        "sdpa": lambda: sdpa(q, k, v),
        "sage": lambda: sage_mps.sageattn(q, k, v, tensor_layout="HND", smooth_k=True),
    }


def emulator_costs(L: int) -> Optional[Dict[str, int]]:
    """The Metal kernels sageattn launches for this row, run once at a reduced batch (B=1, H=1:
    every (batch, head) runs the same kernels) through the CPU emulator, scaled to B x H."""
    from natten_mps.metal import emulator
    was = natten_mps.emulation_enabled()
    natten_mps.set_emulation(True)
    try:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, L, D, generator=g).half() for _ in range(3))
        with emulator.counting() as c:
            sage_mps.sageattn(q, k, v)
        with emulator.counting() as ci:
            sage_mps.sageattn(q, k, v, qk_quant="int8")
        t, ti = c.total(), ci.total()
        scale = B * H
        return {"dispatches": t.dispatches, "kernels": sorted(c.by_kernel()),
                "bytes": (t.bytes_read + t.bytes_written) * scale,
                "int8_dispatches": ti.dispatches, "int8_kernels": sorted(ci.by_kernel()),
                "int8_bytes": (ti.bytes_read + ti.bytes_written) * scale}
    finally:
        natten_mps.set_emulation(was)


def accuracy(L: int, device: str, dtype) -> List[Dict]:
    """sageattn vs float64 attention on inputs whose keys share a large offset (what smoothing removes)."""
    q, k, v = inputs(L, device, dtype, offset=8.0, seed=1)
    ref = manual_attention(q.double(), k.double(), v.double())
    rows = []
    for name, kw in (("sageattn (no smooth) vs standard", dict(smooth_k=False)),
                     ("sageattn (smooth_k) vs standard", dict(smooth_k=True)),
                     ("sageattn INT8 (no smooth) vs standard", dict(smooth_k=False, qk_quant="int8")),
                     ("sageattn INT8 (smooth_k) vs standard", dict(smooth_k=True, qk_quant="int8"))):
        out = sage_mps.sageattn(q, k, v, tensor_layout="HND", **kw).double()
        diff = (out - ref).abs()
        cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
        rows.append({"test": name, "max_diff": diff.max().item(), "mean_diff": diff.mean().item(),
                     "cosine": cos, "rel_l1": (diff.sum() / ref.abs().sum()).item()})
    return rows


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, nargs="+", default=SEQ_LENS)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=["mps", "cuda", "cpu"], default=harness.best_device())
    ap.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default=None,
                    help="default float16 (float32 on CPU)")
    ap.add_argument("--accuracy", action="store_true", help="also print the accuracy table")
    ap.add_argument("--no-emulator-costs", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "float16"))
    show_costs = args.device != "mps" and not args.no_emulator_costs
    rows, records = [], []
    t_start = time.perf_counter()
    for i, L in enumerate(args.seq_len):
        print(f"\r[{i + 1}/{len(args.seq_len)}] seq_len {L} ({time.perf_counter() - t_start:.0f} s)", end="",
              flush=True, file=sys.stderr)
        fns = contenders(L, args.device, dtype)
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        samplers = {name: (lambda n, fn=fn: harness.sample_ms(fn, args.device, n)) for name, fn in fns.items()}
        # short rounds, so that a slow phase of a shared machine hits all three contenders alike
        med, errors = harness.interleaved_medians(samplers, args.iterations, per_round=min(5, max(1, args.iterations // 2)))
        pub = PUBLISHED.get(L)
        rec = {"seq_len": L, "device": args.device, "dtype": str(dtype).replace("torch.", ""),
               "manual_ms": med["manual"], "sdpa_ms": med["sdpa"], "sage_ms": med["sage"],
               "vs_manual": med["manual"] / med["sage"] if med["sage"] else None,
               "vs_sdpa": med["sdpa"] / med["sage"] if med["sage"] else None,
               "published_mlx": pub, "errors": errors, "path": natten_mps.last_backend()}
        row = [str(L), harness.fmt_ms(med["manual"]), harness.fmt_ms(med["sdpa"]), harness.fmt_ms(med["sage"]),
               f"{rec['vs_manual']:.2f}x" if rec["vs_manual"] else "—",
               f"{rec['vs_sdpa']:.2f}x" if rec["vs_sdpa"] else "—",
               " / ".join(f"{x:.2f}" for x in pub) if pub else "—"]
        if show_costs:
            rec["emulator"] = emulator_costs(L) if L <= 1024 else None
            c = rec["emulator"]
            row += [f"{', '.join(c['kernels'])} x{c['dispatches']}" if c else "(L > 1024: not emulated)",
                    f"{c['bytes'] / 1e6:.1f} MB" if c else "—",
                    f"{', '.join(c['int8_kernels'])} x{c['int8_dispatches']}" if c else "—",
                    f"{c['int8_bytes'] / 1e6:.1f} MB" if c else "—"]
        rows.append(row)
        records.append(rec)
    print(file=sys.stderr)
    headers = ["seq_len", "manual", "SDPA", "sageattn", "vs manual", "vs SDPA",
               "published MLX manual / SDPA / sage (ms, ref.)"]
    if show_costs:
        headers += ["Metal kernels (emu)", "device bytes (emu)", "INT8 Metal kernels (emu)", "INT8 device bytes (emu)"]
    print(f"\nbench_sage: B={B}, H={H}, D={D}, {str(dtype).replace('torch.', '')}, device={args.device}, "
          f"median of {args.iterations}")
    harness.print_table(headers, rows, markdown=True)
    acc = []
    if args.accuracy:
        acc = accuracy(min(args.seq_len), args.device, dtype)
        print(f"\naccuracy (seq_len {min(args.seq_len)}, keys offset by 8.0, vs float64 attention)")
        harness.print_table(["test", "max diff", "mean diff", "cosine", "rel L1"],
                            [[r["test"], f"{r['max_diff']:.2e}", f"{r['mean_diff']:.2e}", f"{r['cosine']:.6f}",
                              f"{r['rel_l1']:.2e}"] for r in acc], markdown=True)
    payload = {"results": records, "accuracy": acc, "config": {"B": B, "H": H, "D": D}}
    if args.json:
        harness.write_json(args.json, payload)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, label in (("manual_ms", "manual"), ("sdpa_ms", "SDPA"), ("sage_ms", "sageattn")):
            ax.plot([r["seq_len"] for r in records], [r[key] for r in records], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms (median)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return payload


if __name__ == "__main__":
    main()
