"""GPU timing proxy: Metal kernels translated to CUDA, ours beside natten-mps 0.3.3's, on one NVIDIA GPU.

    pip install --no-deps --target DIR natten-mps==0.3.3        # it shares our import name
    python benchmarks/bench_metal_proxy.py --natten-mps-path DIR [--quick] [--json out.json]

Both projects' ``.metal`` sources go through this project's MSL -> CUDA back end
(``natten_mps.metal.cuda``): ours through ``NATTEN_MPS_METAL_ON_CUDA``, natten-mps' through its own
dispatch code with ``torch.mps.compile_shader`` pointed at the back end and its MPS checks satisfied
by CUDA tensors, each in its own worker process (the two packages share an import name). Per
config, forward and forward+backward:

* whole call: wall time of the public function (synchronised), median;
* kernels only: GPU time (CUDA events around every translated-kernel launch) summed per call, median;
* roofline: the problem's useful work (each input read once and each output written once; 2 FLOPs
  per multiply-add of QK^T and PV) over the kernel time, as fractions of the GPU's measured
  device-to-device copy bandwidth and of its FP32 FMA peak (measured with a translated FMA kernel).

Our backward has no Metal kernel yet (it runs the pure PyTorch path on the same GPU), so its
kernel-only backward column counts only the forward kernels; natten-mps' backward runs its Metal
kernels. The figures are "Metal kernels translated to CUDA on <GPU>": they rank designs, they are
not Apple timings.
"""
from __future__ import annotations

import argparse
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
    """Wraps ``CudaKernel.__call__`` to record CUDA events around every translated-kernel launch."""

    def __init__(self, cuda_module):
        import torch
        self.torch = torch
        self.records = []
        self.active = False
        original = cuda_module.CudaKernel.__call__
        timer = self

        def timed(kernel, *args, **kwargs):
            if not timer.active:
                return original(kernel, *args, **kwargs)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            original(kernel, *args, **kwargs)
            end.record()
            timer.records.append((kernel.name, start, end))
        cuda_module.CudaKernel.__call__ = timed

    def measure(self, fn, reps):
        """Median over ``reps`` calls of the summed kernel GPU time (ms), and kernel launches per call."""
        totals, launches, per_kernel = [], 0, {}
        for _ in range(reps):
            self.records = []
            self.active = True
            fn()
            self.active = False
            self.torch.cuda.synchronize()
            total = 0.0
            for name, s, e in self.records:
                ms = s.elapsed_time(e)
                total += ms
                per_kernel.setdefault(name, []).append(ms)
            totals.append(total)
            launches = len(self.records)
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


def measure_config(fn, timer, rank, spatial, K, B, H, D, dtype, reps, warmup) -> dict:
    """Whole-call and kernel-only medians of one contender on one configuration."""
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

    row = dict(checksum=float(fwd().float().abs().mean()))
    row["fwd_ms"] = wall_ms(fwd, reps, warmup)
    row["fwd_kernel_ms"], row["fwd_launches"], row["fwd_kernels"] = timer.measure(fwd, reps)
    try:
        row["fwdbwd_ms"] = wall_ms(fwd_bwd, reps, warmup)
        row["fwdbwd_kernel_ms"], row["fwdbwd_launches"], row["fwdbwd_kernels"] = timer.measure(fwd_bwd, reps)
    except Exception as e:  # noqa: BLE001 - reported in the table, the forward numbers stay
        row["error"] = f"backward: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row


def worker(args) -> None:
    import torch
    fns, cuda_module, label = setup_contender(args.worker, args.natten_mps_path)
    timer = KernelTimer(cuda_module)
    configs = SEED_CONFIGS + ([] if args.quick else LARGE_CONFIGS)
    results = []
    for name, rank, spatial, K, B, H, D in configs:
        for dtype_name in args.dtypes:
            row = dict(config=name, dtype=dtype_name, contender=label)
            try:
                row.update(measure_config(fns[rank], timer, rank, spatial, K, B, H, D, getattr(torch, dtype_name),
                                          args.repeats, args.warmup))
            except Exception as e:  # noqa: BLE001 - reported in the table
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            results.append(row)
            torch.cuda.empty_cache()
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--natten-mps-path", help="folder holding natten-mps 0.3.3 (pip install --target)")
    ap.add_argument("--quick", action="store_true", help="seed configurations only")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--worker", choices=["ours", "natten-mps"], help=argparse.SUPPRESS)
    args = ap.parse_args()
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
    their_by = {(r["config"], r["dtype"]): r for r in theirs}
    title = f"Metal kernels translated to CUDA on {ceil['gpu']}"
    print(f"\n{title} (ranks designs; not Apple timings)")
    print(f"ceilings measured here: copy {ceil['bandwidth'] / 1e12:.2f} TB/s, FP32 FMA {ceil['fma_flops'] / 1e12:.1f} TFLOP/s")
    print("\nForward (ms, medians of %d): whole call / kernels only; roofline of our kernel time" % args.repeats)
    print("| config | dtype | ours call | ours kernels | launches | natten-mps call | natten-mps kernels | launches "
          "| ratio call | ratio kernels | ours % BW | ours % FMA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    table = []
    configs = {c[0]: c for c in SEED_CONFIGS + LARGE_CONFIGS}
    for r in ours:
        t = their_by.get((r["config"], r["dtype"]), {})
        _, rank, spatial, K, B, H, D = configs[r["config"]]
        nbytes, flops = useful_work(rank, spatial, K, B, H, D, 4 if r["dtype"] == "float32" else 2)
        kt = r.get("fwd_kernel_ms")
        bw = nbytes / (kt / 1e3) / ceil["bandwidth"] * 100 if kt else None
        fl = flops / (kt / 1e3) / ceil["fma_flops"] * 100 if kt else None
        rc = r.get("fwd_ms") / t["fwd_ms"] if t.get("fwd_ms") and r.get("fwd_ms") else None
        rk = kt / t["fwd_kernel_ms"] if t.get("fwd_kernel_ms") and kt else None
        err = r.get("error") or t.get("error")
        print(f"| {r['config']} | {r['dtype']} | {fmt(r.get('fwd_ms'))} | {fmt(kt)} | {r.get('fwd_launches', '—')} "
              f"| {fmt(t.get('fwd_ms'))} | {fmt(t.get('fwd_kernel_ms'))} | {t.get('fwd_launches', '—')} "
              f"| {fmt(rc, 'x')} | {fmt(rk, 'x')} | {fmt(bw)} | {fmt(fl)} |" + (f" {err}" if err else ""))
        table.append(dict(ours=r, theirs=t, bw_pct=bw, fma_pct=fl))
    print("\nForward + backward (ms): whole call / kernels only (ours: forward kernels only, backward on the pure path)")
    print("| config | dtype | ours call | ours kernels | natten-mps call | natten-mps kernels | natten-mps launches "
          "| ratio call |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ours:
        t = their_by.get((r["config"], r["dtype"]), {})
        rc = r["fwdbwd_ms"] / t["fwdbwd_ms"] if t.get("fwdbwd_ms") and r.get("fwdbwd_ms") else None
        print(f"| {r['config']} | {r['dtype']} | {fmt(r.get('fwdbwd_ms'))} | {fmt(r.get('fwdbwd_kernel_ms'))} "
              f"| {fmt(t.get('fwdbwd_ms'))} | {fmt(t.get('fwdbwd_kernel_ms'))} | {t.get('fwdbwd_launches', '—')} "
              f"| {fmt(rc, 'x')} |")
    print("\nratio = ours / natten-mps (below 1: ours is faster). Kernels per call, natten-mps forward:")
    for r in theirs:
        if r.get("fwd_kernels"):
            ks = ", ".join(f"{k} {fmt(v)} ms" for k, v in sorted(r["fwd_kernels"].items()))
            print(f"  {r['config']} {r['dtype']}: {ks}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(title=title, ceilings=ceil, rows=table), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
