"""Where the time of a small NA problem goes, on the MSL -> CUDA back end (ranks designs; not Apple timings).

    python benchmarks/experiments/small_problem_cuda.py [--only NAME] [--reps N]

Per config: kernel time of each launch of the forward and the backward (launcher CUDA events,
medians), the tiling the host chose, and the floor of the timing path (an empty translated kernel
launched through the same launcher with the same grid). Run under ``ncu --kernel-name regex:mtl_kernel``
with ``--only`` and ``--reps 1`` to profile one config's kernels.
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import natten_mps  # noqa: E402
from natten_mps.backends import metal  # noqa: E402

# name, spatial, kernel, B, H, D (the proxy's seed and large configs)
CONFIGS = [("1D 256 K=7 D=32", (256,), 7, 2, 8, 32), ("2D 32x32 K=7 D=32", (32, 32), 7, 2, 4, 32),
           ("2D 64x64 K=7 D=64", (64, 64), 7, 2, 8, 64), ("3D 32^3 K=5 D=64", (32, 32, 32), 5, 2, 8, 64),
           ("2D 128x128 K=13 D=64", (128, 128), 13, 2, 8, 64), ("1D 16384 K=63 D=64", (16384,), 63, 2, 8, 64)]

EMPTY = """#include <metal_stdlib>
using namespace metal;
kernel void empty_kernel(device float* out [[buffer(0)]], uint tg [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]]) {
  if (tg == 0xFFFFFFFFu && tid == 0) out[0] = 1.0f;
}
// the same with the tiled kernels' 24 KB of threadgroup memory (a carveout of shared memory)
kernel void empty_staged_kernel(device float* out [[buffer(0)]], uint tg [[threadgroup_position_in_grid]],
                                uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float4 stage[1536];
  if (tid == 0) stage[tg % 1536] = float4(float(tg));
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (tg == 0xFFFFFFFFu && tid == 0) out[0] = stage[5].x;
}
"""


def force_tiling(tiling):
    """``default``, or ``SGxDS[xNB]``: the SIMD-groups a tile starts from and the head-dim slice, with
    the host's fallbacks (fewer SIMD-groups, narrower slices below its threadgroup target) off, and
    the rows a thread stages at once (NB; by default the host's rule at the real target)."""
    if tiling == "default" and not hasattr(force_tiling, "orig"):
        return
    from natten_mps.backends import metal
    if not hasattr(force_tiling, "orig"):
        force_tiling.orig = (metal._simdgroups, metal._Problem._cheaper_slice, metal._Problem._own_slice,
                             metal._target_threadgroups, metal._Problem._stage_batch)
    if tiling == "default":
        (metal._simdgroups, metal._Problem._cheaper_slice, metal._Problem._own_slice,
         metal._target_threadgroups, metal._Problem._stage_batch) = force_tiling.orig
        return
    parts = [int(x) for x in tiling.split("x")]
    sg, ds = parts[:2]
    real_target, real_batch = force_tiling.orig[3], force_tiling.orig[4]
    metal._simdgroups = lambda device, own_walk=False: sg
    metal._Problem._cheaper_slice = lambda self, group_ext: ds
    metal._Problem._own_slice = lambda self: ds
    metal._target_threadgroups = lambda device: 0
    if len(parts) == 3:
        nb = parts[2]
        metal._Problem._stage_batch = lambda self, target: nb if self.DS in metal.BATCHED_SLICES else 1
    else:
        metal._Problem._stage_batch = lambda self, target: real_batch(self, real_target(torch.device("cuda")))


def launch_runs(fn, reps):
    """``reps`` calls of ``fn`` after 3 warm-ups: per call, its launches as [(kernel name, ms)]
    (launcher CUDA events; no host overhead)."""
    from natten_mps.metal import cuda
    for _ in range(3):
        fn()
    runs = []
    for _ in range(reps):
        with cuda.KernelTiming() as t:
            fn()
        runs.append(t.launches)
    return runs


def per_launch(fn, reps):
    """Median kernel time per launch position over ``reps`` calls: [(name, ms)]."""
    runs = launch_runs(fn, reps)
    return [(runs[0][i][0], statistics.median(r[i][1] for r in runs)) for i in range(len(runs[0]))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    natten_mps.set_metal_on_cuda(True)
    from natten_mps.metal import cuda
    empties = cuda.compile(EMPTY, label="empty")
    empty, staged = empties.empty_kernel, empties.empty_staged_kernel
    sink = torch.empty(1, device="cuda")
    for name, spatial, K, B, H, D in CONFIGS:
        if args.only and args.only not in name:
            continue
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, *spatial, H, D, device="cuda", generator=g) for _ in range(3))
        rank = len(spatial)
        call = ([K] * rank, [1] * rank, [1] * rank, [False] * rank, D ** -0.5)
        prob = metal._Problem(q, k, v, call[0], call[1], call[2], call[3], False, 0)
        out, lse = metal.attention_forward(q, k, v, *call)
        dout = torch.randn_like(out)
        fwd = per_launch(lambda: metal.attention_forward(q, k, v, *call), args.reps)
        bwd = per_launch(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *call), args.reps)
        tpg = prob.threads_per_group
        floor = per_launch(lambda: empty(sink, threads=prob.tiles() * tpg, group_size=tpg), args.reps)
        floor_staged = per_launch(lambda: staged(sink, threads=prob.tiles() * tpg, group_size=tpg), args.reps)
        # as the NA calls launch: right after a small host-to-device copy (their geometry buffer)
        floor_copy = per_launch(lambda: (torch.tensor(list(range(37)), dtype=torch.int32, device="cuda"),
                                         empty(sink, threads=prob.tiles() * tpg, group_size=tpg)), args.reps)
        print(f"{name}: tiles {prob.tiles()} x {tpg} threads, DS {prob.DS}, NG {prob.NG}, u {prob.u}, a {prob.a}, "
              f"KC {prob.KC}")
        for label, rows in (("fwd", fwd), ("bwd", bwd), ("empty", floor), ("empty, 24 KB threadgroup", floor_staged),
                            ("empty after a 148 B host-to-device copy", floor_copy)):
            print("   " + label + ": " + ", ".join(f"{n.split('_float')[0]} {ms * 1000:.1f} us" for n, ms in rows))


if __name__ == "__main__":
    main()
