"""Kernel variants side by side on the MSL -> CUDA back end (ranks designs; not Apple timings).

    python benchmarks/experiments/variants_cuda.py

Variants of ``shaders/natten/attention.metal`` kept in ``benchmarks/experiments/variants/``:
``attention_hot_loop_rank2.metal`` / ``_rank1.metal`` drop the trivial leading axes from the hot-loop
helpers (``in_spans``, ``box_next``), valid only for problems of rank <= 2 / 1: what a rank template
parameter would buy. For each config and variant, the head-dim slice is forced to 16 and 32 and
every launch (forward, dQ, dK/dV) is timed with the launcher's CUDA events (medians); each variant's
outputs are checked against the shipped kernels'.
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import natten_mps  # noqa: E402
from natten_mps.backends import metal  # noqa: E402
from natten_mps.metal import cuda, runtime  # noqa: E402
from small_problem_cuda import per_launch  # noqa: E402  (this folder is on sys.path when run)

CONFIGS = [("1D 256 K=7 D=32", (256,), 7, 8, 32), ("1D 16384 K=63", (16384,), 63, 8, 64),
           ("2D 32x32 K=7 D=32", (32, 32), 7, 4, 32), ("2D 64x64 K=7", (64, 64), 7, 8, 64),
           ("2D 128x128 K=13", (128, 128), 13, 8, 64), ("3D 32^3 K=5", (32, 32, 32), 5, 8, 64)]
VARIANTS = {"shipped": None, "rank2": "attention_hot_loop_rank2.metal", "rank1": "attention_hot_loop_rank1.metal"}
MAX_RANK = {"shipped": 3, "rank2": 2, "rank1": 1}


def library(variant):
    if variant is None:
        return cuda.compile(runtime.shader_source(metal.ATTENTION_SHADER), label="shipped")
    text = (Path(__file__).with_name("variants") / variant).read_text()
    tile = (runtime.shader_dir() / "natten" / "attn_tile.h").read_text()
    window = (runtime.shader_dir() / "natten" / "na_window.h").read_text()
    src = text.replace('#include "attn_tile.h"', tile.replace('#include "na_window.h"', window))
    return cuda.compile(src, label=variant)


def main():
    natten_mps.set_metal_on_cuda(True)
    libs = {name: library(v) for name, v in VARIANTS.items()}
    key = (metal.ATTENTION_SHADER, "cuda")
    orig_slice = metal._Problem._cheaper_slice
    print("| config | variant | DS | fwd us | dQ us | dK/dV us | max diff vs shipped |")
    print("|---|---|---|---|---|---|---|")
    for name, spatial, K, H, D in CONFIGS:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(2, *spatial, H, D, device="cuda", generator=g) for _ in range(3))
        rank = len(spatial)
        call = ([K] * rank, [1] * rank, [1] * rank, [False] * rank, D ** -0.5)
        dout = torch.randn_like(q)
        for ds in (16, 32):
            metal._Problem._cheaper_slice = lambda self, ge, ds=ds: ds
            ref = None
            for vname, lib in libs.items():
                if rank > MAX_RANK[vname]:
                    continue
                runtime._libs[key] = lib
                out, lse = metal.attention_forward(q, k, v, *call)
                grads = metal.attention_backward(dout, None, q, k, v, out, lse, *call)
                res = [out] + [t for t in grads if isinstance(t, torch.Tensor)]
                if ref is None:
                    ref = res
                diff = max(float((a - b).abs().max()) for a, b in zip(res, ref))
                f = [ms for _, ms in per_launch(lambda: metal.attention_forward(q, k, v, *call), 20)]
                b = [ms for _, ms in per_launch(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *call), 20)]
                print(f"| {name} | {vname} | {ds} | {f[0] * 1e3:.1f} | {b[0] * 1e3:.1f} | {b[1] * 1e3:.1f} | {diff:.1e} |",
                      flush=True)
    metal._Problem._cheaper_slice = orig_slice
    runtime._libs[key] = libs["shipped"]


if __name__ == "__main__":
    main()
