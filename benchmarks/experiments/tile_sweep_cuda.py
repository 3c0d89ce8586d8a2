"""Tile-shape sweep for the tiled kernels on the MSL -> CUDA back end (ranks designs; not Apple timings).

    python benchmarks/experiments/tile_sweep_cuda.py

For each config, times the forward and the backward kernels (launcher CUDA events, kernels only, medians) with the
SIMD-groups a tile starts from forced to 1, 2, 4, 8 and the head-dim slice forced to 16 or 32.
"""
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import natten_mps  # noqa: E402
from natten_mps.backends import metal  # noqa: E402

CONFIGS = [("2D 64x64 K=7", (64, 64), 7), ("3D 32^3 K=5", (32, 32, 32), 5), ("1D 256 K=7", (256,), 7),
           ("2D 32x32 K=7", (32, 32), 7)]


def timed(fn, reps=15):
    """Median over calls of the summed kernel time of one call (launcher events; no host overhead)."""
    from natten_mps.metal import cuda
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        with cuda.KernelTiming() as t:
            fn()
        ts.append(sum(ms for _, ms in t.launches))
    return statistics.median(ts)


def main():
    natten_mps.set_metal_on_cuda(True)
    orig_sg, orig_slice = metal._simdgroups, metal._Problem._cheaper_slice
    print("| config | simdgroups | DS | fwd ms | bwd ms (dq+dkdv) |")
    print("|---|---|---|---|---|")
    for name, spatial, K in CONFIGS:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(2, *spatial, 8, 64, device="cuda", generator=g) for _ in range(3))
        args = ([K] * len(spatial), [1] * len(spatial), [1] * len(spatial), [False] * len(spatial), 0.125)
        out, lse = metal.attention_forward(q, k, v, *args)
        dout = torch.randn_like(out)
        for sg in (1, 2, 4, 8):
            for ds in (16, 32):
                metal._simdgroups = lambda d, sg=sg: sg
                metal._Problem._cheaper_slice = lambda self, ge, ds=ds: ds
                f = timed(lambda: metal.attention_forward(q, k, v, *args))
                b = timed(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *args))
                print(f"| {name} | {sg} | {ds} | {f:.3f} | {b:.3f} |", flush=True)
        metal._simdgroups, metal._Problem._cheaper_slice = orig_sg, orig_slice
        f = timed(lambda: metal.attention_forward(q, k, v, *args))
        b = timed(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *args))
        print(f"| {name} | default | default | {f:.3f} | {b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
