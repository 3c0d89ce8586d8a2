"""Kernel times of the seed configurations under forced tilings, from the GPU's activity trace (CUPTI,
warm caches: what bench_metal_proxy.py measures), beside empty translated kernels on the same grid.

    python benchmarks/experiments/cupti_tilings.py [--only NAME ...] [--tilings default 2x4x4 ...] [--reps N]

ncu (ncu_durations.py) flushes the caches before every kernel by default, so a small problem's kernel
there starts from DRAM; this script times it as the proxy does. Tilings as in small_problem_cuda.py
(SIMD-groups a tile x head-dim slice [x rows a thread stages]). Ranks designs on an NVIDIA GPU; these are
not Apple timings.
"""
import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--tilings", nargs="+", default=["default"])
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    import torch
    import bench_metal_proxy as proxy
    from small_problem_cuda import EMPTY, force_tiling
    from natten_mps.backends import metal
    fns, cuda_module, _ = proxy.setup_contender("ours", None)
    timer = proxy.KernelTimer(cuda_module)
    empty_lib = cuda_module.compile(EMPTY, label="empty")
    sink = torch.empty(1, device="cuda")
    configs = [c for c in proxy.SEED_CONFIGS + proxy.LARGE_CONFIGS if not args.only or any(o in c[0] for o in args.only)]
    print("| config | dtype | tiling | tiles x threads | fwd kernel (us) | fwd+bwd kernels (us) | empty kernel, same grid (us) |")
    print("|---|---|---|---|---|---|---|")
    for name, rank, spatial, K, B, H, D in configs:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            fwd, fwd_bwd, (q, k, v) = proxy.na_calls(fns[rank], spatial, K, B, H, D, dtype)

            for tiling in args.tilings:
                force_tiling(tiling)
                p = metal._Problem(q, k, v, [K] * rank, [1] * rank, [1] * rank, [False] * rank, False, 0)
                for _ in range(5):
                    fwd(), fwd_bwd()
                f = timer.measure(fwd, args.reps)[0] * 1e3
                fb = timer.measure(fwd_bwd, args.reps)[0] * 1e3

                def empty():
                    empty_lib.empty_staged_kernel(sink, threads=p.tiles() * p.threads_per_group,
                                                  group_size=p.threads_per_group)
                e = timer.measure(empty, args.reps)[0] * 1e3
                print(f"| {name} | {dtype_name} | {tiling} | {p.tiles()} x {p.threads_per_group} (NG {p.NG}, DS {p.DS}, NB {p.NB}) "
                      f"| {f:.2f} | {fb:.2f} | {e:.2f} |", flush=True)
            force_tiling("default")


if __name__ == "__main__":
    main()
