"""Metal's limits, enforced by both back ends as the Metal runtime would: 32 KB of threadgroup memory
(pipeline creation; the emulator also counts what a threadgroup allocates at dispatch), at most 1024
threads a threadgroup and never more than the pipeline's own ``max_threads_per_threadgroup``
(dispatch). A lower pipeline limit can be simulated (``NATTEN_MPS_EMULATE_MAX_THREADS``); every op
then still runs on the Metal path, with threadgroups that fit, and matches the reference."""
import os
import subprocess
import sys

import pytest
import torch

import natten_mps
import sage_mps
from conftest import GRAD_TOL, TOL
from natten_mps.metal import cuda, emulator, msl
from reference import reference_attention, reference_na, reference_split_av, reference_split_qk

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"
BIG = HEADER + """
constant constexpr int kExtra = 4096 + 512;
template <typename T>
kernel void big(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]],
                uint t [[thread_index_in_threadgroup]]) {
  threadgroup vec<T, 4> stage[1024];          // 16 KB of float4, 8 KB of half4
  threadgroup T extra[kExtra];
  stage[t] = vec<T, 4>(T(1));
  extra[t] = T(2);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const vec<T, 4> s = stage[t];
  out[i] = s.x + extra[t];
}
template [[host_name("big_float")]] kernel void big<float>(device float* out [[buffer(0)]],
    uint i [[thread_position_in_grid]], uint t [[thread_index_in_threadgroup]]);
template [[host_name("big_half")]] kernel void big<half>(device half* out [[buffer(0)]],
    uint i [[thread_position_in_grid]], uint t [[thread_index_in_threadgroup]]);
kernel void small(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) { out[i] = 1.0f; }
"""
# big<float>: 16384 + 4608 * 4 = 34816 bytes (over 32 KB); big<half>: 8192 + 4608 * 2 = 17408 bytes


def test_static_threadgroup_bytes_from_the_front_end():
    clean = msl.preprocess(BIG, "big.metal")
    sizes = {k.host_name: msl.threadgroup_bytes(clean, k) for k in msl.find_kernels(clean)}
    assert sizes == {"big_float": 34816, "big_half": 17408, "small": 0}


def test_project_shaders_fit_in_32_kb():
    from natten_mps.metal import runtime
    for name in ("natten/attention.metal", "natten/split.metal", "sage/int8_attention.metal"):
        clean = msl.preprocess(runtime.shader_source(name), name)
        for k in msl.find_kernels(clean):
            b = msl.threadgroup_bytes(clean, k)
            assert b is not None and b <= msl.MAX_THREADGROUP_MEMORY, (k.host_name, b)


def test_emulator_refuses_threadgroup_memory_over_32_kb():
    lib = emulator.compile(BIG, "big.metal")
    out = torch.zeros(64)
    with pytest.raises(msl.LaunchRefusedError, match=r"big_float .*34816 bytes.*maxThreadgroupMemoryLength"):
        lib.big_float                                   # pipeline creation
    lib.big_half(out.half(), threads=64, group_size=64)  # 17 KB: fine
    # the dispatch-time count of what a threadgroup allocates, on its own (static size unknown)
    kernel = lib._kernels["big_float"]
    kernel.static_thread_group_memory_length = None
    with pytest.raises(emulator.ThreadgroupMemoryError, match=r"big_float.*34816 bytes.*32768"):
        kernel(out, threads=64, group_size=64)


def test_emulator_refuses_threads_over_the_pipeline_limit(monkeypatch):
    lib = emulator.compile(BIG, "big.metal")
    out = torch.zeros(2048)
    with pytest.raises(msl.LaunchRefusedError, match="small.*exceeds 1024"):
        lib.small(out, threads=2048, group_size=2048)
    monkeypatch.setattr(msl, "_pipeline_thread_limit", 384)
    assert lib.small.max_threads_per_threadgroup == 384
    with pytest.raises(msl.LaunchRefusedError, match=r"small.*512 threads.*max_threads_per_threadgroup \(384\)"):
        lib.small(out, threads=2048, group_size=(512,))
    lib.small(out, threads=2048)                         # the default group is the pipeline's limit
    assert lib.small.last_stats.threadgroups == 6 and bool((out == 1).all())


def test_cuda_back_end_checks_before_launch(monkeypatch):
    """The CUDA back end's checks run in Python before its launcher (no GPU needed): a stand-in
    launcher records whether it was reached."""
    _, specs = cuda.translate(BIG, "big.metal")
    clean = msl.preprocess(BIG, "big.metal")
    reached = []

    class Lib(msl.KernelLibrary):
        label, strict_scalars = "big.metal", True

        def __init__(self):
            self._kernels = {k.host_name: cuda.CudaKernel(self, k, lambda *a: reached.append(1) or 0,
                                                          msl.threadgroup_bytes(clean, k)) for k in specs}

    lib = Lib()
    with pytest.raises(msl.LaunchRefusedError, match=r"big_float .*34816 bytes"):
        lib.big_float
    assert lib.big_half.static_thread_group_memory_length == 17408
    t = torch.zeros(2048)      # on CPU: the checks come before the device checks of a real launch
    with pytest.raises(msl.LaunchRefusedError, match="small.*exceeds 1024"):
        lib.small(t, threads=2048, group_size=2048)
    monkeypatch.setattr(msl, "_pipeline_thread_limit", 256)
    assert lib.small.max_threads_per_threadgroup == 256
    with pytest.raises(msl.LaunchRefusedError, match=r"small.*384 threads.*\(256\)"):
        lib.small(t, threads=2048, group_size=384)
    assert not reached


def test_emulated_limit_switch_is_validated():
    env = dict(os.environ, NATTEN_MPS_EMULATE_MAX_THREADS="100", PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", "import natten_mps.metal.msl"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode != 0 and "multiple of 32" in proc.stderr
    env["NATTEN_MPS_EMULATE_MAX_THREADS"] = "384"
    proc = subprocess.run([sys.executable, "-c", "from natten_mps.metal import msl; print(msl.emulated_max_threads())"],
                          capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "384"
    with pytest.raises(ValueError, match="multiple of 32"):
        msl.set_emulated_max_threads(1000)


@pytest.fixture(params=[64, 256, 384])
def pipeline_limit(request):
    """The emulated pipelines report ``max_threads_per_threadgroup`` = the parameter; a launch over it
    raises (strict under the emulator), so a passing op never exceeded it."""
    natten_mps.set_emulation(True)
    msl.set_emulated_max_threads(request.param)
    yield request.param
    msl.set_emulated_max_threads(None)


def _rand(*shape, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def _check_na(fn, q, k, v, ks, st, dil, causal, **kw):
    out = fn(q, k, v, ks, stride=st, dilation=dil, is_causal=causal, **kw)
    assert natten_mps.last_backend() == "metal"
    dout = _rand(*out.shape, seed=9)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ro, _ = reference_na(qd, kd, vd, ks, st, dil, causal)
    rg = torch.autograd.grad(ro, (qd, kd, vd), dout.double())
    torch.testing.assert_close(out.detach().double(), ro.detach(), atol=TOL[torch.float32], rtol=TOL[torch.float32])
    for a, b in zip(grads, rg):
        torch.testing.assert_close(a.double(), b, atol=GRAD_TOL[torch.float32], rtol=GRAD_TOL[torch.float32])


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_na_under_a_lower_pipeline_limit(pipeline_limit, rank):
    spatial = {1: (40,), 2: (9, 10), 3: (5, 6, 4)}[rank]
    ks, st, dil = {1: ((5,), (2,), (2,)), 2: ((3, 5), (1, 2), (2, 1)), 3: ((3, 3, 2), (1, 1, 2), (1, 2, 1))}[rank]
    causal = (True,) + (False,) * (rank - 1)
    q, k, v = (_rand(2, *spatial, 4, 16, seed=s, grad=True) for s in range(3))
    _check_na(getattr(natten_mps, f"na{rank}d"), q, k, v, ks, st, dil, causal)


def test_varlen_split_and_dense_under_a_lower_pipeline_limit(pipeline_limit):
    # varlen: sample 1 shorter than the padded length
    q, k, v = (_rand(2, 20, 2, 16, seed=10 + s, grad=True) for s in range(3))
    out = natten_mps.na1d_varlen(q, k, v, torch.tensor([20, 13]), 5)
    assert natten_mps.last_backend() == "metal"
    dout = _rand(*out.shape, seed=11)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for b, n in ((0, 20), (1, 13)):
        qd, kd, vd = (t.detach()[b:b + 1, :n].double().requires_grad_() for t in (q, k, v))
        ro, _ = reference_na(qd, kd, vd, (5,), (1,), (1,), (False,))
        rg = torch.autograd.grad(ro, (qd, kd, vd), dout[b:b + 1, :n].double())
        torch.testing.assert_close(out[b:b + 1, :n].detach().double(), ro.detach(), atol=TOL[torch.float32],
                                   rtol=TOL[torch.float32])
        for a, r in zip(grads, rg):
            torch.testing.assert_close(a[b:b + 1, :n].double(), r, atol=GRAD_TOL[torch.float32],
                                       rtol=GRAD_TOL[torch.float32])
    # split ops
    q2, k2, v2 = (_rand(1, 6, 7, 2, 8, seed=20 + s) for s in range(3))
    w = natten_mps.na2d_qk(q2, k2, (3, 3), (2, 1))
    assert natten_mps.last_backend() == "metal"
    want = reference_split_qk(q2, k2, (3, 3), (1, 1), (2, 1), (False, False))
    torch.testing.assert_close(w.double(), want, atol=TOL[torch.float32], rtol=TOL[torch.float32])
    o = natten_mps.na2d_av(w.softmax(-1), v2, (3, 3), (2, 1))
    torch.testing.assert_close(o.double(), reference_split_av(w.softmax(-1), v2, (3, 3), (1, 1), (2, 1), (False, False)),
                               atol=TOL[torch.float32], rtol=TOL[torch.float32])
    # dense attention, causal, GQA
    qa, ka, va = _rand(2, 33, 4, 16, seed=30, grad=True), _rand(2, 33, 2, 16, seed=31, grad=True), \
        _rand(2, 33, 2, 16, seed=32, grad=True)
    out = natten_mps.attention(qa, ka, va, is_causal=True)
    assert natten_mps.last_backend() == "metal"
    ro, _ = reference_attention(qa.detach(), ka.detach(), va.detach(), is_causal=True)
    torch.testing.assert_close(out.detach().double(), ro, atol=TOL[torch.float32], rtol=TOL[torch.float32])
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qa, ka, va))


@pytest.mark.parametrize("quant", [None, "int8"])
def test_sageattn_under_a_lower_pipeline_limit(pipeline_limit, quant):
    q, k, v = (_rand(1, 2, 70, 32, seed=40 + s) for s in range(3))        # HND
    out = sage_mps.sageattn(q, k, v, is_causal=True, qk_quant=quant)
    on_metal = natten_mps.last_backend() == "metal"
    # the INT8 forward's tiling is fixed at 256 threads: below that limit it takes the pure path
    assert on_metal == (quant is None or pipeline_limit >= 256)
    natten_mps.set_emulation(False)
    pure = sage_mps.sageattn(q, k, v, is_causal=True, qk_quant=quant)
    natten_mps.set_emulation(True)
    torch.testing.assert_close(out, pure, atol=2e-4 if quant else TOL[torch.float32], rtol=1e-3)
    ro, _ = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    tol = 5e-2 if quant else TOL[torch.float32]
    torch.testing.assert_close(out.transpose(1, 2).double(), ro, atol=tol, rtol=tol)
