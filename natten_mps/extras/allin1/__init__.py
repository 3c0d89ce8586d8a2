"""QK + relative positional bias and AV entry points for DiNAT-style models (the All-In-One music
structure model, ``allin1`` on PyPI, and its kin).

``natten1dqkrpb(query, key, rpb, kernel_size, dilation)``, ``natten1dav(attn, value, kernel_size,
dilation)``, ``natten2dqkrpb``, ``natten2dav``: the functions the All-In-One model calls, in its
layout, NATTEN 0.14's heads-first one: ``query``/``key``/``value`` ``[B, heads, L, D]`` (2-D:
``[B, heads, X, Y, D]``), weights ``[B, heads, L, K]`` (``[..., K * K]``), ``rpb`` ``[heads, 2K - 1]``
(``[heads, 2K - 1, 2K - 1]``) or None; scores unscaled (the model scales the query first). They are
:mod:`natten_mps.compat.v014.functional`'s functions.

``na1d_qk_rpb(query, key, rpb, kernel_size, dilation=1, *, scale=None)`` and ``na1d_av_fused(attn,
value, kernel_size, dilation=1)`` (2-D likewise) keep natten-mps 0.3.3's heads-last layout:
``[B, L, heads, D]`` (``[B, X, Y, heads, D]``), weights ``[B, L, heads, K]``; ``scale`` multiplies
the query first. On Metal both run the split-op kernels; elsewhere PyTorch ops; autograd
throughout (``rpb`` included).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ... import split
from ...compat.v014.functional import natten1dav, natten1dqkrpb, natten2dav, natten2dqkrpb  # noqa: F401

__all__ = ["na1d_qk_rpb", "na1d_av_fused", "na2d_qk_rpb", "na2d_av_fused", "natten1dqkrpb", "natten1dav",
           "natten2dqkrpb", "natten2dav"]


def _check(name: str, t, rank: int, what: str) -> None:
    if not isinstance(t, Tensor) or t.dim() != rank + 3:
        raise ValueError(f"{name}: {what} must be a {rank + 3}-D tensor [batch, *spatial, heads, dim], got shape "
                         f"{tuple(getattr(t, 'shape', ()))}")


def na1d_qk_rpb(query: Tensor, key: Tensor, rpb: Optional[Tensor], kernel_size: int, dilation: int = 1, *,
                scale: Optional[float] = None) -> Tensor:
    """Scores of each query with its neighbours, plus the relative positional bias.
    
    ``query``, ``key`` ``[B, L, heads, D]``; ``rpb`` ``[heads, 2 * kernel_size - 1]`` or None; ``scale``
    (default None: unscaled) multiplies the query first. Returns ``[B, L, heads, kernel_size]``.
    Differentiable in all three tensors. ``ValueError`` for a query that is not 4-D."""
    _check("na1d_qk_rpb", query, 1, "query")
    return split.na1d_qk(query, key, kernel_size, dilation, scale=scale, rpb=rpb)


def na2d_qk_rpb(query: Tensor, key: Tensor, rpb: Optional[Tensor], kernel_size: int, dilation: int = 1, *,
                scale: Optional[float] = None) -> Tensor:
    """2-D form of :func:`na1d_qk_rpb`: ``query``, ``key`` ``[B, X, Y, heads, D]``; ``rpb``
    ``[heads, 2K - 1, 2K - 1]`` or None. Returns ``[B, X, Y, heads, K * K]``."""
    _check("na2d_qk_rpb", query, 2, "query")
    return split.na2d_qk(query, key, kernel_size, dilation, scale=scale, rpb=rpb)


def na1d_av_fused(attn: Tensor, value: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """Neighbours' values weighted by ``attn`` ``[B, L, heads, kernel_size]`` (as from
    :func:`na1d_qk_rpb` after a softmax); ``value`` ``[B, L, heads, D]``. Returns ``[B, L, heads, D]``."""
    _check("na1d_av_fused", attn, 1, "attn")
    return split.na1d_av(attn, value, kernel_size, dilation)


def na2d_av_fused(attn: Tensor, value: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """2-D form of :func:`na1d_av_fused`: ``attn`` ``[B, X, Y, heads, K * K]``, ``value``
    ``[B, X, Y, heads, D]``. Returns ``[B, X, Y, heads, D]``."""
    _check("na2d_av_fused", attn, 2, "attn")
    return split.na2d_av(attn, value, kernel_size, dilation)
