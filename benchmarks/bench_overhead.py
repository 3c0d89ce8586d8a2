"""Host cost of a whole call of every public op, beside ``F.scaled_dot_product_attention`` on the same tensors.

    python benchmarks/bench_overhead.py [--repeats 200] [--cases na1d na2d ...] [--modes eager compile]
        [--base-path DIR] [--stages] [--json out.json]
    python benchmarks/bench_overhead.py --device cuda --natten-mps-path DIR [--dtypes float32 float16]

CPU (default): the Metal path runs on CPU tensors under emulation with no-op launches
(``natten_mps.metal.runtime.set_noop_launches(True)``): every host step of a call runs (checks,
autocast and layout handling, the op layer and autograd, geometry, allocation and poison fills,
argument lists, the launch calls) and no kernel does, so the figure is the host's alone on any
machine. The pure path (``set_backend("pure")``) runs its real computation (on tiny problems that
is mostly overhead too). Each op is timed forward (under ``torch.no_grad``) and forward+backward
(a sum of the outputs, backward), eager and under ``torch.compile``; SDPA runs on the same tensors
(heads-first views, spatial axes flattened; for the nn modules, between the module's own
projections) in the same rounds.

``--base-path DIR``: a checkout of another commit of this project (``git worktree add DIR <commit>``),
timed in the same rounds ("before" columns). Where that checkout lacks the no-op facility, its worker
replaces its ``runtime.library`` by an equivalent no-op library (same kernel names, nothing run).

``--natten-mps-path DIR`` on CPU: natten-mps 0.3.3's whole call (its pure path) beside our pure path.

CUDA (``--device cuda``, the GPU proxy): the seed configurations' whole call, our Metal path
translated to CUDA (``set_metal_on_cuda(True)``, real kernels) beside natten-mps 0.3.3's whole call
(``--natten-mps-path DIR``, set up as ``bench_metal_proxy.py`` does), synchronised, forward and
forward+backward.

Every contender runs in a worker process of its own (natten-mps and the base checkout share our
import name) and all are timed in interleaved rounds (``harness.interleaved_medians``); medians in
microseconds. ``--stages`` adds a per-stage breakdown of the na1d forward and forward+backward on
the Metal path (no-op launches) and the pure path, by peeling layers: each row is the median of a
call entering one layer lower, and a stage's cost is the difference of two rows.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import harness  # noqa: E402

# ---- cases ---------------------------------------------------------------------------------------
# Tiny problems (host cost): B=1, H=2, D=16.
B, H, D = 1, 2, 16
CASES = ["na1d", "na1d_lse", "na1d_extra", "na2d", "na3d", "na1d_varlen", "split_1d", "attention", "sageattn",
         "merge_attentions", "nn_1d", "nn_2d"]
# GPU proxy: the seed tables' configurations (name, spatial, kernel, batch, heads, head dim).
SEED = {"1D L=256 K=7": ((256,), 7, 2, 8, 32), "2D 32x32 K=7": ((32, 32), 7, 2, 4, 32)}


def _tensors(torch, shape, n, device, dtype, grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype).requires_grad_(grad)
            for _ in range(n)]


def build_case(name: str, device: str, dtype_name: str = "float32", grad: bool = False):
    """``(call, sdpa_call)``: zero-argument callables returning a tensor or a tuple of tensors."""
    import torch
    import torch.nn.functional as F
    import natten_mps
    dtype = getattr(torch, dtype_name)
    if name in SEED:
        spatial, K, b, h, d = SEED[name]
        q, k, v = _tensors(torch, (b, *spatial, h, d), 3, device, dtype, grad)
        fn = getattr(natten_mps, f"na{len(spatial)}d")
        return (lambda: fn(q, k, v, K)), _sdpa(torch, F, q, k, v)
    spatial = {"na2d": (4, 4), "na3d": (4, 4, 4), "nn_2d": (4, 4)}.get(name, (16,))
    q, k, v = _tensors(torch, (B, *spatial, H, D), 3, device, dtype, grad)
    sdpa = _sdpa(torch, F, q, k, v)
    if name in ("na1d", "na2d", "na3d"):
        fn = getattr(natten_mps, name)
        return (lambda: fn(q, k, v, 3)), sdpa
    if name == "na1d_lse":
        return (lambda: natten_mps.na1d(q, k, v, 3, return_lse=True)), sdpa
    if name == "na1d_extra":
        xk, xv = _tensors(torch, (B, 4, H, D), 2, device, dtype, grad, seed=1)
        return (lambda: natten_mps.na1d(q, k, v, 3, additional_keys=xk, additional_values=xv)), sdpa
    if name == "na1d_varlen":
        lens = torch.tensor([12] * B, dtype=torch.int32)
        return (lambda: natten_mps.na1d_varlen(q, k, v, lens, 3)), sdpa
    if name == "split_1d":
        def split():
            w = natten_mps.na1d_qk(q, k, 3)
            return natten_mps.na1d_av(torch.softmax(w, -1), v, 3)
        return split, sdpa
    if name == "attention":
        return (lambda: natten_mps.attention(q, k, v)), sdpa
    if name == "sageattn":
        import sage_mps
        return (lambda: sage_mps.sageattn(q, k, v, tensor_layout="NHD")), sdpa
    if name == "merge_attentions":
        (o1, o2), (l1, l2) = _tensors(torch, q.shape, 2, device, dtype, grad, 2), \
            _tensors(torch, q.shape[:-1], 2, device, torch.float32, grad, 3)
        return (lambda: natten_mps.merge_attentions([o1, o2], [l1, l2])), sdpa
    if name in ("nn_1d", "nn_2d"):
        rank = int(name[-2])
        mod = getattr(natten_mps, f"NeighborhoodAttention{rank}D")(H * D, H, 3).to(device=device, dtype=dtype)
        x = _tensors(torch, (B, *spatial, H * D), 1, device, dtype, grad)[0]

        def sdpa_module():      # the same projections around SDPA
            qkv = mod.qkv(x).reshape(B, -1, 3, H, D).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return mod.proj(out.transpose(1, 2).reshape(x.shape))
        return (lambda: mod(x)), sdpa_module
    raise KeyError(name)


def _sdpa(torch, F, q, k, v):
    """SDPA on the same tensors: heads-first views, spatial axes flattened."""
    flat = [t.reshape(t.shape[0], -1, t.shape[-2], t.shape[-1]).transpose(1, 2) for t in (q, k, v)]
    return lambda: F.scaled_dot_product_attention(*flat)


def _outputs(r):
    return r if isinstance(r, (tuple, list)) else (r,)


def timed_call(call: Callable, backward: bool, compiled: bool):
    """The zero-argument callable timed for one case: forward (no grad) or forward+backward."""
    import torch
    fn = torch.compile(call) if compiled else call
    if not backward:
        def fwd():
            with torch.no_grad():
                return fn()
        return fwd

    def fwd_bwd():
        loss = sum(o.float().sum() for o in _outputs(fn()) if o.requires_grad)
        loss.backward()
    return fwd_bwd


# ---- worker side ---------------------------------------------------------------------------------
def _sample_us(fn, n: int, sync) -> List[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        sync()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    return samples


def setup_worker(kind: str, device: str, natten_mps_path: Optional[str]):
    """Import the contender's package and set its path. ``kind``: metal, pure, sdpa, natten-mps."""
    import torch
    torch.set_num_threads(1)
    if kind == "natten-mps":
        import bench_metal_proxy
        bench_metal_proxy.setup_contender("natten-mps", natten_mps_path)
        return
    import natten_mps
    from natten_mps.metal import runtime
    if kind == "pure":
        natten_mps.set_backend("pure")
    elif kind in ("metal", "stages"):     # stages: switches paths itself, needs the no-op library
        natten_mps.set_backend("metal")
        if device == "cuda":
            natten_mps.set_metal_on_cuda(True)
        else:
            natten_mps.set_emulation(True)
            if hasattr(runtime, "set_noop_launches"):
                runtime.set_noop_launches(True)
            else:     # an older checkout: this project's no-op library in place of its compiler
                sys.path.insert(0, os.path.join(os.getcwd(), ".noop"))
                from noop_library import NoopLibrary  # noqa: F401 - written by the parent (see _noop_shim)
                libs = {}

                def library(name, device_type):
                    if name not in libs:
                        libs[name] = NoopLibrary(name, runtime)
                    return libs[name]
                runtime.library = library


def worker_main(kind: str, device: str, natten_mps_path: Optional[str] = None) -> None:
    """Serve JSON-line requests ``{case, backward, compiled, n, warmup, dtype, sdpa}`` with ``{samples}`` (us)."""
    import warnings
    warnings.filterwarnings("ignore")
    setup_worker(kind, device, natten_mps_path)
    import torch
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runners: Dict[tuple, Callable] = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if "stage" in req:
                if "stages" not in runners:
                    runners["stages"] = stage_entries()
                if req["stage"] == "labels":
                    print(json.dumps({"labels": [r[:3] for r in runners["stages"]]}), flush=True)
                    continue
                fn = runners["stages"][req["stage"]][3]
                if fn is None:
                    raise NotImplementedError("not in this checkout")
                for _ in range(req["warmup"]):
                    fn()
                print(json.dumps({"samples": _sample_us(fn, req["n"], sync)}), flush=True)
                continue
            key = (req["case"], req["backward"], req["compiled"], req["dtype"])
            if kind == "natten-mps" and req["case"] in ("attention", "sageattn"):
                raise NotImplementedError("not in natten-mps 0.3.3")
            if key not in runners:
                call, sdpa = build_case(req["case"], device, req["dtype"], grad=req["backward"])
                run = timed_call(sdpa if kind == "sdpa" else call, req["backward"], req["compiled"])
                for _ in range(req["warmup"]):
                    run()
                runners[key] = run
            reply = {"samples": _sample_us(runners[key], req["n"], sync)}
        except Exception as e:  # noqa: BLE001 - sent back as the contender's error
            reply = {"error": f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]}
        print(json.dumps(reply), flush=True)


class Worker:
    """One contender in its own process; ``package_root`` is the checkout whose natten_mps it imports."""

    def __init__(self, kind: str, device: str, package_root: str = ROOT, natten_mps_path: Optional[str] = None):
        setup = f"sys.path[:0] = [{HERE!r}, {package_root!r}]"
        if natten_mps_path:
            setup = f"sys.path[:0] = [{HERE!r}]"
        code = (f"import sys\n{setup}\nimport bench_overhead as bo\n"
                f"bo.worker_main({kind!r}, {device!r}, {natten_mps_path!r})\n")
        env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=package_root, env=env)

    def sampler(self, case: str, backward: bool, compiled: bool, dtype: str, warmup: int):
        return self._request({"case": case, "backward": backward, "compiled": compiled, "warmup": warmup,
                              "dtype": dtype})

    def stage_sampler(self, index: int, warmup: int):
        return self._request({"stage": index, "warmup": warmup})

    def _request(self, payload):
        def sample(n: int) -> List[float]:
            self.proc.stdin.write(json.dumps(dict(payload, n=n)) + "\n")
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


def _noop_shim(base_root: str) -> None:
    """Give a checkout without ``runtime.set_noop_launches`` a no-op library (a module under
    ``<base>/.noop``, outside its package): its shader's kernel names, each a callable that runs nothing."""
    os.makedirs(os.path.join(base_root, ".noop"), exist_ok=True)
    with open(os.path.join(base_root, ".noop", "noop_library.py"), "w") as f:
        f.write("class NoopLibrary:\n"
                "    def __new__(cls, name, runtime):\n"
                "        from natten_mps.metal import msl\n"
                "        specs = msl.find_kernels(msl.preprocess(runtime.shader_source(name), name))\n"
                "        lib = type('Lib', (), {})()\n"
                "        for k in specs:\n"
                "            setattr(lib, k.host_name, lambda *a, threads=None, group_size=None: None)\n"
                "        return lib\n")


# ---- per-stage breakdown -------------------------------------------------------------------------
STAGE_CASE = "tiny na1d (B=1 L=16 H=2 D=16 K=3), float32"


def stage_entries():
    """``[(path, pass, entry, fn)]`` for the per-stage breakdown of the tiny na1d call on the Metal
    path (no-op launches) and the pure path, in whichever checkout is imported. Rows marked "of which"
    time one step alone; the others enter the call one layer lower each, so a layer's cost is the
    difference of two rows. Works on a checkout without this commit's caches (then the uncached
    steps are timed)."""
    import torch
    import natten_mps
    from natten_mps import backend, checks, functional, ops
    from natten_mps.backends import metal, pure
    from natten_mps.metal import runtime
    q, k, v = _tensors(torch, (B, 16, H, D), 3, "cpu", torch.float32, False)
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    args = ([3], [1], [1], [False], D ** -0.5)
    problem = getattr(metal, "_problem", metal._Problem)

    def with_path(path, fn):
        def run():
            natten_mps.set_backend(path)
            runtime.set_emulation(path == "metal")
            return fn()
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def backward_of(fn):
        def run():
            out = fn()
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        return run

    def checks_uncached():
        heads, heads_kv = checks.check_qkv(q, k, v, 1)
        checks.check_na_params(q, k, 3, 1, 1, False, 1)
        checks.check_additional_kv(q, None, None, heads_kv)
        checks.check_scale(None, D)

    rows = []
    for path in ("metal", "pure"):
        natten_mps.set_backend(path)
        runtime.set_emulation(path == "metal")
        out, lse = ops._na_forward_impl(q, k, v, *args)
        dout = torch.randn_like(out)
        fwd = [("natten_mps.na1d (public call)", lambda: natten_mps.na1d(q, k, v, 3)),
               ("  of which autocast_inputs", lambda: functional.autocast_inputs(q, k, v, None, None)),
               ("  of which argument checks, uncached", checks_uncached)]
        fwd.append(("  of which argument checks, cached (signature + lookup)",
                    (lambda: functional._NA_CHECKED.get(functional._na_signature(1, q, k, v, 3, 1, 1, False, None,
                                                                                 None, None)))
                    if hasattr(functional, "_na_signature") else None))
        fwd += [("ops.neighborhood_attention (checks skipped)", lambda: ops.neighborhood_attention(q, k, v, *args)),
                ("  of which eager/compile/mode probes", lambda: ops._eager(q, k, v)),
                ("ops._na_forward_impl (op layer skipped)", lambda: ops._na_forward_impl(q, k, v, *args)),
                ("  of which backend choice (use_metal + supported)",
                 lambda: backend.use_metal(q, metal.supported(q, k, v)))]
        if path == "metal":
            fwd.append(("backends.metal.attention_forward", lambda: metal.attention_forward(q, k, v, *args)))
            prob = problem(q, k, v, *args[:4], False, 0)
            lib = runtime.library(metal.ATTENTION_SHADER, "cpu")
            fwd += [("  of which geometry (_Problem" + (", cached)" if problem is not metal._Problem else ")"),
                     lambda: problem(q, k, v, *args[:4], False, 0)),
                    ("  of which two outputs (NaN-poisoned on CPU)",
                     lambda: (metal._new_output(q.shape, q.dtype, q.device),
                              metal._new_output(q.shape[:-1], torch.float32, q.device))),
                    ("  of which library lookup", lambda: runtime.library(metal.ATTENTION_SHADER, "cpu")),
                    ("  of which geom buffer", lambda: prob.geometry(q.device, tensors=(q, k, v, q, q))),
                    ("  of which launch call (no-op kernel)",
                     lambda: prob.launch(lib, "attn_forward", q.dtype, q, k, v, q, q, out, lse,
                                         prob.geometry(q.device, tensors=(q, k, v, q, q)), 0.1))]
        else:
            fwd.append(("backends.pure.na_forward", lambda: pure.na_forward(q, k, v, *args)))
        rows += [(path, "forward", e, fn and with_path(path, no_grad(fn))) for e, fn in fwd]
        bimpl = (lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *args)) if path == "metal" else \
            (lambda: pure.na_backward(dout, None, q, k, v, out, lse, *args))
        fb = [("natten_mps.na1d + backward (public call)", backward_of(lambda: natten_mps.na1d(qg, kg, vg, 3))),
              ("  of which forward recording the graph", lambda: natten_mps.na1d(qg, kg, vg, 3)),
              ("ops.neighborhood_attention + backward", backward_of(lambda: ops.neighborhood_attention(qg, kg, vg, *args))),
              (f"backends.{path} backward alone", bimpl)]
        rows += [(path, "forward+backward", e, with_path(path, fn)) for e, fn in fb]
    return rows


def run_stages(args) -> List[List[str]]:
    """The per-stage breakdown in a worker per checkout (this one, and ``--base-path``'s), interleaved."""
    workers = {"this": Worker("stages", "cpu")}
    if args.base_path:
        _noop_shim(args.base_path)
        workers["base"] = Worker("stages", "cpu", args.base_path)
    this = workers["this"].proc
    this.stdin.write(json.dumps({"stage": "labels"}) + "\n")
    this.stdin.flush()
    labels = json.loads(this.stdout.readline())["labels"]
    rows = []
    try:
        for index, (path, pass_name, entry) in enumerate(labels):
            t, errors = harness.interleaved_medians({n: w.stage_sampler(index, args.warmup) for n, w in workers.items()},
                                                    args.repeats, per_round=args.per_round)
            rows.append([path, pass_name, entry] + ([fmt_us(t.get("base"))] if args.base_path else [])
                        + [fmt_us(t.get("this"))])
    finally:
        for w in workers.values():
            w.close()
    print(f"\nper-stage breakdown, {STAGE_CASE}, median us (interleaved rounds)\n")
    harness.print_table(["path", "pass", "entry point"] + (["base us"] if args.base_path else []) + ["this us"],
                        rows, markdown=True)
    return rows


# ---- parent --------------------------------------------------------------------------------------
def _git(root: str, *args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def header(argv) -> List[str]:
    import torch
    return [f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"commit: {_git(ROOT, 'rev-parse', '--short', 'HEAD')}" + (" (uncommitted changes)"
                                                                        if _git(ROOT, 'status', '--porcelain', '--untracked-files=no') else ""),
            f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
            f"torch {torch.__version__}, python {platform.python_version()}",
            "command: python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + list(argv))]


def fmt_us(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.1f}"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return "—" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--cases", nargs="+", default=None, help=f"CPU cases (default all: {' '.join(CASES)})")
    ap.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    ap.add_argument("--passes", nargs="+", choices=["fwd", "fwdbwd"], default=["fwd", "fwdbwd"])
    ap.add_argument("--dtypes", nargs="+", default=["float32"], help="CUDA proxy dtypes")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--base-path", help="a checkout of another commit, timed beside (\"before\" columns)")
    ap.add_argument("--natten-mps-path", default=os.environ.get("NATTEN_MPS_PEER_PATH"),
                    help="natten-mps 0.3.3's folder (--device cuda: its whole call beside ours)")
    ap.add_argument("--no-pure", action="store_true", help="skip the pure path columns")
    ap.add_argument("--stages", action="store_true", help="also print the per-stage breakdown (this checkout)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    for line in header(argv):
        print(line)
    if args.base_path:
        print(f"base: {args.base_path} at commit {_git(args.base_path, 'rev-parse', '--short', 'HEAD')}")
    cuda = args.device == "cuda"
    kinds = {"sdpa": Worker("sdpa", args.device), "metal": Worker("metal", args.device)}
    if not cuda and not args.no_pure:
        kinds["pure"] = Worker("pure", args.device)
    if args.base_path and not cuda:
        _noop_shim(args.base_path)
        kinds["base metal"] = Worker("metal", args.device, args.base_path)
        if not args.no_pure:
            kinds["base pure"] = Worker("pure", args.device, args.base_path)
    if args.natten_mps_path:     # on CPU its pure path (its Metal path needs MPS), on CUDA its Metal path
        kinds["natten-mps"] = Worker("natten-mps", args.device, natten_mps_path=args.natten_mps_path)
    cases = list(SEED) if cuda else (args.cases or CASES)
    dtypes = args.dtypes if cuda else ["float32"]
    results, rows, notes = [], [], set()
    try:
        for mode in args.modes:
            for backward in [p == "fwdbwd" for p in args.passes]:
                for dtype in dtypes:
                    for case in cases:
                        samplers = {name: w.sampler(case, backward, mode == "compile", dtype, args.warmup)
                                    for name, w in kinds.items()}
                        t, errors = harness.interleaved_medians(samplers, args.repeats, per_round=args.per_round)
                        for name, err in errors.items():
                            notes.add(f"{name}, {case} {mode} {'fwd+bwd' if backward else 'fwd'}: {err}")
                        row = dict(case=case, dtype=dtype, mode=mode, backward=backward,
                                   **{f"{k.replace(' ', '_').replace('-', '_')}_us": v for k, v in t.items()})
                        results.append(row)
                        rows.append([case + (f" {dtype}" if cuda else ""), mode, "fwd+bwd" if backward else "fwd"]
                                    + [fmt_us(t.get(k)) for k in kinds]
                                    + [ratio(t.get("metal"), t.get("sdpa"))]
                                    + ([ratio(t.get("metal" if cuda else "pure"), t.get("natten-mps"))]
                                       if "natten-mps" in kinds else [])
                                    + ([ratio(t.get("pure"), t.get("sdpa"))] if "pure" in kinds else [])
                                    + ([ratio(t.get("metal"), t.get("base metal"))] if "base metal" in kinds else [])
                                    + ([ratio(t.get("pure"), t.get("base pure"))] if "base pure" in kinds else []))
    finally:
        for w in kinds.values():
            w.close()
    what = ("whole call, Metal path translated to CUDA (real kernels), synchronised" if cuda else
            "host cost: Metal path on CPU tensors with no-op launches; pure path computing")
    print(f"\nbench_overhead: {what}; median us of {args.repeats} (interleaved rounds of {args.per_round})\n")
    headers = ["case", "mode", "pass"] + [f"{k} us" for k in kinds] + ["metal/SDPA"] \
        + ([("metal" if cuda else "pure") + "/natten-mps"] if "natten-mps" in kinds else []) + (["pure/SDPA"] if "pure" in kinds else []) \
        + (["metal after/before"] if "base metal" in kinds else []) + (["pure after/before"] if "base pure" in kinds else [])
    harness.print_table(headers, rows, markdown=True)
    stage_rows = []
    if args.stages and not cuda:
        stage_rows = run_stages(args)
    for n in sorted(notes):
        print(f"note: {n}")
    if args.json:
        harness.write_json(args.json, {"header": header(argv), "device": args.device, "results": results,
                                       "stages": stage_rows, "notes": sorted(notes)})
    return results


if __name__ == "__main__":
    main()
