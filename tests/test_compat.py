"""natten_mps.compat (NATTEN 0.14 / 0.15 / 0.17 / 0.20 entry points) and natten_mps.extras.allin1.

Each shim against the float64 brute-force reference (relative positional bias added through an
explicit dense bias built from the reference's own masks) and against the new API, gradients
included; modules load a state_dict with the historical parameter names (qkv, rpb, proj).
"""
import math

import pytest
import torch

import natten_mps
from natten_mps import compat
from natten_mps.compat import v014, v015, v017, v020
from natten_mps.extras import allin1
from reference import axis_mask, reference_na

F64 = torch.float64


def dense_bias(spatial, ks, dil, rpb):
    """[H, T, T] bias rpb[h, K-1 + (j - i)/d per axis] on allowed pairs, -inf elsewhere (stride 1)."""
    H = rpb.shape[0]
    bias = torch.zeros(H, *([1] * len(spatial)), *([1] * len(spatial)), dtype=rpb.dtype)
    allowed = torch.ones(1, 1, dtype=torch.bool)
    idx = []
    for ax, n in enumerate(spatial):
        m = axis_mask(n, ks[ax], 1, dil[ax], False)
        off = (torch.arange(n)[None, :] // dil[ax] - torch.arange(n)[:, None] // dil[ax]) + ks[ax] - 1
        idx.append(off.clamp(0, 2 * ks[ax] - 2))
        allowed = (allowed[:, None, :, None] & m[None, :, None, :]).reshape(allowed.shape[0] * n, -1)
    rank = len(spatial)
    gathered = rpb
    # rpb[h, idx0[i0, j0], idx1[i1, j1], ...] -> [H, i0, i1, .., j0, j1, ..]
    index = []
    for ax in range(rank):
        shape = [1] * (2 * rank)
        shape[ax], shape[rank + ax] = spatial[ax], spatial[ax]
        index.append(idx[ax].reshape(shape))
    gathered = rpb[(slice(None),) + tuple(index)]
    T = math.prod(spatial)
    return gathered.reshape(H, T, T).masked_fill(~allowed, float("-inf"))


def reference_rpb(q, k, v, ks, dil, rpb, scale):
    """Heads-last float64 NA with a relative positional bias (non-causal, stride 1)."""
    B, *spatial, H, D = q.shape
    T = math.prod(spatial)
    qf, kf, vf = (t.reshape(B, T, H, -1).transpose(1, 2) for t in (q, k, v))
    s = qf @ kf.transpose(-1, -2) * scale + dense_bias(spatial, ks, dil, rpb)[None]
    return (s.softmax(-1) @ vf).transpose(1, 2).reshape(q.shape[:-1] + (v.shape[-1],))


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64)


def hf(x):
    return x.movedim(-2, 1)


def check_grads(out, ref, leaves):
    w = torch.randn(out.shape, dtype=F64)
    got = torch.autograd.grad((out * w).sum(), leaves)
    want = torch.autograd.grad((ref * w).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("rank", [1, 2])
def test_v014_functional_matches_reference(rank):
    spatial = (11,) if rank == 1 else (7, 8)
    K, d = 3, 2
    q, k, v = (rand(2, *spatial, 3, 4, seed=i).requires_grad_() for i in range(3))
    rpb = rand(3, *([2 * K - 1] * rank), seed=5).requires_grad_()
    scale = 0.4
    qk = v014.natten1dqkrpb if rank == 1 else v014.natten2dqkrpb
    av = v014.natten1dav if rank == 1 else v014.natten2dav
    attn = qk(hf(q) * scale, hf(k), rpb, K, d).softmax(-1)
    assert attn.shape == (2, 3, *spatial, K ** rank)
    out = av(attn, hf(v), K, d).movedim(1, -2)
    ref = reference_rpb(q, k, v, (K,) * rank, (d,) * rank, rpb, scale)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (q, k, v, rpb))
    plain = v014.natten1dqk if rank == 1 else v014.natten2dqk
    torch.testing.assert_close(plain(hf(q), hf(k), K, d), qk(hf(q), hf(k), None, K, d))


def module_reference(m, x, ks, dil, pad_to=None):
    """x -> qkv -> reference NA with m.rpb -> proj, with NATTEN 0.14's zero padding when given."""
    B, *spatial, C = x.shape
    xp = x
    if pad_to is not None:
        pads = []
        for n, w in reversed(list(zip(spatial, pad_to))):
            pads += [0, max(0, w - n)]
        xp = torch.nn.functional.pad(x, [0, 0] + pads)
    sp = xp.shape[1:-1]
    q, k, v = m.qkv(xp).reshape(B, *sp, 3, m.num_heads, m.head_dim).unbind(-3)
    if m.rpb is None:
        out, _ = reference_na(q, k, v, ks, (1,) * len(ks), dil, (False,) * len(ks), scale=m.scale)
    else:
        out = reference_rpb(q, k, v, ks, dil, m.rpb, m.scale)
    out = out.reshape(B, *sp, C)[(slice(None),) + tuple(slice(0, n) for n in spatial)]
    return m.proj(out)


@pytest.mark.parametrize("spatial", [(13,), (4,)])
def test_v014_module_1d_with_bias_and_padding(spatial):
    torch.manual_seed(0)
    m = v014.NeighborhoodAttention1D(dim=12, num_heads=3, kernel_size=5, dilation=1).double()
    assert set(m.state_dict()) == {"qkv.weight", "qkv.bias", "rpb", "proj.weight", "proj.bias"}
    assert m.rpb.shape == (3, 9)
    x = rand(2, *spatial, 12, seed=3).requires_grad_()
    out = m(x)
    ref = module_reference(m, x, (5,), (1,), pad_to=(5,))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (x, m.rpb, m.qkv.weight))


def test_v014_module_2d_state_dict_round_trip():
    torch.manual_seed(1)
    a = v014.NeighborhoodAttention2D(8, 2, 3, dilation=2).double()
    b = v014.NeighborhoodAttention2D(8, 2, 3, dilation=2).double()
    b.load_state_dict(a.state_dict())
    x = rand(1, 7, 6, 8, seed=4)
    torch.testing.assert_close(b(x), a(x))
    torch.testing.assert_close(a(x), module_reference(a, x, (3, 3), (2, 2), pad_to=(6, 6)), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="kernel_size must be an odd int greater than 1"):
        v014.NeighborhoodAttention2D(8, 2, 4)


def test_v015_split_ops_3d_bias_and_additional_tokens():
    q, k, v = (rand(2, 5, 6, 7, 2, 4, seed=i).requires_grad_() for i in range(3))
    rpb = rand(2, 3, 5, 5, seed=9).requires_grad_()
    logits = v015.na3d_qk_with_bias(hf(q), hf(k), rpb, 2, 3, 1, 2)
    out = v015.na3d_av(logits.softmax(-1), hf(v), 2, 3, 1, 2).movedim(1, -2)
    ref = reference_rpb(q, k, v, (2, 3, 3), (1, 2, 2), rpb, 1.0)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (q, k, v, rpb))
    assert v015.natten3dqkrpb is not None and v015.natten2dqk is v015.na2d_qk      # 0.15: natten2dqk = na2d_qk
    # additional tokens: their weights follow the neighbourhood's; softmax over the union
    xk, xv = rand(2, 2, 4, 4, seed=11), rand(2, 2, 4, 4, seed=12)
    q1, k1, v1 = (t[:, :, 0, 0] for t in (q, k, v))          # [B, L=5, H, D]
    w = v015.na1d_qk(hf(q1), hf(k1), 3, 1, additional_keys=xk)
    assert w.shape == (2, 2, 5, 3 + 4)
    out1 = v015.na1d_av(w.softmax(-1), hf(v1), 3, 1, additional_values=xv).movedim(1, -2)
    ref1, _ = reference_na(q1, k1, v1, (3,), (1,), (1,), (False,), scale=1.0, add_k=xk.movedim(1, 2),
                           add_v=xv.movedim(1, 2))
    torch.testing.assert_close(out1, ref1, atol=1e-10, rtol=1e-10)


def test_v015_module_3d_and_features():
    torch.manual_seed(2)
    m = v015.NeighborhoodAttention3D(8, 2, kernel_size=3, kernel_size_d=5, dilation=1).double()
    assert m.rpb.shape == (2, 9, 5, 5)
    x = rand(1, 6, 2, 4, 8, seed=5)               # H and W shorter than the window: padded, as 0.15
    torch.testing.assert_close(m(x), module_reference(m, x, (5, 3, 3), (1, 1, 1), pad_to=(6, 3, 3)),
                               atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="smaller than kernel_size \\* dilation = 5"):
        m(rand(1, 4, 4, 4, 8))
    assert v015.has_cuda() == torch.cuda.is_available() and v015.has_gemm() is False and v015.has_half()
    assert v015.enable_tiled_na() is None


def test_v017_split_ops_causal_and_fused_with_rpb():
    q, k, v = (rand(2, 9, 8, 2, 4, seed=i).requires_grad_() for i in range(3))
    causal = (True, False)
    w = v017.na2d_qk(hf(q) * 0.5, hf(k), (3, 2), (2, 1), is_causal=causal)
    out = v017.na2d_av(w.softmax(-1), hf(v), (3, 2), (2, 1), is_causal=causal).movedim(1, -2)
    ref, _ = reference_na(q, k, v, (3, 2), (1, 1), (2, 1), causal, scale=0.5)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (q, k, v))
    rpb = rand(2, 5, 3, seed=7).requires_grad_()
    fused = v017.na2d(q, k, v, (3, 2), dilation=(2, 1), rpb=rpb, scale=0.5)
    ref = reference_rpb(q, k, v, (3, 2), (2, 1), rpb, 0.5)
    torch.testing.assert_close(fused, ref, atol=1e-10, rtol=1e-10)
    check_grads(fused, ref, (q, k, v, rpb))
    torch.testing.assert_close(v017.na1d(q[:, :, 0], k[:, :, 0], v[:, :, 0], 3, is_causal=True),
                               natten_mps.na1d(q[:, :, 0], k[:, :, 0], v[:, :, 0], 3, is_causal=True))


@pytest.mark.parametrize("rank,bias", [(1, True), (2, False), (3, True)])
def test_v017_modules(rank, bias):
    torch.manual_seed(rank)
    cls = getattr(v017, f"NeighborhoodAttention{rank}D")
    m = cls(8, 2, 3, dilation=1, rel_pos_bias=bias).double()
    assert ("rpb" in m.state_dict()) == bias
    x = rand(2, *([5] * rank), 8, seed=rank)
    torch.testing.assert_close(m(x), module_reference(m, x, (3,) * rank, (1,) * rank), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="undefined with positional biases"):
        cls(8, 2, 3, is_causal=True, rel_pos_bias=True)


def test_v020_matches_the_new_api_and_accepts_tuning_arguments():
    q, k, v = (rand(1, 10, 2, 4, seed=i) for i in range(3))
    got = v020.na1d(q, k, v, 3, stride=2, dilation=2, backend="cutlass-fna", q_tile_shape=(64,), torch_compile=True)
    torch.testing.assert_close(got, natten_mps.na1d(q, k, v, 3, stride=2, dilation=2))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['tile'\\]"):
        v020.na1d(q, k, v, 3, tile=4)
    out, lse = v020.attention(q, k, v, backend="flex-fmha", return_lse=True)
    torch.testing.assert_close(out, natten_mps.attention(q, k, v))
    merged, _ = v020.merge_attentions([out, out], [lse, lse], torch_compile=False)
    torch.testing.assert_close(merged, out)
    assert v020.NeighborhoodAttention2D is natten_mps.nn.NeighborhoodAttention2D


@pytest.mark.parametrize("version,name", [("0.14.6", "v014"), ("0.15.1", "v015"), ("0.16.0", "v015"),
                                          ("0.17.1", "v017"), ("0.19.0", "v017"), ("0.20.1", "v020"),
                                          ("0.21.7", "v021"), ("1.0", "v021")])
def test_for_version(version, name):
    assert compat.for_version(version) is getattr(compat, name)


def test_for_version_refuses_junk():
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        compat.for_version("latest")
    with pytest.raises(TypeError, match="version_string must be a str"):
        compat.for_version(0.17)


@pytest.mark.parametrize("rank", [1, 2])
def test_allin1_matches_reference(rank):
    spatial = (12,) if rank == 1 else (6, 7)
    q, k, v = (rand(2, *spatial, 2, 4, seed=i).requires_grad_() for i in range(3))
    rpb = rand(2, *([5] * rank), seed=3).requires_grad_()
    qk = allin1.na1d_qk_rpb if rank == 1 else allin1.na2d_qk_rpb
    av = allin1.na1d_av_fused if rank == 1 else allin1.na2d_av_fused
    out = av(qk(q, k, rpb, 3, 2 if rank == 1 else 1, scale=0.3).softmax(-1), v, 3, 2 if rank == 1 else 1)
    ref = reference_rpb(q, k, v, (3,) * rank, ((2,) if rank == 1 else (1, 1)), rpb, 0.3)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (q, k, v, rpb))
    none = qk(q, k, None, 3, 1)
    assert none.shape == q.shape[:-1] + (3 ** rank,)


def test_add_natten_handle_counts_multiply_adds():
    class Counter:
        def set_op_handle(self, **handles):
            self.handles = handles
            return self

    c = v014.add_natten_handle(Counter())
    q, w = torch.empty(2, 16, 4, 8), torch.empty(2, 16, 4, 5)
    assert c.handles["natten_mps::na_forward"]([q, q, q, [5]], []) == 2 * 16 * 4 * 5 * 16
    assert c.handles["natten_mps::split_qk"]([q, q], [w]) == 2 * 16 * 4 * 5 * 8
    assert c.handles["natten_mps::split_av"]([w, q], [q]) == 2 * 16 * 4 * 5 * 8


def test_compat_on_the_metal_path(emulate):
    """The shims reach the Metal kernels (split and fused) and agree with the pure path."""
    q, k, v = (torch.randn(1, 2, 9, 4) for _ in range(3))      # heads-first
    rpb = torch.randn(2, 5)
    w = v017.na1d_qk(q, k, 3, 2, rpb=rpb)
    assert natten_mps.last_backend() == "metal"
    out = v017.na1d_av(w.softmax(-1), v, 3, 2)
    natten_mps.set_emulation(False)
    w_ref = v017.na1d_qk(q, k, 3, 2, rpb=rpb)
    torch.testing.assert_close(w, w_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, v017.na1d_av(w_ref.softmax(-1), v, 3, 2), atol=1e-5, rtol=1e-5)


# ---- defects of the flat shims, each with the test that would have caught it ---------------------
def test_functional_submodules_are_each_releases_api():
    """compat.v017.functional / v020.functional used to be this package's 0.21 API (heads-last split
    ops): 0.17's heads-first na2d_qk then gave a silently wrong answer."""
    import natten_mps.functional as new_api
    from natten_mps.compat import v021
    assert v017.functional is not new_api and v020.functional is not new_api
    assert v021.functional.na2d is new_api.na2d
    assert not hasattr(v020.functional, "na2d_qk") and not hasattr(v021.functional, "na2d_qk")
    q, k, v = (rand(2, 6, 7, 2, 4, seed=i).requires_grad_() for i in range(3))   # heads-last data
    w = v017.functional.na2d_qk(hf(q) * 0.5, hf(k), 3, 2)                       # 0.17: heads-first
    assert w.shape == (2, 2, 6, 7, 9)
    out = v017.functional.na2d_av(w.softmax(-1), hf(v), 3, 2).movedim(1, -2)
    ref, _ = reference_na(q, k, v, (3, 3), (1, 1), (2, 2), (False, False), scale=0.5)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (q, k, v))
    fused = v017.functional.na2d(q, k, v, 3, dilation=2, scale=0.5)              # 0.17 fused: heads-last
    torch.testing.assert_close(fused, ref, atol=1e-10, rtol=1e-10)
    ref1 = reference_rpb(q, k, v, (3, 3), (2, 2), torch.zeros(2, 5, 5, dtype=F64), 0.5)
    torch.testing.assert_close(v014.functional.natten2dav(v014.functional.natten2dqkrpb(
        hf(q) * 0.5, hf(k), None, 3, 2).softmax(-1), hf(v), 3, 2).movedim(1, -2), ref1, atol=1e-10, rtol=1e-10)


def test_v017_fused_with_rpb_and_additional_tokens():
    q, k, v = (rand(1, 7, 2, 4, seed=i) for i in range(3))
    xk, xv = rand(1, 3, 2, 4, seed=5), rand(1, 3, 2, 4, seed=6)
    got = v017.functional.na1d(q, k, v, 3, additional_keys=xk, additional_values=xv, xformers_kwargs={})
    want, _ = reference_na(q, k, v, (3,), (1,), (1,), (False,), add_k=xk, add_v=xv)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    rpb = torch.zeros(2, 5, dtype=F64)        # a zero bias takes the explicit path; same answer
    torch.testing.assert_close(v017.functional.na1d(q, k, v, 3, rpb=rpb, additional_keys=xk, additional_values=xv),
                               want, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="additional_keys and additional_values must be given together"):
        v017.functional.na1d(q, k, v, 3, additional_keys=xk)


def test_v017_probes_fused_na():
    """compat.v017.has_fused_na() used to answer False, sending clients down their slow split path."""
    assert v017.has_fused_na() is True and v017.has_fna() is True and v015.has_fna() is True
    assert v017.is_fused_na_enabled() is True


@pytest.mark.parametrize("name,version", [("v014", "0.14.6"), ("v015", "0.15.1"), ("v017", "0.17.5"),
                                          ("v020", "0.20.1"), ("v021", "0.21.7")])
def test_compat_packages_have_versions(name, version):
    mod = getattr(compat, name)
    assert mod.__version__ == version and mod.functional.__name__ == f"natten_mps.compat.{name}.functional"


@pytest.mark.parametrize("rank", [1, 2])
def test_allin1_natten_functions_are_heads_first(rank):
    """extras.allin1's natten*dqkrpb / natten*dav are the layout the All-In-One model passes
    (heads-first, NATTEN 0.14); they used to be heads-last."""
    spatial = (12,) if rank == 1 else (6, 7)
    q, k, v = (rand(2, *spatial, 2, 4, seed=i).requires_grad_() for i in range(3))
    rpb = rand(2, *([5] * rank), seed=3).requires_grad_()
    qk = allin1.natten1dqkrpb if rank == 1 else allin1.natten2dqkrpb
    av = allin1.natten1dav if rank == 1 else allin1.natten2dav
    attn = qk(hf(q) * 0.3, hf(k), rpb, 3, 2).softmax(-1)
    assert attn.shape == (2, 2, *spatial, 3 ** rank)
    out = av(attn, hf(v), 3, 2).movedim(1, -2)
    ref = reference_rpb(q, k, v, (3,) * rank, (2,) * rank, rpb, 0.3)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    check_grads(out, ref, (q, k, v, rpb))
    with pytest.raises(ValueError, match="heads-first"):
        qk(q[..., 0, :], k[..., 0, :], rpb, 3, 2)
