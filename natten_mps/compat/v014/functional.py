"""NATTEN 0.14's ``natten.functional``: QK (+ relative positional bias) and AV, heads-first.

``query``/``key``/``value`` ``[B, heads, *spatial, head_dim]``; weights ``[B, heads, *spatial,
K^rank]`` (1-D and 2-D; one odd ``kernel_size`` and one ``dilation`` per call, as in 0.14). Scores are
unscaled (0.14's modules scale the query first); ``rpb`` is ``[heads, 2K - 1]`` (1-D) or
``[heads, 2K - 1, 2K - 1]`` (2-D), ``None`` for none. Gradients flow to all tensors, ``rpb`` included.
"""
from __future__ import annotations

from .. import _legacy

__all__ = ["natten1dqkrpb", "natten1dqk", "natten1dav", "natten2dqkrpb", "natten2dqk", "natten2dav"]


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
