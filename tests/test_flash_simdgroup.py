"""The simdgroup-matrix kernels (shaders/natten/flash_simdgroup.metal): dense attention and the 2-D
neighborhood-attention forward.

Every case runs through the emulator (and through the MSL -> CUDA back end where a GPU is present:
``dev`` fixture) with poisoned outputs, against a float64 reference that writes the causal mask out
(top-left, Lq != Lk allowed): forward (out, LSE) and backward (dq, dk, dv with a dlse term), every
dtype, GQA, head dims 8, 12 (padded to 16), 40/64, 256, lengths that are not multiples of the
blocks. Also: the variant switch, the public ops on the matrix path, NaN containment, bit-identical
reruns, the fragment layout of the back ends and the threadgroup byte counter. The 2-D NA forward
and backward against the float64 reference's explicit neighborhood mask (kernel 9 and 11, stride,
dilation, causal per axis, GQA, every dtype), bit-identical reruns, and NaN containment window by
window.
"""
import ctypes

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from natten_mps.backends import metal, metal_flash
from natten_mps.metal import emulator
from reference import neighborhood_mask, reference_na

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def reference(q, k, v, causal, scale):
    """float64 attention with the causal mask built explicitly: query i sees keys j <= i."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[2] // k.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(rep, 2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.repeat_interleave(rep, 2))
    return out, torch.logsumexp(s, -1).transpose(1, 2)


def make(b, lq, lk, h, hkv, d, dv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g).to(dtype)
    k = torch.randn(b, lk, hkv, d, generator=g).to(dtype)
    v = torch.randn(b, lk, hkv, dv, generator=g).to(dtype)
    return q, k, v


def run_both(q, k, v, causal, scale, dout, dlse, dev):
    """Forward and backward on the matrix kernels; every launch must be one of them."""
    with emulator.counting() as counter:
        out, lse = metal.dense_forward(q.to(dev), k.to(dev), v.to(dev), causal, scale, variant="simdgroup")
        grads = metal.dense_backward(dout.to(dev), dlse.to(dev), q.to(dev), k.to(dev), v.to(dev), out, lse,
                                     causal, scale, variant="simdgroup")
    if dev == "cpu":
        assert sorted({s.kernel.rsplit("_", 2)[0] for s in counter.launches}) == [
            "flash_backward_dkdv", "flash_backward_dq", "flash_forward"]
    return out.cpu(), lse.cpu(), [t.cpu() for t in grads]


CASES = [  # b, lq, lk, h, hkv, d, dv, causal, dtype
    (1, 40, 37, 2, 1, 12, 12, False, torch.float32),
    (1, 37, 37, 2, 2, 8, 8, True, torch.float32),
    (2, 33, 50, 4, 2, 64, 40, True, torch.float16),
    (1, 70, 9, 3, 3, 16, 16, True, torch.bfloat16),
    (1, 20, 45, 2, 1, 32, 32, True, torch.float16),
    (1, 19, 26, 2, 1, 256, 256, False, torch.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_matches_reference(case, dev):
    b, lq, lk, h, hkv, d, dv, causal, dtype = case
    q, k, v = make(b, lq, lk, h, hkv, d, dv, dtype, seed=lq * 7 + lk)
    scale = d ** -0.5
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(b, lq, h, dv, generator=g).to(dtype)
    dlse = torch.randn(b, lq, h, generator=g)
    out, lse, (dq, dk, dv_) = run_both(q, k, v, causal, scale, dout, dlse, dev)
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ro, rl = reference(qr, kr, vr, causal, scale)
    torch.testing.assert_close(out.double(), ro, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.double(), rl, atol=TOL[dtype], rtol=TOL[dtype])
    ((ro * dout.double()).sum() + (rl * dlse.double()).sum()).backward()
    for got, r in zip((dq, dk, dv_), (qr, kr, vr)):
        torch.testing.assert_close(got.double(), r.grad, atol=GRAD_TOL[dtype], rtol=GRAD_TOL[dtype])


def test_matches_the_scalar_kernels(dev):
    """Both variants agree within float32 rounding (so the host may swap them)."""
    q, k, v = make(2, 45, 45, 4, 2, 24, 24, torch.float32, seed=3)
    a = metal.dense_forward(q.to(dev), k.to(dev), v.to(dev), True, 0.3, variant="scalar")
    b = metal.dense_forward(q.to(dev), k.to(dev), v.to(dev), True, 0.3, variant="simdgroup")
    for x, y in zip(a, b):
        torch.testing.assert_close(x.cpu(), y.cpu(), atol=2e-6, rtol=2e-6)


def test_backward_is_bit_identical_across_runs(dev):
    q, k, v = make(1, 50, 41, 4, 1, 16, 16, torch.float32, seed=5)
    dout = torch.randn(1, 50, 4, 16)
    dlse = torch.randn(1, 50, 4)
    first = run_both(q, k, v, True, 0.25, dout, dlse, dev)
    second = run_both(q, k, v, True, 0.25, dout, dlse, dev)
    for x, y in zip([first[0], first[1], *first[2]], [second[0], second[1], *second[2]]):
        assert torch.equal(x, y)


def test_nan_stays_with_the_queries_that_see_it(dev):
    """A NaN key and value of (batch 0, kv head 0) at key j reach exactly the queries i >= j of the
    query heads reading that kv head (causal): their outputs and LSEs are NaN, every other output
    is finite and correct; dq stays finite outside those queries, dk/dv outside batch 0 / head 0."""
    j = 13
    q, k, v = make(2, 30, 30, 4, 2, 16, 16, torch.float32, seed=9)
    ro, _ = reference(q, k, v, True, 0.25)            # the clean problem: the same for unspoiled queries
    k[0, j, 0, 3] = float("nan")
    v[0, j, 0, 5] = float("nan")
    dout, dlse = torch.randn(2, 30, 4, 16), torch.zeros(2, 30, 4)
    out, lse, (dq, dk, dv) = run_both(q, k, v, True, 0.25, dout, dlse, dev)
    spoiled = torch.zeros(2, 30, 4, dtype=torch.bool)
    spoiled[0, j:, 0:2] = True                        # query heads 0, 1 read kv head 0
    assert torch.equal(torch.isnan(lse), spoiled)
    assert torch.equal(torch.isnan(out).any(-1), spoiled)
    torch.testing.assert_close(out[~spoiled].double(), ro[~spoiled], atol=TOL[torch.float32], rtol=0)
    assert torch.isfinite(dq[~spoiled]).all()
    clean_kv = torch.ones(2, 30, 2, dtype=torch.bool)
    clean_kv[0, :, 0] = False
    assert torch.isfinite(dk[clean_kv]).all() and torch.isfinite(dv[clean_kv]).all()


def test_public_ops_run_the_matrix_kernels(emulate, monkeypatch):
    """attention, sageattn (float path) and sageattn_varlen reach flash_simdgroup.metal when the
    switch says so, and give the reference's results."""
    import sage_mps
    monkeypatch.setenv("NATTEN_MPS_METAL_DENSE", "simdgroup")
    q, k, v = make(1, 21, 21, 2, 1, 16, 16, torch.float32, seed=11)
    with emulator.counting() as counter:
        out = natten_mps.attention(q, k, v, is_causal=True)
        sage = sage_mps.sageattn(q, k, v, tensor_layout="NHD", is_causal=True)
        cu = torch.tensor([0, 9, 21], dtype=torch.int32)
        var = sage_mps.sageattn_varlen(q[0], k[0], v[0], cu, cu, 12, 12, is_causal=False)
    names = {s.kernel for s in counter.launches}
    assert names == {"flash_forward_float32_16"}
    ro, _ = reference(q, k, v, True, 16 ** -0.5)
    torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(sage.double(), ro, atol=2e-5, rtol=2e-5)
    parts = [reference(q[:, a:b], k[:, a:b], v[:, a:b], False, 16 ** -0.5)[0][0] for a, b in ((0, 9), (9, 21))]
    torch.testing.assert_close(var.double(), torch.cat(parts), atol=2e-5, rtol=2e-5)


def test_variant_switch(monkeypatch):
    q = torch.zeros(1, 4, 2, 16)
    assert metal._dense_variant(q, q, q) == "scalar"                       # the default
    monkeypatch.setenv("NATTEN_MPS_METAL_DENSE", "simdgroup")
    assert metal._dense_variant(q, q, q) == "simdgroup"
    assert metal._dense_variant(q, q, q, variant="scalar") == "scalar"     # the tuner's pin wins
    big = torch.zeros(1, 4, 2, 264)
    assert metal._dense_variant(big, big, big) == "scalar"                 # wider than any instantiation
    monkeypatch.setenv("NATTEN_MPS_METAL_DENSE", "matrix")
    with pytest.raises(ValueError, match="NATTEN_MPS_METAL_DENSE.*'matrix'"):
        metal._dense_variant(q, q, q)
    assert [metal_flash.padded_dim(d, d) for d in (1, 8, 12, 40, 64, 65, 200)] == [8, 8, 16, 64, 64, 128, 256]


def test_fragment_layout_and_threadgroup_counter():
    """thread_elements() follows the layout sg_frag.h assumes (row, two columns a lane), a product
    on fragments filled through it is A x B, and the emulator counts threadgroup bytes read and
    written exactly."""
    lib = emulator.compile(HEADER + """
#include "natten/sg_frag.h"
kernel void frag(device const float* a [[buffer(0)]], device const float* b [[buffer(1)]],
                 device float* c [[buffer(2)]], device float* where [[buffer(3)]],
                 ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float tb[64];
  for (int e = 0; e < 2; ++e) tb[lane * 2 + e] = b[lane * 2 + e];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  FragPos p = frag_pos(lane);
  simdgroup_float8x8 A, B, C = frag_zero();
  frag_load(A, a, 8, 0, 0, p);
  frag_load(B, tb, 8, 0, 0, p);
  simdgroup_multiply_accumulate(C, A, B, C);
  simdgroup_float8x8 D;
  simdgroup_load(D, a, 8);
  where[lane * 2] = float(p.row * 8 + p.col);
  where[lane * 2 + 1] = D.thread_elements()[0] - a[p.row * 8 + p.col] + D.thread_elements()[1] - a[p.row * 8 + p.col + 1];
  simdgroup_store(C, c, 8);
}""".replace('#include "natten/sg_frag.h"', _sg_frag()))
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    c, where = torch.full((8, 8), float("nan")), torch.full((64,), float("nan"))
    tg_bytes(lib)
    lib.frag(a, b, c, where, threads=32, group_size=32)
    torch.testing.assert_close(c, a @ b, rtol=1e-6, atol=1e-6)
    cells = where[0::2].long().tolist()
    assert sorted(cells) == list(range(0, 64, 2))       # every (row, even column) exactly once
    assert cells[:4] == [0, 2, 8, 10] and cells[8] == 4 and cells[16] == 32
    assert torch.equal(where[1::2], torch.zeros(32))    # simdgroup_load puts elements where thread_elements says
    assert tg_bytes(lib) == (64 * 4, 64 * 4)           # B read once (2 floats a lane), written once


def tg_bytes(lib):
    """(read, written) threadgroup bytes of the emulated library since the last call; resets them."""
    out = (ctypes.c_int64 * 2)()
    lib._so.mtl_threadgroup_bytes(out, ctypes.c_int(1))
    return out[0], out[1]


def _sg_frag():
    from natten_mps.metal import runtime
    return (runtime.shader_dir() / "natten" / "sg_frag.h").read_text()


NA_CASES = [  # spatial, kernel, stride, dilation, causal, h, hkv, d, dtype
    ((13, 19), (9, 9), (1, 1), (1, 1), (False, False), 2, 1, 16, torch.float32),
    ((14, 21), (9, 9), (2, 3), (1, 2), (True, False), 4, 2, 12, torch.float32),
    ((20, 18), (9, 9), (1, 1), (2, 1), (False, True), 2, 1, 32, torch.float16),
    ((11, 12), (11, 11), (1, 2), (1, 1), (True, True), 1, 1, 64, torch.bfloat16),
]


@pytest.mark.parametrize("case", NA_CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_na2d_forward_matches_reference(case, dev):
    spatial, ks, st, dil, causal, h, hkv, d, dtype = case
    g = torch.Generator().manual_seed(sum(spatial))
    q = torch.randn(2, *spatial, h, d, generator=g).to(dtype)
    k = torch.randn(2, *spatial, hkv, d, generator=g).to(dtype)
    v = torch.randn(2, *spatial, hkv, d, generator=g).to(dtype)
    out, lse = metal_flash.na2d_forward(q.to(dev), k.to(dev), v.to(dev), ks, st, dil, causal, d ** -0.5)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dlse = torch.randn(lse.shape, generator=g)
    grads = metal_flash.na2d_backward(dout.to(dev), dlse.to(dev), q.to(dev), k.to(dev), v.to(dev), out, lse, ks, st,
                                      dil, causal, d ** -0.5)
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ro, rl = reference_na(qr, kr, vr, ks, st, dil, causal)
    torch.testing.assert_close(out.cpu().double(), ro, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.cpu().double(), rl, atol=TOL[dtype], rtol=TOL[dtype])
    ((ro * dout.double()).sum() + (rl * dlse.double()).sum()).backward()
    for got, r in zip(grads, (qr, kr, vr)):
        torch.testing.assert_close(got.cpu().double(), r.grad, atol=GRAD_TOL[dtype], rtol=GRAD_TOL[dtype])
    again = metal_flash.na2d_backward(dout.to(dev), dlse.to(dev), q.to(dev), k.to(dev), v.to(dev), out, lse, ks, st,
                                      dil, causal, d ** -0.5)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))          # bit-identical reruns


def test_na2d_forward_nan_stays_in_its_windows(dev):
    """A NaN key and a NaN value reach the outputs of exactly the queries whose window holds them."""
    spatial, ks, st, dil, causal = (12, 17), (9, 9), (1, 2), (1, 1), (False, True)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, *spatial, 1, 8, generator=g) for _ in range(3))
    clean, _ = reference_na(q, k, v, ks, st, dil, causal)
    k[0, 0, 0, 0, 0] = float("nan")
    v[0, 11, 16, 0, 3] = float("nan")
    out, lse = (t.cpu() for t in metal_flash.na2d_forward(q.to(dev), k.to(dev), v.to(dev), ks, st, dil, causal,
                                                         8 ** -0.5))
    mask = neighborhood_mask(spatial, ks, st, dil, causal)          # [query, key] over flattened tokens
    sees_k = mask[:, 0].reshape(spatial)
    sees_v = mask[:, 11 * 17 + 16].reshape(spatial)
    assert torch.equal(torch.isnan(lse[0, :, :, 0]), sees_k)
    assert torch.equal(torch.isnan(out[0, :, :, 0]).any(-1), sees_k | sees_v)
    fine = ~(sees_k | sees_v)
    torch.testing.assert_close(out[0, :, :, 0][fine].double(), clean[0, :, :, 0][fine], atol=2e-5, rtol=0)
    # backward: dq of a query is spoiled only if its window holds the NaN key or value (via dP, delta);
    # dk/dv of a key only if its window-holding queries are spoiled (their LSE / delta are NaN)
    dq, dk, dv = (t.cpu() for t in metal_flash.na2d_backward(torch.ones_like(out).to(dev), None, q.to(dev), k.to(dev),
                                                            v.to(dev), out.to(dev), lse.to(dev), ks, st, dil, causal,
                                                            8 ** -0.5))
    spoiled = (sees_k | sees_v).reshape(-1)
    assert torch.isfinite(dq[0, :, :, 0][fine]).all()
    reached = (mask & spoiled[:, None]).any(0).reshape(spatial)       # keys some spoiled query sees
    assert torch.isfinite(dk[0, :, :, 0][~reached]).all() and torch.isfinite(dv[0, :, :, 0][~reached]).all()


def test_na2d_public_op_on_the_matrix_forward(emulate, monkeypatch):
    """NATTEN_MPS_METAL_NA=simdgroup: na2d runs the na2d_* matrix kernels forward and backward and
    matches the reference; the scalar backward accepts the matrix forward's out and LSE (so the two
    variants can be mixed); 1-D problems stay scalar."""
    monkeypatch.setenv("NATTEN_MPS_METAL_NA", "simdgroup")
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(1, 12, 14, 2, 16, generator=g).requires_grad_() for _ in range(3))
    with emulator.counting() as counter:
        out = natten_mps.na2d(q, k, v, kernel_size=9, dilation=(1, 1), is_causal=(False, True))
    assert {s.kernel for s in counter.launches} == {"na2d_forward_float32_16"}
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ro, _ = reference_na(qr, kr, vr, (9, 9), (1, 1), (1, 1), (False, True))
    torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
    dout = torch.randn(out.shape, generator=g)
    with emulator.counting() as counter:
        out.backward(dout)
    assert {s.kernel.rsplit("_", 2)[0] for s in counter.launches} == {"na2d_backward_dq", "na2d_backward_dkdv"}
    (ro * dout.double()).sum().backward()
    for got, r in zip((q, k, v), (qr, kr, vr)):
        torch.testing.assert_close(got.grad.double(), r.grad, atol=1e-4, rtol=1e-4)
    o, lse = metal.na_forward(q.detach(), k.detach(), v.detach(), [9, 9], [1, 1], [1, 1], [False, True], 0.25)
    mixed = metal.na_backward(dout, None, q.detach(), k.detach(), v.detach(), o, lse, [9, 9], [1, 1], [1, 1],
                              [False, True], 0.25, variant="scalar")
    same = metal.na_backward(dout, None, q.detach(), k.detach(), v.detach(), o, lse, [9, 9], [1, 1], [1, 1],
                             [False, True], 0.25)
    for a, b in zip(mixed, same):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    x = torch.randn(1, 20, 2, 16)
    with emulator.counting() as counter:
        natten_mps.na1d(x, x, x, kernel_size=5)
    assert all(s.kernel.startswith("attn_forward") for s in counter.launches)
    monkeypatch.setenv("NATTEN_MPS_METAL_NA", "fast")
    with pytest.raises(ValueError, match="NATTEN_MPS_METAL_NA.*'fast'"):
        natten_mps.na1d(x, x, x, kernel_size=5)


def test_tuner_candidates_reach_the_matrix_kernels(emulate, monkeypatch):
    """A pinned (or tuned) ``dense-simdgroup`` / ``na2d-simdgroup`` candidate runs the matrix kernels
    through the public ops, with reference-correct results; when the matrix family is unavailable the
    same call falls back to the scalar kernels."""
    from natten_mps import tuning
    monkeypatch.delenv("NATTEN_MPS_METAL_DENSE", raising=False)
    monkeypatch.delenv("NATTEN_MPS_METAL_NA", raising=False)
    calls = []
    for name in ("dense_forward", "na2d_forward"):
        real = getattr(metal_flash, name)
        monkeypatch.setattr(metal_flash, name, lambda *a, _real=real, _n=name, **kw: (calls.append(_n), _real(*a, **kw))[1])
    q, k, v = make(1, 24, 24, 2, 2, 16, 16, torch.float32, 3)
    try:
        tuning.pin("dense-simdgroup")
        out = natten_mps.attention(q, k, v)
        assert calls == ["dense_forward"]
        ref, _ = reference(q, k, v, False, 16 ** -0.5)
        assert (out.double() - ref).abs().max() < TOL[torch.float32]
        tuning.pin("na2d-simdgroup")
        g = torch.Generator().manual_seed(5)
        q2, k2, v2 = (torch.randn(1, 12, 12, 2, 16, generator=g) for _ in range(3))
        out2 = natten_mps.na2d(q2, k2, v2, kernel_size=9)
        assert calls[-1] == "na2d_forward"
        ref2, _ = reference_na(q2, k2, v2, [9, 9], [1, 1], [1, 1], [False, False], 16 ** -0.5)
        assert (out2.double() - ref2.double()).abs().max() < TOL[torch.float32]

        def unavailable(*a, **kw):
            raise natten_mps.metal.runtime.FamilyUnavailableError("flash_simdgroup.metal refused (planted)")
        monkeypatch.setattr(metal_flash, "dense_forward", unavailable)
        tuning.pin("dense-simdgroup")
        again = natten_mps.attention(q, k, v)          # scalar kernels answer
        assert (again.double() - ref).abs().max() < TOL[torch.float32]
    finally:
        tuning.pin(None)
