"""Randomized sweeps against the float64 brute-force reference: forward, LSE and gradients.

Each configuration runs on the pure-PyTorch path and on the Metal path (CPU emulator executing
shaders/natten/attention.metal, forward and backward), with outputs poisoned before the kernel writes them.
"""
import random

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from reference import reference_na

FNS = {1: natten_mps.na1d, 2: natten_mps.na2d, 3: natten_mps.na3d}


def random_config(rng: random.Random, rank: int):
    spatial, ks, st, dil, causal = [], [], [], [], []
    for _ in range(rank):
        k = rng.choice([2, 3, 4, 5] if rank < 3 else [2, 3])
        d = rng.choice([1, 1, 2]) if rank < 3 else rng.choice([1, 2])
        n = k * d + rng.choice([0, 0, 1, 3, 6]) if rank < 3 else k * d + rng.choice([0, 1, 2])
        ks.append(k)
        dil.append(d)
        spatial.append(n)
        st.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
    heads_kv = rng.choice([1, 2])
    heads = heads_kv * rng.choice([1, 2])
    dim = rng.choice([4, 8])
    dim_v = rng.choice([dim, 6])
    extra = rng.choice([0, 0, 1, 3])
    return dict(spatial=tuple(spatial), kernel_size=tuple(ks), stride=tuple(st), dilation=tuple(dil),
                is_causal=tuple(causal), heads=heads, heads_kv=heads_kv, dim=dim, dim_v=dim_v, extra=extra,
                batch=rng.choice([1, 2]))


def make_inputs(cfg, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    B, S = cfg["batch"], cfg["spatial"]
    q = torch.randn(B, *S, cfg["heads"], cfg["dim"], generator=g).to(dtype)
    k = torch.randn(B, *S, cfg["heads_kv"], cfg["dim"], generator=g).to(dtype)
    v = torch.randn(B, *S, cfg["heads_kv"], cfg["dim_v"], generator=g).to(dtype)
    ak = av = None
    if cfg["extra"]:
        ak = torch.randn(B, cfg["extra"], cfg["heads_kv"], cfg["dim"], generator=g).to(dtype)
        av = torch.randn(B, cfg["extra"], cfg["heads_kv"], cfg["dim_v"], generator=g).to(dtype)
    return q, k, v, ak, av


def run_case(cfg, dtype, seed, check_grad, device="cpu"):
    q, k, v, ak, av = (None if t is None else t.to(device) for t in make_inputs(cfg, dtype, seed))
    tensors = [t for t in (q, k, v, ak, av) if t is not None]
    for t in tensors:
        t.requires_grad_(check_grad)
    fn = FNS[len(cfg["spatial"])]
    out, lse = fn(q, k, v, cfg["kernel_size"], stride=cfg["stride"], dilation=cfg["dilation"],
                  is_causal=cfg["is_causal"], additional_keys=ak, additional_values=av, return_lse=True)
    assert out.dtype == dtype and out.shape == q.shape[:-1] + (cfg["dim_v"],)
    assert lse.shape == q.shape[:-1]
    ref = [t.detach().cpu().double().requires_grad_(check_grad) for t in tensors]
    rq, rk, rv = ref[:3]
    rak, rav = (ref[3], ref[4]) if ak is not None else (None, None)
    ro, rl = reference_na(rq, rk, rv, cfg["kernel_size"], cfg["stride"], cfg["dilation"], cfg["is_causal"],
                          add_k=rak, add_v=rav)
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ro, atol=tol, rtol=tol, msg=lambda m: f"{cfg}: out {m}")
    torch.testing.assert_close(lse.cpu().double(), rl, atol=tol, rtol=tol, msg=lambda m: f"{cfg}: lse {m}")
    if not check_grad:
        return
    g = torch.Generator().manual_seed(seed + 1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    w_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    ((out.double() * w_out.to(device)).sum() + (lse.double() * w_lse.to(device)).sum()).backward()
    ((ro * w_out).sum() + (rl * w_lse).sum()).backward()
    gtol = GRAD_TOL[dtype]
    for name, t, r in zip(("q", "k", "v", "add_k", "add_v"), tensors, ref):
        torch.testing.assert_close(t.grad.cpu().double(), r.grad, atol=gtol, rtol=gtol,
                                   msg=lambda m: f"{cfg}: grad {name} {m}")


CASES = [(rank, i) for rank in (1, 2, 3) for i in range(12 if rank < 3 else 8)]


@pytest.mark.parametrize("rank,i", CASES)
def test_pure_matches_reference_float32(rank, i):
    natten_mps.set_backend("pure")
    cfg = random_config(random.Random(1000 * rank + i), rank)
    run_case(cfg, torch.float32, seed=i, check_grad=True)
    assert natten_mps.last_backend() == "pure"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_pure_dtypes(rank, dtype):
    natten_mps.set_backend("pure")
    cfg = random_config(random.Random(77 + rank), rank)
    run_case(cfg, dtype, seed=rank, check_grad=True)


@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(5)])
def test_metal_kernel_matches_reference_float32(emulate, rank, i):
    natten_mps.set_backend("metal")
    cfg = random_config(random.Random(5000 * rank + i), rank)
    run_case(cfg, torch.float32, seed=i, check_grad=(i % 2 == 0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_metal_kernel_dtypes(emulate, rank, dtype):
    natten_mps.set_backend("metal")
    cfg = random_config(random.Random(900 + rank), rank)
    run_case(cfg, dtype, seed=rank, check_grad=False)


def test_auto_backend_picks_metal_under_emulation(emulate):
    q = torch.randn(1, 10, 2, 4)
    natten_mps.na1d(q, q, q, 3)
    assert natten_mps.last_backend() == "metal"
    natten_mps.set_emulation(False)
    natten_mps.na1d(q, q, q, 3)
    assert natten_mps.last_backend() == "pure"


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_sizes_equal_to_kernel_and_fmha_fast_path(path):
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(3)
    for spatial in [(7,), (4, 5), (3, 3, 2)]:
        q = torch.randn(2, *spatial, 2, 8, generator=g)
        k = torch.randn(2, *spatial, 1, 8, generator=g)
        v = torch.randn(2, *spatial, 1, 8, generator=g)
        out, lse = FNS[len(spatial)](q, k, v, spatial, return_lse=True)
        ro, rl = reference_na(q, k, v, spatial, (1,) * len(spatial), (1,) * len(spatial), (False,) * len(spatial))
        torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse.double(), rl, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_dense_attention(path):
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 9, 4, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 9, 2, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 9, 2, 6, generator=g, requires_grad=True)
    for causal in (False, True):
        out, lse = natten_mps.attention(q, k, v, is_causal=causal, return_lse=True)
        ro, rl = reference_na(q.detach(), k.detach(), v.detach(), (9,), (1,), (1,), (causal,))
        torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse.double(), rl, atol=2e-5, rtol=2e-5)
    # cross attention (different key length)
    kc, vc = torch.randn(2, 5, 2, 8, generator=g), torch.randn(2, 5, 2, 6, generator=g)
    out = natten_mps.attention(q, kc, vc)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), kc.double().repeat_interleave(2, 2)) * 8 ** -0.5
    ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vc.double().repeat_interleave(2, 2))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_merge_attentions_equals_attention_over_union_and_is_differentiable():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 8, 2, 4, generator=g)
    k = torch.randn(2, 12, 2, 4, generator=g)
    v = torch.randn(2, 12, 2, 4, generator=g)
    o1, l1 = natten_mps.attention(q, k[:, :5], v[:, :5], return_lse=True)
    o2, l2 = natten_mps.attention(q, k[:, 5:], v[:, 5:], return_lse=True)
    o1.requires_grad_(True)
    l1.requires_grad_(True)
    o2.requires_grad_(True)
    l2.requires_grad_(True)
    out, lse = natten_mps.merge_attentions([o1, o2], [l1, l2])
    full, full_lse = natten_mps.attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, full_lse, atol=1e-5, rtol=1e-5)
    (out.sum() + lse.sum()).backward()
    for t in (o1, o2, l1, l2):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_nan_propagates_and_empty_batch(path):
    natten_mps.set_emulation(path == "metal")
    q = torch.randn(1, 9, 9, 2, 4)
    q[0, 4, 4, 1, 0] = float("nan")
    out = natten_mps.na2d(q, torch.randn_like(q), torch.randn_like(q), 3)
    assert torch.isnan(out[0, 4, 4, 1]).all()
    assert not torch.isnan(out[0, 0, 0]).any()
    k = torch.randn(1, 9, 9, 2, 4)
    k[0, 0, 0, 0, 0] = float("nan")
    out = natten_mps.na2d(torch.randn_like(k), k, torch.randn_like(k), 3)
    assert torch.isnan(out[0, 0, 0, 0]).all() and torch.isnan(out[0, 1, 1, 0]).all()
    assert not torch.isnan(out[0, 8, 8]).any()
    e = torch.randn(0, 9, 2, 4)
    out, lse = natten_mps.na1d(e, e, e, 3, return_lse=True)
    assert out.shape == (0, 9, 2, 4) and lse.shape == (0, 9, 2)


@pytest.mark.parametrize("bad", ["key", "value"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_stays_in_its_batch_and_head(bad, value):
    """Rank-1 tiles of one batch read key windows that run into the neighbouring batch (masked).
    A non-finite key or value there must not reach another batch or head; a key must reach exactly
    the queries whose window holds it. (A value may also reach its tile-mates on the matmul route,
    a documented limit; finite inputs are exact everywhere.)"""
    natten_mps.set_backend("pure")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 64, 2, 8, generator=g) for _ in range(3))
    (k if bad == "key" else v)[1, 0, 0, 3] = value   # batch 1, position 0 (next to batch 0's end), head 0
    out = natten_mps.na1d(q, k, v, 7)
    ro, _ = reference_na(q.double(), k.double(), v.double(), (7,), (1,), (1,), (False,))
    clean = torch.ones(2, 64, 2, dtype=torch.bool)
    clean[1, :, 0] = bad == "key"
    clean[1, :4, 0] = False              # the queries whose window (the first 7 keys) holds position 0
    torch.testing.assert_close(out[clean].double(), ro[clean], atol=2e-5, rtol=2e-5)
    assert not torch.isfinite(ro[1, :4, 0]).all()     # the reference is non-finite there, and so are we
    torch.testing.assert_close(out[1, :4, 0].double(), ro[1, :4, 0], atol=2e-5, rtol=2e-5, equal_nan=True)
    # backward: a loss on batch 0 only; its gradients must be exact (nothing leaks back from batch 1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    refs = [t.double().requires_grad_() for t in (q, k, v)]
    w = torch.randn(64, 2, 8, generator=g, dtype=torch.float64)
    (natten_mps.na1d(*leaves, 7)[0].double() * w).sum().backward()
    (reference_na(*refs, (7,), (1,), (1,), (False,))[0][0] * w).sum().backward()
    for t, r in zip(leaves, refs):
        torch.testing.assert_close(t.grad[0].double(), r.grad[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_pure_fused_and_matmul_routes(monkeypatch, fused, rank):
    """The pure path has a fused-kernel route (CPU, equal head dims, finite keys) and a matmul route."""
    from natten_mps.backends import pure
    monkeypatch.setattr(pure, "_USE_FUSED", fused)
    natten_mps.set_backend("pure")
    for i in range(3):
        cfg = random_config(random.Random(3100 * rank + i), rank)
        cfg["dim_v"] = cfg["dim"]
        run_case(cfg, torch.float32, seed=i, check_grad=True)
    # dense attention (FMHA and causal GQA) on both routes
    g = torch.Generator().manual_seed(rank)
    q = torch.randn(2, 11, 4, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 11, 2, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 11, 2, 8, generator=g, requires_grad=True)
    for causal in (False, True):
        out, lse = natten_mps.attention(q, k, v, is_causal=causal, return_lse=True)
        ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ro, rl = reference_na(*ref, (11,), (1,), (1,), (causal,))
        torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse.double(), rl, atol=2e-5, rtol=2e-5)
        w = torch.randn(out.shape, generator=g, dtype=torch.float64)
        for t in (q, k, v):
            t.grad = None
        ((out.double() * w).sum() + lse.double().sum()).backward()
        ((ro * w).sum() + rl.sum()).backward()
        for t, r in zip((q, k, v), ref):
            torch.testing.assert_close(t.grad.cpu().double(), r.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_pure_many_tiles_ragged_and_chunked(monkeypatch, fused, rank):
    """Small tiles (several per axis, a ragged last one) and a tiny chunk budget, so tiling, padding,
    per-chunk key windows and the key-gradient scatter all run with many pieces."""
    from natten_mps.backends import pure
    monkeypatch.setattr(pure, "_USE_FUSED", fused)
    monkeypatch.setattr(pure, "_CHUNK_BYTES", 4096)
    monkeypatch.setenv(f"NATTEN_MPS_TILE_{rank}D", "3")
    natten_mps.set_backend("pure")
    rng = random.Random(42 + rank)
    for i in range(3):
        cfg = random_config(rng, rank)
        cfg["spatial"] = tuple(n + 5 for n in cfg["spatial"])   # 2+ tiles of 3 per axis, ragged
        cfg["batch"], cfg["heads_kv"], cfg["heads"] = 2, 2, 4   # batch and GQA share the kernel's head dim
        cfg["dim_v"] = cfg["dim"]
        run_case(cfg, torch.float32, seed=i, check_grad=True)


@pytest.mark.parametrize("cfg", [
    dict(spatial=(61,), kernel_size=(7,), stride=(1,), dilation=(1,), is_causal=(False,), batch=2, heads=4,
         heads_kv=2, dim=8, dim_v=8, extra=0),
    dict(spatial=(97,), kernel_size=(13,), stride=(1,), dilation=(1,), is_causal=(True,), batch=1, heads=2,
         heads_kv=1, dim=8, dim_v=8, extra=2),
    dict(spatial=(90,), kernel_size=(9,), stride=(3,), dilation=(2,), is_causal=(False,), batch=2, heads=2,
         heads_kv=2, dim=4, dim_v=4, extra=0),
])
def test_rank1_default_tiles_forward_and_backward_differ(cfg):
    """At default tiles a rank-1 forward on the fused route uses tiles of 33-K queries (a partial last
    tile, queries padded in kept buffers) and its backward tiles of 32: values, LSE and gradients
    still match the float64 reference, twice in a row (the kept buffers are refilled)."""
    from natten_mps.backends import pure, tiling
    natten_mps.set_backend("pure")
    k = cfg["kernel_size"][0]
    assert tiling.default_tile(1, 1000, k, flash_forward=True) == 33 - k
    assert tiling.default_tile(1, 1000, k) == 32
    for seed in (0, 1):
        run_case(cfg, torch.float32, seed=seed, check_grad=True)
    assert pure._fused_route(torch.empty(1, 1, 1, 8), torch.empty(1, 1, 1, 8))
