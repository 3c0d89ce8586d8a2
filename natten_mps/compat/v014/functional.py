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
    """1-D attention scores plus relative positional bias, heads-first (NATTEN 0.14).

    ``query``/``key`` ``[B, heads, L, D]``; ``rpb`` ``[heads, 2 * kernel_size - 1]`` or ``None``;
    ``kernel_size`` and ``dilation`` ints, no defaults (as in 0.14). Returns the unscaled scores
    ``[B, heads, L, kernel_size]`` (``query . key`` per neighbour, in window order) plus the bias
    ``rpb[h, kernel_size - 1 + (key - query) / dilation]``, in the query's dtype.
    Raises ``TypeError`` for a non-tensor or an unsupported dtype, ``ValueError`` for a wrong rank,
    mismatched shapes, ``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an
    axis, or an ``rpb`` of the wrong shape.
    """
    return _legacy.qk("natten1dqkrpb", 1, query, key, kernel_size, dilation, rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation):
    """1-D attention scores, heads-first (NATTEN 0.14): :func:`natten1dqkrpb` without a bias.

    ``query``/``key`` ``[B, heads, L, D]``; ``kernel_size``, ``dilation`` ints. Returns the unscaled
    scores ``[B, heads, L, kernel_size]``, neighbours in window order.
    Raises ``TypeError`` for a non-tensor or an unsupported dtype, ``ValueError`` for a wrong rank,
    mismatched shapes, ``kernel_size < 2``, ``dilation < 1`` or ``kernel_size * dilation`` larger than
    an axis.
    """
    return _legacy.qk("natten1dqk", 1, query, key, kernel_size, dilation)


def natten1dav(attn, value, kernel_size, dilation):
    """1-D weighted values, heads-first (NATTEN 0.14): ``sum_n attn[..., n] * value[neighbour n]``.

    ``attn`` ``[B, heads, L, kernel_size]`` (weights in :func:`natten1dqk`'s order, usually its
    softmax), ``value`` ``[B, heads, L, D]``; ``kernel_size``, ``dilation`` ints. Returns
    ``[B, heads, L, D]`` in the value's dtype. Raises ``TypeError`` for a non-tensor, ``ValueError``
    for a wrong rank, mismatched shapes, or ``attn.shape[-1] != kernel_size``.
    """
    return _legacy.av("natten1dav", 1, attn, value, kernel_size, dilation)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    """2-D attention scores plus relative positional bias, heads-first (NATTEN 0.14).

    ``query``/``key`` ``[B, heads, X, Y, D]``; ``rpb`` ``[heads, 2K - 1, 2K - 1]`` or ``None``;
    ``kernel_size`` ``K`` and ``dilation`` ints (square window, one dilation, as in 0.14). Returns the
    unscaled scores ``[B, heads, X, Y, K * K]`` (neighbours row-major over the window) plus the bias.
    Raises ``TypeError`` for a non-tensor or an unsupported dtype, ``ValueError`` for a wrong rank,
    mismatched shapes, ``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an
    axis, or an ``rpb`` of the wrong shape.
    """
    return _legacy.qk("natten2dqkrpb", 2, query, key, kernel_size, dilation, rpb=rpb)


def natten2dqk(query, key, kernel_size, dilation):
    """2-D attention scores, heads-first (NATTEN 0.14): :func:`natten2dqkrpb` without a bias.

    ``query``/``key`` ``[B, heads, X, Y, D]``; ``kernel_size`` ``K``, ``dilation`` ints. Returns the
    unscaled scores ``[B, heads, X, Y, K * K]``, neighbours row-major over the window. Errors as
    :func:`natten2dqkrpb`.
    """
    return _legacy.qk("natten2dqk", 2, query, key, kernel_size, dilation)


def natten2dav(attn, value, kernel_size, dilation):
    """2-D weighted values, heads-first (NATTEN 0.14): ``sum_n attn[..., n] * value[neighbour n]``.

    ``attn`` ``[B, heads, X, Y, K * K]`` (in :func:`natten2dqk`'s order), ``value`` ``[B, heads, X, Y,
    D]``; ``kernel_size`` ``K``, ``dilation`` ints. Returns ``[B, heads, X, Y, D]``. Raises
    ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, or
    ``attn.shape[-1] != K * K``.
    """
    return _legacy.av("natten2dav", 2, attn, value, kernel_size, dilation)
