"""The MSL back ends' own tests: every supported feature, every error the emulator must catch.

The feature tests run on both back ends of the MSL front end: the CPU emulator and, where a CUDA
GPU is present, the CUDA translation (`backend` fixture); the same kernels and the same assertions.
Error detection (bounds, races, barriers) is the emulator's job; on the GPU compute-sanitizer does
it (`benchmarks/sanitize_metal_cuda.py`).
"""
import pytest
import torch

from natten_mps.metal import emulator as em

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


class _OnCuda:
    """A CUDA-translated library called with CPU tensors: arguments go to the GPU and come back."""

    def __init__(self, library):
        self._lib = library

    def kernel_names(self):
        return self._lib.kernel_names()

    def __getattr__(self, name):
        kernel = getattr(self._lib, name)

        def call(*args, **kwargs):
            moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
            kernel(*moved, **kwargs)
            torch.cuda.synchronize()
            for a, m in zip(args, moved):
                if isinstance(a, torch.Tensor):
                    a.copy_(m.cpu())
        return call


def lib(body, backend="emulator"):
    if backend == "cuda":
        from natten_mps.metal import cuda
        return _OnCuda(cuda.compile(HEADER + body))
    return em.compile(HEADER + body)


@pytest.fixture(params=["emulator", "cuda"])
def backend(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("the CUDA back end needs a CUDA GPU")
    return request.param


def test_scalar_binding_rules_and_thread_ids():
    L = lib("""
kernel void fill(device float* out [[buffer(0)]], constant float& val [[buffer(1)]],
                 constant long& n [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  if ((long)i < n) out[i] = val + float(i);
}
kernel void wrong_int(device float* out [[buffer(0)]], constant int& n [[buffer(1)]],
                      uint i [[thread_position_in_grid]]) { out[i] = float(n); }
""")
    out = torch.full((10,), float("nan"))
    L.fill(out, 0.5, 10, threads=10, group_size=4)
    assert torch.equal(out, torch.arange(10, dtype=torch.float32) + 0.5)
    assert L.fill.last_stats.threadgroups == 3 and L.fill.last_stats.threads == 10
    assert L.fill.last_stats.bytes_written == 40
    with pytest.raises(TypeError, match="64-bit"):
        L.fill(out, 1, 10, threads=10)          # int passed for a float scalar
    with pytest.raises(TypeError, match="64-bit"):
        L.wrong_int(out, 3, threads=10)          # Python ints bind as 64-bit, kernel declares int
    with pytest.raises(TypeError, match="declared 'float\\*'"):
        L.fill(out.half(), 1.0, 10, threads=10)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        L.fill(out, 1.0, threads=10)


def test_buffer_index_order_enforced():
    with pytest.raises(em.ShaderCompileError, match="buffer"):
        lib("""kernel void k(device float* a [[buffer(1)]], device float* b [[buffer(0)]],
               uint i [[thread_position_in_grid]]) { a[i] = b[i]; }""")


def test_all_thread_position_attributes_with_partial_groups(backend):
    L = lib("""
kernel void pos(device uint* out [[buffer(0)]],
                uint3 gp [[thread_position_in_grid]], uint3 tp [[thread_position_in_threadgroup]],
                uint3 gid [[threadgroup_position_in_grid]], uint3 tpg [[threads_per_threadgroup]],
                uint3 ngroups [[threadgroups_per_grid]], uint3 grid [[threads_per_grid]],
                uint tidx [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]],
                uint sg [[simdgroup_index_in_threadgroup]], uint width [[thread_execution_width]],
                uint3 dtpg [[dispatch_threads_per_threadgroup]]) {
  uint lin = (gp.z * grid.y + gp.y) * grid.x + gp.x;
  device uint* o = out + lin * 12;
  o[0] = gp.x; o[1] = gp.y; o[2] = gp.z; o[3] = tp.x + 100 * tp.y;
  o[4] = gid.x + 100 * gid.y; o[5] = tpg.x + 100 * tpg.y; o[6] = ngroups.x + 100 * ngroups.y;
  o[7] = tidx; o[8] = lane; o[9] = sg; o[10] = width; o[11] = dtpg.x + 100 * dtpg.y;
}""", backend)
    gx, gy = 7, 5
    out = torch.full((gx * gy * 12,), -1, dtype=torch.int32)
    L.pos(out, threads=(gx, gy, 1), group_size=(4, 3, 1))
    o = out.view(gy, gx, 12)
    for y in range(gy):
        for x in range(gx):
            r = o[y, x].tolist()
            sx, sy = min(4, gx - (x // 4) * 4), min(3, gy - (y // 3) * 3)   # partial edge groups
            tidx = (x % 4) + (y % 3) * sx
            assert r == [x, y, 0, x % 4 + 100 * (y % 3), x // 4 + 100 * (y // 3), sx + 100 * sy,
                         2 + 100 * 2, tidx, tidx % 32, tidx // 32, 32, 4 + 100 * 3]


def test_half_and_bfloat_rounding_match_torch(backend):
    L = lib("""
kernel void cvt(device const float* x [[buffer(0)]], device half* h [[buffer(1)]],
                device bfloat* b [[buffer(2)]], device float* back [[buffer(3)]],
                uint i [[thread_position_in_grid]]) {
  half hv = half(x[i]);
  bfloat bv = bfloat(x[i]);
  h[i] = hv; b[i] = bv;
  back[2 * i] = float(hv * hv);      // half arithmetic rounds per operation
  back[2 * i + 1] = float(bv + bv);
}""", backend)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4000, generator=g) * 100, torch.randn(4000, generator=g) * 1e-3,
                   torch.tensor([65519.0, 65520.0, 1e-8, -0.0, float("inf"), float("nan"), 3.0e38])])
    h = torch.empty(x.shape, dtype=torch.float16)
    b = torch.empty(x.shape, dtype=torch.bfloat16)
    back = torch.empty(2 * x.numel())
    L.cvt(x, h, b, back, threads=x.numel(), group_size=256)
    torch.testing.assert_close(h, x.half(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(b, x.bfloat16(), rtol=0, atol=0, equal_nan=True)
    hh = x.half()
    torch.testing.assert_close(back[0::2], (hh * hh).float(), rtol=0, atol=0, equal_nan=True)
    bb = x.bfloat16()
    torch.testing.assert_close(back[1::2], (bb + bb).float(), rtol=0, atol=0, equal_nan=True)


def test_vectors_and_math(backend):
    L = lib("""
kernel void vm(device const float4* x [[buffer(0)]], device float* out [[buffer(1)]],
               uint i [[thread_position_in_grid]]) {
  float4 a = x[i];
  float4 b = a * 2.0f + float4(1.0f);
  half4 hb = half4(b);
  float2 c = float2(a.x, a.y);
  out[i * 12 + 0] = dot(a, b);
  out[i * 12 + 1] = exp(a.x);
  out[i * 12 + 2] = exp2(a.y);
  out[i * 12 + 3] = log(fabs(a.z) + 1.0f);
  out[i * 12 + 4] = fma(a.x, a.y, a.z);
  out[i * 12 + 5] = max(a.x, a.w);
  out[i * 12 + 6] = clamp(a.y, -0.5f, 0.5f);
  out[i * 12 + 7] = rsqrt(fabs(a.w) + 1.0f);
  out[i * 12 + 8] = fast::exp(a.z) - precise::exp(a.z);
  out[i * 12 + 9] = float(hb.w);
  out[i * 12 + 10] = c.x * c.y + b[2];
  out[i * 12 + 11] = min(a.x, NAN);   // Metal min/max ignore a NaN operand
}""", backend)
    x = torch.randn(64, 4)
    out = torch.empty(64 * 12)
    L.vm(x, out, threads=64, group_size=32)
    o = out.view(64, 12)
    b = x * 2 + 1
    a = x
    torch.testing.assert_close(o[:, 0], (a * b).sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o[:, 1], torch.exp(a[:, 0]))
    torch.testing.assert_close(o[:, 2], torch.exp2(a[:, 1]))
    torch.testing.assert_close(o[:, 3], torch.log(a[:, 2].abs() + 1))
    torch.testing.assert_close(o[:, 4], a[:, 0] * a[:, 1] + a[:, 2])
    torch.testing.assert_close(o[:, 5], torch.maximum(a[:, 0], a[:, 3]))
    torch.testing.assert_close(o[:, 6], a[:, 1].clamp(-0.5, 0.5))
    torch.testing.assert_close(o[:, 7], torch.rsqrt(a[:, 3].abs() + 1))
    if backend == "emulator":
        assert torch.all(o[:, 8] == 0)          # the emulator's fast:: routines are the exact ones
    else:                                       # CUDA's fast::exp is __expf: a few ulp off
        assert torch.all(o[:, 8].abs() <= 1e-5 * torch.exp(a[:, 2]))
    torch.testing.assert_close(o[:, 9], b[:, 3].half().float())
    torch.testing.assert_close(o[:, 10], a[:, 0] * a[:, 1] + b[:, 2])
    torch.testing.assert_close(o[:, 11], a[:, 0])


def test_threadgroup_memory_and_barrier_reduction(backend):
    L = lib("""
template <typename T>
kernel void rowsum(device const T* x [[buffer(0)]], device float* y [[buffer(1)]], constant long& n [[buffer(2)]],
                   uint row [[threadgroup_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                   uint tpg [[threads_per_threadgroup]]) {
  threadgroup float partial[128];
  float acc = 0.0f;
  for (long i = lid; i < n; i += tpg) acc += float(x[row * n + i]);
  partial[lid] = acc;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint s = tpg / 2; s > 0; s /= 2) {
    if (lid < s) partial[lid] = partial[lid] + partial[lid + s];
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (lid == 0) y[row] = partial[0];
}
template [[host_name("rowsum_float")]] kernel void rowsum<float>(device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]], constant long& n [[buffer(2)]], uint row [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]], uint tpg [[threads_per_threadgroup]]);
template [[host_name("rowsum_half")]] kernel void rowsum<half>(device const half* x [[buffer(0)]],
    device float* y [[buffer(1)]], constant long& n [[buffer(2)]], uint row [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]], uint tpg [[threads_per_threadgroup]]);
""", backend)
    assert set(L.kernel_names()) == {"rowsum_float", "rowsum_half"}
    x = torch.randn(6, 300)
    y = torch.full((6,), float("nan"))
    L.rowsum_float(x, y, 300, threads=6 * 128, group_size=128)
    torch.testing.assert_close(y, x.sum(1), rtol=1e-5, atol=1e-4)
    if backend == "emulator":
        assert L.rowsum_float.last_stats.barriers == 6 * 8  # 1 + log2(128) per group
    y.fill_(float("nan"))
    L.rowsum_half(x.half(), y, 300, threads=6 * 128, group_size=128)
    torch.testing.assert_close(y, x.half().float().sum(1), rtol=1e-4, atol=1e-3)


def test_simd_collectives_with_partial_simdgroup(backend):
    L = lib("""
kernel void simd(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                 uint i [[thread_position_in_grid]], uint lane [[thread_index_in_simdgroup]]) {
  float v = x[i];
  y[6 * i + 0] = simd_sum(v);
  y[6 * i + 1] = simd_max(v);
  y[6 * i + 2] = simd_shuffle_xor(v, 1);
  y[6 * i + 3] = simd_shuffle(v, 3);
  y[6 * i + 4] = simd_broadcast(v, 0);
  y[6 * i + 5] = simd_min(v);
}""", backend)
    n = 72  # two full SIMD-groups and a partial one of 8 lanes
    x = torch.randn(n)
    y = torch.full((6 * n,), float("nan"))
    L.simd(x, y, threads=n, group_size=n)
    y = y.view(n, 6)
    for i in range(n):
        lo, hi = (i // 32) * 32, min(n, (i // 32) * 32 + 32)
        grp = x[lo:hi]
        assert abs(y[i, 0] - grp.sum()) < 1e-5
        assert y[i, 1] == grp.max() and y[i, 5] == grp.min()
        partner = lo + ((i - lo) ^ 1)
        assert y[i, 2] == x[partner]
        assert y[i, 3] == x[lo + 3] and y[i, 4] == x[lo]
    if backend == "emulator":
        assert L.simd.last_stats.simd_ops == 6 * n


def test_simdgroup_matrix_multiply_accumulate(backend):
    L = lib("""
kernel void mm(device const float* a [[buffer(0)]], device const half* b [[buffer(1)]],
               device float* c [[buffer(2)]], uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float tile[64];
  simdgroup_float8x8 A, C;
  simdgroup_half8x8 Bm;
  simdgroup_load(A, a, 8);
  simdgroup_load(Bm, b, 8);
  C = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
  simdgroup_multiply_accumulate(C, A, Bm, C);
  simdgroup_store(C, tile, 8);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 D;
  simdgroup_load(D, tile, 8, ulong2(0, 0), true);
  simdgroup_store(D, c, 8);
}""", backend)
    a = torch.randn(8, 8)
    b = torch.randn(8, 8).half()
    c = torch.full((8, 8), float("nan"))
    L.mm(a, b, c, threads=32, group_size=32)
    torch.testing.assert_close(c, (a @ b.float() + 1).T, rtol=1e-5, atol=1e-5)


def test_planted_out_of_bounds_write_is_caught():
    L = lib("""
kernel void oob(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i + 1] = 1.0f;
}
kernel void oob_read(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
  out[i] = x[i - 1];
}""")
    with pytest.raises(em.OutOfBoundsError, match=r"kernel oob .*write to buffer 'out'"):
        L.oob(torch.zeros(16), threads=16, group_size=8)
    with pytest.raises(em.OutOfBoundsError, match=r"kernel oob_read .*read of buffer 'x'"):
        L.oob_read(torch.zeros(16), torch.zeros(16), threads=16, group_size=8)


def test_planted_threadgroup_array_overflow_is_caught():
    L = lib("""
kernel void tgoob(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  threadgroup float tile[8];
  tile[i] = 1.0f;
  out[0] = 0.0f;
}""")
    with pytest.raises(em.OutOfBoundsError, match="threadgroup array 'tile'"):
        L.tgoob(torch.zeros(1), threads=16, group_size=16)


def test_planted_divergent_barrier_is_caught():
    L = lib("""
kernel void divergent(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  if (i < 3) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[i] = 1.0f;
}
kernel void two_barriers(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  if (i % 2 == 0) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  } else {
    threadgroup_barrier(mem_flags::mem_device);
  }
  out[i] = 1.0f;
}""")
    with pytest.raises(em.BarrierDivergenceError, match="kernel divergent"):
        L.divergent(torch.zeros(8), threads=8, group_size=8)
    with pytest.raises(em.BarrierDivergenceError, match="kernel two_barriers.*different barriers"):
        L.two_barriers(torch.zeros(8), threads=8, group_size=8)


def test_planted_threadgroup_races_are_caught():
    L = lib("""
kernel void ww(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  threadgroup float cell[4];
  cell[0] = float(i);                       // every thread writes the same word
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = cell[0];
}
kernel void rw(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  threadgroup float buf[32];
  buf[i] = float(i);
  float neighbour = buf[(i + 1) % 32];     // read of a word another thread writes, no barrier
  out[i] = neighbour;
}
kernel void fine(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  threadgroup float buf[32];
  buf[i] = float(i);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = buf[(i + 1) % 32];
}""")
    with pytest.raises(em.ThreadgroupRaceError, match="kernel ww.*write-write"):
        L.ww(torch.zeros(4), threads=4, group_size=4)
    with pytest.raises(em.ThreadgroupRaceError, match="kernel rw"):
        L.rw(torch.zeros(32), threads=32, group_size=32)
    out = torch.zeros(32)
    L.fine(out, threads=32, group_size=32)
    assert torch.equal(out, (torch.arange(32.0) + 1) % 32)


def test_counters_collect_launches():
    L = lib("""
kernel void copy(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) { y[i] = x[i]; }""")
    x = torch.randn(100)
    y = torch.empty(100)
    with em.counting() as c:
        L.copy(x, y, threads=100, group_size=32)
        L.copy(x, y, threads=50, group_size=32)
    t = c.total()
    assert (t.dispatches, t.threads, t.threadgroups, t.bytes_read, t.bytes_written) == (2, 150, 6, 600, 600)
    assert c.by_kernel()["copy"].dispatches == 2


def test_group_size_limit():
    L = lib("""kernel void noop(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = 0.0f; }""")
    with pytest.raises(ValueError, match="exceeds 1024"):
        L.noop(torch.zeros(2048), threads=2048, group_size=2048)


def test_launch_argument_rules_of_compile_shader():
    L = lib("""kernel void cp(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                uint i [[thread_position_in_grid]]) { y[i] = x[i] * 2.0f; }""")
    x = torch.randn(40)
    y = torch.full((40,), float("nan"))
    L.cp(x, y)                                   # threads default to the first tensor's numel
    assert torch.equal(y, x * 2)
    assert L.cp.last_stats.threads == 40
    with pytest.raises(ValueError, match="same number of dimensions"):
        L.cp(x, y, threads=(40, 1), group_size=8)
    with pytest.raises(TypeError, match="unsupported argument type list"):
        L.cp(x, [1, 2], threads=40)
    with pytest.raises(ValueError, match="contiguous"):
        L.cp(torch.randn(80)[::2], y, threads=40)
    assert L.cp.max_threads_per_threadgroup == 1024 and L.cp.thread_execution_width == 32


def test_integer_vectors_shuffles_and_remaining_attributes(backend):
    L = lib("""
kernel void misc(device const int* xi [[buffer(0)]], device int* out [[buffer(1)]],
                 device float* fout [[buffer(2)]],
                 uint i [[thread_position_in_grid]], uint lane [[thread_index_in_simdgroup]],
                 uint nsg [[simdgroups_per_threadgroup]], uint width [[threads_per_simdgroup]]) {
  int4 a = int4(xi[i], 2, 3, 4);
  uint2 b = uint2(7u, 9u);
  int4 c = a * 2 + int4(1);
  half2 h = half2(half(1.5f), half(-2.0f));
  bfloat2 bf = bfloat2(bfloat(3.0f), bfloat(0.25f));
  out[8 * i + 0] = c.x + c.w;                       // 2*x + 1 + 9
  out[8 * i + 1] = int(b.x * b.y);                  // 63
  out[8 * i + 2] = simd_shuffle_down(xi[i], 1);
  out[8 * i + 3] = simd_shuffle_up(xi[i], 2);
  out[8 * i + 4] = simd_prefix_exclusive_sum(xi[i]);
  out[8 * i + 5] = int(nsg * 100 + width);
  out[8 * i + 6] = as_type<int>(1.0f);
  out[8 * i + 7] = select(10, 20, xi[i] > 0);
  fout[2 * i] = float(h.x * h.y);
  fout[2 * i + 1] = float(bf.x + bf.y);
}""", backend)
    n = 40
    xi = torch.randint(-5, 6, (n,), dtype=torch.int32)
    out = torch.full((8 * n,), -999, dtype=torch.int32)
    fout = torch.full((2 * n,), float("nan"))
    L.misc(xi, out, fout, threads=n, group_size=n)
    o = out.view(n, 8)
    x = xi.tolist()
    for i in range(n):
        lo, hi = (i // 32) * 32, min(n, (i // 32) * 32 + 32)
        assert o[i, 0] == 2 * x[i] + 1 + 9 and o[i, 1] == 63
        assert o[i, 2] == (x[i + 1] if i + 1 < hi else x[i])     # out-of-range lanes keep their value
        assert o[i, 3] == (x[i - 2] if i - 2 >= lo else x[i])
        assert o[i, 4] == sum(x[lo:i])
        assert o[i, 5] == 2 * 100 + 32
        assert o[i, 6] == 0x3F800000
        assert o[i, 7] == (20 if x[i] > 0 else 10)
    assert torch.all(fout.view(n, 2)[:, 0] == -3.0) and torch.all(fout.view(n, 2)[:, 1] == 3.25)
