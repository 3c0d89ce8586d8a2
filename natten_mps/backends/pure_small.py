"""Small problems on the pure path: one fused dense-attention call with the neighbourhood as a mask.

For a problem of at most ``MAX_TOKENS`` tokens (spatial positions) the tiled route's set-up (tiling,
chunks, kept buffers, untiling) costs far more than its arithmetic. Here the whole neighbourhood rule
(kernel size, stride, dilation, causal, borders) becomes one additive ``[G*T, T]`` mask (``-inf``
outside each query's window, 0 inside; at most 32 x 32 per query head, built once per signature and
kept), and the forward is one call of PyTorch's CPU flash-attention kernel on views of the public
tensors, the backward one call of its backward.

Applies on CPU with equal query/value head dims (the kernel's condition, as for the tiled fused
route); an LSE gradient rides on an extra channel, as there.
A non-finite output sends the call to the tiled route too: masked keys still enter the kernel's
``P @ V`` with weight 0, so a non-finite value outside a window would leak (``0 * inf``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..lru import SignatureCache
from .cpu_flash import _flash_bwd, _flash_fwd, _fused_tile_backward

MAX_TOKENS = 32
_MASKS = SignatureCache(128)     # entries are (mask,): None (the route does not apply) is kept too


def _dense_mask(spatial, kernel_size, stride, dilation, is_causal, groups: int, dtype) -> torch.Tensor:
    """``[groups * T, T]`` additive mask of the neighbourhood rule (query heads of one K/V head
    stacked as row blocks)."""
    from ..split import _neighbourhood       # the split ops' per-query key table (same rule)
    keys, valid = _neighbourhood(list(spatial), list(kernel_size), list(stride), list(dilation),
                                 [bool(c) for c in is_causal], "cpu")[:2]
    T = keys.shape[0]
    rows = torch.arange(T)[:, None].expand_as(keys)
    mask = torch.full((T, T), float("-inf"), dtype=dtype)
    mask[rows[valid], keys[valid]] = 0.0
    return mask.repeat(groups, 1) if groups > 1 else mask


def mask_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size, stride, dilation,
             is_causal) -> Optional[torch.Tensor]:
    """The kept mask when this route applies to ``q [B, *L, H, D]``, ``k``/``v`` ``[B, *L, Hkv, D]``,
    else None (both answers kept per signature)."""
    key = (q.shape, k.shape[-2], v.shape[-1], q.dtype, q.device, tuple(kernel_size), tuple(stride),
           tuple(dilation), tuple(is_causal))
    entry = _MASKS.get(key)
    if entry is None:
        entry = (_build(q, k, v, kernel_size, stride, dilation, is_causal),)
        _MASKS.put(key, entry)
    return entry[0]


def _build(q, k, v, kernel_size, stride, dilation, is_causal) -> Optional[torch.Tensor]:
    if (_flash_fwd is None or _flash_bwd is None or q.device.type != "cpu" or q.shape[-1] != v.shape[-1]
            or q.numel() == 0):
        return None
    spatial = tuple(q.shape[1:-2])
    if math.prod(spatial) > MAX_TOKENS:
        return None
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _dense_mask(spatial, kernel_size, stride, dilation, is_causal, q.shape[-2] // k.shape[-2], dtype)


def _heads_first(x: torch.Tensor, heads_kv: int, dtype) -> torch.Tensor:
    """``[B, *L, H, C]`` -> ``[B, Hkv, G*T, C]`` in ``dtype`` (a view when G == 1 and no cast)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    if x.dim() != 4:
        x = x.flatten(1, -3)
    if x.shape[2] == heads_kv:
        return x.transpose(1, 2)
    B, T, H, C = x.shape
    G = H // heads_kv
    return x.view(B, T, heads_kv, G, C).permute(0, 2, 3, 1, 4).reshape(B, heads_kv, G * T, C)


def _rows_first(x: torch.Tensor, heads_kv: int, dtype) -> torch.Tensor:
    """``[B, *L, H]`` (LSE rows) -> ``[B, Hkv, G*T]`` in ``dtype``."""
    if x.dim() == 3 and x.shape[2] == heads_kv:
        return (x if x.dtype == dtype else x.to(dtype)).transpose(1, 2)
    return _heads_first(x.unsqueeze(-1), heads_kv, dtype)[..., 0]


def _heads_last(x: torch.Tensor, shape, heads_kv: int) -> torch.Tensor:
    """Inverse of :func:`_heads_first` into ``shape`` ``[B, *L, H, C]`` (``C`` may be 1 for the LSE)."""
    G = shape[-2] // heads_kv
    if G == 1:
        return x.transpose(1, 2).reshape(shape)
    B = shape[0]
    return x.reshape(B, heads_kv, G, x.shape[2] // G, x.shape[-1]).permute(0, 3, 1, 2, 4).reshape(shape)


def forward(q, k, v, mask, scale) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(out ``[B, *L, H, Dv]`` in q's dtype, lse ``[B, *L, H]`` float32/64), or None when the output
    is not finite (the caller then takes the tiled route)."""
    dtype, Hkv = mask.dtype, k.shape[-2]
    qh, kh, vh = _heads_first(q, Hkv, dtype), _heads_first(k, Hkv, dtype), _heads_first(v, Hkv, dtype)
    out, lse = _flash_fwd(qh, kh, vh, 0.0, False, attn_mask=mask, scale=scale)
    if not math.isfinite(out.sum().item()):
        return None
    # contiguous results, as the ops' fake kernels promise (torch.compile checks the strides)
    out = _heads_last(out, q.shape[:-1] + (v.shape[-1],), Hkv)
    if out.dtype != q.dtype:
        out = out.to(q.dtype)
    if lse.dim() == 3 and q.shape[-2] == Hkv:      # [B, H, T] -> [B, *L, H]
        lse = lse.transpose(1, 2).reshape(q.shape[:-1])
    else:
        lse = _heads_last(lse.unsqueeze(-1), q.shape[:-1] + (1,), Hkv)[..., 0]
    return out.contiguous(), lse.contiguous()


def backward(dout, dlse, q, k, v, out, lse, mask, scale) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`forward` in the inputs' dtypes; ``dlse`` (``[B, *L, H]`` or None) rides
    on an extra channel as on the tiled fused route (``cpu_flash._fused_tile_backward``)."""
    dtype, Hkv = mask.dtype, k.shape[-2]
    qh, kh, vh = _heads_first(q, Hkv, dtype), _heads_first(k, Hkv, dtype), _heads_first(v, Hkv, dtype)
    oh, doh = _heads_first(out, Hkv, dtype), _heads_first(dout, Hkv, dtype)
    lh = _rows_first(lse, Hkv, dtype)
    if dlse is None:
        dq, dk, dv = _flash_bwd(doh, qh, kh, vh, oh, lh, 0.0, False, attn_mask=mask, scale=scale)
    else:
        dq, dk, dv = _fused_tile_backward(doh, qh, kh, vh, oh, lh, _rows_first(dlse, Hkv, dtype), mask, scale)
    # contiguous results in the inputs' dtypes, as the ops' fake kernels promise
    dq = _heads_last(dq, q.shape, Hkv)
    dk = _heads_last(dk, k.shape, Hkv)
    dv = _heads_last(dv, v.shape, Hkv)
    if dq.dtype != q.dtype:
        dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()
