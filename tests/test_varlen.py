"""Varlen neighborhood attention (na{1,2,3}d_varlen): per-sample extents in a padded batch.

Each sample is checked against the float64 brute-force reference run on that sample's own unpadded
tensors (padding positions: zeros), forward and gradients, on the Metal kernels (emulator, and the
MSL -> CUDA back end where a GPU is present; outputs poisoned first) and on the pure path. The
Metal path is one launch per pass for the whole batch (asserted with the emulator's counters).
Tolerances: conftest.TOL / GRAD_TOL per dtype.
"""
import random

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from natten_mps.backends import metal
from natten_mps.metal import emulator
from reference import reference_na


def random_varlen_case(rng, rank):
    ks, dil, st, causal, pad = [], [], [], [], []
    for _ in range(rank):
        k = rng.choice([2, 3, 5] if rank < 3 else [2, 3])
        d = rng.choice([1, 1, 2])
        ks.append(k)
        dil.append(d)
        st.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
        pad.append(k * d + rng.choice([2, 5, 9] if rank == 1 else [1, 3, 4]))
    B = rng.choice([2, 3, 4])
    sizes = [[rng.randint(ks[a] * dil[a], pad[a]) for a in range(rank)] for _ in range(B)]
    sizes[0] = list(pad)                                    # one sample fills the padded extents
    hkv = rng.choice([1, 2])
    return dict(spatial=pad, ks=ks, dil=dil, st=st, causal=causal, sizes=sizes, b=B, hkv=hkv,
                h=hkv * rng.choice([1, 2]), d=rng.choice([8, 32, 40]), dv=rng.choice([8, 24]))


def make_inputs(c, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    S = c["spatial"]
    q = torch.randn(c["b"], *S, c["h"], c["d"], generator=g).to(dtype)
    k = torch.randn(c["b"], *S, c["hkv"], c["d"], generator=g).to(dtype)
    v = torch.randn(c["b"], *S, c["hkv"], c["dv"], generator=g).to(dtype)
    return q, k, v


def region(c, b):
    return (b,) + tuple(slice(0, n) for n in c["sizes"][b])


def reference_varlen(c, q, k, v, dout):
    """Per sample: reference_na on its own extents; zeros elsewhere. Returns out and (dq, dk, dv)."""
    q64, k64, v64 = (t.double().detach().requires_grad_() for t in (q, k, v))
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64)
    for b in range(c["b"]):
        r = region(c, b)
        o, _ = reference_na(q64[r][None], k64[r][None], v64[r][None], c["ks"], c["st"], c["dil"], c["causal"],
                            scale=c["d"] ** -0.5)
        out[r] = o[0]
    grads = torch.autograd.grad((out * dout.double()).sum(), (q64, k64, v64))
    return out.detach(), grads


@pytest.mark.parametrize("rank,seed,dtype", [(1, 0, torch.float32), (1, 1, torch.float16), (2, 2, torch.float32),
                                             (2, 3, torch.bfloat16), (3, 4, torch.float32), (1, 5, torch.float32),
                                             (2, 6, torch.float16)])
def test_kernels_match_per_sample_reference(dev, rank, seed, dtype):
    c = random_varlen_case(random.Random(seed), rank)
    q, k, v = make_inputs(c, dtype, seed)
    sizes = torch.tensor(c["sizes"], dtype=torch.int32)
    g = torch.Generator().manual_seed(seed + 100)
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=g).to(dtype)
    args = (c["ks"], c["st"], c["dil"], c["causal"], c["d"] ** -0.5)
    qd, kd, vd, sd = (t.to(dev) for t in (q, k, v, sizes))
    out, lse = metal.na_varlen_forward(qd, kd, vd, sd, *args)
    dq, dk, dv = metal.na_varlen_backward(dout.to(dev), qd, kd, vd, out, lse, sd, *args)
    ref_out, ref_grads = reference_varlen(c, q, k, v, dout)
    tol, gtol = TOL[dtype], GRAD_TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=tol, rtol=tol, msg=lambda m: f"{c} out: {m}")
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
        torch.testing.assert_close(got.cpu().double(), want, atol=gtol, rtol=gtol, msg=lambda m: f"{c} {name}: {m}")
    assert (lse.cpu()[out.cpu().abs().sum(-1) == 0] == 0).all()       # padding LSE is written (zero), not NaN


def test_one_launch_per_pass_whatever_the_batch(emulate):
    """No loop over samples on Metal: forward 1 dispatch, backward at most 2 (one where a small problem
    runs dQ and dK/dV as one dispatch), for 5 distinct extents."""
    q, k, v = (torch.randn(5, 12, 2, 16, requires_grad=True) for _ in range(3))
    seq_lens = torch.tensor([12, 11, 9, 7, 5])
    with emulator.counting() as counts:
        out = natten_mps.na1d_varlen(q, k, v, seq_lens, 5)
    assert natten_mps.last_backend() == "metal" and counts.total().dispatches == 1
    with emulator.counting() as counts:
        out.sum().backward()
    assert 1 <= counts.total().dispatches <= 2


@pytest.mark.parametrize("path", ["pure", "emulate"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_public_api_and_gradients(path, rank):
    c = random_varlen_case(random.Random(40 + rank), rank)
    q, k, v = (t.requires_grad_() for t in make_inputs(c, torch.float32, rank))
    natten_mps.set_emulation(path == "emulate")
    fn = getattr(natten_mps, f"na{rank}d_varlen")
    sizes = torch.tensor(c["sizes"], dtype=torch.int64)
    if rank == 1:
        sizes = sizes[:, 0]
    out = fn(q, k, v, sizes, c["ks"], c["dil"], stride=c["st"], is_causal=c["causal"])
    assert natten_mps.last_backend() == ("metal" if path == "emulate" else "pure")
    dout = torch.randn(out.shape)
    grads = torch.autograd.grad((out * dout).sum(), (q, k, v))
    ref_out, ref_grads = reference_varlen(c, q, k, v, dout)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_uniform_lengths_equal_the_fixed_size_op():
    q, k, v = (torch.randn(3, 16, 2, 8) for _ in range(3))
    out = natten_mps.na1d_varlen(q, k, v, torch.full((3,), 16), 5, dilation=2)
    torch.testing.assert_close(out, natten_mps.na1d(q, k, v, 5, dilation=2))


def test_padding_never_leaks_into_valid_positions():
    """Changing padding (even to NaN) leaves every valid output and gradient unchanged."""
    q, k, v = (torch.randn(2, 10, 8, 2, 4) for _ in range(3))
    sizes = torch.tensor([[10, 8], [6, 5]])
    base = natten_mps.na2d_varlen(q, k, v, sizes, 3)
    for t in (q, k, v):
        t[1, 6:] = float("nan")
        t[1, :, 5:] = float("nan")
    again = natten_mps.na2d_varlen(q, k, v, sizes, 3)
    torch.testing.assert_close(again, base)
    assert (again[1, 6:] == 0).all() and (again[1, :, 5:] == 0).all()


def test_compile_fullgraph_and_vmap():
    q, k, v = (torch.randn(2, 12, 2, 8) for _ in range(3))
    seq_lens = torch.tensor([12, 7])
    eager = natten_mps.na1d_varlen(q, k, v, seq_lens, 3)
    compiled = torch.compile(lambda a, b, c, s: natten_mps.na1d_varlen(a, b, c, s, 3), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, seq_lens), eager)
    batched = torch.func.vmap(lambda a, b, c: natten_mps.na1d_varlen(a, b, c, seq_lens, 3))(
        q[None].expand(3, *q.shape), k[None].expand(3, *k.shape), v[None].expand(3, *v.shape))
    torch.testing.assert_close(batched, eager[None].expand(3, *eager.shape))


@pytest.mark.parametrize("sizes,match", [
    (torch.tensor([6, 12]), "seq_lens must be >= kernel_size \\* dilation = 7"),
    (torch.tensor([12, 13]), "seq_lens must be <= L_max \\(12\\)"),
    (torch.tensor([[12, 12]]), "seq_lens must have shape \\[2\\]"),
    (torch.tensor([12.0, 8.0]), "seq_lens must be int32 or int64"),
])
def test_bad_seq_lens_are_refused(sizes, match):
    q = torch.randn(2, 12, 1, 4)
    with pytest.raises(ValueError, match=match):
        natten_mps.na1d_varlen(q, q, q, sizes, 7)


def test_bad_spatial_sizes_are_refused():
    q = torch.randn(2, 8, 8, 1, 4)
    with pytest.raises(ValueError, match=r"spatial_sizes\[:, 1\] must be >= kernel_size \* dilation = 6"):
        natten_mps.na2d_varlen(q, q, q, torch.tensor([[8, 8], [8, 5]]), 3, dilation=2)
    with pytest.raises(ValueError, match=r"spatial_sizes must have shape \[2, 2\]"):
        natten_mps.na2d_varlen(q, q, q, torch.tensor([8, 8]), 3)
    with pytest.raises(TypeError, match="spatial_sizes must be an int32/int64 tensor"):
        natten_mps.na2d_varlen(q, q, q, [[8, 8], [8, 8]], 3)


def test_kernels_write_zeros_in_tiles_that_are_all_padding(dev):
    """A sample far smaller than the padded extents: whole threadgroup tiles lie in its padding."""
    c = dict(spatial=[34, 36], ks=[3, 4], dil=[1, 2], st=[1, 2], causal=[False, True], sizes=[[34, 36], [5, 9]],
             b=2, hkv=1, h=2, d=8, dv=8)
    q, k, v = make_inputs(c, torch.float32, 9)
    sizes = torch.tensor(c["sizes"])
    args = (c["ks"], c["st"], c["dil"], c["causal"], c["d"] ** -0.5)
    prob = metal._Problem(q, k, v, *args[:4], False, 0)
    assert prob.u[1] * prob.a[1] * 2 < 36 or prob.u[0] * prob.a[0] < 34 - 5   # some tiles miss sample 1
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],))
    qd, kd, vd, sd = (t.to(dev) for t in (q, k, v, sizes))
    out, lse = metal.na_varlen_forward(qd, kd, vd, sd, *args)
    dq, dk, dv = metal.na_varlen_backward(dout.to(dev), qd, kd, vd, out, lse, sd, *args)
    ref_out, ref_grads = reference_varlen(c, q, k, v, dout)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=2e-5, rtol=2e-5)
    for got, want in zip((dq, dk, dv), ref_grads):
        torch.testing.assert_close(got.cpu().double(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_modules_take_per_sample_extents(rank):
    """module(x, seq_lens / spatial_sizes): each sample as the module on its own cropped input."""
    torch.manual_seed(rank)
    cls = getattr(natten_mps.nn, f"NeighborhoodAttention{rank}D")
    m = cls(16, 2, 3, dilation=1, num_kv_heads=1 if rank == 2 else None).eval()
    spatial = {1: (14,), 2: (9, 8), 3: (5, 6, 4)}[rank]
    sizes = {1: [[14], [6]], 2: [[9, 8], [4, 7]], 3: [[5, 6, 4], [3, 3, 4]]}[rank]
    x = torch.randn(2, *spatial, 16)
    arg = torch.tensor(sizes)[:, 0] if rank == 1 else torch.tensor(sizes)
    y = m(x, arg)
    for b, extent in enumerate(sizes):
        r = (slice(b, b + 1),) + tuple(slice(0, e) for e in extent)
        torch.testing.assert_close(y[r], m(x[r]), atol=1e-5, rtol=1e-5)
    pad = torch.ones(y.shape[:-1], dtype=torch.bool)
    pad[(1,) + tuple(slice(0, e) for e in sizes[1])] = False
    pad[0] = False
    torch.testing.assert_close(y[pad], m.proj.bias.expand(int(pad.sum()), 16))   # zero attention, then proj


def test_module_varlen_with_attention_dropout_trains():
    torch.manual_seed(0)
    m = natten_mps.nn.NeighborhoodAttention1D(8, 2, 3, attn_drop=0.5).train()
    x = torch.randn(2, 10, 8, requires_grad=True)
    y = m(x, torch.tensor([10, 4]))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1, 4:] == 0).all()    # padding takes no gradient
    m.eval()
    torch.testing.assert_close(m(x, torch.tensor([10, 4]))[1, :4], m(x[1:, :4])[0], atol=1e-5, rtol=1e-5)
