"""The pure path with the Metal implementations' signatures: what runs when a kernel family turns out
unavailable during a call (``runtime.pure_on_failure``: a pipeline or a launch refused on MPS).

Each function takes exactly the arguments of its Metal counterpart in :mod:`.metal` or
:mod:`.metal_split` and returns what it returns (same shapes and dtypes), computed by
:mod:`.pure`, :mod:`.pure_varlen` or plain PyTorch. A family found unavailable before a call never
gets here: ``metal.supported`` then says False and the op layer takes the pure path itself.
"""
from __future__ import annotations

import torch

from . import pure, pure_varlen


def _causal0(is_causal) -> bool:
    return bool(is_causal[0]) if isinstance(is_causal, (list, tuple)) else bool(is_causal)


def attention_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale, dense=False,
                      extra_k=None, extra_v=None, sizes=None):
    """Pure counterpart of ``metal.attention_forward`` -> (out, lse)."""
    if sizes is not None:
        return pure_varlen.na_varlen_forward(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale)
    if dense:
        return pure.attention_forward(q, k, v, _causal0(is_causal), scale)
    if extra_k is not None and extra_k.shape[1] > 0:
        from .. import ops      # the op layer's merge of the two attentions; metal.supported is now False
        return ops._na_forward_extra_impl(q, k, v, extra_k, extra_v, kernel_size, stride, dilation, is_causal,
                                          scale)
    return pure.na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale)


def attention_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale,
                       dense=False, extra_k=None, extra_v=None, sizes=None):
    """Pure counterpart of ``metal.attention_backward`` -> (dq, dk, dv, dxk, dxv)."""
    if sizes is not None:
        dq, dk, dv, _ = pure_varlen.na_varlen_backward(dout, dlse, q, k, v, sizes, out, lse, kernel_size, stride,
                                                       dilation, is_causal, scale)
        return dq, dk, dv, None, None
    if dense:
        dq, dk, dv = pure.attention_backward(dout, dlse, q, k, v, out, lse, _causal0(is_causal), scale)
        return dq, dk, dv, None, None
    if extra_k is not None and extra_k.shape[1] > 0:
        from .. import ops
        return ops._na_backward_extra_impl(dout, dlse, q, k, v, extra_k, extra_v, out, lse, kernel_size, stride,
                                           dilation, is_causal, scale)
    dq, dk, dv = pure.na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale)
    return dq, dk, dv, None, None


def _gather(x, spatial, kernel_size, stride, dilation, is_causal):
    """``x`` ``[B, *L, Hkv, D]`` -> neighbours ``[B, T, Kvol, Hkv, D]`` and validity ``[T, Kvol]``."""
    from ..split import _neighbourhood
    tok, ok, _ = _neighbourhood(spatial, kernel_size, stride, dilation, [bool(c) for c in is_causal], x.device)
    B, Hkv, D = x.shape[0], x.shape[-2], x.shape[-1]
    T, kvol = tok.shape
    xf = x.reshape(B, T, Hkv, D).index_select(1, tok.reshape(-1)).reshape(B, T, kvol, Hkv, D)
    return xf, ok


def split_qk(a, x, kernel_size, stride, dilation, is_causal, fill=float("-inf")):
    """Pure counterpart of ``metal_split.qk``: weights ``[B, *L, H, Kvol]``, masked entries ``fill``."""
    spatial = list(a.shape[1:-2])
    B, H, D = a.shape[0], a.shape[-2], a.shape[-1]
    Hkv = x.shape[-2]
    xf, ok = _gather(x, spatial, kernel_size, stride, dilation, is_causal)
    T, kvol = ok.shape
    af = a.reshape(B, T, Hkv, H // Hkv, D)
    w = torch.einsum("btkgd,btnkd->btkgn", af, xf).reshape(B, T, H, kvol)
    w = w.masked_fill(~ok[None, :, None, :], fill)
    return w.reshape(*a.shape[:-1], kvol)


def split_av(w, x, kernel_size, stride, dilation, is_causal):
    """Pure counterpart of ``metal_split.av``: ``[B, *L, H, Dx]`` (masked weights count as 0)."""
    spatial = list(w.shape[1:-2])
    B, H, kvol = w.shape[0], w.shape[-2], w.shape[-1]
    Hkv, Dx = x.shape[-2], x.shape[-1]
    xf, ok = _gather(x, spatial, kernel_size, stride, dilation, is_causal)
    T = ok.shape[0]
    wf = w.to(x.dtype).reshape(B, T, Hkv, H // Hkv, kvol).masked_fill(~ok[None, :, None, None, :], 0.0)
    out = torch.einsum("btkgn,btnkd->btkgd", wf, xf)
    return out.reshape(*w.shape[:-1], Dx)


def split_inverse(w, x, heads_kv, kernel_size, stride, dilation, is_causal):
    """Pure counterpart of ``metal_split.inverse``: ``[B, *L, Hkv, Dx]``, the transpose of :func:`split_av`
    (what each key position receives from the queries whose window holds it)."""
    shape = x.shape[:-2] + (heads_kv, x.shape[-1])
    base = torch.zeros(shape, dtype=x.dtype, device=x.device)
    _, vjp = torch.func.vjp(lambda val: split_av(w, val, kernel_size, stride, dilation, is_causal), base)
    return vjp(x)[0]


__all__ = ["attention_forward", "attention_backward", "split_qk", "split_av", "split_inverse"]
