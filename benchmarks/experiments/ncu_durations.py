"""Kernel durations without the event floor: run NA calls under Nsight Compute and read each
translated kernel's own GPU time (``gpu__time_duration``), for this project or natten-mps 0.3.3.

    ncu --csv --metrics gpu__time_duration.sum -k regex:mtl_kernel --log-file D.csv \\
        python benchmarks/experiments/ncu_durations.py --contender ours --log L.json
    python benchmarks/experiments/ncu_durations.py --report D.csv L.json [D2.csv L2.json]

CUDA events around a launch (bench_metal_proxy.py) include a 6-12 us floor (an empty kernel on the
same grid), larger than natten-mps' whole 1-D L=256 kernel; ncu's duration is the kernel alone.
The script logs every translated launch, in order, with its call (config, dtype, phase); the report
joins that log with ncu's rows, which come in the same order, and prints medians per call.
Ranks designs on an NVIDIA GPU; these are not Apple timings.
"""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def run(args):
    import torch
    import bench_metal_proxy as proxy
    fns, cuda_module, label = proxy.setup_contender(args.contender, args.natten_mps_path)
    configs = [c for c in proxy.SEED_CONFIGS + proxy.LARGE_CONFIGS if not args.only or any(o in c[0] for o in args.only)]
    log = []
    for name, rank, spatial, K, B, H, D in configs:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            g = torch.Generator(device="cuda").manual_seed(0)
            shape = (B, *spatial, H, D)
            q, k, v = (torch.randn(shape, device="cuda", generator=g, dtype=dtype).requires_grad_() for _ in range(3))
            dout = torch.randn(shape, device="cuda", generator=g, dtype=dtype)
            fn = fns[rank]

            def fwd():
                with torch.no_grad():
                    fn(q, k, v, K)

            def fwd_bwd():
                q.grad = k.grad = v.grad = None
                fn(q, k, v, K).backward(dout)

            for phase, call in (("fwd", fwd), ("fwdbwd", fwd_bwd)):
                for i in range(args.warmup + args.reps):
                    with cuda_module.KernelTiming() as t:
                        call()
                    log.append(dict(config=name, dtype=dtype_name, phase=phase, rep=i - args.warmup,
                                    kernels=[n for n, _ in t.launches]))
    Path(args.log).write_text(json.dumps(dict(contender=label, calls=log)))


def durations(csv_path):
    """Kernel durations (us) from an ncu --csv log, in launch order."""
    lines = Path(csv_path).read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    rows = list(csv.DictReader(lines[start:]))
    out = []
    for r in rows:
        if r["Metric Name"] != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r["Metric Unit"]
        out.append(value * {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
                            "second": 1e6, "s": 1e6}[unit])
    return out


def per_call(csv_path, log_path):
    saved = json.loads(Path(log_path).read_text())
    times = durations(csv_path)
    n = sum(len(c["kernels"]) for c in saved["calls"])
    if n != len(times):
        raise SystemExit(f"{log_path}: {n} launches logged, {len(times)} profiled in {csv_path}")
    table, i = {}, 0
    for c in saved["calls"]:
        us = times[i:i + len(c["kernels"])]
        i += len(c["kernels"])
        if c["rep"] >= 0:
            table.setdefault((c["config"], c["dtype"], c["phase"]), []).append(sum(us))
    return saved["contender"], {key: statistics.median(v) for key, v in table.items()}


def report(pairs):
    results = [per_call(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    keys = [k for k in results[0][1] if k[2] == "fwd"]
    head = "| config | dtype |"
    for label, _ in results:
        head += f" {label} fwd (us) | {label} bwd (us) |"
    if len(results) == 2:
        head += " fwd ratio | bwd ratio |"
    print("Kernel durations (ncu gpu__time_duration, medians; bwd = fwd+bwd call - fwd call)")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for cfg, dt, _ in keys:
        row = f"| {cfg} | {dt} |"
        vals = []
        for _, t in results:
            f, fb = t[(cfg, dt, "fwd")], t[(cfg, dt, "fwdbwd")]
            vals.append((f, fb - f))
            row += f" {f:.1f} | {fb - f:.1f} |"
        if len(results) == 2:
            row += f" {vals[0][0] / vals[1][0]:.2f}x | {vals[0][1] / vals[1][1]:.2f}x |"
        print(row)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contender", choices=["ours", "natten-mps"], default="ours")
    ap.add_argument("--natten-mps-path")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--log", default="ncu_calls.json")
    ap.add_argument("--report", nargs="+", metavar="CSV_AND_LOG")
    args = ap.parse_args()
    if args.report:
        report(args.report)
    else:
        run(args)


if __name__ == "__main__":
    main()
