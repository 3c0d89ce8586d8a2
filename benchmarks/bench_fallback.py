"""Non-Metal path vs its peers on this machine, side by side in one run (forward, forward+backward).

Peers: natten-mps's pure backend (installed in its own folder, since it shares our import name:
``pip install --no-deps --target DIR natten-mps`` then ``--natten-mps-path DIR``), upstream ``natten``
(its CPU/flex path) and dense SDPA with a boolean neighbourhood mask. A missing peer is a note.

    python benchmarks/bench_fallback.py [--device cpu|cuda] [--repeats 20] [--warmup 3] [--json out.json]
        [--natten-mps-path DIR] [--configs 1d 2d32 ...] [--no-backward] [--no-upstream] [--memory]
        [--max-call-s 30] [--settle-ms 50] [--round-warmup 1]

Every contender, this project included, runs in a worker process of its own (the same start-up for
all, and no import or allocation of one touches another), and all are timed in alternating rounds
of a few calls: a slow phase of a shared machine then slows every column alike, and the ratios
stay meaningful. Each round starts after a short pause (``--settle-ms``): a worker that just ran
leaves OpenMP threads busy-waiting for a few milliseconds, and on a 2-core machine they would slow
the short round of the next (fast) contender; and each round begins with an untimed call
(``--round-warmup``), since the first call after another process ran pays for cold caches, which
a 1 ms call feels far more than a 10 ms one. Medians are printed.
"""
from __future__ import annotations

import argparse
import json
import warnings
import os
import subprocess
import sys
from typing import Dict, List, Optional

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


def upstream(cfg, device, backward):
    try:
        import natten
    except Exception:  # noqa: BLE001
        return None
    fn = na_fn(natten, len(cfg["spatial"]))
    return runner(lambda q, k, v: fn(q, k, v, cfg["kernel"]), cfg, device, backward)


def masked_sdpa(cfg, device, backward):
    import natten_mps.semantics as sem
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


def build_runner(kind: str, name: str, device: str, backward: bool):
    """The call timed for contender ``kind`` on config ``name``; None when that contender is absent."""
    cfg = CONFIGS[name]
    if kind in ("ours", "natten-mps"):    # the process's sys.path decides which natten_mps this is
        import natten_mps
        natten_mps.set_backend("pure")
        fn = na_fn(natten_mps, len(cfg["spatial"]))
        return runner(lambda q, k, v: fn(q, k, v, cfg["kernel"]), cfg, device, backward)
    if kind == "upstream":
        return upstream(cfg, device, backward)
    return masked_sdpa(cfg, device, backward)


def worker_main(kind: str, device: str, max_call_s: float = float("inf")) -> None:
    """Serve timing requests (JSON lines on stdin: config, backward, n, warmup, round_warmup) for one
    contender: ``warmup`` untimed calls the first time a config is asked for, ``round_warmup`` untimed
    calls before every batch of ``n`` timed ones.

    A contender whose first call on a config takes longer than ``max_call_s`` is skipped there."""
    warnings.filterwarnings("ignore")
    runners = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["config"], req["backward"])
        try:
            if key not in runners:
                run = build_runner(kind, key[0], device, key[1])
                if run is None:
                    raise ModuleNotFoundError(f"{kind} is not installed")
                first = harness.sample_ms(run, device, 1)[0] / 1e3
                if first > max_call_s:
                    raise TimeoutError(f"skipped: one call took {first:.3g} s (limit --max-call-s {max_call_s:g})")
                for _ in range(req["warmup"] - 1):
                    run()
                runners[key] = run
            for _ in range(req.get("round_warmup", 0)):
                runners[key]()
            reply = {"samples": harness.sample_ms(runners[key], device, req["n"])}
        except Exception as e:  # noqa: BLE001 - sent back as the contender's error
            reply = {"error": f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]}
        print(json.dumps(reply), flush=True)


class Worker:
    """A contender timed in its own process; ``natten_mps_path`` puts that natten_mps first on its path."""

    def __init__(self, kind: str, device: str, natten_mps_path: Optional[str] = None,
                 max_call_s: float = float("inf")):
        root = os.path.dirname(HERE)
        if natten_mps_path:   # that folder first, and not this repository (same import name)
            setup = (f"sys.path = [{natten_mps_path!r}, {HERE!r}] + [p for p in sys.path if p not in ('', {root!r})]\n"
                     f"import natten_mps\nassert natten_mps.__file__.startswith({natten_mps_path!r}), natten_mps.__file__")
        else:
            setup = f"sys.path[:0] = [{HERE!r}, {root!r}]"
        code = (f"import sys\n{setup}\nimport bench_fallback as bf\n"
                f"bf.worker_main({kind!r}, {device!r}, float({str(float(max_call_s))!r}))\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=HERE)

    def sampler(self, name: str, backward: bool, warmup: int, round_warmup: int = 0):
        def sample(n: int) -> List[float]:
            self.proc.stdin.write(json.dumps({"config": name, "backward": backward, "n": n, "warmup": warmup,
                                              "round_warmup": round_warmup}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise harness.ContenderError((self.proc.stderr.read().strip().splitlines() or ["worker died"])[-1])
            reply = json.loads(line)
            if "error" in reply:
                raise harness.ContenderError(reply["error"])
            return reply["samples"]
        return sample

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


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


COLUMNS = [("ours", "this project"), ("natten-mps", "natten-mps pure"), ("upstream", "natten (upstream)"),
           ("sdpa", "masked SDPA")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--round-warmup", type=int, default=1,
                    help="untimed calls at the start of every round (a contender's first call after another "
                         "process ran pays for cold caches, which a 1 ms call feels far more than a 10 ms one)")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--natten-mps-path", default=os.environ.get("NATTEN_MPS_PEER_PATH"))
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--no-upstream", action="store_true", help="skip upstream natten (slow on large inputs)")
    ap.add_argument("--memory", action="store_true", help="measure peak extra memory of the 2D 128x128 forward")
    ap.add_argument("--max-call-s", type=float, default=30.0,
                    help="skip a peer on a config where one call takes longer than this (seconds)")
    ap.add_argument("--settle-ms", type=float, default=50.0,
                    help="pause before each timing round, so the previous worker's idle threads stop "
                         "spinning on the shared cores (see harness.interleaved_medians)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    notes, results, failures = [], {}, {}
    workers = {"ours": Worker("ours", args.device),   # --max-call-s is for peers
               "sdpa": Worker("sdpa", args.device, max_call_s=args.max_call_s)}
    if args.natten_mps_path:
        workers["natten-mps"] = Worker("natten-mps", args.device, args.natten_mps_path, args.max_call_s)
    else:
        notes.append("natten-mps (pure) not measured: pass --natten-mps-path DIR (see docstring)")
    if not args.no_upstream:
        workers["upstream"] = Worker("upstream", args.device, max_call_s=args.max_call_s)
    try:
        for backward in ([False] if args.no_backward else [False, True]):
            mode = "forward+backward" if backward else "forward"
            rows = []
            for name in args.configs:
                cfg = CONFIGS[name]
                samplers = {kind: w.sampler(name, backward, args.warmup, args.round_warmup)
                            for kind, w in workers.items()}
                t, errors = harness.interleaved_medians(samplers, args.repeats, settle_s=args.settle_ms / 1e3)
                for kind, err in errors.items():
                    failures.setdefault((dict(COLUMNS)[kind], mode, err), []).append(name)
                best_peer = min((t[k] for k in ("natten-mps", "upstream") if t.get(k)), default=None)
                results[f"{name}{'_fwdbwd' if backward else '_fwd'}"] = dict(
                    config=cfg["label"], backward=backward, ours_ms=t["ours"], natten_mps_pure_ms=t.get("natten-mps"),
                    natten_upstream_ms=t.get("upstream"), masked_sdpa_ms=t.get("sdpa"))
                rows.append([cfg["label"]] + [harness.fmt_ms(t.get(k)) for k, _ in COLUMNS]
                            + [harness.fmt_ratio(t["ours"], best_peer), harness.fmt_ratio(t["ours"], t.get("sdpa"))])
            print(f"\nbench_fallback ({mode}), device={args.device}, median of {args.repeats} "
                  f"(interleaved rounds), float32\n")
            harness.print_table(["config"] + [label for _, label in COLUMNS]
                                + ["speedup vs best NA peer", "speedup vs SDPA"], rows)
    finally:
        for w in workers.values():
            w.close()
    if args.memory:
        mem = peak_extra_memory("2d128")
        results["memory_2d128"] = mem
        print(f"\n2D 128x128 K=13 forward: peak extra memory {mem['extra_bytes'] / 2**20:.1f} MiB = "
              f"{mem['extra_bytes'] / mem['io_bytes']:.2f}x the size of q, k, v and out")
    for (label, mode, err), names in failures.items():
        notes.append(f"{label} not installed" if "not installed" in err else f"{label}, {mode} ({', '.join(names)}): {err}")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    if args.json:
        harness.write_json(args.json, {"device": args.device, "results": results, "notes": notes})
    return results


if __name__ == "__main__":
    main()
