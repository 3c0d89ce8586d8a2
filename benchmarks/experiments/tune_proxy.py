"""The tuner's choice against the host's defaults, per proxy configuration (Metal translated to CUDA,
not Apple timings), forward and backward, side by side in one run (medians of synchronised runs).

Needs a CUDA GPU (the Metal-on-CUDA switch); the cache goes to a temporary file unless
``NATTEN_MPS_TUNE_CACHE`` is set. ``NATTEN_MPS_GPU_PROFILE=apple-m1-max`` runs Apple's tilings on the
translated kernels. Usage::

    PYTHONPATH=$PWD python benchmarks/experiments/tune_proxy.py [--dtype float16] [--runs 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import natten_mps  # noqa: E402
from natten_mps import tuning  # noqa: E402
from natten_mps.backends import metal  # noqa: E402
from bench_metal_proxy import DENSE_CONFIGS, LARGE_CONFIGS, SEED_CONFIGS  # noqa: E402


def median_ms(fn, runs):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    os.environ.setdefault(tuning.ENV_CACHE, str(Path(tempfile.mkdtemp()) / "tuning.json"))
    natten_mps.set_metal_on_cuda(True)
    dtype = getattr(torch, args.dtype)
    configs = [(n, sp, k, B, H, D) for n, _, sp, k, B, H, D in SEED_CONFIGS + LARGE_CONFIGS]
    configs += [(n, (L,), None, B, H, D) for n, L, B, H, D in DENSE_CONFIGS]
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} {args.dtype}; "
          f"profile {os.environ.get('NATTEN_MPS_GPU_PROFILE', 'device')}; Metal translated to CUDA")
    print(f"{'config':>20} {'op':>9} {'choice':>16} {'default ms':>11} {'choice ms':>10} {'ratio':>6}")
    for name, spatial, ks, B, H, D in configs:
        r = len(spatial)
        problem = {"shape": (B, *spatial, H, D)} | ({} if ks is None else {"kernel_size": ks})
        chosen = {c.bucket.op: c for c in natten_mps.tune(problem, device="cuda", dtype=dtype)}
        q = torch.randn(B, *spatial, H, D, device="cuda", dtype=dtype)
        kk, dense = ([1], True) if ks is None else ([ks] * r, False)
        a = (kk, [1] * len(kk), [1] * len(kk), [False] * len(kk), D ** -0.5)
        out, lse = metal.attention_forward(q, q, q, *a, dense=dense)
        dout = torch.randn_like(out)
        ops = {"forward": lambda: metal.attention_forward(q, q, q, *a, dense=dense),
               "backward": lambda: metal.attention_backward(dout, None, q, q, q, out, lse, *a, dense=dense)}
        for op, fn in ops.items():
            c = chosen[op]
            with metal.force_tiling(metal.DEFAULT_TILING):
                base = median_ms(fn, args.runs)
            with metal.force_tiling(c.candidate.tiling):
                pick = median_ms(fn, args.runs)
            print(f"{name:>20} {op:>9} {c.candidate.name:>16} {base:11.4f} {pick:10.4f} {pick / base:6.3f}")
    tuning.report()


if __name__ == "__main__":
    main()
