"""Kernel durations without the event floor: run NA calls under Nsight Compute and read each
translated kernel's own GPU time (``gpu__time_duration``), for this project or natten-mps 0.3.3.

    ncu --csv --metrics gpu__time_duration.sum -k regex:mtl_kernel --log-file D.csv \\
        python benchmarks/experiments/ncu_durations.py --contender ours --log L.json
    python benchmarks/experiments/ncu_durations.py --report D.csv L.json [D2.csv L2.json]

``--tilings default 2x16 1x4 2x8x1 ...`` (ours only): each call once per tiling, SIMD-groups a tile x
head-dim slice [x staged rows a thread] forced (the host's fallbacks off), labelled ``config [SGxDS]``. With
``--metrics gpu__time_duration.sum,smsp__inst_executed.sum,smsp__warps_launched.sum`` the report adds
instructions per warp (the latency-bound small problems' critical path).

CUDA events around a launch (what bench_metal_proxy.py measured before it read CUPTI) include a 6-12 us floor (an empty kernel on the
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(args):
    import torch
    import bench_metal_proxy as proxy
    from small_problem_cuda import force_tiling
    fns, cuda_module, contender = proxy.setup_contender(args.contender, args.natten_mps_path)
    if args.contender != "ours" and args.tilings != ["default"]:
        raise SystemExit("--tilings applies to this project's kernels only")
    configs = [c for c in proxy.SEED_CONFIGS + proxy.LARGE_CONFIGS if not args.only or any(o in c[0] for o in args.only)]
    log = []
    for tiling in args.tilings:
        force_tiling(tiling)
        label = "" if tiling == "default" else f" [{tiling}]"
        run_configs(args, configs, fns, cuda_module, label, log)
    Path(args.log).write_text(json.dumps(dict(contender=contender, calls=log)))


def run_configs(args, configs, fns, cuda_module, label, log):
    import torch
    import bench_metal_proxy as proxy
    for name, rank, spatial, K, B, H, D in configs:
        name = name + label
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            fwd, fwd_bwd, _ = proxy.na_calls(fns[rank], spatial, K, B, H, D, dtype)

            for phase, call in (("fwd", fwd), ("fwdbwd", fwd_bwd)):
                for i in range(args.warmup + args.reps):
                    with cuda_module.KernelTiming() as t:
                        call()
                    log.append(dict(config=name, dtype=dtype_name, phase=phase, rep=i - args.warmup,
                                    kernels=[n for n, _ in t.launches]))


_UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def profiled(csv_path):
    """Per profiled kernel, in launch order: {metric name: value} (durations in us)."""
    lines = Path(csv_path).read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    kernels = {}
    for r in csv.DictReader(lines[start:]):
        value = float(r["Metric Value"].replace(",", ""))
        if r["Metric Name"] == "gpu__time_duration.sum":
            value *= _UNIT_US[r["Metric Unit"]]
        kernels.setdefault(int(r["ID"]), {})[r["Metric Name"]] = value
    return [kernels[i] for i in sorted(kernels)]


def per_call(csv_path, log_path):
    """(contender, {(config, dtype, phase): (median us, median instructions per warp or None)})."""
    saved = json.loads(Path(log_path).read_text())
    rows = profiled(csv_path)
    n = sum(len(c["kernels"]) for c in saved["calls"])
    if n != len(rows):
        raise SystemExit(f"{log_path}: {n} launches logged, {len(rows)} profiled in {csv_path}")
    table, i = {}, 0
    for c in saved["calls"]:
        ks = rows[i:i + len(c["kernels"])]
        i += len(c["kernels"])
        if c["rep"] >= 0:
            us = sum(k["gpu__time_duration.sum"] for k in ks)
            inst = None
            if all("smsp__inst_executed.sum" in k and k.get("smsp__warps_launched.sum") for k in ks):
                inst = sum(k["smsp__inst_executed.sum"] / k["smsp__warps_launched.sum"] for k in ks)
            table.setdefault((c["config"], c["dtype"], c["phase"]), []).append((us, inst))
    med = {}
    for key, v in table.items():
        insts = [x for _, x in v if x is not None]
        med[key] = (statistics.median(u for u, _ in v), statistics.median(insts) if insts else None)
    return saved["contender"], med


def report(pairs):
    """One table per run pair; with two contenders, their ratios (first / second) per call."""
    results = [per_call(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    with_inst = any(x is not None for _, t in results for _, x in t.values())
    keys = [k for k in results[0][1] if k[2] == "fwd"]
    head = "| config | dtype |"
    for label, _ in results:
        head += f" {label} fwd (us) | {label} bwd (us) |"
        if with_inst:
            head += f" {label} fwd inst/warp | {label} fwd+bwd inst/warp |"
    if len(results) == 2:
        head += " fwd ratio | bwd ratio |"
    print("Kernel durations (ncu gpu__time_duration, medians; bwd = fwd+bwd call - fwd call)")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for cfg, dt, _ in keys:
        row = f"| {cfg} | {dt} |"
        vals = []
        for _, t in results:
            if (cfg, dt, "fwd") not in t:
                row += " - | - |" + (" - | - |" if with_inst else "")
                continue
            (f, fi), (fb, fbi) = t[(cfg, dt, "fwd")], t[(cfg, dt, "fwdbwd")]
            vals.append((f, fb - f))
            row += f" {f:.1f} | {fb - f:.1f} |"
            if with_inst:
                row += f" {fi or 0:.0f} | {fbi or 0:.0f} |"
        if len(results) == 2 and len(vals) == 2:
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
    ap.add_argument("--tilings", nargs="+", default=["default"], help="ours only: default or SGxDS, e.g. 1x4")
    args = ap.parse_args()
    if args.report:
        report(args.report)
    else:
        run(args)


if __name__ == "__main__":
    main()
