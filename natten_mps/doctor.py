"""Self-test to run first on a new machine: ``python -m natten_mps.doctor``.

On a Mac (MPS) it reports the machine (chip, macOS, torch, the Metal Shading Language version
``compile_shader`` compiles with), compiles every kernel family (each shader's units, one per dtype:
compile time, then the creation of every pipeline, with their thread limits and threadgroup memory),
runs a parity sweep of every op on MPS against the pure path on CPU in float64 (na1d/2d/3d with the
seed table's features: GQA/MQA, return_lse, additional keys, dilation, stride, causal, full windows;
varlen; the split ops; dense attention; sageattn float and INT8; forward and backward; float32,
float16, bfloat16), and times the seed table's configurations against PyTorch's SDPA on MPS
(with the neighbourhood as a boolean mask) and, when importable, natten-mlx. It writes
``natten_mps_doctor.json`` and ``natten_mps_doctor.md`` (attach both to a bug report) and prints the
Markdown.

Elsewhere the same command runs the Metal path through the CPU emulator (and the MSL -> CUDA back end
when a CUDA GPU and nvcc are present), with tiny shapes (``--quick``, the default there); timings are
skipped (they would not be Apple timings).

    python -m natten_mps.doctor [--out DIR] [--quick | --full] [--no-bench] [--natten-mps-path DIR]

Exit status: 0 when every family built and every parity case passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .optional_peers import import_natten_mlx

import natten_mps
import sage_mps
from .metal import runtime

SHADERS = ("natten/attention.metal", "natten/split.metal", "sage/int8_attention.metal")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# |metal - reference| <= tol * (1 + |reference|), per dtype: outputs, gradients
TOL = {"float32": (1e-4, 1e-3), "float16": (1e-2, 5e-2), "bfloat16": (6e-2, 2.5e-1)}
INT8_TOL = 2e-3         # the Metal INT8 path against the same numerics in PyTorch

_PROBE = """
kernel void msl_version(device int* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  if (i == 0) out[0] = __METAL_VERSION__;
}
"""


# ------------------------------------------------------------------------------------------------
# Where the Metal path runs here
# ------------------------------------------------------------------------------------------------
def targets() -> List[str]:
    """Device types whose tensors take the Metal path in this run: ``mps`` on a Mac; elsewhere
    ``cpu`` (the emulator) and ``cuda`` (the MSL -> CUDA back end, with a GPU and nvcc)."""
    if runtime.mps_available():
        return ["mps"]
    out = ["cpu"]
    if torch.cuda.is_available():
        from .metal import cuda
        if cuda.nvcc_available():
            out.append("cuda")
    return out


def _enable(device_type: str) -> None:
    natten_mps.set_emulation(device_type == "cpu")
    natten_mps.set_metal_on_cuda(device_type == "cuda")


def _sync(device_type: str) -> None:
    if device_type == "mps":
        torch.mps.synchronize()
    elif device_type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------
def _chip() -> str:
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def msl_version(device_type: str) -> Optional[str]:
    """``__METAL_VERSION__`` as the compiler of ``device_type`` sees it (e.g. ``3.2``)."""
    try:
        tensor = torch.zeros(1, dtype=torch.int32, device=device_type)
        if device_type == "mps":
            lib = torch.mps.compile_shader(_PROBE)
        elif device_type == "cuda":
            from .metal import cuda
            lib = cuda.compile(_PROBE, label="msl_version probe")
        else:
            from .metal import emulator
            lib = emulator.compile(_PROBE, label="msl_version probe")
        lib.msl_version(tensor, threads=1)
        v = int(tensor.cpu()[0])
        return f"{v // 100}.{(v % 100) // 10}"
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return f"unknown ({type(e).__name__}: {e})"


def machine(device_types: List[str]) -> Dict[str, object]:
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "chip": _chip(),
            "os": platform.platform(), "macos": platform.mac_ver()[0] or None, "python": platform.python_version(),
            "torch": torch.__version__, "natten_mps": natten_mps.__version__, "sage_mps": sage_mps.__version__,
            "mps": runtime.mps_available(), "metal_path": device_types,
            "emulated_max_threads": None}
    if "mps" not in device_types:
        from .metal import msl
        info["emulated_max_threads"] = msl.emulated_max_threads()
    if torch.cuda.is_available():
        info["cuda_gpu"] = torch.cuda.get_device_name()
    info["msl_version"] = {dt: msl_version(dt) for dt in device_types}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent.parent)
        info["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


# ------------------------------------------------------------------------------------------------
# Kernel families
# ------------------------------------------------------------------------------------------------
def build_families(device_type: str) -> List[Dict[str, object]]:
    """Compile every unit of every shader for ``device_type`` and create every pipeline (timed)."""
    rows = []
    lib = runtime.library
    for shader in SHADERS:
        for unit in runtime.shader_units(shader):
            row: Dict[str, object] = {"device": device_type, "shader": shader, "unit": unit}
            start = time.perf_counter()
            try:
                compiled = runtime._unit_library(shader, unit, device_type)
                row["compile_s"] = round(time.perf_counter() - start, 3)
                names = runtime._kernel_names(compiled, shader, unit)
                start = time.perf_counter()
                kernels = [getattr(lib(shader, device_type), n) for n in names]
                row["pipelines_s"] = round(time.perf_counter() - start, 3)
                row["kernels"] = len(kernels)
                row["source_bytes"] = len(runtime.unit_source(shader, unit))
                row["min_max_threads_per_threadgroup"] = min(int(getattr(k, "max_threads_per_threadgroup", 0))
                                                            for k in kernels)
                tg = [getattr(k, "static_thread_group_memory_length", None) for k in kernels]
                row["max_threadgroup_bytes"] = max((t for t in tg if t is not None), default=None)
                row["ok"] = True
            except Exception as e:  # noqa: BLE001 - a family that fails is what this reports
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[-2000:])
            row["available"] = runtime.family_available(shader, unit, device_type)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# Parity sweep
# ------------------------------------------------------------------------------------------------
def _na_cases(quick: bool) -> List[dict]:
    """The seed table's features on small shapes: (name, rank, spatial, kernel, kwargs, heads, heads_kv,
    extra tokens)."""
    L1, S2, S3 = ((18,), (7, 8), (4, 5, 4)) if quick else ((256,), (32, 32), (12, 12, 12))
    K1, K2, K3 = (5, 3, 3) if quick else (7, 7, 5)
    return [
        dict(name=f"na1d L={L1[0]} K={K1}", rank=1, spatial=L1, kernel=K1, kw={}, heads=4, heads_kv=4),
        dict(name="na1d causal dilation 2 stride 2", rank=1, spatial=L1, kernel=K1 - 2,
             kw=dict(dilation=2, stride=2, is_causal=True), heads=4, heads_kv=4),
        dict(name="na1d GQA4 + 1 additional token", rank=1, spatial=L1, kernel=K1, kw={}, heads=4, heads_kv=1,
             extra=1),
        dict(name=f"na2d {S2[0]}x{S2[1]} K={K2}", rank=2, spatial=S2, kernel=K2, kw={}, heads=2, heads_kv=2),
        dict(name="na2d MQA causal/dilated", rank=2, spatial=S2, kernel=K2,
             kw=dict(dilation=(2, 1), is_causal=(False, True)), heads=4, heads_kv=1),
        dict(name="na2d full window (FMHA)", rank=2, spatial=S2, kernel=S2, kw={}, heads=2, heads_kv=2),
        dict(name=f"na3d {'x'.join(map(str, S3))} K={K3}", rank=3, spatial=S3, kernel=K3, kw=dict(stride=(1, 2, 1)),
             heads=2, heads_kv=2),
    ]


def _rand(shape, seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


def _compare(got, want, tol) -> float:
    """Largest |got - want| / (tol * (1 + |want|)): at most 1 passes."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        return math.inf
    both_inf = torch.isinf(got) & torch.isinf(want) & (torch.sign(got) == torch.sign(want))
    err = ((got - want).abs() / (tol * (1 + want.abs()))).masked_fill(both_inf, 0.0)
    return float(err.max()) if err.numel() else 0.0


def _run_case(name: str, dtype_name: str, device_type: str, fn: Callable, inputs: List[torch.Tensor],
              backward: bool, tol_key: Optional[str] = None, int8_tol: bool = False) -> Dict[str, object]:
    """``fn(*inputs)`` -> tensor (or tuple, first = output) on the Metal path of ``device_type`` and on
    the pure path on CPU in float64 (float32 for INT8); forward output (and input gradients)."""
    dtype = DTYPES[dtype_name]
    row: Dict[str, object] = {"case": name, "dtype": dtype_name, "device": device_type, "backward": backward}
    try:
        _enable(device_type)
        dev = [t.to(dtype=dtype, device=device_type).requires_grad_(backward) for t in inputs]
        res = fn(*dev)
        out = res[0] if isinstance(res, tuple) else res
        row["path"] = natten_mps.last_backend()
        gout = _rand(out.shape, 99, torch.float32, "cpu")
        grads = torch.autograd.grad(out, dev, gout.to(dtype=out.dtype, device=out.device)) if backward else ()
        _sync(device_type)
        natten_mps.set_emulation(False)
        natten_mps.set_metal_on_cuda(False)
        ref_dtype = torch.float32 if int8_tol else torch.float64
        ref_in = [t.detach().to(dtype=dtype).to(ref_dtype).requires_grad_(backward) for t in inputs]
        rres = fn(*ref_in)
        rout = rres[0] if isinstance(rres, tuple) else rres
        rgrads = torch.autograd.grad(rout, ref_in, gout.to(rout.dtype)) if backward else ()
        otol, gtol = TOL[tol_key or dtype_name]
        if int8_tol:            # same numerics; the outputs' rounding to the dtype remains
            otol = gtol = max(INT8_TOL, otol)
        errs = [_compare(out, rout, otol)] + [_compare(a, b, gtol) for a, b in zip(grads, rgrads)]
        row["worst"] = round(max(errs), 4)
        row["ok"] = row["worst"] <= 1.0 and row["path"] == "metal"
    except Exception as e:  # noqa: BLE001 - a failing case is a result
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[-1500:], trace=traceback.format_exc()[-3000:])
    finally:
        natten_mps.set_emulation(False)
        natten_mps.set_metal_on_cuda(False)
    return row


def parity(device_type: str, quick: bool) -> List[Dict[str, object]]:
    rows = []
    for dtype_name in DTYPES:
        for ci, c in enumerate(_na_cases(quick)):
            fn_na = getattr(natten_mps, f"na{c['rank']}d")
            shape_q = (1, *c["spatial"], c["heads"], 16)
            shape_k = (1, *c["spatial"], c["heads_kv"], 16)
            ins = [_rand(shape_q, 3 * ci, torch.float32, "cpu"), _rand(shape_k, 3 * ci + 1, torch.float32, "cpu"),
                   _rand(shape_k, 3 * ci + 2, torch.float32, "cpu")]
            kw = dict(c["kw"])
            if c.get("extra"):
                ins += [_rand((1, c["extra"], c["heads_kv"], 16), 50 + ci, torch.float32, "cpu") for _ in range(2)]

                def fn(q, k, v, ak, av, _f=fn_na, _c=c, _kw=kw):
                    return _f(q, k, v, _c["kernel"], additional_keys=ak, additional_values=av, return_lse=True, **_kw)
            else:
                def fn(q, k, v, _f=fn_na, _c=c, _kw=kw):
                    return _f(q, k, v, _c["kernel"], return_lse=True, **_kw)
            rows.append(_run_case(c["name"], dtype_name, device_type, fn, ins, backward=True))
        # varlen
        L = 16 if quick else 128
        ins = [_rand((2, L, 2, 16), 70 + s, torch.float32, "cpu") for s in range(3)]
        lens = torch.tensor([L, L - 5])
        rows.append(_run_case(f"na1d_varlen L<={L} K=5", dtype_name, device_type,
                              lambda q, k, v: natten_mps.na1d_varlen(q, k, v, lens, 5), ins, backward=True))
        # split ops: weights, then a softmax and the weighted sum (gradients through both)
        S = (6, 7) if quick else (32, 32)
        ins = [_rand((1, *S, 2, 16), 80 + s, torch.float32, "cpu") for s in range(3)]
        rows.append(_run_case(f"na2d_qk + na2d_av {S[0]}x{S[1]} K=3 dil 2", dtype_name, device_type,
                              lambda q, k, v: natten_mps.na2d_av(natten_mps.na2d_qk(q, k, 3, 2).softmax(-1), v, 3, 2),
                              ins, backward=True))
        # dense attention, causal, GQA
        N = 20 if quick else 256
        ins = [_rand((1, N, 4, 16), 90, torch.float32, "cpu"), _rand((1, N, 2, 16), 91, torch.float32, "cpu"),
               _rand((1, N, 2, 16), 92, torch.float32, "cpu")]
        rows.append(_run_case(f"attention causal GQA N={N}", dtype_name, device_type,
                              lambda q, k, v: natten_mps.attention(q, k, v, is_causal=True), ins, backward=True))
        # sageattn (HND): float path with gradients; INT8 forward against the same numerics in PyTorch
        ins = [_rand((1, 2, N + 13, 32), 95 + s, torch.float32, "cpu") for s in range(3)]
        rows.append(_run_case(f"sageattn N={N + 13}", dtype_name, device_type,
                              lambda q, k, v: sage_mps.sageattn(q, k, v, is_causal=True), ins, backward=True))
        rows.append(_run_case(f"sageattn int8 N={N + 13}", dtype_name, device_type,
                              lambda q, k, v: sage_mps.sageattn(q, k, v, qk_quant="int8"), ins, backward=False,
                              int8_tol=True))
    return rows


# ------------------------------------------------------------------------------------------------
# Timings (MPS only)
# ------------------------------------------------------------------------------------------------
SEED_TABLE = [  # label, rank, spatial, kernel, heads, heads_kv, dtype, extra tokens, return_lse
    ("1D L=256 K=7", 1, (256,), 7, 8, 8, "float32", 0, False),
    ("2D 32x32 K=7", 2, (32, 32), 7, 4, 4, "float32", 0, False),
    ("GQA4 1D L=256 K=7", 1, (256,), 7, 8, 2, "float32", 0, False),
    ("MQA 2D 32x32 K=7", 2, (32, 32), 7, 4, 1, "float32", 0, False),
    ("return_lse 2D 32x32 K=7", 2, (32, 32), 7, 4, 4, "float32", 0, True),
    ("1 token, 1D L=256 K=7", 1, (256,), 7, 8, 8, "float32", 1, False),
    ("bf16 2D 32x32 K=7", 2, (32, 32), 7, 4, 4, "bfloat16", 0, False),
    ("FMHA 1D L=64 full", 1, (64,), 64, 8, 8, "float32", 0, False),
    ("FMHA 2D 16x16 full", 2, (16, 16), 16, 4, 4, "float32", 0, False),
]


def _median_ms(fn: Callable, device_type: str, warmup: int = 5, repeats: int = 30) -> float:
    for _ in range(warmup):
        fn()
    _sync(device_type)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device_type)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _na_mask(spatial, kernel, device) -> torch.Tensor:
    from .split import _neighbourhood
    ks = [kernel] * len(spatial) if isinstance(kernel, int) else list(kernel)
    tok, ok, _ = _neighbourhood(list(spatial), ks, [1] * len(spatial), [1] * len(spatial), [False] * len(spatial),
                                torch.device("cpu"))
    n = tok.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(tok)
    mask[rows[ok], tok[ok]] = True
    return mask.to(device)


def benchmarks(natten_mps_path: Optional[str] = None) -> List[Dict[str, object]]:
    """Median forward ms on MPS: this package, SDPA with the neighbourhood mask, natten-mlx (if
    importable) and natten-mps (with ``natten_mps_path``: a directory holding that package, run in a
    subprocess since it shares the import name)."""
    rows = []
    try:
        mx, natten_mlx = import_natten_mlx()
    except Exception:  # noqa: BLE001 - absent peer
        mx = natten_mlx = None
    for label, rank, spatial, kernel, heads, hkv, dtype_name, extra, lse in SEED_TABLE:
        dtype = DTYPES[dtype_name]
        q = _rand((2, *spatial, heads, 32), 0, dtype, "mps")
        k = _rand((2, *spatial, hkv, 32), 1, dtype, "mps")
        v = _rand((2, *spatial, hkv, 32), 2, dtype, "mps")
        xk = _rand((2, extra, hkv, 32), 3, dtype, "mps") if extra else None
        fn = getattr(natten_mps, f"na{rank}d")
        row: Dict[str, object] = {"config": label}
        try:
            row["natten_mps_kernels_ms"] = round(_median_ms(
                lambda: fn(q, k, v, kernel, additional_keys=xk, additional_values=xk, return_lse=lse), "mps"), 4)
            mask = _na_mask(spatial, kernel, "mps")
            qh, kh, vh = (t.reshape(2, -1, t.shape[-2], 32).transpose(1, 2) for t in (q, k, v))
            kh = kh.repeat_interleave(heads // hkv, 1)
            vh = vh.repeat_interleave(heads // hkv, 1)
            row["sdpa_masked_ms"] = round(_median_ms(
                lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask), "mps"), 4)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"
        if natten_mlx is not None:
            try:
                to = {torch.float32: mx.float32, torch.bfloat16: mx.bfloat16}[dtype]
                mq, mk, mv = (mx.array(t.float().cpu().numpy()).astype(to) for t in (q, k, v))
                mfn = getattr(natten_mlx, f"na{rank}d")
                row["natten_mlx_ms"] = round(_median_ms(lambda: mx.eval(mfn(mq, mk, mv, kernel)), "cpu"), 4)
            except Exception as e:  # noqa: BLE001
                row["natten_mlx_error"] = f"{type(e).__name__}: {e}"
        if natten_mps_path:
            row["natten_mps_0_3_ms"] = _peer_ms(natten_mps_path, rank, spatial, kernel, heads, hkv, dtype_name)
        rows.append(row)
    return rows


def _peer_ms(path: str, rank, spatial, kernel, heads, hkv, dtype_name) -> Optional[float]:
    code = (f"import sys; sys.path.insert(0, {path!r})\n"
            "import time, statistics, torch, natten_mps\n"
            f"d = getattr(torch, {dtype_name!r})\n"
            f"q = torch.randn(2, *{tuple(spatial)!r}, {heads}, 32, device='mps', dtype=d)\n"
            f"k = torch.randn(2, *{tuple(spatial)!r}, {hkv}, 32, device='mps', dtype=d)\n"
            f"f = lambda: natten_mps.na{rank}d(q, k, k, {kernel!r})\n"
            "for _ in range(5): f()\n"
            "s = []\n"
            "for _ in range(30):\n"
            "    torch.mps.synchronize(); t = time.perf_counter(); f(); torch.mps.synchronize()\n"
            "    s.append((time.perf_counter() - t) * 1e3)\n"
            "print(statistics.median(s))\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        return round(float(proc.stdout.strip().splitlines()[-1]), 4)
    except Exception:  # noqa: BLE001 - peer absent or failing: no figure
        return None


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def tuner_report() -> Optional[object]:
    """The tuner's choices (``natten_mps.tuning.report()``), when that module exists."""
    try:
        from . import tuning  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not hasattr(tuning, "report"):
        return None
    try:
        return tuning.report()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def markdown(report: Dict[str, object]) -> str:
    m = report["machine"]
    lines = ["# natten_mps doctor", "",
             f"- date: {m['date']}; commit: {m.get('commit')}",
             f"- chip: {m['chip']}; OS: {m['os']}; macOS: {m['macos']}",
             f"- python {m['python']}; torch {m['torch']}; natten_mps {m['natten_mps']}; sage_mps {m['sage_mps']}",
             f"- Metal path on: {', '.join(m['metal_path'])} (MPS available: {m['mps']}); "
             f"MSL version: {m['msl_version']}",
             f"- command: `{report['command']}`", ""]
    if m.get("emulated_max_threads"):
        lines.insert(-1, f"- emulated pipeline thread limit: {m['emulated_max_threads']}")
    lines += ["## Kernel families", "",
              "| device | shader | unit | ok | compile s | pipelines s | kernels | min max_threads | max tg bytes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["families"]:
        lines.append(f"| {r['device']} | {r['shader']} | {r['unit']} | {'yes' if r.get('ok') else 'NO'} | "
                     f"{r.get('compile_s', '')} | {r.get('pipelines_s', '')} | {r.get('kernels', '')} | "
                     f"{r.get('min_max_threads_per_threadgroup', '')} | {r.get('max_threadgroup_bytes', '')} |")
    for r in report["families"]:
        if not r.get("ok"):
            lines += ["", f"**{r['shader']} [{r['unit']}] on {r['device']}**: `{r.get('error', '')[:800]}`"]
    if report["unavailable"]:
        lines += ["", "Families unavailable in this process (their ops ran on the pure path):", ""]
        lines += [f"- {u['shader']} [{u['unit']}] ({u['stage']}, kernel {u['kernel']}): {u['error'][:300]}"
                  for u in report["unavailable"]]
    rows = report["parity"]
    bad = [r for r in rows if not r.get("ok")]
    lines += ["", f"## Parity: {len(rows) - len(bad)} of {len(rows)} cases pass", "",
              "Worst error as a fraction of the tolerance (at most 1 passes), Metal path vs the pure path on CPU.", "",
              "| case | device | " + " | ".join(DTYPES) + " |", "|---|---|" + "---|" * len(DTYPES)]
    seen = {}
    for r in rows:
        seen.setdefault((r["case"], r["device"]), {})[r["dtype"]] = r
    for (case, dev), per in seen.items():
        cells = []
        for d in DTYPES:
            r = per.get(d)
            cells.append("" if r is None else (f"{r['worst']}" if r.get("ok") else
                                               f"FAIL {r.get('worst', '')} {r.get('path', '')} {r.get('error', '')[:80]}"))
        lines.append(f"| {case} | {dev} | " + " | ".join(cells) + " |")
    if report.get("benchmarks"):
        lines += ["", "## Forward timings on MPS (median ms; ratio = other / this package)", "",
                  "| config | natten_mps kernels | SDPA masked | natten-mlx | natten-mps 0.3 |", "|---|---|---|---|---|"]
        for b in report["benchmarks"]:
            ours = b.get("natten_mps_kernels_ms")

            def cell(key):
                x = b.get(key)
                return "" if x is None or ours is None else f"{x} ({x / ours:.2f}x)"
            lines.append(f"| {b['config']} | {ours} | {cell('sdpa_masked_ms')} | {cell('natten_mlx_ms')} | "
                         f"{cell('natten_mps_0_3_ms')} |")
    else:
        lines += ["", f"## Timings: {report.get('benchmarks_note', 'skipped')}"]
    if report.get("tuning") is not None:
        lines += ["", "## Tuner", "", "```", json.dumps(report["tuning"], indent=1, default=str)[:4000], "```"]
    return "\n".join(lines) + "\n"


def run(quick: Optional[bool] = None, bench: bool = True, natten_mps_path: Optional[str] = None,
        out_dir: str = ".") -> Dict[str, object]:
    dts = targets()
    quick = ("mps" not in dts) if quick is None else quick
    report: Dict[str, object] = {"command": "python -m natten_mps.doctor " + " ".join(sys.argv[1:]),
                                 "quick": quick, "machine": machine(dts)}
    previous = runtime._strict
    runtime.set_strict(False)            # a failing family is reported, not raised
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report["families"] = [r for dt in dts for r in build_families(dt)]
            report["parity"] = [r for dt in dts for r in parity(dt, quick)]
        report["warnings"] = sorted({str(w.message) for w in caught
                                     if issubclass(w.category, runtime.MetalFallbackWarning)})
    finally:
        runtime.set_strict(previous)
    report["unavailable"] = runtime.family_report()
    report["support_families"] = natten_mps.get_support_matrix()["metal"]["families"]
    report["build_log"] = runtime.build_log()
    if bench and "mps" in dts:
        report["benchmarks"] = benchmarks(natten_mps_path)
    else:
        report["benchmarks"] = []
        report["benchmarks_note"] = ("skipped (--no-bench)" if not bench else
                                     "skipped: no MPS here (emulated or translated kernels are not Apple timings)")
    report["tuning"] = tuner_report()
    report["ok"] = all(r.get("ok") for r in report["families"]) and all(r.get("ok") for r in report["parity"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "natten_mps_doctor.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "natten_mps_doctor.md").write_text(markdown(report))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m natten_mps.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=".", help="directory for natten_mps_doctor.json and .md (default: .)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="quick", action="store_true", default=None,
                   help="tiny shapes (the default without MPS)")
    g.add_argument("--full", dest="quick", action="store_false", help="the seed table's shapes (default on MPS)")
    p.add_argument("--no-bench", action="store_true", help="skip the timings")
    p.add_argument("--natten-mps-path", default=None,
                   help="directory holding natten-mps (0.3.x) to time beside this package (subprocess)")
    a = p.parse_args(argv)
    report = run(a.quick, not a.no_bench, a.natten_mps_path, a.out)
    print(markdown(report))
    print(f"Wrote {Path(a.out) / 'natten_mps_doctor.json'} and {Path(a.out) / 'natten_mps_doctor.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
