"""Non-Metal path vs its peers on this machine, side by side in one run (forward, forward+backward).

Peers: natten-mps's pure backend (installed in its own folder, since it shares our import name:
``pip install --no-deps --target DIR natten-mps`` then ``--natten-mps-path DIR``), upstream ``natten``
(its CPU/flex path) and dense SDPA with a boolean neighbourhood mask. A missing peer is a note.

    python benchmarks/bench_fallback.py [--device cpu|cuda] [--repeats 10] [--warmup 2] [--json out.json]
        [--natten-mps-path DIR] [--configs 1d 2d32 ...] [--no-backward] [--memory]
"""
from __future__ import annotations

import argparse
import json
import warnings
import os
import subprocess
import sys
from typing import Dict, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402

CONFIGS = {
    "1d": dict(label="1D L=256 K=7 (B=2,H=8,D=32)", spatial=(256,), kernel=7, batch=2, heads=8),
    "2d32": dict(label="2D 32x32 K=7 (B=2,H=4,D=32)", spatial=(32, 32), kernel=7, batch=2, heads=4),
    "2d64": dict(label="2D 64x64 K=7 (B=1,H=4,D=32)", spatial=(64, 64), kernel=7, batch=1, heads=4),
    "3d16": dict(label="3D 16^3 K=3 (B=1,H=4,D=32)", spatial=(16, 16, 16), kernel=3, batch=1, heads=4),
    "1d4096": dict(label="1D L=4096 K=63 (B=1,H=4,D=32)", spatial=(4096,), kernel=63, batch=1, heads=4),
    "2d128": dict(label="2D 128x128 K=13 (B=1,H=4,D=32)", spatial=(128, 128), kernel=13, batch=1, heads=4),
}
DIM = 32


def inputs(cfg, device, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    shape = (cfg["batch"], *cfg["spatial"], cfg["heads"], DIM)
    return [torch.randn(shape, generator=g).to(device).requires_grad_(requires_grad) for _ in range(3)]


def na_fn(module, rank):
    return getattr(module, f"na{rank}d")


def runner(call, cfg, device, backward):
    q, k, v = inputs(cfg, device, backward)

    def run():
        out = call(q, k, v)
        if backward:
            out.sum().backward()
    return run


def ours(cfg, device, backward):
    import natten_mps
    natten_mps.set_backend("pure")
    fn = na_fn(natten_mps, len(cfg["spatial"]))
    return runner(lambda q, k, v: fn(q, k, v, cfg["kernel"]), cfg, device, backward)


def upstream(cfg, device, backward):
    try:
        import natten
    except Exception:  # noqa: BLE001
        return None
    fn = na_fn(natten, len(cfg["spatial"]))
    return runner(lambda q, k, v: fn(q, k, v, cfg["kernel"]), cfg, device, backward)


def masked_sdpa(cfg, device, backward):
    import natten_mps.semantics as sem
    rank = len(cfg["spatial"])
    mask = None
    for n in cfg["spatial"]:
        lo, hi = sem.window_bounds(torch.arange(n), n, cfg["kernel"], 1, False)
        j = torch.arange(n)
        m = (j[None, :] >= lo[:, None]) & (j[None, :] <= hi[:, None])
        mask = m if mask is None else (mask[:, None, :, None] & m[None, :, None, :]).reshape(mask.shape[0] * n, -1)
    mask = mask.to(device)

    def call(q, k, v):
        B, H = q.shape[0], q.shape[-2]
        t = lambda x: x.reshape(B, -1, H, DIM).transpose(1, 2)  # noqa: E731
        o = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=mask)
        return o.transpose(1, 2).reshape(q.shape)
    return runner(call, cfg, device, backward)


def peer_natten_mps(path, names, device, repeats, warmup, backward) -> Dict[str, Optional[float]]:
    """Time natten-mps's pure backend in a subprocess whose path holds only that package."""
    code = f"""
import json, sys
sys.path = [{path!r}] + [p for p in sys.path if p not in ('', {os.path.dirname(HERE)!r})]
sys.path.insert(1, {HERE!r})
import torch, harness, natten_mps
assert natten_mps.__file__.startswith({path!r}), natten_mps.__file__
natten_mps.set_backend("pure")
import bench_fallback as bf
res = {{}}
for name in {names!r}:
    cfg = bf.CONFIGS[name]
    fn = getattr(natten_mps, "na%dd" % len(cfg["spatial"]))
    run = bf.runner(lambda q, k, v: fn(q, k, v, cfg["kernel"]), cfg, {device!r}, {backward!r})
    res[name] = harness.time_ms(run, {device!r}, {warmup}, {repeats})
print("RESULT" + json.dumps(res))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(proc.stderr[-2000:])


def peak_extra_memory(name: str) -> Dict[str, float]:
    """Peak resident memory added by one forward (beyond its output), vs the size of q, k, v and out.

    Measured in a fresh process by sampling RSS while the forward runs."""
    code = f"""
import os, sys, threading, time, torch
sys.path.insert(0, {HERE!r})
import bench_fallback as bf, natten_mps
natten_mps.set_backend("pure")
cfg = bf.CONFIGS[{name!r}]
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
small = [t[:, :2 * cfg["kernel"], :2 * cfg["kernel"]].contiguous() for t in bf.inputs(cfg, "cpu")]
fn = getattr(natten_mps, "na%dd" % len(cfg["spatial"]))
fn(*small, cfg["kernel"])            # imports and lazy set-up, on a small input
q, k, v = bf.inputs(cfg, "cpu")
out = torch.empty_like(q)            # the output is counted as I/O, not as extra
del out
base, peak, done = rss(), [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
th = threading.Thread(target=sample); th.start()
out = fn(q, k, v, cfg["kernel"])
done[0] = True; th.join()
peak[0] = max(peak[0], rss())
print("RESULT", peak[0] - base - out.numel() * out.element_size(), 4 * q.numel() * q.element_size())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(HERE))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            _, extra, io = line.split()
            return {"extra_bytes": float(extra), "io_bytes": float(io)}
    raise RuntimeError(proc.stderr[-2000:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--natten-mps-path", default=os.environ.get("NATTEN_MPS_PEER_PATH"))
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--no-upstream", action="store_true", help="skip upstream natten (slow on large inputs)")
    ap.add_argument("--memory", action="store_true", help="measure peak extra memory of the 2D 128x128 forward")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    notes, results = [], {}
    modes = [False] if args.no_backward else [False, True]
    for backward in modes:
        peer = {}
        if args.natten_mps_path:
            try:
                peer = peer_natten_mps(args.natten_mps_path, args.configs, args.device, args.repeats,
                                       args.warmup, backward)
            except Exception as e:  # noqa: BLE001
                notes.append(f"natten-mps peer failed: {str(e).strip().splitlines()[-1]}")
        elif not backward:
            notes.append("natten-mps (pure) not measured: pass --natten-mps-path DIR (see docstring)")
        rows = []
        # All of ours first: the peers' large allocations (upstream natten materialises full score
        # matrices) leave the allocator in a state that would otherwise slow whatever runs next.
        t_ours_all = {name: harness.time_ms(ours(CONFIGS[name], args.device, backward), args.device, args.warmup,
                                            args.repeats) for name in args.configs}
        for name in args.configs:
            cfg = CONFIGS[name]
            t_ours = t_ours_all[name]
            up = None if args.no_upstream else upstream(cfg, args.device, backward)
            t_up = None
            if up is not None:
                try:
                    t_up = harness.time_ms(up, args.device, args.warmup, args.repeats)
                except Exception as e:  # noqa: BLE001 - a peer lacking a feature is a note
                    notes.append(f"upstream natten, {'forward+backward' if backward else 'forward'}: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}")
            if up is None and not backward and not args.no_upstream:
                notes.append("upstream natten not installed")
            t_sdpa = harness.time_ms(masked_sdpa(cfg, args.device, backward), args.device, args.warmup, args.repeats)
            t_peer = peer.get(name)
            na_peers = [t for t in (t_peer, t_up) if t]
            best_peer = min(na_peers) if na_peers else None
            results[f"{name}{'_fwdbwd' if backward else '_fwd'}"] = dict(
                config=cfg["label"], backward=backward, ours_ms=t_ours, natten_mps_pure_ms=t_peer,
                natten_upstream_ms=t_up, masked_sdpa_ms=t_sdpa)
            rows.append([cfg["label"], harness.fmt_ms(t_ours), harness.fmt_ms(t_peer), harness.fmt_ms(t_up),
                         harness.fmt_ms(t_sdpa), harness.fmt_ratio(t_ours, best_peer),
                         harness.fmt_ratio(t_ours, t_sdpa)])
        print(f"\nbench_fallback ({'forward+backward' if backward else 'forward'}), device={args.device}, "
              f"median of {args.repeats}, float32\n")
        harness.print_table(["config", "this project", "natten-mps pure", "natten (upstream)", "masked SDPA",
                             "speedup vs best NA peer", "speedup vs SDPA"], rows)
    if args.memory:
        mem = peak_extra_memory("2d128")
        results["memory_2d128"] = mem
        print(f"\n2D 128x128 K=13 forward: peak extra memory {mem['extra_bytes'] / 2**20:.1f} MiB = "
              f"{mem['extra_bytes'] / mem['io_bytes']:.2f}x the size of q, k, v and out")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    if args.json:
        harness.write_json(args.json, {"device": args.device, "results": results, "notes": notes})
    return results


if __name__ == "__main__":
    main()
