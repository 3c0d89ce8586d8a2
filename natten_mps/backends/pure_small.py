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
from collections import OrderedDict
from typing import Optional, Tuple

import torch

MAX_TOKENS = 32
_MASKS: "OrderedDict[tuple, Optional[torch.Tensor]]" = OrderedDict()
_MASKS_SIZE = 128
_flash_fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


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
    else None."""
    if (_flash_fwd is None or _flash_bwd is None or q.device.type != "cpu" or q.shape[-1] != v.shape[-1]
            or q.numel() == 0):
        return None
    spatial = tuple(q.shape[1:-2])
    tokens = math.prod(spatial)
    if tokens > MAX_TOKENS:
        return None
    groups = q.shape[-2] // k.shape[-2]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    key = (spatial, tuple(kernel_size), tuple(stride), tuple(dilation), tuple(bool(c) for c in is_causal), groups,
           dtype)
    mask = _MASKS.get(key)
    if mask is None:
        mask = _MASKS[key] = _dense_mask(spatial, kernel_size, stride, dilation, is_causal, groups, dtype)
        if len(_MASKS) > _MASKS_SIZE:
            _MASKS.popitem(last=False)
    return mask


def _heads_first(x: torch.Tensor, heads_kv: int, dtype) -> torch.Tensor:
    """``[B, *L, H, C]`` -> ``[B, Hkv, G*T, C]`` in ``dtype`` (a view when G == 1 and no cast)."""
    B, H, C = x.shape[0], x.shape[-2], x.shape[-1]
    if x.dtype != dtype:
        x = x.to(dtype)
    if x.dim() != 4:
        x = x.reshape(B, -1, H, C)
    if H == heads_kv:
        return x.transpose(1, 2)
    G = H // heads_kv
    return x.view(B, x.shape[1], heads_kv, G, C).permute(0, 2, 3, 1, 4).reshape(B, heads_kv, G * x.shape[1], C)


def _heads_last(x: torch.Tensor, shape, heads_kv: int) -> torch.Tensor:
    """Inverse of :func:`_heads_first` into ``shape`` ``[B, *L, H, C]`` (``C`` may be 1 for the LSE)."""
    B, H = shape[0], shape[-2]
    G = H // heads_kv
    T = x.shape[2] // G
    if G == 1:
        x = x.transpose(1, 2)
        return x if x.shape == shape else x.reshape(shape)
    return x.reshape(B, heads_kv, G, T, x.shape[-1]).permute(0, 3, 1, 2, 4).reshape(shape)


def forward(q, k, v, mask, scale) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(out ``[B, *L, H, Dv]`` in q's dtype, lse ``[B, *L, H]`` float32/64), or None when the output
    is not finite (the caller then takes the tiled route)."""
    dtype, Hkv = mask.dtype, k.shape[-2]
    qh, kh, vh = _heads_first(q, Hkv, dtype), _heads_first(k, Hkv, dtype), _heads_first(v, Hkv, dtype)
    out, lse = _flash_fwd(qh, kh, vh, 0.0, False, attn_mask=mask, scale=scale)
    if not math.isfinite(out.sum().item()):
        return None
    # contiguous results, as the ops' fake kernels promise (torch.compile checks the strides)
    out = _heads_last(out, q.shape[:-1] + (v.shape[-1],), Hkv).to(q.dtype).contiguous()
    lse = _heads_last(lse.unsqueeze(-1), q.shape[:-1] + (1,), Hkv)[..., 0].contiguous()
    return out, lse


def backward(dout, dlse, q, k, v, out, lse, mask, scale) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`forward` in the inputs' dtypes; ``dlse`` (``[B, *L, H]`` or None) rides
    on an extra channel as on the tiled fused route (``pure._fused_tile_backward``)."""
    from .pure import _fused_tile_backward
    dtype, Hkv = mask.dtype, k.shape[-2]
    qh, kh, vh = _heads_first(q, Hkv, dtype), _heads_first(k, Hkv, dtype), _heads_first(v, Hkv, dtype)
    oh, doh = _heads_first(out, Hkv, dtype), _heads_first(dout, Hkv, dtype)
    lh = _heads_first(lse.unsqueeze(-1), Hkv, dtype)[..., 0]
    dlh = None if dlse is None else _heads_first(dlse.unsqueeze(-1), Hkv, dtype)[..., 0]
    dq, dk, dv = _fused_tile_backward(doh, qh, kh, vh, oh, lh, dlh, mask, scale)
    grads = (_heads_last(dq, q.shape, Hkv), _heads_last(dk, k.shape, Hkv), _heads_last(dv, v.shape, Hkv))
    return tuple(g.to(x.dtype).contiguous() for g, x in zip(grads, (q, k, v)))
