"""Float64 brute-force stand-ins for NATTEN's functions, for running client models as a reference.

Neighbours come from ``reference.axis_mask`` (explicit integer loops, no code of the package): a
query's neighbours are the keys its mask allows, in ascending position order (row-major over axes),
which is NATTEN's order of attention weights; the positional bias of neighbour ``j`` of query ``i``
is ``rpb[h, K - 1 + (j - i) / dilation]`` per axis. Layouts: ``split_qk``/``split_av`` heads-first
``[B, heads, *spatial, D]`` (NATTEN < 0.20), ``fused`` heads-last ``[B, *spatial, heads, D]``.
"""
import math

import torch

from reference import axis_mask

CALLS = {"split_qk": 0, "split_av": 0, "fused": 0}     # how often each stand-in ran (checks assert it did)


def neighbours(spatial, kernel, dilation):
    """[T, prod(kernel)] flat key indices and [T, prod(kernel)] flat rpb indices (stride 1, non-causal)."""
    idx = torch.zeros(1, 1, dtype=torch.long)
    bias = torch.zeros(1, 1, dtype=torch.long)
    for n, k, d in zip(spatial, kernel, dilation):
        m = axis_mask(n, k, 1, d, False)
        keys = torch.stack([m[i].nonzero().flatten() for i in range(n)])          # [n, k], ascending
        assert keys.shape == (n, k)
        off = (keys - torch.arange(n)[:, None]) // d + k - 1                         # [n, k] in 0..2k-2
        idx = (idx[:, None, :, None] * n + keys[None, :, None, :]).reshape(idx.shape[0] * n, -1)
        bias = (bias[:, None, :, None] * (2 * k - 1) + off[None, :, None, :]).reshape(bias.shape[0] * n, -1)
    return idx, bias


def _as_tuple(x, rank):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * rank


def split_qk(query, key, kernel_size, dilation=1, rpb=None, additional_keys=None):
    """Heads-first scores q . k (+ rpb), then q . additional_keys: [B, H, *spatial, Kvol (+ N)]."""
    CALLS["split_qk"] += 1
    rank = query.dim() - 3
    spatial = tuple(query.shape[2:2 + rank])
    ks, dil = _as_tuple(kernel_size, rank), _as_tuple(dilation, rank)
    idx, bidx = neighbours(spatial, ks, dil)
    B, H, D = query.shape[0], query.shape[1], query.shape[-1]
    q = query.double().reshape(B, H, -1, D)
    k = key.double().reshape(B, H, -1, D)
    s = torch.einsum("bhtd,bhtnd->bhtn", q, k[:, :, idx])
    if rpb is not None:
        s = s + rpb.double().reshape(H, -1)[:, bidx][None]
    if additional_keys is not None:
        s = torch.cat([s, torch.einsum("bhtd,bhnd->bhtn", q, additional_keys.double())], dim=-1)
    return s.reshape(B, H, *spatial, -1)


def split_av(attn, value, kernel_size, dilation=1, additional_values=None):
    """Heads-first sum of weights times neighbour values (then additional values): [B, H, *spatial, D]."""
    CALLS["split_av"] += 1
    rank = value.dim() - 3
    spatial = tuple(value.shape[2:2 + rank])
    ks, dil = _as_tuple(kernel_size, rank), _as_tuple(dilation, rank)
    idx, _ = neighbours(spatial, ks, dil)
    kvol = math.prod(ks)
    B, H, D = value.shape[0], value.shape[1], value.shape[-1]
    a = attn.double().reshape(B, H, idx.shape[0], -1)
    v = value.double().reshape(B, H, -1, D)
    out = torch.einsum("bhtn,bhtnd->bhtd", a[..., :kvol], v[:, :, idx])
    if additional_values is not None:
        out = out + torch.einsum("bhtn,bhnd->bhtd", a[..., kvol:], additional_values.double())
    return out.reshape(B, H, *spatial, D)


def fused(query, key, value, kernel_size, dilation=1, scale=None):
    """Heads-last softmax(scale * q . k) v over the neighbourhood: [B, *spatial, H, D]."""
    CALLS["fused"] += 1
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    hf = lambda t: t.movedim(-2, 1)     # noqa: E731
    attn = split_qk(hf(query) * scale, hf(key), kernel_size, dilation).softmax(-1)
    return split_av(attn, hf(value), kernel_size, dilation).movedim(1, -2)
