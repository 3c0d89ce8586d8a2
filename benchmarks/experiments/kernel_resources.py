"""Per kernel launch: threadgroup bytes, threads a threadgroup and per-lane array floats, from the
host's tiling choices and the shader's declared arrays (no GPU needed).

For each configuration of the proxy's tables (benchmarks/bench_metal_proxy.py) and each op, the host
(``backends.metal._Problem``) is asked what it launches on a device of the given GPU profile; the
shader (shaders/natten/attention.metal) is parsed for what that kernel declares:

* threadgroup bytes: its ``threadgroup`` arrays (``kStageBytes`` of staged chunks, plus the dK/dV
  kernels' per-query statistics), and of those, the bytes a chunk of the host's KC tokens uses;
* per-lane array floats: the ``float``/``float4`` arrays the kernel and the tile functions it calls
  declare per thread (``[DS / 4]`` float4 arrays: qv/av in the forward, qv/gv/dqa in dQ,
  kv/vv/dka/dva in dK/dV; the small-problem kernels' groups of kSteps scores), with DS and NB the
  host's choices. Registers of scalars and addresses come on top (the compiler decides those);
* resident SIMD-groups a core of ~60 KB threadgroup memory could hold by threadgroup memory alone,
  and by the ~128-register budget of 24 resident SIMD-groups (M1 / M2, docs/tuning.md).

``--tree PATH`` reads another checkout (e.g. the state before the Apple defaults: its host on an
"mps" device). Usage::

    PYTHONPATH=$PWD python benchmarks/experiments/kernel_resources.py [--profile apple-m1-max]
        [--tree /path/to/other/checkout] [--markdown]
"""
from __future__ import annotations

import argparse
import re
import sys
import types

CONFIGS = [  # name, spatial, kernel (None: dense), B, H, D
    ("1D L=256 K=7", (256,), 7, 2, 8, 32),
    ("2D 32x32 K=7", (32, 32), 7, 2, 4, 32),
    ("2D 64x64 K=7", (64, 64), 7, 2, 8, 64),
    ("1D L=16384 K=63", (16384,), 63, 2, 8, 64),
    ("2D 128x128 K=13", (128, 128), 13, 2, 8, 64),
    ("3D 32^3 K=5", (32, 32, 32), 5, 2, 8, 64),
    ("dense L=4096 D=64", (4096,), None, 2, 8, 64),
]
CORE_MEMORY = 60 * 1024           # threadgroup memory an M1/M2 core allocates (of its 64 KB)
LANE_BUDGET = 128                 # 32-bit registers a thread at 24 resident SIMD-groups (384 KB file)


def _bodies(src: str):
    """name -> body text of every function the shader defines (brace matched)."""
    out = {}
    for m in re.finditer(r"\b(?:kernel\s+void|inline\s+[\w<>:, ]+?)\s+(\w+)\s*\(", src):
        i = src.find("{", m.end())
        semi = src.find(";", m.end())
        if i < 0 or (0 <= semi < i and src[m.end():semi].count("(") < src[m.end():semi].count(")")):
            continue
        depth, j = 0, i
        while j < len(src):
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            if depth == 0:
                break
            j += 1
        out.setdefault(m.group(1), src[i:j + 1])
    return out


def _eval(expr: str, env: dict) -> int:
    return int(eval(expr, {"__builtins__": {}}, dict(env)))  # noqa: S307 - shader constants only


def lane_floats(bodies, names, env) -> int:
    """Floats of the per-thread float / float4 arrays the functions ``names`` declare."""
    total = 0
    for name in names:
        for m in re.finditer(r"^\s*(float4|float)\s+([^;=(]+\[[^;]+);", bodies.get(name, ""), re.M):
            width = 4 if m.group(1) == "float4" else 1
            for size in re.findall(r"\w+\s*\[([^\]]+)\]", m.group(2)):
                total += width * _eval(size, env)
    return total


def threadgroup_bytes(bodies, kernel, env, sizes) -> int:
    total = 0
    for m in re.finditer(r"threadgroup\s+(vec<\w+,\s*4>|float)\s+\w+\[([^\]]+)\]", bodies[kernel]):
        elem = 4 * sizes["TS"] if m.group(1).startswith("vec") else 4
        count = _eval(m.group(2).replace("sizeof(TS)", str(sizes["TS"])).replace("sizeof(T)", str(sizes["TS"])), env)
        total += elem * count
    return total


KERNEL_FUNCS = {
    "attn_forward": ["attn_forward", "online_steps"],
    "attn_backward_dq": ["attn_backward_dq", "backward_dq"],
    "attn_backward_dkdv": ["attn_backward_dkdv", "backward_dkdv", "stage_queries"],
}


def rows(profile: str | None, tree: str | None):
    if tree:
        sys.path.insert(0, tree)
    import torch
    from natten_mps.backends import metal
    from natten_mps.metal import runtime
    try:
        from natten_mps.backends import gpu_profile
        gpu_profile.set_profile(profile)
    except ImportError:                   # a checkout from before the GPU profiles: its MPS defaults
        pass
    src = runtime.shader_source(metal.ATTENTION_SHADER)
    consts = {k: int(v) for k, v in re.findall(r"constant constexpr int (k\w+) = (\d+);", src)}
    bodies = _bodies(src)
    device = torch.device("mps")          # the host's choices for an MPS device (no tensor is made)
    out = []
    for name, spatial, ks, B, H, D in CONFIGS:
        for dtype in (torch.float32, torch.float16):
            shape = torch.Size((B,) + tuple(spatial) + (H, D))
            q = types.SimpleNamespace(shape=shape, dtype=dtype, device=device,
                                      element_size=lambda dt=dtype: torch.empty((), dtype=dt).element_size())
            r = len(spatial)
            dense = ks is None
            kk = [1] if dense else [ks] * r
            args = (q, q, q, kk, [1] * len(kk), [1] * len(kk), [False] * len(kk), dense, 0)
            backward_kw = {"backward": True} if "backward" in metal._Problem.__init__.__code__.co_varnames else {}
            launches = [("attn_forward", metal._Problem(*args), False)]
            bq = metal._Problem(*args, **backward_kw)
            bk = metal._Problem(*args, tile_keys=True, **backward_kw)
            if metal._fuses_backward(bq, bk):
                launches += [("attn_backward_fused", bq, True)]
            else:
                launches += [("attn_backward_dq", bq, True), ("attn_backward_dkdv", bk, True)]
            for kernel, p, backward in launches:
                if hasattr(metal, "staged_itemsize"):
                    staged = metal.staged_itemsize(dtype)
                else:           # before: the small problems' forward staged float, the rest the input type
                    staged = 4 if (not backward and p.NB > 1) else torch.empty((), dtype=dtype).element_size()
                env = dict(consts, DS=p.DS, NB=p.NB, kSteps=4 if p.NB > 1 else 0, NS=4 if p.NB > 1 else 0)
                parts = (["attn_backward_dq", "attn_backward_dkdv"] if kernel == "attn_backward_fused"
                         else [kernel])
                floats = max(lane_floats(bodies, [f for k in parts for f in KERNEL_FUNCS[k]
                                                  if not (k == "attn_forward" and f == "online_steps" and p.NB == 1)],
                                         env) if len(parts) == 1 else
                             lane_floats(bodies, KERNEL_FUNCS[k], env) for k in parts)
                tg = threadgroup_bytes(bodies, kernel, env, {"TS": staged})
                used = 2 * p.KC * p.RS * 16 * staged // 4
                simd = p.threads_per_group // 32
                by_mem = (CORE_MEMORY // tg) * simd
                tag = "" if p.NB == 1 else f"_b{p.NB}"
                out.append(dict(config=name, dtype=str(dtype).replace("torch.", ""),
                                kernel=f"{kernel}_{p.DS}_r{r if not dense else 1}{tag}", threads=p.threads_per_group,
                                tg_bytes=tg, chunk_bytes=used, lane_floats=floats, resident_by_memory=by_mem,
                                tiles=p.tiles()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="apple-m1-max", help="GPU profile (ignored by a tree without profiles)")
    ap.add_argument("--tree", help="a checkout whose natten_mps and shaders to read")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rs = rows(args.profile, args.tree)
    cols = ["config", "dtype", "kernel", "threads", "tg_bytes", "chunk_bytes", "lane_floats", "resident_by_memory",
            "tiles"]
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rs:
            print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    else:
        print("  ".join(f"{c:>18}" for c in cols))
        for r in rs:
            print("  ".join(f"{str(r[c]):>18}" for c in cols))


if __name__ == "__main__":
    main()
