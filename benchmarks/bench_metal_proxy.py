"""GPU timing proxy: Metal kernels translated to CUDA, ours beside natten-mps 0.3.3's, on one NVIDIA GPU.

    pip install --no-deps --target DIR natten-mps==0.3.3        # it shares our import name
    python benchmarks/bench_metal_proxy.py --natten-mps-path DIR [--quick] [--json out.json]

Both projects' ``.metal`` sources go through this project's MSL -> CUDA back end
(``natten_mps.metal.cuda``): ours through ``NATTEN_MPS_METAL_ON_CUDA``, natten-mps' through its own
dispatch code with ``torch.mps.compile_shader`` pointed at the back end and its MPS checks satisfied
by CUDA tensors, each in its own worker process (the two packages share an import name). Per
config, forward and forward+backward:

* whole call: wall time of the public function (synchronised), median;
* kernels only: each translated kernel's execution time from the GPU's activity trace (CUPTI, via
  ``torch.profiler``; nothing of the host's launch work is in it) summed per call, median. Without
  CUPTI, CUDA events recorded by the launcher right around every launch (they carry a 6-12 us floor
  a launch); the header says which;
* roofline: the problem's useful work (each input read once and each output written once; 2 FLOPs
  per multiply-add of QK^T and PV) over the kernel time, as fractions of the GPU's measured
  device-to-device copy bandwidth and of its FP32 FMA peak (measured with a translated FMA kernel).

Beside them: the previous one-thread-per-query forward kernel of this project
(``benchmarks/baselines/na_forward_per_query.metal``, launched directly) on the same shapes, and dense
(flash) attention at sequence 4096 (``natten_mps.attention``, the same kernel family with the dense
window rule), with its fraction of the FMA peak. Backward kernel time is the forward+backward kernel
time less the forward's. The figures are "Metal kernels translated to CUDA on <GPU>": they rank
designs, they are not Apple timings.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name, rank, spatial, kernel, B, H, D
SEED_CONFIGS = [
    ("1D L=256 K=7", 1, (256,), 7, 2, 8, 32),
    ("2D 32x32 K=7", 2, (32, 32), 7, 2, 4, 32),
]
LARGE_CONFIGS = [
    ("2D 64x64 K=7", 2, (64, 64), 7, 2, 8, 64),
    ("1D L=16384 K=63", 1, (16384,), 63, 2, 8, 64),
    ("2D 128x128 K=13", 2, (128, 128), 13, 2, 8, 64),
    ("3D 32^3 K=5", 3, (32, 32, 32), 5, 2, 8, 64),
]

# name, L, B, H, D (dense attention, not causal)
DENSE_CONFIGS = [("dense L=4096 D=64", 4096, 2, 8, 64)]
BASELINE = ROOT / "benchmarks" / "baselines" / "na_forward_per_query.metal"

FMA_PROBE = """#include <metal_stdlib>
using namespace metal;
kernel void fma_probe(device float* out [[buffer(0)]], constant long& iters [[buffer(1)]],
                      uint i [[thread_position_in_grid]]) {
  float a0 = float(i) * 1e-7f, a1 = a0 + 1e-3f, a2 = a0 + 2e-3f, a3 = a0 + 3e-3f;
  float a4 = a0 + 4e-3f, a5 = a0 + 5e-3f, a6 = a0 + 6e-3f, a7 = a0 + 7e-3f;
  const float m = 0.999f, c = 1e-4f;
  for (long t = 0; t < iters; ++t) {
    a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
    a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
  }
  out[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
"""


# ------------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------------
class KernelTimer:
    """Kernel-only GPU time per call.

    Each translated kernel's own execution time as the GPU's activity trace records it (CUPTI,
    through ``torch.profiler``): start to end of the kernel on the GPU, with nothing of the host's
    launch work in it, the same measure for both contenders. Where the profiler records no kernels
    (no CUPTI), CUDA events recorded by the back end's launcher right around every launch, which on
    an idle GPU read 6-12 us even for an empty kernel (``source`` says which was used).
    The launcher's log gives the kernels of each call in order (``natten_mps.metal.cuda.KernelTiming``).
    """

    def __init__(self, cuda_module):
        self.cuda = cuda_module
        self.source = None

    def measure(self, fn, reps):
        """Median over ``reps`` calls of the summed kernel GPU time (ms), and kernel launches per call."""
        import torch
        from torch.profiler import ProfilerActivity, profile
        calls = []
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                with self.cuda.KernelTiming() as t:
                    fn()
                calls.append(t.launches)
            torch.cuda.synchronize()
        traced = sorted((e for e in prof.events() if "mtl_kernel" in e.name and e.device_type.name == "CUDA"),
                        key=lambda e: e.time_range.start)
        if len(traced) == sum(len(c) for c in calls):
            self.source = "CUPTI kernel durations"
            it = iter(traced)
            calls = [[(name, next(it).time_range.elapsed_us() / 1e3) for name, _ in c] for c in calls]
        else:
            self.source = "CUDA events around each launch"
        totals, launches, per_kernel = [], 0, {}
        for c in calls:
            totals.append(sum(ms for _, ms in c))
            launches = len(c)
            for name, ms in c:
                per_kernel.setdefault(name, []).append(ms)
        return statistics.median(totals), launches, {k: statistics.median(v) for k, v in per_kernel.items()}


def wall_ms(fn, reps, warmup):
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def setup_contender(who: str, natten_mps_path: str):
    """Returns (na function by rank, cuda back-end module, label)."""
    sys.path.insert(0, str(ROOT))
    import torch
    from natten_mps.metal import cuda as our_cuda
    if who == "ours":
        import natten_mps
        natten_mps.set_metal_on_cuda(True)
        natten_mps.set_backend("metal")
        fns = {1: natten_mps.na1d, 2: natten_mps.na2d, 3: natten_mps.na3d}
        return fns, our_cuda, "this project"
    # natten-mps 0.3.3: drop our package from the import table (the back end stays loaded), then
    # import theirs from its own folder and point its Metal layer at the CUDA back end.
    for name in [n for n in sys.modules if n == "natten_mps" or n.startswith("natten_mps.")]:
        del sys.modules[name]
    sys.path.remove(str(ROOT))
    sys.path.insert(0, natten_mps_path)
    torch.mps.compile_shader = lambda source: our_cuda.compile(source, label="natten-mps 0.3.3",
                                                               strict_scalars=False)
    import natten_mps as theirs
    from natten_mps._core import metal as their_metal
    assert str(Path(theirs.__file__).resolve()).startswith(str(Path(natten_mps_path).resolve())), theirs.__file__
    from natten_mps._core import inverse_maps as their_maps
    their_metal._on_mps = lambda *ts: all(t.device.type == "cuda" for t in ts)
    their_metal._AVAILABLE = True
    # its backward builds index maps on the CPU and moves them with .to("mps")
    their_maps._to_mps_tensor = lambda arr: torch.from_numpy(arr.astype("int32", copy=False)).to("cuda")
    theirs.set_backend("metal")
    fns = {1: theirs.na1d, 2: theirs.na2d, 3: theirs.na3d}
    return fns, our_cuda, f"natten-mps {getattr(theirs, '__version__', '?')}"


def na_calls(fn, spatial, K, B, H, D, dtype):
    """The two timed calls of one configuration: ``fwd()`` (no grad; returns the output) and
    ``fwd_bwd()`` of the NA function ``fn`` on seeded random q, k, v and dout [B, *spatial, H, D] on CUDA;
    then (q, k, v)."""
    import torch
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (B, *spatial, H, D)
    q, k, v = (torch.randn(shape, device="cuda", generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    dout = torch.randn(shape, device="cuda", generator=g, dtype=dtype)

    def fwd():
        with torch.no_grad():
            return fn(q, k, v, K)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fn(q, k, v, K).backward(dout)

    return fwd, fwd_bwd, (q, k, v)


def measure_config(fn, timer, rank, spatial, K, B, H, D, dtype, reps, warmup) -> dict:
    """Whole-call and kernel-only medians of one contender on one configuration."""
    fwd, fwd_bwd, _ = na_calls(fn, spatial, K, B, H, D, dtype)
    row = dict(checksum=float(fwd().float().abs().mean()))
    row["fwd_ms"] = wall_ms(fwd, reps, warmup)
    row["fwd_kernel_ms"], row["fwd_launches"], row["fwd_kernels"] = timer.measure(fwd, reps)
    try:
        row["fwdbwd_ms"] = wall_ms(fwd_bwd, reps, warmup)
        row["fwdbwd_kernel_ms"], row["fwdbwd_launches"], row["fwdbwd_kernels"] = timer.measure(fwd_bwd, reps)
    except Exception as e:  # noqa: BLE001 - reported in the table, the forward numbers stay
        row["error"] = f"backward: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row


def baseline_ms(cuda_module, rank, spatial, K, B, H, D, dtype, reps) -> float:
    """GPU time of the previous one-thread-per-query forward kernel on this configuration."""
    import torch
    src = BASELINE.read_text().replace('#include "na_window.h"', (ROOT / "shaders" / "natten" / "na_window.h").read_text())
    lib = cuda_module.compile(src, label="per-query baseline")
    shape = (B, *spatial, H, D)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
    out = torch.empty(shape, device="cuda", dtype=dtype)
    lse = torch.empty(shape[:-1], device="cuda")
    pad = lambda vals, fill: [fill] * (3 - len(vals)) + list(vals)  # noqa: E731
    geom = torch.tensor([B, H, H, D, D] + pad(spatial, 1) + pad([K] * rank, 1) + [1, 1, 1] + [1, 1, 1] + [0, 0, 0],
                        dtype=torch.int64, device="cuda")
    suffix = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    kernel = getattr(lib, f"na_forward_{suffix}")
    threads = q.numel() // D
    launch = lambda: kernel(q, k, v, out, lse, geom, float(D ** -0.5), threads=threads,  # noqa: E731
                            group_size=min(256, threads))
    launch()
    return KernelTimer(cuda_module).measure(launch, reps)[0]


def measure_dense(timer, L, B, H, D, dtype, reps, warmup, variant="scalar") -> dict:
    """Dense attention through ``natten_mps.attention`` on the dense ``variant`` (scalar kernels of
    attention.metal or the simdgroup-matrix kernels of flash_simdgroup.metal)."""
    import os
    import torch
    import natten_mps
    os.environ["NATTEN_MPS_METAL_DENSE"] = variant
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, L, H, D, device="cuda", generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    dout = torch.randn(B, L, H, D, device="cuda", generator=g, dtype=dtype)

    def fwd():
        with torch.no_grad():
            return natten_mps.attention(q, k, v)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        natten_mps.attention(q, k, v).backward(dout)
    row = {}
    row["fwd_ms"] = wall_ms(fwd, reps, warmup)
    row["fwd_kernel_ms"], row["fwd_launches"], row["fwd_kernels"] = timer.measure(fwd, reps)
    row["fwdbwd_ms"] = wall_ms(fwd_bwd, reps, warmup)
    row["fwdbwd_kernel_ms"], row["fwdbwd_launches"], row["fwdbwd_kernels"] = timer.measure(fwd_bwd, reps)
    return row


def worker(args) -> None:
    import torch
    import os
    os.environ["NATTEN_MPS_METAL_NA"] = args.na_variant     # ours only; natten-mps ignores it
    fns, cuda_module, label = setup_contender(args.worker, args.natten_mps_path)
    if args.worker == "ours" and args.na_variant != "scalar":
        label += f" (NA {args.na_variant})"
    timer = KernelTimer(cuda_module)
    configs = SEED_CONFIGS + ([] if args.quick else LARGE_CONFIGS)
    results = []
    for name, rank, spatial, K, B, H, D in configs:
        for dtype_name in args.dtypes:
            row = dict(config=name, dtype=dtype_name, contender=label)
            try:
                row.update(measure_config(fns[rank], timer, rank, spatial, K, B, H, D, getattr(torch, dtype_name),
                                          args.repeats, args.warmup))
                row["kernel_timing"] = timer.source
            except Exception as e:  # noqa: BLE001 - reported in the table
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if args.worker == "ours":
                try:
                    row["baseline_kernel_ms"] = baseline_ms(cuda_module, rank, spatial, K, B, H, D,
                                                            getattr(torch, dtype_name), args.repeats)
                except Exception as e:  # noqa: BLE001
                    row["baseline_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            results.append(row)
            torch.cuda.empty_cache()
    if args.worker == "ours":
        for (name, L, B, H, D), dtype_name, variant in itertools.product(DENSE_CONFIGS, args.dtypes,
                                                                          args.dense_variants):
            row = dict(config=name, dtype=dtype_name, contender=label, dense=True, variant=variant)
            try:
                row.update(measure_dense(timer, L, B, H, D, getattr(torch, dtype_name), args.repeats, args.warmup,
                                         variant))
                if variant == args.dense_variants[0]:
                    row["baseline_kernel_ms"] = baseline_ms(cuda_module, 1, (L,), L, B, H, D,
                                                            getattr(torch, dtype_name), max(3, args.repeats // 4))
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            results.append(row)
    print("RESULTS " + json.dumps(results))


def ceilings() -> dict:
    """Measured device-to-device copy bandwidth (bytes/s) and FP32 FMA rate (FLOP/s) of this GPU."""
    sys.path.insert(0, str(ROOT))
    import torch
    from natten_mps.metal import cuda
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32).uniform_()   # 1 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        s.record()
        y.copy_(x)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    bandwidth = 2 * x.numel() * 4 / statistics.median(times)
    lib = cuda.compile(FMA_PROBE, label="fma probe")
    props = torch.cuda.get_device_properties(0)
    threads = props.multi_processor_count * 2048
    out = torch.empty(threads, device="cuda")
    iters = 8192
    lib.fma_probe(out, iters, threads=threads, group_size=256)
    times = []
    for _ in range(5):
        s.record()
        lib.fma_probe(out, iters, threads=threads, group_size=256)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    fma_flops = 2 * 8 * iters * threads / statistics.median(times)
    return dict(gpu=torch.cuda.get_device_name(), bandwidth=bandwidth, fma_flops=fma_flops)


def useful_work(rank, spatial, K, B, H, D, itemsize):
    """(bytes, flops) of one forward: q, k, v read and out written once, lse (fp32) written once."""
    tokens = 1
    for n in spatial:
        tokens *= n
    window = K ** rank
    elems = B * tokens * H * D
    fwd_bytes = 4 * elems * itemsize + B * tokens * H * 4
    fwd_flops = 2 * B * tokens * H * window * 2 * D
    return fwd_bytes, fwd_flops


# ------------------------------------------------------------------------------------------------
# Driver side
# ------------------------------------------------------------------------------------------------
def run_worker(who, args):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", who, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--dtypes", *args.dtypes]
    if args.natten_mps_path:
        cmd += ["--natten-mps-path", args.natten_mps_path]
    if args.quick:
        cmd.append("--quick")
    cmd += ["--dense-variants", *args.dense_variants, "--na-variant", args.na_variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULTS "):
            return json.loads(line[len("RESULTS "):])
    raise RuntimeError(f"worker {who} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def fmt(x, unit=""):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}{unit}"
    if x >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.3f}{unit}" if x < 1 else f"{x:.2f}{unit}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--natten-mps-path", help="folder holding natten-mps 0.3.3 (pip install --target)")
    ap.add_argument("--quick", action="store_true", help="seed configurations only")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--na-variant", choices=["scalar", "simdgroup"], default="scalar",
                    help="our NA kernels for the 2-D rows (NATTEN_MPS_METAL_NA; simdgroup: 2-D matrix kernels)")
    ap.add_argument("--dense-variants", nargs="+", choices=["scalar", "simdgroup"], default=["scalar", "simdgroup"],
                    help="dense kernels timed side by side (NATTEN_MPS_METAL_DENSE)")
    ap.add_argument("--report", metavar="JSON", help="print the tables of a saved --json run (no GPU needed)")
    ap.add_argument("--worker", choices=["ours", "natten-mps"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        ours = saved.get("ours") or [r["ours"] for r in saved["rows"]]
        theirs = saved.get("theirs") or [r["theirs"] for r in saved["rows"] if r.get("theirs")]
        report(saved["ceilings"], ours, theirs, saved.get("repeats", 20))
        return 0
    if args.worker:
        worker(args)
        return 0
    import torch
    if not torch.cuda.is_available():
        print("bench_metal_proxy needs a CUDA GPU (it times Metal kernels translated to CUDA)")
        return 1
    ceil = ceilings()
    ours = run_worker("ours", args)
    theirs = run_worker("natten-mps", args) if args.natten_mps_path else []
    table = report(ceil, ours, theirs, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(title=table["title"], ceilings=ceil, rows=table["rows"],
                                                   ours=ours, theirs=theirs, repeats=args.repeats), indent=1))
    return 0


def report(ceil, ours, theirs, repeats) -> dict:
    """Print the tables; returns the title and the per-row roofline fractions."""
    their_by = {(r["config"], r["dtype"]): r for r in theirs}
    title = f"Metal kernels translated to CUDA on {ceil['gpu']}"
    print(f"\n{title} (ranks designs; not Apple timings)")
    print(f"ceilings measured here: copy {ceil['bandwidth'] / 1e12:.2f} TB/s, FP32 FMA {ceil['fma_flops'] / 1e12:.1f} TFLOP/s")
    sources = sorted({r.get("kernel_timing") or "CUDA events around each launch" for r in ours + theirs})
    print("kernel times: " + ", ".join(sources))
    configs = {c[0]: c for c in SEED_CONFIGS + LARGE_CONFIGS}
    pct = lambda work, ms, peak: work / (ms / 1e3) / peak * 100 if ms else None  # noqa: E731
    ratio = lambda a, b: a / b if a and b else None  # noqa: E731
    table = []

    def na_rows():
        """(ours, theirs, useful bytes, useful FLOPs) of every neighborhood-attention row."""
        for r in ours:
            if r.get("dense"):
                continue
            _, rank, spatial, K, B, H, D = configs[r["config"]]
            nbytes, flops = useful_work(rank, spatial, K, B, H, D, 4 if r["dtype"] == "float32" else 2)
            yield r, their_by.get((r["config"], r["dtype"]), {}), nbytes, flops

    print("\nNeighborhood attention forward (ms, medians of %d): whole call, kernels only" % repeats)
    print("| config | dtype | ours call | ours kernel | natten-mps call | natten-mps kernel | ours/theirs call "
          "| ours/theirs kernel | per-query kernel | per-query/ours | ours % BW | ours % FMA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, t, nbytes, flops in na_rows():
        kt = r.get("fwd_kernel_ms")
        row = dict(ours=r, theirs=t, bw_pct=pct(nbytes, kt, ceil["bandwidth"]), fma_pct=pct(flops, kt, ceil["fma_flops"]))
        table.append(row)
        err = "; ".join(x for x in (r.get("error"), t.get("error"), r.get("baseline_error")) if x)
        print(f"| {r['config']} | {r['dtype']} | {fmt(r.get('fwd_ms'))} | {fmt(kt)} | {fmt(t.get('fwd_ms'))} "
              f"| {fmt(t.get('fwd_kernel_ms'))} | {fmt(ratio(r.get('fwd_ms'), t.get('fwd_ms')), 'x')} "
              f"| {fmt(ratio(kt, t.get('fwd_kernel_ms')), 'x')} | {fmt(r.get('baseline_kernel_ms'))} "
              f"| {fmt(ratio(r.get('baseline_kernel_ms'), kt), 'x')} | {fmt(row['bw_pct'])} | {fmt(row['fma_pct'])} |"
              + (f" {err}" if err else ""))
    print("\nNeighborhood attention forward + backward (ms): whole call; backward kernels = fwd+bwd kernels - fwd kernels")
    print("| config | dtype | ours call | ours bwd kernels | launches | natten-mps call | natten-mps bwd kernels "
          "| launches | ours/theirs call | ours/theirs fwd+bwd kernels | ours/theirs bwd kernels | ours bwd % FMA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, t, _, flops in na_rows():
        ob = r["fwdbwd_kernel_ms"] - r["fwd_kernel_ms"] if r.get("fwdbwd_kernel_ms") else None
        tb = t["fwdbwd_kernel_ms"] - t["fwd_kernel_ms"] if t.get("fwdbwd_kernel_ms") else None
        print(f"| {r['config']} | {r['dtype']} | {fmt(r.get('fwdbwd_ms'))} | {fmt(ob)} "
              f"| {r.get('fwdbwd_launches', 0) - r.get('fwd_launches', 0)} | {fmt(t.get('fwdbwd_ms'))} | {fmt(tb)} "
              f"| {t.get('fwdbwd_launches', 0) - t.get('fwd_launches', 0) if t else '—'} "
              f"| {fmt(ratio(r.get('fwdbwd_ms'), t.get('fwdbwd_ms')), 'x')} "
              f"| {fmt(ratio(r.get('fwdbwd_kernel_ms'), t.get('fwdbwd_kernel_ms')), 'x')} | {fmt(ratio(ob, tb), 'x')} "
              f"| {fmt(pct(2.5 * flops, ob, ceil['fma_flops']))} |")
    print("\nDense (flash) attention, not causal (ms): kernels only; variant scalar = attention.metal, simdgroup ="
          " flash_simdgroup.metal (8x8 products as 512 FP32 FMAs with 24 operand shuffles: Apple's matrix unit"
          " exchanges operands for free, so this proxy undercounts the simdgroup variant)")
    print("| config | dtype | variant | fwd kernel | fwd % FMA | bwd kernels | bwd % FMA | per-query kernel "
          "| per-query/ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ours:
        if not r.get("dense"):
            continue
        _, L, B, H, D = next(c for c in DENSE_CONFIGS if c[0] == r["config"])
        flops = 4 * B * H * L * L * D
        kt = r.get("fwd_kernel_ms")
        ob = r["fwdbwd_kernel_ms"] - kt if r.get("fwdbwd_kernel_ms") else None
        print(f"| {r['config']} (B={B}, H={H}) | {r['dtype']} | {r.get('variant', 'scalar')} | {fmt(kt)} | {fmt(pct(flops, kt, ceil['fma_flops']))} "
              f"| {fmt(ob)} | {fmt(pct(2.5 * flops, ob, ceil['fma_flops']))} | {fmt(r.get('baseline_kernel_ms'))} "
              f"| {fmt(ratio(r.get('baseline_kernel_ms'), kt), 'x')} |" + (f" {r['error']}" if r.get("error") else ""))
        table.append(dict(ours=r, fma_pct=pct(flops, kt, ceil["fma_flops"])))
    print("\nratios below 1: ours is faster. Kernels per call (forward):")
    for r in ours + theirs:
        if r.get("fwd_kernels"):
            ks = ", ".join(f"{k} {fmt(v)} ms" for k, v in sorted(r["fwd_kernels"].items()))
            print(f"  {r['contender']}: {r['config']} {r['dtype']}: {ks}")
    return dict(title=title, rows=table)


if __name__ == "__main__":
    sys.exit(main())
