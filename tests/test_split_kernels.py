"""The split-op Metal kernels (shaders/natten/split.metal) through the public split API.

On the emulator (and on the MSL -> CUDA back end where a GPU is present), outputs poisoned:
softmax(na*d_qk) -> na*d_av against the float64 brute-force reference (reference_na), the weights
and their gradients (rpb included) against the pure path in float64, GQA, causal order, dtypes.
Tolerances: conftest.TOL / GRAD_TOL per dtype.
"""
import random

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from natten_mps.metal import emulator
from reference import reference_na


def case(rank, seed):
    rng = random.Random(seed)
    spatial = {1: (13,), 2: (7, 9), 3: (5, 4, 6)}[rank]
    ks = tuple(rng.choice([2, 3]) for _ in spatial)
    dil = tuple(rng.choice([1, 2]) if k * 2 <= n else 1 for k, n in zip(ks, spatial))
    st = tuple(rng.randint(1, k) for k in ks)
    causal = tuple(rng.random() < 0.4 for _ in spatial)
    return spatial, ks, dil, st, causal


@pytest.mark.parametrize("rank,seed,dtype", [(1, 0, torch.float32), (1, 1, torch.float16), (2, 2, torch.float32),
                                             (2, 3, torch.bfloat16), (3, 4, torch.float32), (3, 5, torch.float16),
                                             (2, 6, torch.float32)])
def test_split_kernels_forward_backward(dev, rank, seed, dtype):
    spatial, ks, dil, st, causal = case(rank, seed)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, *spatial, 4, 8, generator=g)
    k = torch.randn(2, *spatial, 2, 8, generator=g)
    v = torch.randn(2, *spatial, 2, 6, generator=g)
    rpb = 0.3 * torch.randn(4, *(2 * x - 1 for x in ks), generator=g) if not any(causal) else None
    qk, av = getattr(natten_mps, f"na{rank}d_qk"), getattr(natten_mps, f"na{rank}d_av")
    leaves = [t.to(dtype).to(dev).requires_grad_() for t in (q, k, v)]
    rpb_d = None if rpb is None else rpb.to(dtype).to(dev).requires_grad_()
    logits = qk(leaves[0], leaves[1], ks, dil, stride=st, is_causal=causal, scale=0.35, rpb=rpb_d)
    assert natten_mps.last_backend() == "metal"
    attn = logits.float().softmax(-1).to(dtype)
    out = av(attn, leaves[2], ks, dil, stride=st, is_causal=causal)
    assert natten_mps.last_backend() == "metal"
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out.float() * dout.to(dev)).sum(), leaves + ([rpb_d] if rpb is not None else []))

    natten_mps.set_emulation(False)
    natten_mps.set_metal_on_cuda(False)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref_rpb = None if rpb is None else rpb.to(dtype).double().requires_grad_()
    ref_logits = qk(*ref_leaves[:2], ks, dil, stride=st, is_causal=causal, scale=0.35, rpb=ref_rpb)
    ref_out = av(ref_logits.softmax(-1), ref_leaves[2], ks, dil, stride=st, is_causal=causal)
    assert natten_mps.last_backend() == "pure"
    ref_grads = torch.autograd.grad((ref_out * dout.double()).sum(),
                                    ref_leaves + ([ref_rpb] if rpb is not None else []))
    tol, gtol = TOL[dtype], GRAD_TOL[dtype]
    got = logits.cpu().double()
    assert torch.equal(torch.isinf(got), torch.isinf(ref_logits))
    torch.testing.assert_close(got.nan_to_num(0, 0, 0), ref_logits.detach().nan_to_num(0, 0, 0), atol=4 * tol,
                               rtol=4 * tol)
    torch.testing.assert_close(out.cpu().double(), ref_out.detach(), atol=tol, rtol=tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.cpu().double(), b, atol=gtol, rtol=gtol)
    if rpb is None:   # the independent brute-force reference (no bias there)
        ro, _ = reference_na(*(t.to(dtype).double() for t in (q, k, v)), ks, st, dil, causal, scale=0.35)
        torch.testing.assert_close(out.cpu().double(), ro, atol=tol, rtol=tol)


def test_split_ops_are_kernel_dispatches(emulate):
    """On Metal: qk is 1 dispatch, av 1; their backward 2 each (no PyTorch gathers)."""
    q, k, v = (torch.randn(1, 6, 7, 2, 4, requires_grad=True) for _ in range(3))
    with emulator.counting() as c:
        w = natten_mps.na2d_qk(q, k, 3)
        out = natten_mps.na2d_av(w.softmax(-1), v, 3)
    assert c.total().dispatches == 2
    with emulator.counting() as c:
        out.sum().backward()
    assert c.total().dispatches == 4
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_split_ops_compile_on_the_metal_path(emulate):
    q, k, v = (torch.randn(1, 12, 2, 4) for _ in range(3))
    fn = lambda a, b, c: natten_mps.na1d_av(natten_mps.na1d_qk(a, b, 5).softmax(-1), c, 5)  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(q, k, v), fn(q, k, v))
