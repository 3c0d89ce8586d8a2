"""NATTEN 0.14 API: ``natten.functional`` split ops with relative positional bias, and the modules.

Functional (heads-first: ``query``/``key``/``value`` ``[B, heads, *spatial, head_dim]``, weights
``[B, heads, *spatial, K^rank]``; 1-D and 2-D, square kernels and one dilation, as in 0.14):
``natten1dqkrpb(query, key, rpb, kernel_size, dilation)``, ``natten1dqk(query, key, kernel_size,
dilation)``, ``natten1dav(attn, value, kernel_size, dilation)`` and the ``natten2d*`` counterparts.
Scores are unscaled (0.14's modules scale the query first); ``rpb`` is ``[heads, 2K - 1]`` (1-D) or
``[heads, 2K - 1, 2K - 1]`` (2-D), ``None`` for none.

Modules: ``NeighborhoodAttention1D/2D(dim, num_heads, kernel_size, dilation=1, bias=True,
qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0)``, parameters ``qkv``, ``rpb`` (when
``bias``), ``proj``, so 0.14 checkpoints load; inputs shorter than ``kernel_size * dilation`` are
zero-padded and the output cropped, as 0.14 did. (natten-mps 0.3.3's shim orders the constructor
``(dim, kernel_size, dilation, num_heads)`` and has no ``rpb``; NATTEN 0.14's order is kept here.)

``add_natten_handle(flop_counter)`` registers FLOP formulas for this package's ops with an fvcore
``FlopCountAnalysis``-like object (anything with ``set_op_handle``), as 0.14's did for its ops.
"""
from __future__ import annotations

from typing import Any, List

from . import _legacy
from ._legacy import LegacyNeighborhoodAttention, odd_kernel

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "natten1dqkrpb", "natten1dqk", "natten1dav",
           "natten2dqkrpb", "natten2dqk", "natten2dav", "add_natten_handle", "_FlopHandler"]


def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    return _legacy.qk("natten1dqkrpb", 1, query, key, kernel_size, dilation, rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation):
    return _legacy.qk("natten1dqk", 1, query, key, kernel_size, dilation)


def natten1dav(attn, value, kernel_size, dilation):
    return _legacy.av("natten1dav", 1, attn, value, kernel_size, dilation)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    return _legacy.qk("natten2dqkrpb", 2, query, key, kernel_size, dilation, rpb=rpb)


def natten2dqk(query, key, kernel_size, dilation):
    return _legacy.qk("natten2dqk", 2, query, key, kernel_size, dilation)


def natten2dav(attn, value, kernel_size, dilation):
    return _legacy.av("natten2dav", 2, attn, value, kernel_size, dilation)


class NeighborhoodAttention1D(LegacyNeighborhoodAttention):
    """NATTEN 0.14's 1-D module over ``[B, L, dim]``."""

    def __init__(self, dim, num_heads, kernel_size, dilation=1, bias=True, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        k = odd_kernel(kernel_size)
        super().__init__(1, dim, num_heads, (k,), (dilation or 1,), (False,), bias, qkv_bias, qk_scale, attn_drop,
                         proj_drop, pad_axes=(0,))


class NeighborhoodAttention2D(LegacyNeighborhoodAttention):
    """NATTEN 0.14's 2-D module over ``[B, H, W, dim]``."""

    def __init__(self, dim, num_heads, kernel_size, dilation=1, bias=True, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        k = odd_kernel(kernel_size)
        d = dilation or 1
        super().__init__(2, dim, num_heads, (k, k), (d, d), (False, False), bias, qkv_bias, qk_scale, attn_drop,
                         proj_drop, pad_axes=(0, 1))


def _shape(value) -> List[int]:
    """Shape of a traced value (fvcore passes ``torch._C.Value``) or of a tensor."""
    if hasattr(value, "type") and hasattr(value.type(), "sizes"):
        return list(value.type().sizes())
    return list(value.shape)


class _FlopHandler:
    """Multiply-adds of one op from its input/output shapes (fvcore's convention, one "flop" per
    multiply-add; handle protocol ``(inputs, outputs)``). ``kind``: ``"fused"`` (tokens * heads *
    window * (D + Dv), the window from the op's kernel_size argument), ``"qk"`` (tokens * heads *
    Kvol * D), ``"av"`` (tokens * heads * Kvol * Dv)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, inputs: List[Any], outputs: List[Any]) -> int:
        if self.kind == "qk":
            w, a = _shape(outputs[0]), _shape(inputs[0])
            return _prod(w) * a[-1]
        if self.kind == "av":
            w, o = _shape(inputs[0]), _shape(outputs[0])
            return _prod(w) * o[-1]
        q, k, v = (_shape(x) for x in inputs[:3])
        window = _prod(_kernel_arg(inputs)) if len(inputs) > 3 and _kernel_arg(inputs) else _prod(k[1:-2])
        return _prod(q[:-1]) * window * (q[-1] + v[-1])


def _kernel_arg(inputs):
    arg = inputs[3]
    if hasattr(arg, "toIValue"):
        arg = arg.toIValue()
    return list(arg) if isinstance(arg, (list, tuple)) else None


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


_HANDLES = {"natten_mps::na_forward": "fused", "natten_mps::na_forward_extra": "fused",
            "natten_mps::na_varlen_forward": "fused", "natten_mps::split_qk": "qk", "natten_mps::split_av": "av"}


def add_natten_handle(flop_ctr):
    """Register FLOP handles for this package's ops on ``flop_ctr`` (fvcore's ``FlopCountAnalysis``
    or anything with ``set_op_handle(name, handle)``); returns what ``set_op_handle`` returns."""
    handles = {name: _FlopHandler(kind) for name, kind in _HANDLES.items()}
    return flop_ctr.set_op_handle(**handles)
