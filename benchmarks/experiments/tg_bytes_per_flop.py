"""Threadgroup-memory bytes read per useful FLOP, counted by the Metal emulator (hardware-neutral).

    PYTHONPATH=$PWD python benchmarks/experiments/tg_bytes_per_flop.py [--dense-l 256] [--dims 64]

Every kernel launch of the dense path (scalar kernels of attention.metal and the simdgroup-matrix
kernels of flash_simdgroup.metal) and of the neighborhood-attention seed configurations runs in the
emulator, whose threadgroup arrays count each byte a thread reads (``mtl_threadgroup_bytes`` in
``natten_mps/metal/emulator_shim/metal_stdlib``). A matrix operand loaded into a fragment counts its
64 elements once (two a lane), as the hardware reads them.

Useful FLOPs (what the problem needs, not what a kernel executes): 2 FLOPs per multiply-add of each
product over the (query, key) pairs a query sees: forward QK^T and PV, 2 (D + Dv) per pair
(4 Lq Lk D for dense, not causal, D = Dv); backward the five products S, dP, dQ, dK, dV,
2 (3 D + 2 Dv) per pair (2.5x the forward at D = Dv). NA: K^rank pairs a query.

The figure barely depends on the sequence length once it is several tiles long (each staged byte
is reused by every query of a tile): L = 256 stands in for L = 4096, which the emulator is too slow
for (``--dense-l`` to change it).
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import natten_mps  # noqa: E402
from natten_mps.backends import metal  # noqa: E402
from natten_mps.metal import runtime  # noqa: E402

# name, spatial, K, D: the seed configurations of bench_metal_proxy.py, then larger 2-D windows.
# 2-D rows also run the simdgroup-matrix kernels (na2d_*; no 1-D or 3-D matrix kernels yet).
SEED_NA = [("1D L=256 K=7", (256,), 7, 32)]
NA_2D = [("2D 32x32 K=7", (32, 32), 7, 32), ("2D 32x32 K=9", (32, 32), 9, 32), ("2D 32x32 K=13", (32, 32), 13, 64)]


def tg_read(reset_only: bool = False) -> int:
    """Threadgroup bytes read by every library compiled so far since the last call (then reset)."""
    total = 0
    for name in (metal.ATTENTION_SHADER, "natten/flash_simdgroup.metal"):
        lib = runtime.library(name, "cpu")
        out = (ctypes.c_int64 * 2)()
        lib._so.mtl_threadgroup_bytes(out, ctypes.c_int(1))
        total += out[0]
    return 0 if reset_only else total


def dense_row(L, D, variant, causal=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, L, 1, D, generator=g).to(dtype) for _ in range(4))
    pairs = L * (L + 1) // 2 if causal else L * L
    tg_read(reset_only=True)
    out, lse = metal.dense_forward(q, k, v, causal, D ** -0.5, variant=variant)
    fwd = tg_read()
    metal.dense_backward(dout, None, q, k, v, out, lse, causal, D ** -0.5, variant=variant)
    bwd = tg_read()
    return fwd, 4 * D * pairs, bwd, 10 * D * pairs


def na_row(spatial, K, D):
    g = torch.Generator().manual_seed(0)
    shape = (1, *spatial, 1, D)
    q, k, v, dout = (torch.randn(shape, generator=g).requires_grad_() for _ in range(4))
    fn = {1: natten_mps.na1d, 2: natten_mps.na2d}[len(spatial)]
    tokens = 1
    for n in spatial:
        tokens *= n
    pairs = tokens * K ** len(spatial)
    tg_read(reset_only=True)
    with torch.no_grad():
        fn(q, k, v, K)
    fwd = tg_read()
    out = fn(q, k, v, K)
    tg_read(reset_only=True)
    out.backward(dout.detach())
    bwd = tg_read()
    return fwd, 4 * D * pairs, bwd, 10 * D * pairs


def na2d_matrix_row(spatial, K, D):
    """Forward and backward of the 2-D simdgroup-matrix NA kernels."""
    from natten_mps.backends import metal_flash
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, *spatial, 1, D, generator=g) for _ in range(4))
    args = ((K, K), (1, 1), (1, 1), (False, False), D ** -0.5)
    tg_read(reset_only=True)
    out, lse = metal_flash.na2d_forward(q, k, v, *args)
    fwd = tg_read()
    metal_flash.na2d_backward(dout, None, q, k, v, out, lse, *args)
    pairs = spatial[0] * spatial[1] * K * K
    return fwd, 4 * D * pairs, tg_read(), 10 * D * pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dense-l", type=int, default=256)
    ap.add_argument("--dims", type=int, nargs="+", default=[64])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--no-na", action="store_true", help="skip the neighborhood-attention seed rows")
    args = ap.parse_args(argv)
    natten_mps.set_emulation(True)
    print("| problem | pass | variant | tg bytes read | useful FLOPs | tg bytes / FLOP | matrix / scalar |")
    print("|---|---|---|---|---|---|---|")
    for D, dtype, causal in itertools.product(args.dims, args.dtypes, (False, True)):
        rows = {v: dense_row(args.dense_l, D, v, causal, getattr(torch, dtype)) for v in metal.DENSE_VARIANTS}
        name = f"dense L={args.dense_l} D={D}{' causal' if causal else ''} {dtype}"
        for p, (bi, fi) in (("forward", (0, 1)), ("backward", (2, 3))):
            base = rows["scalar"][bi] / rows["scalar"][fi]
            for v in metal.DENSE_VARIANTS:
                r = rows[v]
                ratio = f"{r[bi] / r[fi] / base:.3f}" if v != "scalar" else ""
                print(f"| {name} | {p} | {v} | {r[bi]:,} | {r[fi]:,} | {r[bi] / r[fi]:.4f} | {ratio} |")
    if not args.no_na:
        for name, spatial, K, D in SEED_NA:
            fb, ff, bb, bf = na_row(spatial, K, D)
            print(f"| NA {name} D={D} fp32 | forward | scalar | {fb:,} | {ff:,} | {fb / ff:.4f} | (no matrix NA kernel) |")
            print(f"| NA {name} D={D} fp32 | backward | scalar | {bb:,} | {bf:,} | {bb / bf:.4f} | (no matrix NA kernel) |")
        for name, spatial, K, D in NA_2D:
            scalar = na_row(spatial, K, D)
            matrix = na2d_matrix_row(spatial, K, D)
            for p, (bi, fi) in (("forward", (0, 1)), ("backward", (2, 3))):
                base = scalar[bi] / scalar[fi]
                print(f"| NA {name} D={D} fp32 | {p} | scalar | {scalar[bi]:,} | {scalar[fi]:,} | {base:.4f} |  |")
                print(f"| NA {name} D={D} fp32 | {p} | simdgroup | {matrix[bi]:,} | {matrix[fi]:,} "
                      f"| {matrix[bi] / matrix[fi]:.4f} | {matrix[bi] / matrix[fi] / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
