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
