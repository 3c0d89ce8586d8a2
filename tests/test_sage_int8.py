"""sageattn(qk_quant="int8"): SageAttention 1.x block quantization, exact against an independent
per-block loop; accuracy against float64 with a large key mean; straight-through gradients."""
import math

import pytest
import torch

import sage_mps
from test_sage import ref


def loop_int8(q, k, v, causal, scale, smooth):
    """Independent float64 rendering of the INT8 rule (layout HND), one block at a time."""
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    q64, k64, v64 = q.double(), k.double(), v.double()
    km = k64.mean(2, keepdim=True) if smooth else torch.zeros_like(k64[:, :, :1])
    ks = k64 - km
    out = torch.empty(B, H, N, v.shape[-1], dtype=torch.float64)
    lse = torch.empty(B, H, N, dtype=torch.float64)

    def quant(x, block):                   # x [T, D] -> ints, per-token scale
        ints, scales = torch.empty_like(x), torch.empty(x.shape[0], dtype=torch.float64)
        for s0 in range(0, x.shape[0], block):
            blk = x[s0:s0 + block]
            sc = float(blk.abs().max()) / 127.0
            for i in range(blk.shape[0]):
                for d in range(blk.shape[1]):
                    y = float(blk[i, d]) / sc if sc > 0 else 0.0
                    ints[s0 + i, d] = math.copysign(math.floor(abs(y) + 0.5), y)
            scales[s0:s0 + block] = sc
        return ints, scales

    for b in range(B):
        for h in range(H):
            hk = h // (H // Hkv)
            qi, sq = quant(q64[b, h] * scale / math.log(2.0), 128)
            ki, sk = quant(ks[b, hk], 64)
            s = (qi @ ki.T) * sq[:, None] * sk[None, :]
            if causal:
                s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
            m = s.max(-1, keepdim=True).values
            p = torch.exp2(s - m)
            out[b, h] = (p @ v64[b, hk]) / p.sum(-1, keepdim=True)
            lse[b, h] = ((m[:, 0] + torch.log2(p.sum(-1))) * math.log(2.0)
                         + (q64[b, h] @ km[b, hk, 0]) * scale)
    return out, lse


@pytest.mark.parametrize("causal,smooth", [(False, True), (True, True), (False, False)])
def test_int8_matches_the_block_rule(causal, smooth):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 150, 16, generator=g)        # 150: not a multiple of either block
    k = torch.randn(1, 1, 150, 16, generator=g) + 3.0
    v = torch.randn(1, 1, 150, 16, generator=g)
    out, lse = sage_mps.sageattn(q, k, v, is_causal=causal, smooth_k=smooth, qk_quant="int8", return_lse=True,
                                 sm_scale=0.25)
    ro, rl = loop_int8(q, k, v, causal, 0.25, smooth)
    torch.testing.assert_close(out.double(), ro, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), rl, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_with_smoothing_is_accurate_on_a_large_key_mean(layout, dtype):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 300, 64, generator=g)
    k = torch.randn(2, 2, 300, 64, generator=g) + 8.0
    v = torch.randn(2, 2, 300, 64, generator=g)
    args = [t.to(dtype) for t in (q, k, v)]
    ro, rl = ref(*args, False, 64 ** -0.5)          # the reference sees the same rounded inputs
    if layout == "NHD":
        args = [t.transpose(1, 2) for t in args]
    cos = {}
    for smooth in (True, False):
        out, lse = sage_mps.sageattn(*args, tensor_layout=layout, smooth_k=smooth, qk_quant="int8", return_lse=True)
        out = out if layout == "HND" else out.transpose(1, 2)
        cos[smooth] = torch.nn.functional.cosine_similarity(out.double().flatten(), ro.flatten(), dim=0).item()
        if smooth:
            assert lse.shape == (2, 4, 300) and (lse.double() - rl).abs().max() < 0.05
    assert cos[True] >= 0.999
    assert cos[True] > cos[False]             # smoothing is what makes INT8 accurate here


def test_int8_backward_is_straight_through():
    g = torch.Generator().manual_seed(6)
    base = [torch.randn(1, 2, 70, 32, generator=g) for _ in range(3)]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    w = torch.randn(1, 2, 70, 32, generator=g)
    (sage_mps.sageattn(*a, qk_quant="int8") * w).sum().backward()
    (sage_mps.sageattn(*b) * w).sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


def test_int8_bad_argument():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="qk_quant"):
        sage_mps.sageattn(q, q, q, qk_quant="int4")
