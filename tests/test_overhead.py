"""Host-cost machinery: the no-op launch library, the per-signature caches, the small-problem pure route."""
import json
import os
import sys

import pytest
import torch

import natten_mps
from natten_mps import functional, ops
from natten_mps.backends import metal, pure_small
from natten_mps.metal import runtime
from reference import reference_na
from conftest import GRAD_TOL, TOL

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _qkv(L=16, H=2, Hkv=2, D=8, dtype=torch.float32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, L, h, D, generator=g, dtype=dtype).requires_grad_(grad) for h in (H, Hkv, Hkv)]


@pytest.fixture
def noop_metal():
    """The Metal path on CPU tensors with no-op launches."""
    natten_mps.set_emulation(True)
    natten_mps.set_backend("metal")
    with runtime.noop_launches():
        yield runtime.library(metal.ATTENTION_SHADER, "cpu")


# ---- no-op launches ------------------------------------------------------------------------------
def test_noop_launches_off_by_default_and_restored():
    assert not runtime.noop_launches_enabled()
    with runtime.noop_launches():
        assert runtime.noop_launches_enabled()
        lib = runtime.library(metal.ATTENTION_SHADER, "cpu")
        assert isinstance(lib, runtime.NoopLibrary)
        assert any(n.startswith("attn_forward_float32_") for n in lib.kernel_names())
        with runtime.noop_launches(False):
            assert not runtime.noop_launches_enabled()
        assert runtime.noop_launches_enabled()
    assert not runtime.noop_launches_enabled()


def test_noop_kernels_skip_the_work_and_leave_poisoned_outputs(noop_metal):
    lib = noop_metal
    q, k, v = _qkv(grad=True)
    before = lib.launches()
    out, lse = natten_mps.na1d(q, k, v, 3, return_lse=True)
    assert natten_mps.last_backend() == "metal"
    assert lib.launches() == before + 1                       # one forward dispatch, not run
    assert out.shape == (1, 16, 2, 8) and lse.shape == (1, 16, 2) and lse.dtype == torch.float32
    assert torch.isnan(out).all() and torch.isnan(lse).all()  # allocated, poisoned, never written
    (out.sum() + 0 * lse.sum()).backward()
    assert lib.launches() in (before + 2, before + 3)           # fused backward, or dQ then dK/dV
    for t in (q, k, v):
        assert t.grad.shape == t.shape and torch.isnan(t.grad).all()


def test_noop_kernel_checks_its_argument_count(noop_metal):
    name = next(n for n in noop_metal.kernel_names() if n.startswith("attn_forward_"))
    kernel = getattr(noop_metal, name)
    with pytest.raises(TypeError, match="arguments"):
        kernel(torch.zeros(1), threads=1, group_size=1)
    with pytest.raises(AttributeError, match="no kernel"):
        noop_metal.not_a_kernel


# ---- per-signature caches ------------------------------------------------------------------------
def test_problems_are_cached_per_signature():
    q, k, v = _qkv()
    q2, k2, v2 = _qkv(L=32)
    args = ([3], [1], [1], [False], False, 0)
    a = metal._problem(q, k, v, *args)
    assert metal._problem(q, k, v, *args) is a
    b = metal._problem(q2, k2, v2, *args)
    c = metal._problem(q, k, v, [5], [1], [1], [False], False, 0)
    assert b is not a and c is not a
    assert (a.Lq[2], b.Lq[2], c.K[2]) == (16, 32, 5)
    assert metal._problem(q, k, v, *args[:5], 0, tile_keys=True) is not a
    # geometry differs per signature; same signature: the same kept buffer
    ga, gb = a.geometry(q.device, tensors=(q, k, v)), b.geometry(q.device, tensors=(q, k, v))
    assert not torch.equal(ga, gb) and a.geometry(q.device, tensors=(q, k, v)) is ga


def test_problem_cache_follows_replaced_tiling_rules(monkeypatch, gpu_profile):
    """A replaced rule of the tiling choice (a tuning hook, a patched function) gives a new problem,
    never the one cached under the old rule (large tiles first: the ``none`` profile)."""
    gpu_profile("none")
    q, k, v = _qkv(L=64)
    args = ([3], [1], [1], [False], False, 0)
    before = metal._problem(q, k, v, *args)
    monkeypatch.setattr(metal, "_target_threadgroups", lambda device: 10 ** 9)   # the smallest tiles
    after = metal._problem(q, k, v, *args)
    assert after is not before and after.tiles() > before.tiles()
    monkeypatch.setattr(metal, "FUSED_MAX_HALO", 0.0)       # the fused-backward decision follows it too
    kafter = metal._problem(q, k, v, *args[:5], 0, tile_keys=True)
    assert metal._fused_dims(after, kafter) is None


def test_problem_cache_follows_the_walk_override(monkeypatch):
    q, k, v = _qkv(L=64)
    args = ([3], [1], [1], [False], False, 0)
    monkeypatch.setenv("NATTEN_MPS_METAL_WALK", "own")
    own = metal._problem(q, k, v, *args)
    monkeypatch.setenv("NATTEN_MPS_METAL_WALK", "union")
    union = metal._problem(q, k, v, *args)
    assert own.own_walk and not union.own_walk


def test_problem_cache_follows_the_gpu_profile_and_the_tiling(gpu_profile):
    """A changed GPU profile or a forced tiling gives another problem, never the cached one."""
    q, k, v = _qkv(L=64)
    args = ([3], [1], [1], [False], False, 0)
    gpu_profile("none")
    large = metal._problem(q, k, v, *args)
    gpu_profile("apple-m1")
    apple = metal._problem(q, k, v, *args)
    assert apple is not large and apple.threads_per_group != large.threads_per_group
    with metal.force_tiling(metal.Tiling(ds=4)):
        forced = metal._problem(q, k, v, *args)
    assert forced is not apple and forced.DS == 4


def test_signatures_do_not_share_checked_arguments():
    natten_mps.set_backend("pure")
    q, k, v = [t.double() for t in _qkv()]
    for kernel, dilation, causal in [(3, 1, False), (5, 2, True), (3, 1, False), (5, 2, True)]:
        out = natten_mps.na1d(q, k, v, kernel, dilation=dilation, is_causal=causal)
        ref = reference_na(q, k, v, (kernel,), (1,), (dilation,), (causal,))[0]
        torch.testing.assert_close(out, ref, atol=TOL[torch.float64], rtol=0)


def test_backend_switches_take_effect_on_a_cached_signature():
    q, k, v = _qkv()
    ref = reference_na(q.double(), k.double(), v.double(), (3,), (1,), (1,), (False,))[0].float()
    natten_mps.set_backend("pure")
    torch.testing.assert_close(natten_mps.na1d(q, k, v, 3), ref, atol=TOL[torch.float32], rtol=0)
    assert natten_mps.last_backend() == "pure"
    natten_mps.set_backend("metal")
    natten_mps.set_emulation(True)
    with runtime.noop_launches():
        assert torch.isnan(natten_mps.na1d(q, k, v, 3)).all()     # the Metal path (no-op kernels)
        assert natten_mps.last_backend() == "metal"
        natten_mps.set_emulation(False)
        natten_mps.set_backend("auto")
        torch.testing.assert_close(natten_mps.na1d(q, k, v, 3), ref, atol=TOL[torch.float32], rtol=0)
        assert natten_mps.last_backend() == "pure"


@pytest.mark.parametrize("bad, error", [
    (dict(kernel_size=3.0), TypeError), (dict(kernel_size=True), TypeError), (dict(kernel_size=(3, 3)), ValueError),
    (dict(kernel_size=3, scale="x"), TypeError), (dict(kernel_size=3, scale=True), TypeError),
    (dict(kernel_size=3, stride=4), ValueError), (dict(kernel_size=3, dilation=0), ValueError),
    (dict(kernel_size=3, is_causal=1.0), TypeError), (dict(kernel_size=[3.0]), TypeError)])
def test_bad_input_after_a_good_call_of_the_same_shape_still_raises(bad, error):
    natten_mps.set_backend("pure")
    q, k, v = _qkv()
    natten_mps.na1d(q, k, v, kernel_size=3, stride=1, dilation=1, is_causal=False, scale=0.5)
    natten_mps.na1d(q, k, v, 3)
    with pytest.raises(error):
        natten_mps.na1d(q, k, v, **bad)
    with pytest.raises(TypeError):
        natten_mps.na1d(q, k.double(), v, 3)           # same shapes, another dtype
    with pytest.raises(ValueError):
        natten_mps.na1d(q, k[:, :8], v[:, :8], 3)      # another shape


def test_signature_cache_is_bounded_and_least_recently_used_first_out():
    from natten_mps.checks import SignatureCache, arg_key
    cache = SignatureCache(size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert arg_key(7) != arg_key(7.0) and arg_key(1) != arg_key(True) and arg_key((3,)) != arg_key([3.0])
    assert arg_key("7") is None and arg_key((3, "x")) is None and arg_key(torch.tensor(3)) is None


def test_eager_forward_without_grad_records_no_graph():
    natten_mps.set_backend("pure")
    q, k, v = _qkv(grad=True)
    with torch.no_grad():
        assert natten_mps.na1d(q, k, v, 3).grad_fn is None
    out = natten_mps.na1d(q, k, v, 3)
    assert out.grad_fn is not None
    assert ops._needs_grad(q) and not ops._needs_grad(q.detach())


# ---- small problems on the pure path -------------------------------------------------------------
@pytest.mark.parametrize("spatial, heads, kernel, stride, dilation, causal, dtype", [
    ((16,), (4, 2), 5, 2, 2, True, torch.float32),
    ((4, 4), (2, 1), 3, 1, 1, False, torch.float16),
    ((3, 3, 3), (2, 2), 3, (1, 2, 1), 1, (True, False, False), torch.float64)])
def test_small_problem_route_matches_the_reference(spatial, heads, kernel, stride, dilation, causal, dtype):
    natten_mps.set_backend("pure")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, *spatial, h, 8, generator=g, dtype=dtype).requires_grad_()
               for h in (heads[0], heads[1], heads[1]))
    rank = len(spatial)
    tup = lambda x: x if isinstance(x, tuple) else (x,) * rank  # noqa: E731
    assert pure_small.mask_for(q, k, v, tup(kernel), tup(stride), tup(dilation), tup(causal)) is not None
    out, lse = getattr(natten_mps, f"na{rank}d")(q, k, v, kernel, stride=stride, dilation=dilation,
                                                 is_causal=causal, return_lse=True)
    dout = torch.randn(out.shape, generator=g, dtype=dtype)
    dlse = torch.randn(lse.shape, generator=g, dtype=lse.dtype)
    grads = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))     # with an LSE gradient
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = reference_na(q64, k64, v64, tup(kernel), tup(stride), tup(dilation), tup(causal))
    ref_grads = torch.autograd.grad((ref, ref_lse), (q64, k64, v64), (dout.double(), dlse.double()))
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=TOL[torch.float32], rtol=0)
    # contiguous results, as the registered ops' fake kernels promise (torch.compile checks them)
    assert all(t.is_contiguous() for t in (out, lse, *grads))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, atol=GRAD_TOL[dtype], rtol=0)


def test_small_problem_route_bounds_and_non_finite_fallback(monkeypatch):
    q, k, v = _qkv(L=40)
    assert pure_small.mask_for(q, k, v, (3,), (1,), (1,), (False,)) is None         # too many tokens
    natten_mps.set_backend("pure")
    q, k, v = _qkv(grad=True)
    v = v.detach().clone()
    v[:, 15] = float("inf")
    k = k.detach().clone().requires_grad_()
    out = natten_mps.na1d(q, k, v, 3)
    dq, = torch.autograd.grad(out.nan_to_num().sum(), (q,))
    # a non-finite result hands the call to the tiled route: the same results as with the route off
    monkeypatch.setattr(pure_small, "MAX_TOKENS", 0)
    tiled = natten_mps.na1d(q, k, v, 3)
    tiled_dq, = torch.autograd.grad(tiled.nan_to_num().sum(), (q,))
    torch.testing.assert_close(out, tiled, equal_nan=True)
    torch.testing.assert_close(dq, tiled_dq, equal_nan=True)


# ---- the benchmark -------------------------------------------------------------------------------
def test_bench_overhead_smoke(tmp_path):
    sys.path.insert(0, BENCH)
    import bench_overhead
    path = tmp_path / "overhead.json"
    bench_overhead.main(["--cases", "na1d", "merge_attentions", "--modes", "eager", "--repeats", "2",
                         "--per-round", "2", "--warmup", "1", "--stages", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["header"][0].startswith("date: ") and data["header"][3].startswith("command: ")
    rows = data["results"]
    assert {(r["case"], r["backward"]) for r in rows} == {(c, b) for c in ("na1d", "merge_attentions")
                                                          for b in (False, True)}
    for r in rows:
        assert r["metal_us"] > 0 and r["sdpa_us"] > 0 and r["pure_us"] > 0
    entries = {(s[0], s[2]) for s in data["stages"]}
    assert ("metal", "natten_mps.na1d (public call)") in entries and ("pure", "natten_mps.na1d (public call)") in entries
    assert all(float(s[3]) > 0 for s in data["stages"])
    assert not runtime.noop_launches_enabled()
