"""NATTEN 0.14 API (``natten_mps.compat.v014``; ``.functional`` is 0.14's ``natten.functional``):
split ops with relative positional bias, and the modules.

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

from .. import _flops, _legacy  # noqa: F401
from .._flops import _FlopHandler, add_natten_handle  # noqa: F401
from .._legacy import LegacyNeighborhoodAttention, odd_kernel
from . import functional  # noqa: F401  (natten_mps.compat.v014.functional: 0.14's natten.functional)
from .functional import natten1dav, natten1dqk, natten1dqkrpb, natten2dav, natten2dqk, natten2dqkrpb

__version__ = "0.14.6"

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "natten1dqkrpb", "natten1dqk", "natten1dav",
           "natten2dqkrpb", "natten2dqk", "natten2dav", "add_natten_handle", "_FlopHandler"]


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
