"""Split ops na{1,2,3}d_qk / na{1,2,3}d_av: neighbour order, masks, rpb, GQA, gradients."""
import random

import pytest
import torch

import natten_mps
from natten_mps import split


@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(5)])
def test_qk_softmax_av_equals_the_fused_op(rank, i):
    rng = random.Random(100 * rank + i)
    spatial = {1: (13,), 2: (7, 9), 3: (5, 4, 6)}[rank]
    ks = tuple(rng.choice([2, 3]) for _ in spatial)
    dil = tuple(rng.choice([1, 2]) if k * 2 <= n else 1 for k, n in zip(ks, spatial))
    st = tuple(rng.randint(1, k) for k in ks)
    causal = tuple(rng.random() < 0.4 for _ in spatial)
    g = torch.Generator().manual_seed(i)
    q = torch.randn(2, *spatial, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, *spatial, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, *spatial, 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    qk, av = getattr(natten_mps, f"na{rank}d_qk"), getattr(natten_mps, f"na{rank}d_av")
    attn = qk(q, k, ks, dil, stride=st, is_causal=causal, scale=0.3).softmax(-1)
    assert attn.shape == q.shape[:-1] + (int(torch.tensor(ks).prod()),)
    out = av(attn, v, ks, dil, stride=st, is_causal=causal)
    natten_mps.set_backend("pure")
    ref = getattr(natten_mps, f"na{rank}d")(q, k, v, ks, stride=st, dilation=dil, is_causal=causal, scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_neighbour_order_is_window_start_plus_n_dilation():
    """Entry n of query i is key start(i) + n * dilation (row-major over axes), scores unscaled."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 7, 8, 2, 3, generator=g), torch.randn(1, 7, 8, 2, 3, generator=g)
    logits = natten_mps.na2d_qk(q, k, (3, 3), (2, 2))
    for i in range(7):
        for j in range(8):
            starts = []
            for pos, n in ((i, 7), (j, 8)):
                group = [x for x in range(pos % 2, n, 2)]
                c = group.index(pos)
                lo = min(max(c - 1, 0), len(group) - 3)
                starts.append(group[lo])
            for a in range(3):
                for b in range(3):
                    key = k[0, starts[0] + 2 * a, starts[1] + 2 * b]
                    want = (q[0, i, j] * key).sum(-1)
                    torch.testing.assert_close(logits[0, i, j, :, 3 * a + b], want, atol=1e-5, rtol=1e-5)


def test_causal_rows_end_with_the_query_and_mask_the_past_boundary():
    q = torch.randn(1, 6, 1, 4)
    logits = natten_mps.na1d_qk(q, q, 3, is_causal=True)
    assert torch.isinf(logits[0, 0, 0, :2]).all() and torch.isfinite(logits[0, 0, 0, 2])
    torch.testing.assert_close(logits[0, :, 0, 2], (q[0, :, 0] ** 2).sum(-1))      # last entry: the query itself
    assert torch.isfinite(logits[0, 2:]).all()


def test_rpb_adds_the_relative_position_bias():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 9, 3, 4, generator=g), torch.randn(2, 9, 3, 4, generator=g)
    rpb = torch.randn(3, 2 * 5 - 1, generator=g)
    with_bias = natten_mps.na1d_qk(q, k, 5, rpb=rpb)
    plain = natten_mps.na1d_qk(q, k, 5)
    for i in range(9):
        start = min(max(i - 2, 0), 9 - 5)
        for n in range(5):
            torch.testing.assert_close(with_bias[:, i, :, n] - plain[:, i, :, n],
                                       rpb[:, 4 + (start + n - i)].expand(2, 3), atol=1e-5, rtol=1e-5)
    rpb2 = torch.randn(3, 5, 3, generator=g)
    q2 = torch.randn(1, 6, 5, 3, 4, generator=g)
    b2 = natten_mps.na2d_qk(q2, q2, (3, 2), rpb=rpb2) - natten_mps.na2d_qk(q2, q2, (3, 2))
    # query (0, 0): window rows 0..2, columns 0..1; offsets (a, b) -> rpb[h, 2 + a, 1 + b]
    torch.testing.assert_close(b2[0, 0, 0, :, :].reshape(3, 3, 2), rpb2[:, 2:5, 1:3], atol=1e-5, rtol=1e-5)


def test_split_ops_bad_input():
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="na1d_qk: query must be a 4-D"):
        natten_mps.na1d_qk(q[None], q, 3)
    with pytest.raises(ValueError, match="Spatial dimensions must match"):
        natten_mps.na1d_qk(q, q[:, :6], 3)
    with pytest.raises(ValueError, match="prod\\(kernel_size\\) = 3"):
        natten_mps.na1d_av(torch.randn(1, 8, 2, 4), q, 3)
    with pytest.raises(ValueError, match="rpb must be a tensor of shape"):
        natten_mps.na1d_qk(q, q, 3, rpb=torch.randn(2, 4))
    assert split.__all__ == ["na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av"]
