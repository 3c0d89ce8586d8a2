"""The wheel ships the shaders; every shader passes the static Metal check; imports stay light."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from natten_mps.metal import runtime, static_check

ROOT = Path(__file__).resolve().parent.parent


def test_every_shader_passes_static_check():
    files = sorted(p for p in (ROOT / "shaders").rglob("*") if p.suffix in (".metal", ".h"))
    assert any(p.suffix == ".metal" for p in files)
    assert static_check.check_files(files) == []


@pytest.mark.parametrize("src,needle", [
    ("kernel void f(device double* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = 0; }", "double"),
    ("inline float g(float* p) { return p[0]; }", "address space"),
    ("inline int fact(int n) { return n <= 1 ? 1 : n * fact(n - 1); }", "recursion"),
    ("inline float h(float x) { return std::exp(x); }", "std::"),
    ("inline void p(int x) { printf(\"%d\", x); }", "I/O"),
    ("inline void a() { float* p = new float[4]; }", "allocation"),
    ("inline long w(long kernel, long s) { return kernel + s; }", "keyword"),
])
def test_static_check_catches_planted_constructs(src, needle):
    problems = static_check.check_source(src, "planted.metal")
    assert problems and any(needle in msg for _, _, msg in problems), problems


def test_static_check_accepts_valid_source():
    src = ("inline float g(device const float* p, thread float* t) { return p[0] + t[0]; }\n"
           "kernel void f(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = g(x, 0); }")
    assert static_check.check_source(src) == []


def test_import_is_light_and_compiles_nothing():
    code = ("import sys, natten_mps, sage_mps\n"
            "from natten_mps.metal import runtime\n"
            "assert not runtime._libs, runtime._libs\n"
            "assert 'natten_mps.metal.emulator' not in sys.modules\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_wheel_ships_shaders_and_both_packages(tmp_path):
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(wheel_dir.glob("*.whl"))
    assert len(wheels) == 1
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                           str(wheels[0])], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-3000:]
    code = textwrap.dedent("""
        import torch, natten_mps, sage_mps
        from natten_mps.metal import runtime
        d = runtime.shader_dir()
        assert str(d).startswith(TARGET), d
        assert (d / "natten" / "attention.metal").is_file() and (d / "natten" / "attn_tile.h").is_file()
        natten_mps.set_emulation(True)
        q = torch.randn(1, 9, 2, 4)
        out = natten_mps.na1d(q, q, q, 3)
        assert natten_mps.last_backend() == "metal" and torch.isfinite(out).all()
        print("ok", natten_mps.__file__)
    """).replace("TARGET", repr(str(target)))
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert str(target) in run.stdout


def test_shader_source_inlines_local_includes():
    src = runtime.shader_source("natten/attention.metal")
    assert "na_axis_window" in src and "query_bounds" in src and '#include "' not in src


@pytest.mark.parametrize("env,expected", [
    ({"NATTEN_MPS_EMULATE": "1"}, "metal"),
    ({"NATTEN_MPS_EMULATE": "1", "NATTEN_MPS_BACKEND": "pure"}, "pure"),
    ({}, "pure"),
])
def test_environment_switches(env, expected):
    code = ("import torch, natten_mps, sage_mps\n"
            "q = torch.randn(1, 9, 2, 4)\n"
            "natten_mps.na1d(q, q, q, 3)\n"
            "a = natten_mps.last_backend()\n"
            "sage_mps.sageattn(q, q, q, tensor_layout='NHD')\n"
            "print(a, natten_mps.last_backend())")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NATTEN_MPS_")}
    full_env.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=full_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [expected, expected]


def test_bad_backend_environment_variable_is_a_clear_error():
    env = dict(os.environ, NATTEN_MPS_BACKEND="gpu", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import natten_mps"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode != 0 and "NATTEN_MPS_BACKEND must be one of" in out.stderr
