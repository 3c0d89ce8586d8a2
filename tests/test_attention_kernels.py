"""The tiled Metal kernels (shaders/natten/attention.metal) through the emulator, against float64.

Forward, LSE and gradients (dQ, dK, dV and the LSE's own gradient) of neighborhood attention over
random ranks, extents smaller than a tile and not a multiple of one, even and odd kernels,
dilations, strides, causal flags, GQA ratios, head dims 8 to 256 (Dv != D too), all three dtypes;
dense attention (Lq != Lk, causal, GQA); the backward run twice is bit-identical; NaN stays in its
windows; the emulator's cost counters meet the dispatch and device-byte budgets. Each case runs the
kernels directly (backends.metal), outputs poisoned before the kernels write them, on the CPU
emulator and, where a CUDA GPU is present, on the MSL -> CUDA back end (`dev` fixture).

Tolerances (absolute and relative, unit-scale random inputs): float32 2e-5 forward / 1e-4
gradients; float16 4e-3 / 2e-2; bfloat16 3e-2 / 3.5e-2 (conftest.TOL / GRAD_TOL).
"""
import random

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from natten_mps.backends import metal
from natten_mps.metal import emulator
from reference import reference_attention, reference_na


def random_case(rng: random.Random, rank: int, dim=None):
    spatial, ks, st, dil, causal = [], [], [], [], []
    for _ in range(rank):
        k = rng.choice([2, 3, 4, 5, 7] if rank == 1 else ([2, 3, 4, 5] if rank == 2 else [2, 3]))
        d = rng.choice([1, 1, 2, 3]) if rank < 3 else rng.choice([1, 2])
        n = k * d + rng.choice([0, 1, 3, 6, 11] if rank == 1 else ([0, 1, 3, 5] if rank == 2 else [0, 1, 2]))
        ks.append(k)
        dil.append(d)
        spatial.append(n)
        st.append(rng.randint(1, k))
        causal.append(rng.random() < 0.35)
    heads_kv = rng.choice([1, 2])
    dim = dim or rng.choice([8, 32, 40])
    return dict(spatial=spatial, ks=ks, st=st, dil=dil, causal=causal, hkv=heads_kv,
                h=heads_kv * rng.choice([1, 2, 4]), d=dim, dv=rng.choice([dim, dim, 24]), b=rng.choice([1, 2]))


def inputs(c, dtype, seed, extra=0):
    g = torch.Generator().manual_seed(seed)
    S = c["spatial"]
    q = torch.randn(c["b"], *S, c["h"], c["d"], generator=g)
    k = torch.randn(c["b"], *S, c["hkv"], c["d"], generator=g)
    v = torch.randn(c["b"], *S, c["hkv"], c["dv"], generator=g)
    ts = [q, k, v]
    if extra:
        ts += [torch.randn(c["b"], extra, c["hkv"], c["d"], generator=g),
               torch.randn(c["b"], extra, c["hkv"], c["dv"], generator=g)]
    return [t.to(dtype) for t in ts]


def check_na(c, dtype, seed, extra=0, grad=True, dev="cpu", place=lambda t: t):
    ts = [place(t.to(dev)) for t in inputs(c, dtype, seed, extra)]
    q, k, v = ts[:3]
    xk, xv = (ts[3], ts[4]) if extra else (None, None)
    scale = c["d"] ** -0.5
    args = (c["ks"], c["st"], c["dil"], c["causal"], scale)
    out, lse = metal.attention_forward(q, k, v, *args, extra_k=xk, extra_v=xv)
    ref = [t.cpu().double().requires_grad_() for t in ts]
    out, lse = out.cpu(), lse.cpu()
    ro, rl = reference_na(ref[0], ref[1], ref[2], c["ks"], c["st"], c["dil"], c["causal"],
                          add_k=ref[3] if extra else None, add_v=ref[4] if extra else None)
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ro, atol=tol, rtol=tol, msg=lambda m: f"{c} out: {m}")
    torch.testing.assert_close(lse.double(), rl, atol=tol, rtol=tol, msg=lambda m: f"{c} lse: {m}")
    if not grad:
        return
    g = torch.Generator().manual_seed(seed + 7)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dlse = torch.randn(lse.shape, generator=g)
    grads = metal.attention_backward(dout.to(dev), dlse.to(dev), q, k, v, out.to(dev), lse.to(dev), *args,
                                     extra_k=xk, extra_v=xv)
    grads = tuple(None if t is None else t.cpu() for t in grads)
    ((ro * dout.double()).sum() + (rl * dlse.double()).sum()).backward()
    gtol = GRAD_TOL[dtype]
    for name, got, r in zip(("dq", "dk", "dv", "dxk", "dxv"), grads, ref):
        torch.testing.assert_close(got.double(), r.grad, atol=gtol, rtol=gtol, msg=lambda m: f"{c} {name}: {m}")
    return grads, (dout, dlse)


def check_exact_and_repeatable(c, i, extra, dev):
    """Case ``c`` (seed ``i``, ``extra`` additional keys) against float64, twice: bit-identical
    gradients; the first two cases of a list in float16 / bfloat16 too."""
    first, _ = check_na(c, torch.float32, seed=i, extra=extra, dev=dev)
    second, _ = check_na(c, torch.float32, seed=i, extra=extra, dev=dev)
    for a, b in zip(first, second):
        assert a is None or torch.equal(a, b)
    if i < 2:
        check_na(c, torch.float16 if i == 0 else torch.bfloat16, seed=i, dev=dev)


@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(6 if r < 3 else 4)])
def test_na_float32_forward_backward(rank, i, dev):
    check_na(random_case(random.Random(31 * rank + 1000 * i), rank), torch.float32, seed=i, dev=dev)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_na_low_precision(rank, dtype, dev):
    check_na(random_case(random.Random(500 + rank), rank), dtype, seed=rank, dev=dev)


@pytest.mark.parametrize("dim", [8, 32, 40, 64, 128, 256])
def test_na_head_dims(dim, dev):
    c = dict(spatial=[13], ks=[5], st=[2], dil=[2], causal=[False], hkv=1, h=2, d=dim, dv=dim, b=1)
    check_na(c, torch.float32, seed=dim, dev=dev)
    c2 = dict(c, spatial=[6, 7], ks=[3, 4], st=[1, 2], dil=[1, 1], causal=[True, False], dv=max(8, dim // 2))
    check_na(c2, torch.float32, seed=dim + 1, dev=dev)


def offset_by_one(t):
    """``t``'s values in a contiguous tensor whose storage starts one element into its buffer."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("d,dv,shift", [(13, 7, False), (32, 24, True)])
def test_na_rows_not_4_aligned(d, dv, shift, dev, monkeypatch):
    """Rows that cannot be read as 4-vectors (head dims not multiples of 4, or inputs starting one
    element into their storage) take the kernels' element-wise loads and stores: still exact, small
    problems' batched staging too."""
    monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 10 ** 9)
    c = dict(spatial=[5, 9], ks=[3, 4], st=[1, 2], dil=[1, 2], causal=[False, True], hkv=1, h=2, d=d, dv=dv, b=2)
    place = offset_by_one if shift else (lambda t: t)
    q, k, v = (place(t) for t in inputs(c, torch.float32, 0)[:3])
    prob = metal._Problem(q, k, v, c["ks"], c["st"], c["dil"], c["causal"], False, 0)
    assert prob.geometry(q.device, tensors=(q, k, v))[35].item() == 0       # no vector loads
    check_na(c, torch.float32, seed=3, extra=2, dev=dev, place=place)


@pytest.mark.parametrize("rank,extra", [(1, 1), (2, 4), (3, 3)])
def test_na_additional_keys_fused(rank, extra, dev):
    c = random_case(random.Random(70 + rank), rank)
    check_na(c, torch.float32, seed=rank, extra=extra, dev=dev)
    if dev != "cpu":
        return
    with emulator.counting() as counter:
        ts = inputs(c, torch.float32, 0, extra)
        metal.attention_forward(ts[0], ts[1], ts[2], c["ks"], c["st"], c["dil"], c["causal"], 0.3,
                                extra_k=ts[3], extra_v=ts[4])
    assert counter.total().dispatches == 1      # the additional keys ride in the same dispatch


OWN_WALK_CASES = [
    dict(spatial=[40], ks=[7], st=[1], dil=[1], causal=[False], hkv=1, h=2, d=32, dv=32, b=2),
    dict(spatial=[37], ks=[6], st=[3], dil=[1], causal=[True], hkv=2, h=4, d=40, dv=24, b=1),
    dict(spatial=[70], ks=[5], st=[2], dil=[2], causal=[False], hkv=1, h=1, d=16, dv=16, b=1),
    dict(spatial=[300], ks=[63], st=[1], dil=[1], causal=[False], hkv=1, h=1, d=32, dv=32, b=1),  # rows > a chunk
    dict(spatial=[6, 21], ks=[3, 5], st=[1, 2], dil=[1, 1], causal=[False, True], hkv=1, h=2, d=32, dv=32, b=1),
    dict(spatial=[9, 34], ks=[4, 7], st=[2, 1], dil=[2, 2], causal=[True, False], hkv=1, h=2, d=64, dv=64, b=1),
    dict(spatial=[3, 4, 17], ks=[2, 3, 5], st=[1, 1, 3], dil=[1, 1, 1], causal=[False, True, False], hkv=1, h=1,
         d=32, dv=32, b=1),
]


@pytest.mark.parametrize("walk", ["own", "union"])
@pytest.mark.parametrize("i", range(len(OWN_WALK_CASES)))
def test_forced_walks(i, walk, dev, monkeypatch):
    """Both walks of the NA kernels on the same shapes (NATTEN_MPS_METAL_WALK): the own-window walk
    (each lane steps through its own window, staged rows skewed across banks) and the union walk
    (every lane on the same token), forward and backward, additional keys included, against
    float64; the own walk is taken where the inner axis holds a SIMD-group's run, and the backward
    stays bit-identical across runs."""
    monkeypatch.setenv("NATTEN_MPS_METAL_WALK", walk)
    c = OWN_WALK_CASES[i]
    q, k, v = inputs(c, torch.float32, i)[:3]
    prob = metal._Problem(q, k, v, c["ks"], c["st"], c["dil"], c["causal"], False, 0)
    if walk == "own":
        assert prob.own_walk and prob.u[:2] == [1, 1] and prob.RS == prob.NG * prob.DS // 4 + 1
    else:
        assert not prob.own_walk and prob.RS == prob.NG * prob.DS // 4
    check_exact_and_repeatable(c, i, 2 if i % 2 else 0, dev)


NARROW_CASES = [   # (case, the narrowest slice covering its head dim in 8 lanes)
    (dict(spatial=[41], ks=[7], st=[1], dil=[1], causal=[False], hkv=1, h=2, d=32, dv=32, b=2), 4),
    (dict(spatial=[23], ks=[4], st=[3], dil=[2], causal=[True], hkv=1, h=2, d=24, dv=20, b=1), 4),
    (dict(spatial=[9, 13], ks=[3, 5], st=[2, 1], dil=[1, 2], causal=[False, True], hkv=2, h=4, d=64, dv=40,
          b=1), 8),
    (dict(spatial=[5, 4, 7], ks=[3, 2, 3], st=[1, 1, 2], dil=[1, 2, 1], causal=[True, False, False], hkv=1, h=2,
          d=40, dv=40, b=1), 8),
]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("i", range(len(NARROW_CASES)))
def test_narrow_slices_for_small_problems(i, fused, dev, monkeypatch):
    """A problem with fewer tiles than the GPU's target spreads over narrower head-dim slices (DS 8 or
    4: more lanes a position, fewer positions a SIMD-group); forward, backward and additional keys
    stay exact, and the backward bit-identical across runs. They also stage several rows a thread
    at once (the "_b4" kernels: partial batches, several batches a chunk, additional keys), and run
    dQ and dK/dV as one dispatch (``fused``; the dK/dV tiles' own deltas) or, turned off, as two."""
    monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 10 ** 9)
    monkeypatch.setenv("NATTEN_MPS_METAL_FUSED_BACKWARD", "1" if fused else "0")
    monkeypatch.setattr(metal, "FUSED_MAX_HALO", float("inf"))    # every rank through the fused kernel
    c, narrowest = NARROW_CASES[i]
    q, k, v = inputs(c, torch.float32, i)[:3]
    prob = metal._Problem(q, k, v, c["ks"], c["st"], c["dil"], c["causal"], False, 0)
    assert (prob.DS, prob.NG, prob.threads_per_group, prob.NB) == (narrowest, 8, 32, metal.STAGE_BATCH)
    with emulator.counting() as counter:
        check_exact_and_repeatable(c, i, 3 if i % 2 else 0, dev)
    if dev == "cpu":   # the small problems' kernels stage NB rows a thread at once
        assert counter.launches and all(s.kernel.endswith(f"_b{metal.STAGE_BATCH}") for s in counter.launches)
        names = [s.kernel for s in counter.launches]
        assert any(n.startswith("attn_backward_fused") for n in names) == fused
        assert any(n.startswith("attn_backward_dq") for n in names) != fused


FLOAT_STAGED_CASES = [
    # windows longer than a chunk of float rows (several chunks a tile), vector loads
    dict(spatial=[100], ks=[63], st=[1], dil=[1], causal=[False], hkv=1, h=2, d=64, dv=64, b=1),
    # rows not 4-aligned (element loads), strides, dilation, causal, Dv != D
    dict(spatial=[5, 9], ks=[3, 4], st=[1, 2], dil=[1, 2], causal=[False, True], hkv=1, h=2, d=13, dv=7, b=2),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("i", range(len(FLOAT_STAGED_CASES)))
def test_small_problem_forward_stages_float_rows(i, dtype, dev, monkeypatch):
    """The small problems' forward (NB > 1) stages bfloat16 keys and values as float rows (attention.metal,
    Staged: unpacked once, not once a lane that reads it) and float16 ones as half: the host sizes its
    chunks for the staged type, and the results stay within the dtype's tolerance with several
    chunks a tile, element loads and additional keys; the backward, which stages the input type, too."""
    monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 10 ** 9)
    c = FLOAT_STAGED_CASES[i]
    q, k, v = inputs(c, dtype, i)[:3]
    prob = metal._Problem(q, k, v, c["ks"], c["st"], c["dil"], c["causal"], False, 0)
    assert prob.NB == metal.STAGE_BATCH and prob.KC == metal._chunk(prob.RS, metal.staged_itemsize(dtype))
    if i == 0 and dtype == torch.bfloat16:        # half the tokens of 16-bit rows; a window spans chunks
        assert prob.KC < metal._chunk(prob.RS, 2) and prob.KC < c["ks"][0]
    check_na(c, dtype, seed=40 + i, extra=3, dev=dev)


@pytest.mark.parametrize("spatial,k,fused", [((256,), 7, True), ((32, 32), 7, False), ((16, 16, 16), 3, False)])
def test_fused_backward_where_key_tiles_have_few_queries(spatial, k, fused, monkeypatch):
    """The single dispatch is taken for small problems whose key tiles' query boxes are at most
    FUSED_MAX_HALO times the tile (1-D), not where the halo is large (2-D, 3-D); a GPU of 132 cores."""
    monkeypatch.delenv("NATTEN_MPS_METAL_FUSED_BACKWARD", raising=False)
    monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 198)
    r = len(spatial)
    q = torch.randn(2, *spatial, 8 if r == 1 else 4, 32)
    args = ([k] * r, [1] * r, [1] * r, [False] * r, False, 0)
    prob, kprob = metal._Problem(q, q, q, *args), metal._Problem(q, q, q, *args, tile_keys=True)
    assert (kprob.query_halo() <= metal.FUSED_MAX_HALO) == fused
    assert metal._fuses_backward(prob, kprob) == fused


def test_fused_backward_env_is_checked(monkeypatch):
    monkeypatch.setenv("NATTEN_MPS_METAL_FUSED_BACKWARD", "yes")
    q = torch.randn(1, 40, 1, 32)
    prob = metal._Problem(q, q, q, [7], [1], [1], [False], False, 0)
    with pytest.raises(ValueError, match="NATTEN_MPS_METAL_FUSED_BACKWARD"):
        metal._fuses_backward(prob, prob)


@pytest.mark.parametrize("spatial,k,own", [((256,), 7, True), ((64, 64), 7, True), ((16, 16, 16), 5, True),
                                            ((128, 128), 13, False), ((4096,), 63, False), ((64, 2), 2, False)])
def test_default_walk(spatial, k, own, monkeypatch):
    """The host takes the own-window walk for short windows whose union walk would visit >= 1.4x a
    window's steps, and the union walk for long windows (K > 8 on the inner axis), for extents too
    narrow for a SIMD-group's run on the inner axis, and for dense attention."""
    monkeypatch.delenv("NATTEN_MPS_METAL_WALK", raising=False)
    r = len(spatial)
    q = torch.empty(2, *spatial, 4, 64, device="meta")
    prob = metal._Problem(q, q, q, [k] * r, [1] * r, [1] * r, [False] * r, False, 0)
    assert prob.own_walk == own
    dense = metal._Problem(q, q, q, [1], [1], [1], [False], True, 0, lq=[q[0, ..., 0, 0].numel()],
                           lk=[q[0, ..., 0, 0].numel()])
    assert not dense.own_walk


def test_walk_mode_env_is_checked(monkeypatch):
    monkeypatch.setenv("NATTEN_MPS_METAL_WALK", "sideways")
    q = torch.randn(1, 40, 1, 32)
    with pytest.raises(ValueError, match="NATTEN_MPS_METAL_WALK"):
        metal._Problem(q, q, q, [7], [1], [1], [False], False, 0)


def test_backward_is_bit_identical_across_runs(dev):
    c = dict(spatial=[9, 11], ks=[3, 5], st=[1, 2], dil=[2, 1], causal=[False, True], hkv=1, h=4, d=40, dv=24, b=2)
    first, _ = check_na(c, torch.float32, seed=3, extra=2, dev=dev)
    second, _ = check_na(c, torch.float32, seed=3, extra=2, dev=dev)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_geometry_buffers_are_kept_per_problem(dev, monkeypatch):
    """A known problem reuses its geom buffer (no upload a call); problems met in turn, and more
    problems than the cache holds, each still get their own geometry (results against float64)."""
    monkeypatch.setattr(metal, "_GEOM_CACHE_SIZE", 2)
    metal._GEOM_CACHE.clear()
    a = dict(spatial=[13], ks=[5], st=[2], dil=[1], causal=[False], hkv=1, h=2, d=8, dv=8, b=1)
    b = dict(spatial=[6, 7], ks=[3, 3], st=[1, 1], dil=[1, 2], causal=[True, False], hkv=2, h=2, d=8, dv=8, b=2)
    c = dict(spatial=[17], ks=[4], st=[1], dil=[2], causal=[True], hkv=1, h=1, d=8, dv=8, b=1)
    check_na(a, torch.float32, seed=1, grad=False, dev=dev)
    held = dict(metal._GEOM_CACHE)
    check_na(a, torch.float32, seed=2, grad=False, dev=dev)
    assert len(held) == 1 and all(metal._GEOM_CACHE[k] is t for k, t in held.items())
    for case in (b, c, a, b):
        check_na(case, torch.float32, seed=3, grad=False, dev=dev)
    assert len(metal._GEOM_CACHE) == 2


@pytest.mark.parametrize("lq,lk,causal,h,hkv,d", [(37, 37, True, 4, 2, 32), (20, 45, False, 2, 1, 64),
                                                  (70, 9, False, 3, 3, 16), (33, 33, False, 2, 2, 128),
                                                  (20, 45, True, 2, 1, 32), (70, 9, True, 2, 2, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_attention(lq, lk, causal, h, hkv, d, dtype, dev):
    check_dense(lq, lk, causal, h, hkv, d, dtype, dev)


@pytest.mark.parametrize("lq,lk,causal,h,hkv,d", [(37, 37, True, 4, 2, 32), (20, 45, False, 2, 1, 64)])
def test_dense_attention_narrow_slices(lq, lk, causal, h, hkv, d, dev, monkeypatch):
    """Dense attention on the narrowest slices (DS 4 for D = 32, 8 for D = 64), as a small problem gets."""
    monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 10 ** 9)
    q = torch.randn(2, lq, h, d)
    prob = metal._Problem(q, q[:, :lk, :hkv], q[:, :lk, :hkv], [1], [1], [1], [causal], True, 0)
    assert (prob.DS, prob.NG) == (d // 8, 8)
    check_dense(lq, lk, causal, h, hkv, d, torch.float32, dev)


def check_dense(lq, lk, causal, h, hkv, d, dtype, dev):
    g = torch.Generator().manual_seed(lq + lk)
    q = torch.randn(2, lq, h, d, generator=g).to(dtype)
    k = torch.randn(2, lk, hkv, d, generator=g).to(dtype)
    v = torch.randn(2, lk, hkv, d, generator=g).to(dtype)
    out, lse = (t.cpu() for t in metal.dense_forward(q.to(dev), k.to(dev), v.to(dev), causal, d ** -0.5))
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    if causal and lq != lk:   # SDPA's top-left alignment, written out
        s = torch.einsum("bqhd,bkhd->bhqk", qr, kr.repeat_interleave(h // hkv, 2)) * d ** -0.5
        s = s.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(1), float("-inf"))
        ro = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vr.repeat_interleave(h // hkv, 2))
        rl = torch.logsumexp(s, -1).transpose(1, 2)
    else:
        ro, rl = reference_attention(qr, kr, vr, causal)
    torch.testing.assert_close(out.double(), ro, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.double(), rl, atol=TOL[dtype], rtol=TOL[dtype])
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dq, dk, dv = (t.cpu() for t in metal.dense_backward(*(t.to(dev) for t in (dout,)), None,
                                                        *(t.to(dev) for t in (q, k, v, out, lse)), causal, d ** -0.5))
    (ro * dout.double()).sum().backward()
    for got, r in zip((dq, dk, dv), (qr, kr, vr)):
        torch.testing.assert_close(got.double(), r.grad, atol=GRAD_TOL[dtype], rtol=GRAD_TOL[dtype])


@pytest.mark.parametrize("small", [False, True])
def test_nan_stays_in_its_windows(small, dev, monkeypatch, gpu_profile):
    """A NaN key reaches the outputs and LSEs of exactly the queries whose window holds it, a NaN value
    their outputs; ``small``: through the small problems' kernels (steps in groups, masked steps of a
    group add nothing), else the large tiles (the ``none`` GPU profile)."""
    if small:
        monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 10 ** 9)
    else:
        gpu_profile("none")
    c = dict(spatial=[12, 12], ks=[3, 3], st=[1, 1], dil=[1, 1], causal=[False, False], hkv=1, h=1, d=8, dv=8, b=1)
    q, k, v = inputs(c, torch.float32, 5)
    prob = metal._Problem(q, k, v, c["ks"], c["st"], c["dil"], c["causal"], False, 0)
    assert (prob.NB > 1) == small
    k[0, 0, 0, 0, 0] = float("nan")          # key at (0, 0): only queries whose window holds it
    v[0, 11, 11, 0, 0] = float("nan")        # value at (11, 11): the outputs of the queries near it
    out, lse = (t.cpu() for t in metal.attention_forward(q.to(dev), k.to(dev), v.to(dev), c["ks"], c["st"],
                                                         c["dil"], c["causal"], 0.35))
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[:2, :2] = True                   # queries whose 3x3 window (clamped at the border) holds (0, 0)
    assert torch.equal(torch.isnan(lse[0, :, :, 0]), expected)
    expected[10:, 10:] = True                 # ... or (11, 11)
    assert torch.equal(torch.isnan(out[0, :, :, 0, 0]), expected)


def test_cost_budgets_2d_32x32_k7(dev, gpu_profile):
    """Forward: one dispatch, device bytes within 2x of reading each input and writing each output
    once; backward: at most three dispatches within 4x (the large tiles: the ``none`` GPU profile)."""
    if dev != "cpu":
        pytest.skip("cost counters are the emulator's")
    gpu_profile("none")
    B, H, D = 1, 1, 32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 32, 32, H, D, generator=g) for _ in range(3))
    args = ([7, 7], [1, 1], [1, 1], [False, False], D ** -0.5)
    with emulator.counting() as fwd:
        out, lse = metal.attention_forward(q, k, v, *args)
    t = fwd.total()
    minimum = 4 * q.numel() * 4 + lse.numel() * 4
    assert t.dispatches == 1
    assert (t.bytes_read + t.bytes_written) <= 2 * minimum, (t.bytes_read + t.bytes_written) / minimum
    dout = torch.randn(out.shape, generator=g)
    with emulator.counting() as bwd:
        metal.attention_backward(dout, None, q, k, v, out, lse, *args)
    t = bwd.total()
    minimum = (4 + 2 + 3) * q.numel() * 4 + lse.numel() * 4     # q k v out dout | lse | dq dk dv
    assert t.dispatches <= 3
    assert (t.bytes_read + t.bytes_written) <= 4 * minimum, (t.bytes_read + t.bytes_written) / minimum


def test_public_api_trains_on_the_metal_path(dev):
    natten_mps.set_backend("metal")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 10, 9, 2, 16, generator=g).to(dev).requires_grad_() for _ in range(3))
    out, lse = natten_mps.na2d(q, k, v, (3, 5), dilation=(2, 1), is_causal=(True, False), return_lse=True)
    (out.sum() + lse.sum()).backward()
    assert natten_mps.last_backend() == "metal"
    natten_mps.set_backend("pure")
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o2, l2 = natten_mps.na2d(*ref, (3, 5), dilation=(2, 1), is_causal=(True, False), return_lse=True)
    (o2.sum() + l2.sum()).backward()
    for a, b in zip((q, k, v), ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


def test_public_api_additional_keys_dispatches(dev):
    """NA with additional keys through the public API: one forward dispatch, three backward ones."""
    if dev != "cpu":
        pytest.skip("dispatch counts are the emulator's")
    natten_mps.set_backend("metal")
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 9, 8, 2, 8, generator=g, requires_grad=True) for _ in range(3))
    xk, xv = (torch.randn(1, 3, 2, 8, generator=g, requires_grad=True) for _ in range(2))
    with emulator.counting() as fwd:
        out, lse = natten_mps.na2d(q, k, v, 3, additional_keys=xk, additional_values=xv, return_lse=True)
    with emulator.counting() as bwd:
        (out.sum() + lse.sum()).backward()
    assert fwd.total().dispatches == 1 and bwd.total().dispatches == 3
    ref = [t.detach().double().requires_grad_() for t in (q, k, v, xk, xv)]
    ro, rl = reference_na(*ref[:3], (3, 3), (1, 1), (1, 1), (False, False), add_k=ref[3], add_v=ref[4])
    (ro.sum() + rl.sum()).backward()
    torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
    for t, r in zip((q, k, v, xk, xv), ref):
        torch.testing.assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=1e-4)


def test_every_slice_width_is_instantiated():
    """The host picks slice widths from metal.SLICES (and batched staging at metal.BATCHED_SLICES);
    the shader instantiates each, for every dtype and rank, forward and backward (the emulator compiles the same source as compile_shader)."""
    from natten_mps.metal import runtime
    lib = runtime.library(metal.ATTENTION_SHADER, "cpu")
    variants = [(ds, "") for ds in metal.SLICES] + [(ds, f"_b{metal.STAGE_BATCH}") for ds in metal.BATCHED_SLICES]
    for ds, tag in variants:
        for dtype in ("float32", "float16", "bfloat16"):
            for rank in (1, 2, 3):
                for name in ("attn_forward", "attn_backward_dq", "attn_backward_dkdv"):
                    full = f"{name}_{dtype}_{ds}_r{rank}{tag}"
                    assert getattr(lib, full).name == full


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_kernels_are_specialised_to_the_problem_rank(rank, gpu_profile):
    """Every launch of a rank-R problem (forward, dQ, dK/dV, additional keys' dK/dV) runs the
    kernels instantiated for R (their walks skip only the R's trivial leading axes); the large tiles
    (the ``none`` GPU profile: three dispatches in the backward)."""
    gpu_profile("none")
    c = random_case(random.Random(90 + rank), rank)
    ts = inputs(c, torch.float32, 0, 2)
    args = (c["ks"], c["st"], c["dil"], c["causal"], 0.3)
    with emulator.counting() as counter:
        out, lse = metal.attention_forward(ts[0], ts[1], ts[2], *args, extra_k=ts[3], extra_v=ts[4])
        metal.attention_backward(torch.randn_like(out), None, ts[0], ts[1], ts[2], out, lse, *args,
                                 extra_k=ts[3], extra_v=ts[4])
    names = [s.kernel for s in counter.launches]
    assert len(names) == 4
    assert all(n.endswith(f"_r{rank}") for n in names[:3]), names
    assert names[3].startswith("attn_backward_dkdv") and names[3].endswith("_r1"), names   # dense over E keys
    assert {n.rsplit("_", 3)[0] for n in names} == {"attn_forward", "attn_backward_dq", "attn_backward_dkdv"}
