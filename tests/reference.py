"""Independent float64 brute-force reference: explicit neighborhood mask + softmax.

Written from the rule in natten_mps/semantics.py's docstring (and upstream NATTEN's definition),
with plain integer loops; it shares no code with the package.
"""
import math

import torch


def axis_mask(length, kernel, stride, dilation, causal):
    """[length, length] bool: key j is in the window of query i on this axis."""
    m = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        g = i % dilation
        group = list(range(g, length, dilation))
        lg = len(group)
        qi = i // dilation
        for j in range(length):
            if j % dilation != g:
                continue
            kj = j // dilation
            if causal:
                leader = min((qi // stride) * stride + stride - 1, lg - 1)
                ok = kj <= qi and leader - kj < kernel
            else:
                leader = min((qi // stride) * stride + stride // 2, lg - 1)
                left = kernel // 2
                right = kernel // 2 + kernel % 2 - 1
                centre = min(max(leader, left), lg - 1 - right)
                ok = centre - left <= kj <= centre + right
            m[i, j] = ok
    return m


def neighborhood_mask(spatial, kernel, stride, dilation, causal):
    """[prod(spatial), prod(spatial)] bool mask over flattened tokens."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    for a in range(len(spatial)):
        ma = axis_mask(spatial[a], kernel[a], stride[a], dilation[a], causal[a])
        mask = (mask[:, None, :, None] & ma[None, :, None, :]).reshape(mask.shape[0] * spatial[a], -1)
    return mask


def reference_na(q, k, v, kernel, stride, dilation, causal, scale=None, add_k=None, add_v=None):
    """Returns (out, lse) in float64. Layout heads-last like the package."""
    rank = q.dim() - 3
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    spatial = tuple(q.shape[1:1 + rank])
    Hkv = k.shape[-2]
    scale = D ** -0.5 if scale is None else scale
    n = math.prod(spatial)
    q64 = q.double().reshape(B, n, H, D)
    rep = H // Hkv
    k64 = k.double().reshape(B, n, Hkv, -1).repeat_interleave(rep, dim=2)
    v64 = v.double().reshape(B, n, Hkv, -1).repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64) * scale
    mask = neighborhood_mask(spatial, kernel, stride, dilation, causal)
    s = s.masked_fill(~mask, float("-inf"))
    vals = v64
    if add_k is not None:
        ak = add_k.double().repeat_interleave(rep, dim=2)
        av = add_v.double().repeat_interleave(rep, dim=2)
        s = torch.cat([s, torch.einsum("bqhd,bkhd->bhqk", q64, ak) * scale], dim=-1)
        vals = torch.cat([v64, av], dim=1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", p, vals)
    return out.reshape(q.shape[:-1] + (v.shape[-1],)), lse.permute(0, 2, 1).reshape(q.shape[:-1])


def reference_attention(q, k, v, is_causal=False, scale=None):
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    return reference_na(q, k, v, (Lk,), (1,), (1,), (is_causal,), scale) if Lq == Lk else _cross(q, k, v, scale)


def _cross(q, k, v, scale):
    H, Hkv, D = q.shape[2], k.shape[2], q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    rep = H // Hkv
    k64, v64 = k.double().repeat_interleave(rep, 2), v.double().repeat_interleave(rep, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k64) * scale
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v64), torch.logsumexp(s, -1).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# Split ops (explicit weights): slot n of a query's window, row-major over the axes
# ------------------------------------------------------------------------------------------------
def axis_slots(length, kernel, stride, dilation, causal):
    """[length, kernel] long: the key on this axis that slot n of query i's window holds, or -1 where
    the slot lies outside the sequence (causal windows near the start). Slot n is the n-th position
    of the window counted from its first (for causal windows: the one ``kernel - 1`` before the
    leader), in steps of ``dilation``."""
    slots = torch.full((length, kernel), -1, dtype=torch.long)
    for i in range(length):
        g = i % dilation
        lg = len(range(g, length, dilation))
        qi = i // dilation
        if causal:
            leader = min((qi // stride) * stride + stride - 1, lg - 1)
            first = leader - (kernel - 1)
        else:
            leader = min((qi // stride) * stride + stride // 2, lg - 1)
            left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
            first = min(max(leader, left), lg - 1 - right) - left
        for n in range(kernel):
            kj = first + n
            if 0 <= kj and (kj <= qi if causal else kj < lg):
                slots[i, n] = g + kj * dilation
    return slots


def neighborhood_slots(spatial, kernel, stride, dilation, causal):
    """[prod(spatial), prod(kernel)] long: flat key token of each slot (row-major over axes), -1 masked."""
    tok = torch.zeros(1, 1, dtype=torch.long)
    for a, n in enumerate(spatial):
        s = axis_slots(n, kernel[a], stride[a], dilation[a], causal[a])
        both = (tok[:, None, :, None] >= 0) & (s[None, :, None, :] >= 0)
        tok = torch.where(both, tok[:, None, :, None] * n + s[None, :, None, :], torch.tensor(-1))
        tok = tok.reshape(-1, tok.shape[2] * tok.shape[3])
    return tok


def reference_split_qk(q, k, kernel, stride, dilation, causal):
    """float64 ``[B, *L, H, prod(kernel)]``: q . k of each slot (unscaled), ``-inf`` where masked."""
    spatial = tuple(q.shape[1:-2])
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    Hkv = k.shape[-2]
    slots = neighborhood_slots(spatial, kernel, stride, dilation, causal)
    n, kvol = slots.shape
    qf, kf = q.double().reshape(B, n, H, D), k.double().reshape(B, n, Hkv, D)
    out = torch.full((B, n, H, kvol), float("-inf"), dtype=torch.float64)
    for t in range(n):
        for s in range(kvol):
            j = int(slots[t, s])
            if j >= 0:
                for h in range(H):
                    out[:, t, h, s] = (qf[:, t, h] * kf[:, j, h // (H // Hkv)]).sum(-1)
    return out.reshape(q.shape[:-1] + (kvol,))


def reference_split_av(w, v, kernel, stride, dilation, causal):
    """float64 ``[B, *L, H, Dv]``: sum over slots of weight x value (masked slots contribute nothing)."""
    spatial = tuple(w.shape[1:-2])
    B, H = w.shape[0], w.shape[-2]
    Hkv, Dv = v.shape[-2], v.shape[-1]
    slots = neighborhood_slots(spatial, kernel, stride, dilation, causal)
    n, kvol = slots.shape
    wf, vf = w.double().reshape(B, n, H, kvol), v.double().reshape(B, n, Hkv, Dv)
    out = torch.zeros(B, n, H, Dv, dtype=torch.float64)
    for t in range(n):
        for s in range(kvol):
            j = int(slots[t, s])
            if j >= 0:
                for h in range(H):
                    out[:, t, h] += wf[:, t, h, s, None] * vf[:, j, h // (H // Hkv)]
    return out.reshape(w.shape[:-1] + (Dv,))
