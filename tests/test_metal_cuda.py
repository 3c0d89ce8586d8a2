"""The MSL -> CUDA back end: translation checks (CPU, needs nvcc) and every shader on a CUDA GPU.

* With ``nvcc`` on the machine (no GPU needed), every ``.metal`` file under ``shaders/`` and every
  kernel of the back ends' feature tests (``test_emulator.py``) is translated and compiled with
  ``nvcc -c``, so a translation error shows up in CI.
* With a CUDA GPU, the public API runs its Metal code path on CUDA tensors (``metal_on_cuda``
  fixture): the emulator's random sweep against the float64 reference, every dtype, outputs poisoned
  before the kernels write them; sageattn through the same kernels; the launch rules. The feature
  tests of ``test_emulator.py`` run on the GPU through its ``backend`` fixture.
"""
import random
import re
from pathlib import Path

import pytest
import torch

import natten_mps
from natten_mps.metal import cuda, msl, runtime
from test_na_correctness import random_config, run_case

needs_nvcc = pytest.mark.skipif(not cuda.nvcc_available(), reason="needs nvcc")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def shader_names():
    root = runtime.shader_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.metal"))


@needs_nvcc
@pytest.mark.parametrize("name", shader_names())
def test_every_shader_translates_and_compiles(name, tmp_path, monkeypatch):
    monkeypatch.setenv("NATTEN_MPS_CUDA_CACHE", str(tmp_path))
    obj = cuda.check_translation(runtime.shader_source(name), name)
    assert obj.exists() and obj.stat().st_size > 0


@needs_nvcc
def test_translation_check_reports_compile_errors(tmp_path, monkeypatch):
    """The check (unoptimised device code, PTX only) still fails on a source nvcc rejects, naming it."""
    monkeypatch.setenv("NATTEN_MPS_CUDA_CACHE", str(tmp_path))
    bad = HEADER + """kernel void broken(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i] = not_declared_anywhere + 1.0f;
}"""
    with pytest.raises(msl.ShaderCompileError, match="not_declared_anywhere"):
        cuda.check_translation(bad, "broken kernel")


@needs_nvcc
def test_feature_test_kernels_translate_and_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("NATTEN_MPS_CUDA_CACHE", str(tmp_path))
    text = (Path(__file__).parent / "test_emulator.py").read_text()
    bodies = re.findall(r'lib\("""(.*?)"""', text, flags=re.S)
    compiled = 0
    for body in bodies:
        try:
            msl.find_kernels(msl.preprocess(HEADER + body, "test"))
        except msl.ShaderCompileError:
            continue    # kernels the front end must refuse (tested in test_emulator.py)
        cuda.check_translation(HEADER + body, "test kernel")
        compiled += 1
    assert compiled >= 14


def test_translation_marks_functions_device_and_keeps_names():
    src = HEADER + """
struct Pair { float a; float b; float sum() const { return a + b; } };
constant float kTable[2] = {1.0f, 2.0f};
inline float twice(float x) { if (x > 0) { return 2 * x; } return x; }
template <typename T> kernel void k(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  threadgroup float tile[4];
  for (int j = 0; j < 2; ++j) { out[i] = T(twice(kTable[j])); }
}
template [[host_name("k_float")]] kernel void k<float>(device float* out [[buffer(0)]],
                                                        uint i [[thread_position_in_grid]]);
"""
    text, specs = cuda.translate(src)
    assert [k.host_name for k in specs] == ["k_float"]
    assert re.search(r"__device__\s+float sum\(\) const", text)
    assert re.search(r"__device__\s+inline float twice", text)
    assert re.search(r"template <typename T>\s+__device__\s+void k\(", text)
    assert "__device__ const float kTable[2]" in text
    assert "__shared__ float tile[4];" in text
    assert "host_name" not in text and "[[" not in text.split("namespace metal {", 1)[1]
    assert not re.search(r"__device__\s+(if|for)\b", text)


# ------------------------------------------------------------------------------------------------
# On a CUDA GPU
# ------------------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(5)])
def test_na_forward_on_cuda_matches_reference_float32(metal_on_cuda, rank, i):
    natten_mps.set_backend("metal")
    cfg = random_config(random.Random(5000 * rank + i), rank)   # the emulator's sweep
    run_case(cfg, torch.float32, seed=i, check_grad=(i % 2 == 0), device="cuda")
    assert natten_mps.last_backend() in ("metal", "pure")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_na_forward_on_cuda_dtypes(metal_on_cuda, rank, dtype):
    natten_mps.set_backend("metal")
    cfg = random_config(random.Random(900 + rank), rank)
    run_case(cfg, dtype, seed=rank, check_grad=False, device="cuda")


@needs_gpu
def test_metal_path_really_runs_on_cuda(metal_on_cuda):
    q = torch.randn(2, 40, 4, 32, device="cuda")
    out = natten_mps.na1d(q, q, q, 7)
    assert natten_mps.last_backend() == "metal" and out.device.type == "cuda"
    natten_mps.set_backend("pure")
    torch.testing.assert_close(out, natten_mps.na1d(q, q, q, 7), atol=2e-5, rtol=2e-5)


@needs_gpu
@pytest.mark.parametrize("causal", [False, True])
def test_sageattn_on_cuda_metal_path(metal_on_cuda, causal):
    import sage_mps
    from test_sage import ref
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 50, 32, generator=g)
    k = torch.randn(2, 2, 50, 32, generator=g) + 4.0
    v = torch.randn(2, 2, 50, 32, generator=g)
    ro, rl = ref(q, k, v, causal, 0.15)
    out, lse = sage_mps.sageattn(q.cuda(), k.cuda(), v.cuda(), is_causal=causal, sm_scale=0.15, return_lse=True)
    assert natten_mps.last_backend() == "metal"
    torch.testing.assert_close(out.cpu().double(), ro, atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(lse.cpu().double(), rl, atol=3e-5, rtol=3e-5)


@needs_gpu
def test_cuda_library_launch_rules():
    lib = cuda.compile(HEADER + """
kernel void fill(device float* out [[buffer(0)]], constant float& val [[buffer(1)]],
                 constant long& n [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  if ((long)i < n) out[i] = val + float(i);
}
kernel void narrow(device float* out [[buffer(0)]], constant int& n [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) { out[i] = float(n); }
""")
    out = torch.full((1000,), float("nan"), device="cuda")
    lib.fill(out, 0.5, 1000, threads=1000, group_size=96)    # partial last threadgroup
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), torch.arange(1000, dtype=torch.float32) + 0.5)
    with pytest.raises(TypeError, match="64-bit"):
        lib.narrow(out, 3, threads=1000)
    with pytest.raises(TypeError, match="cuda tensors"):
        lib.fill(out.cpu(), 0.5, 10, threads=10)
    # third-party shaders declare `constant int&` for Python ints: MPS reads the low 4 bytes
    lenient = cuda.compile(HEADER + """
kernel void narrow(device float* out [[buffer(0)]], constant int& n [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) { out[i] = float(n); }
""", strict_scalars=False)
    lenient.narrow(out, -7, threads=1000)
    torch.cuda.synchronize()
    assert torch.all(out.cpu() == -7.0)
