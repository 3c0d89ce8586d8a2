"""A kernel family that fails on a Mac falls back to the pure path: at import (a stand-in
``compile_shader`` on a simulated MPS machine) and during a call (the emulator refusing a pipeline or
a launch). Results stay correct against the float64 reference, one warning per family names the
shader, the kernel, the torch and macOS versions and the compiler's message, the support matrix
reports the family, and strict mode raises instead."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from natten_mps.metal import msl, runtime
from reference import reference_na, reference_split_qk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A simulated Mac: MPS "available", compile_shader a stand-in that rejects one unit (attention.metal's
# float16 kernels) as Apple's compiler would, and hands the emulator's library back for the others.
_SIMULATED_IMPORT = r"""
import json, sys, warnings
import torch
warnings.simplefilter("always")
torch.backends.mps.is_available = lambda: True
calls = []
class Library:            # what compile_shader returns for a unit that compiles (never launched here)
    pass
def compile_shader(source):
    calls.append(len(source))
    if "\nINSTANTIATE_ATTN_DTYPE(float16, half)" in source:
        raise RuntimeError("program_source:812:12: error: no matching function for call to 'planted'")
    return Library()
torch.mps.compile_shader = compile_shader
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import natten_mps, sage_mps
from natten_mps.metal import runtime
from natten_mps.backends import metal
fam = natten_mps.get_support_matrix()["metal"]["families"]
meta = lambda dt: torch.empty(1, 8, 2, 16, dtype=dt, device="meta")
print(json.dumps({
    "warnings": [str(w.message) for w in caught if w.category.__name__ == "MetalFallbackWarning"],
    "compiles": len(calls),
    "families": {k: v["available"] for k, v in fam.items()},
    "failure": fam["natten/attention.metal [float16]"]["failures"],
    "supported_f16": metal.supported(meta(torch.float16)),
    "supported_f32": metal.supported(meta(torch.float32)),
    "matrix_f16": natten_mps.get_support_matrix()["metal"]["ops"]["na2d_forward"]["float16"],
}))
"""


def _run_simulated(extra_env=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NATTEN_MPS_STRICT", None)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", _SIMULATED_IMPORT], capture_output=True, text=True, env=env,
                          cwd=ROOT)


def test_failing_unit_at_import_falls_back_with_one_warning():
    import json
    proc = _run_simulated()
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # one compile a unit: 3 shaders x 3 dtypes, each failing unit costing only itself
    assert r["compiles"] == 9
    assert len(r["warnings"]) == 1, r["warnings"]
    msg = r["warnings"][0]
    for needle in ("shaders/natten/attention.metal", "[float16]", "compile failed", f"torch {torch.__version__}",
                   "macOS", "no matching function for call to 'planted'", "attn_"):
        assert needle in msg, (needle, msg)
    assert r["families"]["natten/attention.metal [float16]"] is False
    assert sum(not ok for ok in r["families"].values()) == 1
    assert r["failure"][0]["stage"] == "compile"
    assert r["supported_f16"] is False and r["supported_f32"] is True and r["matrix_f16"] is False


def test_failing_unit_at_import_raises_in_strict_mode():
    proc = _run_simulated({"NATTEN_MPS_STRICT": "1"})
    assert proc.returncode != 0
    assert "ShaderCompileError" in proc.stderr and "planted" in proc.stderr


@pytest.fixture
def fallback_state(monkeypatch):
    """Emulated Metal path with failures falling back (as on MPS); the runtime's family state and
    compiled units restored afterwards."""
    saved = (dict(runtime._unavailable), dict(runtime._unit_libs), dict(runtime._libs))
    runtime.set_strict(False)
    natten_mps.set_emulation(True)
    runtime._libs.clear()
    runtime._unit_libs.clear()      # units compile again (from the emulator's in-process cache when unchanged)
    yield monkeypatch
    runtime.set_strict(None)
    for store, old in zip((runtime._unavailable, runtime._unit_libs, runtime._libs), saved):
        store.clear()
        store.update(old)


def _fallback_warnings(caught):
    return [w for w in caught if issubclass(w.category, runtime.MetalFallbackWarning)]


def test_pipeline_refused_during_a_call_falls_back(fallback_state):
    """split.metal's float32 unit with a kernel over 32 KB of threadgroup memory: the emulator refuses
    the pipeline on first use, the split op answers from the pure path, once with a warning."""
    original = runtime.shader_source

    def source(name):
        text = original(name)
        if name == "natten/split.metal":
            head = text.index("{", text.index("split_qk("))
            text = text[:head + 1] + " threadgroup float planted[9000];" + text[head + 1:]
        return text

    fallback_state.setattr(runtime, "shader_source", source)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 9, 2, 8, generator=g), torch.randn(1, 9, 2, 8, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = natten_mps.na1d_qk(q, k, 3, is_causal=True)
        second = natten_mps.na1d_qk(q, k, 3, is_causal=True)
    found = _fallback_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in caught]
    msg = str(found[0].message)
    for needle in ("shaders/natten/split.metal", "[float32]", "pipeline failed", "split_qk_float32", "36000 bytes",
                   "maxThreadgroupMemoryLength", f"torch {torch.__version__}"):
        assert needle in msg, (needle, msg)
    want = reference_split_qk(q, k, (3,), (1,), (1,), (True,))
    for got in (first, second):
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        fin = torch.isfinite(want)
        torch.testing.assert_close(got.double()[fin], want[fin], atol=TOL[torch.float32], rtol=TOL[torch.float32])
    assert natten_mps.last_backend() == "pure"          # the family is off for the process
    status = natten_mps.get_support_matrix()["metal"]["families"]["natten/split.metal [float32]"]
    assert status["available"] is False and status["failures"][0]["kernel"] == "split_qk_float32"


def test_launch_refused_during_backward_falls_back(fallback_state):
    """The forward runs on the emulated Metal kernels; the backward's first launch is refused (as a
    Metal runtime would refuse a dispatch): gradients come from the pure path and match the reference."""
    from natten_mps.metal import emulator
    real_call = emulator.EmulatedKernel.__call__

    def call(self, *args, **kwargs):
        if self.name.startswith("attn_backward"):
            raise msl.LaunchRefusedError(f"kernel {self.name}: planted dispatch refusal")
        return real_call(self, *args, **kwargs)

    fallback_state.setattr(emulator.EmulatedKernel, "__call__", call)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 12, 2, 16, generator=g, requires_grad=True) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = natten_mps.na1d(q, k, v, 5, dilation=2)
        assert natten_mps.last_backend() == "metal"
        dout = torch.randn(out.shape, generator=g)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        out2 = natten_mps.na1d(q, k, v, 5, dilation=2)          # the family is off now: pure path
        assert natten_mps.last_backend() == "pure"
    found = _fallback_warnings(caught)
    assert len(found) == 1 and "launch failed" in str(found[0].message)
    assert "planted dispatch refusal" in str(found[0].message)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ro, _ = reference_na(qd, kd, vd, (5,), (1,), (2,), (False,))
    rg = torch.autograd.grad(ro, (qd, kd, vd), dout.double())
    for o in (out, out2):
        torch.testing.assert_close(o.detach().double(), ro.detach(), atol=TOL[torch.float32], rtol=TOL[torch.float32])
    for a, b in zip(grads, rg):
        torch.testing.assert_close(a.double(), b, atol=GRAD_TOL[torch.float32], rtol=GRAD_TOL[torch.float32])


def test_emulator_failures_raise_by_default(monkeypatch):
    """Off MPS the default is strict: a refused launch under the emulator is an error the tests see."""
    from natten_mps.metal import emulator
    monkeypatch.setattr(emulator.EmulatedKernel, "__call__",
                        lambda self, *a, **k: (_ for _ in ()).throw(msl.LaunchRefusedError("planted")))
    natten_mps.set_emulation(True)
    q = torch.randn(1, 8, 1, 8)
    with pytest.raises(msl.LaunchRefusedError, match="planted"):
        natten_mps.na1d(q, q, q, 3)
    assert runtime.family_available("natten/attention.metal", "float32")


def test_import_without_mps_compiles_nothing_and_is_quick():
    """``import natten_mps, sage_mps`` without MPS: no unit compiled; the time beyond torch's own import
    is printed (docs/first-mac.md) and bounded loosely here (a shared 2-core machine)."""
    code = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter()\n"
            "import natten_mps, sage_mps; t2 = time.perf_counter()\n"
            "from natten_mps.metal import runtime\n"
            "assert not runtime._unit_libs and not runtime.build_log()\n"
            "print(f'{t1 - t0:.3f} {t2 - t1:.3f}')")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_s, ours_s = map(float, proc.stdout.split())
    assert ours_s < 3.0, (torch_s, ours_s)


class _FakeMpsKernel:
    """Stands for a ``compile_shader`` kernel object whose pipeline allows fewer threads."""

    def __init__(self, limit):
        self.max_threads_per_threadgroup = limit
        self.calls = 0

    def __call__(self, *args, threads=None, group_size=None):
        self.calls += 1


class _FakeMpsLibrary:
    def __init__(self, limits):
        self._k = {n: _FakeMpsKernel(v) for n, v in limits.items()}

    def __dir__(self):
        return list(self._k)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self.__dict__["_k"][name]


def test_mps_pipeline_limits_are_read_and_never_exceeded(fallback_state):
    """On MPS the host reads each pipeline's max_threads_per_threadgroup (the family minimum) and a
    launch over a kernel's own limit is refused before dispatch: strict raises, otherwise the family
    falls back once with a warning."""
    lib = _FakeMpsLibrary({"split_qk_float32": 512, "split_av_float32": 192, "split_inverse_float32": 1024})
    fallback_state.setitem(runtime._unit_libs, ("natten/split.metal", "float32", "mps"), lib)
    assert runtime.thread_limit("natten/split.metal", "mps", "float32") == 192
    assert runtime.thread_limit("natten/split.metal", "mps", "float32", contains="_qk_") == 512
    guarded = runtime.library("natten/split.metal", "mps").split_av_float32
    guarded(threads=1024, group_size=192)
    runtime.set_strict(True)
    with pytest.raises(msl.LaunchRefusedError, match="split_av_float32.*256 threads.*\\(192\\)"):
        guarded(threads=1024, group_size=(256,))
    runtime.set_strict(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with pytest.raises(runtime.FamilyUnavailableError):
                guarded(threads=1024, group_size=256)
    assert len(_fallback_warnings(caught)) == 1 and lib._k["split_av_float32"].calls == 1
    assert not runtime.family_available("natten/split.metal", "float32")
    assert runtime.thread_limit("natten/split.metal", "mps", "float32") == 0


def test_build_every_family_is_strict_when_asked(fallback_state):
    rows = runtime.build_every_family(["natten/split.metal"], "cpu")
    assert [(r["unit"], r["kernels"]) for r in rows] == [("float32", 3), ("float16", 3), ("bfloat16", 3)]
    original = runtime.shader_source
    fallback_state.setattr(runtime, "shader_source",
                           lambda n: original(n).replace("kernel void split_av", "kernel void split_av_undeclared(")
                           if n == "natten/split.metal" else original(n))
    runtime._unit_libs.clear()
    runtime._libs.clear()
    runtime.set_strict(True)
    with pytest.raises(runtime.ShaderCompileError):
        runtime.build_every_family(["natten/split.metal"], "cpu")


def test_ci_runs_the_readme_command_and_checks_the_metal_build_on_macos():
    text = open(os.path.join(ROOT, ".github", "workflows", "tests.yml")).read()
    assert "<!-- test-command -->" in text and 'eval "$cmd"' in text
    assert "download.pytorch.org/whl/cpu" in text and "natten==0.21.7" in text
    assert "macos-14" in text and "build_every_family" in text and "NATTEN_MPS_STRICT" in text
    assert text.count("python -m natten_mps.doctor") == 2
