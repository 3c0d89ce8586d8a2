"""sageattn: K smoothing is exact, LSE is corrected exactly, layouts and GQA work, both paths."""
import pytest
import torch

import sage_mps


def ref(q, k, v, causal, scale):
    # q [B, H, N, D]
    G = q.shape[1] // k.shape[1]
    k64, v64 = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k64) * scale
    if causal:
        n = q.shape[2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v64), torch.logsumexp(s, -1)


@pytest.mark.parametrize("path", ["pure", "metal"])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("causal", [False, True])
def test_sageattn_matches_reference(path, layout, causal):
    import natten_mps
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 20, 16, generator=g)
    k = torch.randn(2, 2, 20, 16, generator=g) + 5.0   # large common offset: what smoothing removes
    v = torch.randn(2, 2, 20, 16, generator=g)
    ro, rl = ref(q, k, v, causal, 0.2)
    args = (q, k, v) if layout == "HND" else tuple(t.transpose(1, 2) for t in (q, k, v))
    out, lse = sage_mps.sageattn(*args, tensor_layout=layout, is_causal=causal, sm_scale=0.2, return_lse=True)
    if layout == "NHD":
        out = out.transpose(1, 2)
    torch.testing.assert_close(out.double(), ro, atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(lse.double(), rl, atol=3e-5, rtol=3e-5)
    plain = sage_mps.sageattn(*args, tensor_layout=layout, is_causal=causal, sm_scale=0.2, smooth_k=False)
    torch.testing.assert_close(plain if layout == "HND" else plain.transpose(1, 2), out, atol=3e-5, rtol=3e-5)


def test_sageattn_bad_input():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="tensor_layout"):
        sage_mps.sageattn(q, q, q, tensor_layout="BHND")
    with pytest.raises(ValueError, match="multiple"):
        sage_mps.sageattn(torch.randn(1, 3, 8, 4), q, q)
    with pytest.raises(TypeError, match="unexpected keyword"):
        sage_mps.sageattn(q, q, q, bogus=1)


@pytest.mark.parametrize("path", ["pure", "metal"])
@pytest.mark.parametrize("lq,lk", [(12, 20), (20, 12)])
def test_sageattn_causal_cross_attention_aligns_like_sdpa(path, lq, lk):
    import natten_mps
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(lq)
    q = torch.randn(1, 2, lq, 16, generator=g)
    k = torch.randn(1, 2, lk, 16, generator=g) + 2.0
    v = torch.randn(1, 2, lk, 16, generator=g)
    out = sage_mps.sageattn(q, k, v, is_causal=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(out.double(), sdpa, atol=3e-5, rtol=3e-5)
    assert natten_mps.last_backend() == path


@pytest.mark.parametrize("path", ["pure", "metal"])
@pytest.mark.parametrize("causal", [False, True])
def test_sageattn_varlen_uneven_lengths(path, causal):
    import natten_mps
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(8)
    lens_q, lens_k = [5, 0, 17, 9], [5, 3, 17, 9] if causal else [7, 3, 11, 20]
    H, Hkv, D = 4, 2, 16
    q = torch.randn(sum(lens_q), H, D, generator=g, requires_grad=True)
    k = torch.randn(sum(lens_k), Hkv, D, generator=g)
    offsets = torch.tensor([0.0, 5.0, -3.0, 9.0]).repeat_interleave(torch.tensor(lens_k))[:, None, None]
    k = (k + offsets).requires_grad_()                 # a different key mean per sequence
    v = torch.randn(sum(lens_k), Hkv, D, generator=g, requires_grad=True)
    cq = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    ck = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    out = sage_mps.sageattn_varlen(q, k, v, cq, ck, max(lens_q), max(lens_k), is_causal=causal, sm_scale=0.3)
    assert out.shape == (sum(lens_q), H, D)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    refs, rq, rk, rv = [], q.detach().double().requires_grad_(), k.detach().double().requires_grad_(), \
        v.detach().double().requires_grad_()
    for i in range(4):
        a, b, c, d = int(cq[i]), int(cq[i + 1]), int(ck[i]), int(ck[i + 1])
        if b == a:
            continue
        o, _ = ref(rq[a:b].transpose(0, 1)[None], rk[c:d].transpose(0, 1)[None], rv[c:d].transpose(0, 1)[None],
                   causal, 0.3)
        refs.append(o[0].transpose(0, 1))
    ro = torch.cat(refs)
    torch.testing.assert_close(out.double(), ro, atol=3e-5, rtol=3e-5)
    (ro * w.double()).sum().backward()
    for t, r in ((q, rq), (k, rk), (v, rv)):
        torch.testing.assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=1e-4)


def test_sageattn_varlen_bad_offsets():
    q = torch.randn(10, 2, 8)
    good = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match="end at the packed length 10"):
        sage_mps.sageattn_varlen(q, q, q, torch.tensor([0, 4, 9], dtype=torch.int32), good, 6, 6)
    with pytest.raises(TypeError, match="int32/int64"):
        sage_mps.sageattn_varlen(q, q, q, good.float(), good, 6, 6)
    with pytest.raises(ValueError, match="max_seqlen"):
        sage_mps.sageattn_varlen(q, q, q, good, good, 5, 6)
    with pytest.raises(ValueError, match="must be 3-D"):
        sage_mps.sageattn_varlen(q[None], q, q, good, good, 6, 6)


def test_sageattn_compiles_checkpoints_and_merges():
    """fullgraph compile (the graph holds the registered op), checkpointing, and merge_attentions
    composing two sageattn calls over disjoint key sets into the attention over their union."""
    import natten_mps
    from torch.utils.checkpoint import checkpoint
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, 2, 24, 16, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 40, 16, generator=g) + 3.0
    v = torch.randn(1, 2, 40, 16, generator=g)
    seen = []

    def record(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward
    torch._dynamo.reset()
    compiled = torch.compile(lambda q: sage_mps.sageattn(q, k, v, return_lse=True), backend=record, fullgraph=True)
    out_c, lse_c = compiled(q)
    assert any("natten_mps.attention_forward" in t for t in seen), seen
    out, lse = sage_mps.sageattn(q, k, v, return_lse=True)
    torch.testing.assert_close(out_c, out)
    ck = checkpoint(lambda q: sage_mps.sageattn(q, k, v), q, use_reentrant=False)
    ck.sum().backward()
    g1 = q.grad.clone()
    q.grad = None
    out.sum().backward()
    torch.testing.assert_close(q.grad, g1)
    o1, l1 = sage_mps.sageattn(q, k[:, :, :15], v[:, :, :15], return_lse=True)
    o2, l2 = sage_mps.sageattn(q, k[:, :, 15:], v[:, :, 15:], return_lse=True)
    merged, mlse = natten_mps.merge_attentions([o1.transpose(1, 2), o2.transpose(1, 2)],
                                               [l1.transpose(1, 2), l2.transpose(1, 2)])
    torch.testing.assert_close(merged.transpose(1, 2), out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(mlse.transpose(1, 2), lse, atol=2e-5, rtol=2e-5)


def test_smoothing_buffer_never_reaches_autograd():
    """Only q requires grad: the smoothed K is saved for backward, so it must not be a kept buffer
    that the next call overwrites."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 40, 16, generator=g, requires_grad=True)
    k, v = torch.randn(1, 2, 40, 16, generator=g), torch.randn(1, 2, 40, 16, generator=g)
    out = sage_mps.sageattn(q, k, v)
    sage_mps.sageattn(q.detach(), k + 1.0, v)          # a no-grad call of the same shape in between
    out.sum().backward()
    q2 = q.detach().clone().requires_grad_()
    torch.nn.functional.scaled_dot_product_attention(q2, k, v).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("causal", [False, True])
def test_sageattn_one_head_per_key_head_no_grad(layout, causal):
    """H == Hkv without autograd: the heads-first fast path (flash kernel straight on the caller's
    tensors, kept smoothing buffers). Outputs and LSE against float64; a second call of the same
    shape must not change the first call's results (nothing returned is a kept buffer)."""
    import natten_mps
    natten_mps.set_emulation(False)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 33, 24, generator=g)
    k = torch.randn(2, 3, 33, 24, generator=g) - 4.0
    v = torch.randn(2, 3, 33, 24, generator=g)
    ro, rl = ref(q, k, v, causal, 0.3)
    args = (q, k, v) if layout == "HND" else tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))
    out, lse = sage_mps.sageattn(*args, tensor_layout=layout, is_causal=causal, sm_scale=0.3, return_lse=True)
    kept_out, kept_lse = out.clone(), lse.clone()
    sage_mps.sageattn(args[0], args[1] * 2.0 + 1.0, args[2], tensor_layout=layout, is_causal=causal,
                      sm_scale=0.3, return_lse=True)
    assert torch.equal(out, kept_out) and torch.equal(lse, kept_lse)
    if layout == "NHD":
        out = out.transpose(1, 2)
    assert lse.shape == (2, 3, 33)
    torch.testing.assert_close(out.double(), ro, atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(lse.double(), rl, atol=3e-5, rtol=3e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent device)")
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads_kv", [4, 2])
def test_sageattn_on_cuda(layout, causal, heads_kv):
    """The PyTorch path on CUDA: outputs, LSE and gradients against float64, GQA included."""
    import natten_mps
    natten_mps.set_metal_on_cuda(False)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 37, 32, generator=g)
    k = torch.randn(2, heads_kv, 37, 32, generator=g) + 3.0
    v = torch.randn(2, heads_kv, 37, 32, generator=g)
    ro, rl = ref(q, k, v, causal, 0.25)
    dout = torch.randn(ro.shape, generator=g)
    cq, ck, cv = (t.cuda().requires_grad_() for t in (q, k, v))
    args = (cq, ck, cv) if layout == "HND" else tuple(t.transpose(1, 2) for t in (cq, ck, cv))
    out, lse = sage_mps.sageattn(*args, tensor_layout=layout, is_causal=causal, sm_scale=0.25, return_lse=True)
    if layout == "NHD":
        out = out.transpose(1, 2)
    torch.testing.assert_close(out.double().cpu(), ro, atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(lse.double().cpu(), rl, atol=3e-5, rtol=3e-5)
    out.backward(dout.cuda())
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref(q64, k64, v64, causal, 0.25)[0].backward(dout.double())
    for got, want in ((cq.grad, q64.grad), (ck.grad, k64.grad), (cv.grad, v64.grad)):
        torch.testing.assert_close(got.double().cpu(), want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = sage_mps.sageattn(*(t.detach() for t in args), tensor_layout=layout, is_causal=causal, sm_scale=0.25)
    torch.testing.assert_close(plain if layout == "HND" else plain.transpose(1, 2), out.detach(), atol=3e-5, rtol=3e-5)


def test_sageattn_under_vmap_matches_a_loop():
    """vmap over sageattn (no autograd): the kept smoothing buffers must not be used on batched tensors."""
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(3, 2, 4, 10, 16, generator=g) for _ in range(3))
    got = torch.func.vmap(lambda a, b, c: sage_mps.sageattn(a, b + 2.0, c))(q, k, v)
    want = torch.stack([sage_mps.sageattn(q[i], k[i] + 2.0, v[i]) for i in range(3)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
