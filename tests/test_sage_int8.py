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


# ---- the Metal kernels (shaders/sage/int8_attention.metal): emulator, and CUDA where present ----


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_quantization_kernel_is_exact(dev, dtype):
    from sage_mps import int8, metal_int8
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(2, 200, 3, 40, generator=g) * 4).to(dtype)
    x[:, 128:] = 0                                       # a block of zeros: scale 0, values 0
    xq, scales = metal_int8.quantize(x.to(dev), 64, 0.37)
    want, want_scales = int8.quantize_blocks(x.float() * 0.37, 64)
    assert xq.dtype == torch.int8 and torch.equal(xq.cpu().float(), want)
    torch.testing.assert_close(scales.cpu(), want_scales[:, ::64, :, 0].permute(0, 2, 1), atol=0, rtol=0)


@pytest.mark.parametrize("causal,smooth", [(False, True), (True, True), (False, False)])
def test_int8_kernels_match_the_block_rule(dev, causal, smooth):
    import natten_mps
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 150, 16, generator=g)
    k = torch.randn(1, 1, 150, 16, generator=g) + 3.0
    v = torch.randn(1, 1, 150, 16, generator=g)
    out, lse = sage_mps.sageattn(q.to(dev), k.to(dev), v.to(dev), is_causal=causal, smooth_k=smooth, qk_quant="int8",
                                 return_lse=True, sm_scale=0.25)
    assert natten_mps.last_backend() == "metal"
    ro, rl = loop_int8(q, k, v, causal, 0.25, smooth)
    torch.testing.assert_close(out.cpu().double(), ro, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.cpu().double(), rl, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_int8_kernels_agree_with_the_pytorch_numerics(dev, dtype):
    """GQA, Lq != Lk (causal top-left), head dims 40 and 128 / Dv 24: kernels vs the PyTorch emulation."""
    import natten_mps
    g = torch.Generator().manual_seed(8)
    for causal, (lq, lk, d, dv) in ((True, (70, 90, 40, 24)), (False, (33, 260, 128, 128))):
        q = torch.randn(2, lq, 4, d, generator=g).to(dtype)
        k = (torch.randn(2, lk, 2, d, generator=g) + 2).to(dtype)
        v = torch.randn(2, lk, 2, dv, generator=g).to(dtype)
        out, lse = sage_mps.sageattn(q.to(dev), k.to(dev), v.to(dev), tensor_layout="NHD", is_causal=causal,
                                     qk_quant="int8", return_lse=True)
        natten_mps.set_emulation(False)
        natten_mps.set_metal_on_cuda(False)
        ro, rl = sage_mps.sageattn(q, k, v, tensor_layout="NHD", is_causal=causal, qk_quant="int8", return_lse=True)
        assert natten_mps.last_backend() == "pure"
        natten_mps.set_emulation(True)
        natten_mps.set_metal_on_cuda(dev == "cuda")
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
        torch.testing.assert_close(out.cpu().float(), ro.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(lse.cpu(), rl, atol=1e-4, rtol=1e-5)


def test_int8_kernels_accuracy_and_compile(emulate):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 200, 64, generator=g).half()
    k = (torch.randn(1, 2, 200, 64, generator=g) + 8.0).half()
    v = torch.randn(1, 2, 200, 64, generator=g).half()
    ro, _ = ref(q, k, v, False, 64 ** -0.5)
    out = sage_mps.sageattn(q, k, v, qk_quant="int8")
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(), ro.flatten(), dim=0).item()
    assert cos >= 0.999
    compiled = torch.compile(lambda a, b, c: sage_mps.sageattn(a, b, c, qk_quant="int8"), fullgraph=True)(q, k, v)
    # inductor forms the K mean and the smoothing in float32 (eager: float16), which can move a
    # quantized value by one step: the compiled output agrees to float16 INT8 accuracy, not bitwise
    torch.testing.assert_close(compiled, out, atol=1e-2, rtol=1e-2)
    cos = torch.nn.functional.cosine_similarity(compiled.double().flatten(), ro.flatten(), dim=0).item()
    assert cos >= 0.999


def test_int8_kernel_op_passes_opcheck(emulate):
    from sage_mps.int8 import int8_attention_metal
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, 40, 2, 16, generator=g)
    k, v = torch.randn(1, 50, 1, 16, generator=g), torch.randn(1, 50, 1, 8, generator=g)
    torch.library.opcheck(int8_attention_metal, (q, k, v, True, 0.25))


def test_int8_scores_are_exact_integer_dot_products(dev):
    """The attention kernel's QK score is the exact integer dot product of the quantized values
    (computed with float FMAs: every partial sum below 2^24), times the two block scales: with one
    key the LSE is that score, bit for bit, at head dim 256 with every value at +-127 (the largest
    sums the kernel can meet)."""
    import math
    from sage_mps import metal_int8
    g = torch.Generator().manual_seed(12)
    signs = torch.randint(0, 2, (1, 4, 1, 256), generator=g).float() * 2 - 1
    q = signs.clone()
    k = signs[:, :1].clone()                 # query 0 has the key's signs: dot 256 * 127^2
    q[0, 1] = -k[0, 0]                        # query 1: -256 * 127^2; queries 2, 3: random signs
    v = torch.randn(1, 1, 1, 256, generator=g)
    scale = 0.05
    out, lse = metal_int8.int8_attention_forward(q.to(dev), k.to(dev), v.to(dev), False, scale, 128, 64)
    qi, qs = metal_int8.quantize(q.to(dev), 128, scale / math.log(2.0))
    ki, ks = metal_int8.quantize(k.to(dev), 64, 1.0)
    dots = (qi.cpu().long() * ki.cpu().long()).sum(-1)[0, :, 0]
    assert dots[0] == 256 * 127 ** 2 and dots[1] == -256 * 127 ** 2
    s = (dots.float() * qs.cpu()[0, 0, 0]) * ks.cpu()[0, 0, 0]
    assert torch.equal(lse.cpu()[0, :, 0], s * torch.tensor(0.6931471805599453, dtype=torch.float32))
    assert torch.equal(out.cpu(), v.expand(1, 4, 1, 256))
