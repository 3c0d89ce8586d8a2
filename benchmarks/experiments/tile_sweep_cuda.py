"""Tile-shape sweep for the tiled kernels on the MSL -> CUDA back end (ranks designs; not Apple timings).

    python benchmarks/experiments/tile_sweep_cuda.py [--per-kernel] [--only NAME ...]

For each config, times the forward and the backward kernels (launcher CUDA events, kernels only, medians) with the
SIMD-groups a tile forced to 1, 2, 4, 8 and the head-dim slice to 16 or 32 (``--per-kernel``: 4, 8,
16 or 32), the host's fallbacks off (``small_problem_cuda.force_tiling``), then the host's default.
``--per-kernel``: the median of each launch (forward, dQ, dK/dV) instead of each call's sum, so the
backward's two kernels can be ranked apart (they are tiled separately: queries, then keys).
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import natten_mps  # noqa: E402
from natten_mps.backends import metal  # noqa: E402
from small_problem_cuda import CONFIGS as SMALL, force_tiling, launch_runs, per_launch  # noqa: E402

CONFIGS = [("2D 64x64 K=7", (64, 64), 7), ("3D 32^3 K=5", (32, 32, 32), 5), ("1D 256 K=7", (256,), 7),
           ("2D 32x32 K=7", (32, 32), 7)]


def timed(fn, reps=15):
    """Median over calls of the summed kernel time of one call (launcher events; no host overhead)."""
    return statistics.median(sum(ms for _, ms in run) for run in launch_runs(fn, reps))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kernel", action="store_true")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    if args.per_kernel:
        return per_kernel(args.only)
    natten_mps.set_metal_on_cuda(True)
    print("| config | simdgroups | DS | fwd ms | bwd ms (dq+dkdv) |")
    print("|---|---|---|---|---|")
    for name, spatial, K in CONFIGS:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(2, *spatial, 8, 64, device="cuda", generator=g) for _ in range(3))
        args = ([K] * len(spatial), [1] * len(spatial), [1] * len(spatial), [False] * len(spatial), 0.125)
        out, lse = metal.attention_forward(q, k, v, *args)
        dout = torch.randn_like(out)
        for tiling in [f"{sg}x{ds}" for sg in (1, 2, 4, 8) for ds in (16, 32)] + ["default"]:
            force_tiling(tiling)
            f = timed(lambda: metal.attention_forward(q, k, v, *args))
            b = timed(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *args))
            sg, ds = tiling.split("x") if tiling != "default" else ("default", "default")
            print(f"| {name} | {sg} | {ds} | {f:.3f} | {b:.3f} |", flush=True)
        force_tiling("default")


def per_kernel(only):
    natten_mps.set_metal_on_cuda(True)
    print("| config | simdgroups | DS | fwd us | dq us | dkdv us |")
    print("|---|---|---|---|---|---|")
    for name, spatial, K, B, H, D in SMALL:
        if only and not any(o in name for o in only):
            continue
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, *spatial, H, D, device="cuda", generator=g) for _ in range(3))
        args = ([K] * len(spatial), [1] * len(spatial), [1] * len(spatial), [False] * len(spatial), D ** -0.5)
        out, lse = metal.attention_forward(q, k, v, *args)
        dout = torch.randn_like(out)
        for tiling in [f"{s}x{d}" for s in (1, 2, 4, 8) for d in (4, 8, 16, 32)] + ["default"]:
            if tiling != "default" and metal._slices(D, D, int(tiling.split("x")[1]))[1] > 8:
                continue                          # this slice cannot cover D in 8 lanes
            force_tiling(tiling)
            f = per_launch(lambda: metal.attention_forward(q, k, v, *args), 15)
            b = per_launch(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *args), 15)
            sg, ds = tiling.split("x") if tiling != "default" else ("default", "default")
            print(f"| {name} | {sg} | {ds} | {f[0][1] * 1e3:.1f} | {b[0][1] * 1e3:.1f} | {b[1][1] * 1e3:.1f} |", flush=True)
        force_tiling("default")


if __name__ == "__main__":
    main()
