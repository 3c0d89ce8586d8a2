"""NATTEN 0.15's ``natten.functional``: heads-first split ops (1-D, 2-D, 3-D), biases, additional
tokens, the 0.14 names, and 0.15's feature queries and switches.

``query``/``key``/``value`` ``[B, heads, *spatial, head_dim]``; weights ``[B, heads, *spatial,
K^rank + N_add]``. ``na1d_qk(query, key, kernel_size, dilation, additional_keys=None)``,
``na1d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None)``,
``na1d_av(attn, value, kernel_size, dilation, additional_values=None)``, 2-D likewise; 3-D takes
``kernel_size_d, kernel_size, dilation_d, dilation`` (depth first, square in H x W). Additional
keys/values ``[B, heads, N_add, head_dim]`` contribute weights after the neighbourhood's.
``natten1dqkrpb(query, key, rpb, kernel_size, dilation)`` etc. are 0.15's aliases
(``natten1dqk is na1d_qk``, as in 0.15). Feature queries: see :mod:`natten_mps.compat._context`.
"""
from __future__ import annotations

from .. import _legacy
from .._context import (disable_gemm_na, disable_tf32, disable_tiled_na, enable_gemm_na, enable_tf32,  # noqa: F401
                        enable_tiled_na, has_bfloat, has_cuda, has_fp32_gemm, has_fp64_gemm, has_gemm, has_half,
                        has_tf32_gemm)

__all__ = ["na1d_qk", "na1d_qk_with_bias", "na1d_av", "na2d_qk", "na2d_qk_with_bias", "na2d_av", "na3d_qk",
           "na3d_qk_with_bias", "na3d_av", "natten1dqkrpb", "natten1dqk", "natten1dav", "natten2dqkrpb",
           "natten2dqk", "natten2dav", "natten3dqkrpb", "natten3dqk", "natten3dav", "has_cuda", "has_half",
           "has_bfloat", "has_gemm", "has_tf32_gemm", "has_fp32_gemm", "has_fp64_gemm", "enable_tf32",
           "disable_tf32", "enable_tiled_na", "disable_tiled_na", "enable_gemm_na", "disable_gemm_na"]


def na1d_qk(query, key, kernel_size, dilation, additional_keys=None):
    """1-D attention scores, heads-first (NATTEN 0.15; ``natten1dqk`` is this function).

    ``query``/``key`` ``[B, heads, L, D]``; ``kernel_size``, ``dilation`` ints (no defaults);
    ``additional_keys`` ``[B, heads, N_add, D]`` or ``None``. Returns the unscaled scores
    ``[B, heads, L, kernel_size + N_add]``: the neighbours' in window order, then one per additional key.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis) or
    ``additional_keys`` not ``[B, heads, N_add, D]``.
    """
    return _legacy.qk("na1d_qk", 1, query, key, kernel_size, dilation, additional_keys=additional_keys)


def na1d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None):
    """1-D attention scores plus relative positional bias, heads-first (NATTEN 0.15).

    As :func:`na1d_qk` (``query``/``key`` ``[B, heads, L, D]``, result ``[B, heads, L, kernel_size +
    N_add]``), with ``bias`` ``[heads, 2 * kernel_size - 1]`` added to the neighbourhood's scores as
    ``bias[h, kernel_size - 1 + (key - query) / dilation]``; additional keys get no bias.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis),
    a ``bias`` of the wrong shape or ``additional_keys`` not ``[B, heads, N_add, D]``.
    """
    return _legacy.qk("na1d_qk_with_bias", 1, query, key, kernel_size, dilation, rpb=bias,
                      additional_keys=additional_keys)


def na1d_av(attn, value, kernel_size, dilation, additional_values=None):
    """1-D weighted values, heads-first (NATTEN 0.15; ``natten1dav`` is this function).

    ``attn`` ``[B, heads, L, kernel_size + N_add]`` (weights in :func:`na1d_qk`'s order, usually its
    softmax), ``value`` ``[B, heads, L, D]``, ``additional_values`` ``[B, heads, N_add, D]`` or
    ``None``. Returns ``[B, heads, L, D]``: ``sum_n attn[..., n] * value[neighbour n]`` plus the
    additional values weighted by the last ``N_add`` entries.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis),
    ``attn.shape[-1]`` other than the window size plus ``N_add``, or bad ``additional_values``.
    """
    return _legacy.av("na1d_av", 1, attn, value, kernel_size, dilation, additional_values=additional_values)


def na2d_qk(query, key, kernel_size, dilation, additional_keys=None):
    """2-D attention scores, heads-first (NATTEN 0.15; ``natten2dqk`` is this function).

    ``query``/``key`` ``[B, heads, X, Y, D]``; ``kernel_size`` ``K``, ``dilation`` ints (square
    window); ``additional_keys`` ``[B, heads, N_add, D]`` or ``None``. Returns the unscaled scores
    ``[B, heads, X, Y, K * K + N_add]``: neighbours row-major over the window, then the additional keys.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis) or
    ``additional_keys`` not ``[B, heads, N_add, D]``.
    """
    return _legacy.qk("na2d_qk", 2, query, key, kernel_size, dilation, additional_keys=additional_keys)


def na2d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None):
    """2-D attention scores plus relative positional bias, heads-first (NATTEN 0.15).

    As :func:`na2d_qk` (``query``/``key`` ``[B, heads, X, Y, D]``, result ``[B, heads, X, Y, K * K +
    N_add]``), with ``bias`` ``[heads, 2K - 1, 2K - 1]`` added to the neighbourhood's scores.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis),
    a ``bias`` of the wrong shape or ``additional_keys`` not ``[B, heads, N_add, D]``.
    """
    return _legacy.qk("na2d_qk_with_bias", 2, query, key, kernel_size, dilation, rpb=bias,
                      additional_keys=additional_keys)


def na2d_av(attn, value, kernel_size, dilation, additional_values=None):
    """2-D weighted values, heads-first (NATTEN 0.15; ``natten2dav`` is this function).

    ``attn`` ``[B, heads, X, Y, K * K + N_add]`` (in :func:`na2d_qk`'s order), ``value`` ``[B, heads,
    X, Y, D]``, ``additional_values`` ``[B, heads, N_add, D]`` or ``None``; ``kernel_size`` ``K``,
    ``dilation`` ints. Returns ``[B, heads, X, Y, D]``.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis),
    ``attn.shape[-1]`` other than the window size plus ``N_add``, or bad ``additional_values``.
    """
    return _legacy.av("na2d_av", 2, attn, value, kernel_size, dilation, additional_values=additional_values)


def na3d_qk_with_bias(query, key, bias, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys=None):
    """3-D attention scores plus relative positional bias, heads-first (NATTEN 0.15).

    ``query``/``key`` ``[B, heads, X, Y, Z, D]`` (``X`` the depth); window ``kernel_size_d x kernel_size
    x kernel_size`` with dilations ``(dilation_d, dilation, dilation)``, all ints; ``bias``
    ``[heads, 2Kd - 1, 2K - 1, 2K - 1]`` or ``None``; ``additional_keys`` ``[B, heads, N_add, D]`` or
    ``None``. Returns the unscaled scores ``[B, heads, X, Y, Z, Kd * K * K + N_add]`` plus the bias.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis),
    a ``bias`` of the wrong shape or ``additional_keys`` not ``[B, heads, N_add, D]``.
    """
    return _legacy.qk("na3d_qk_with_bias", 3, query, key, (kernel_size_d, kernel_size, kernel_size),
                      (dilation_d, dilation, dilation), rpb=bias, additional_keys=additional_keys)


def na3d_qk(query, key, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys=None):
    """3-D attention scores, heads-first (NATTEN 0.15; ``natten3dqk`` is this function).

    :func:`na3d_qk_with_bias` without a bias: ``query``/``key`` ``[B, heads, X, Y, Z, D]`` (``X`` the
    depth), window ``kernel_size_d x kernel_size x kernel_size``; returns ``[B, heads, X, Y, Z,
    Kd * K * K + N_add]``. Errors as :func:`na3d_qk_with_bias`.
    """
    return na3d_qk_with_bias(query, key, None, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys)


def na3d_av(attn, value, kernel_size_d, kernel_size, dilation_d, dilation, additional_values=None):
    """3-D weighted values, heads-first (NATTEN 0.15; ``natten3dav`` is this function).

    ``attn`` ``[B, heads, X, Y, Z, Kd * K * K + N_add]`` (in :func:`na3d_qk`'s order), ``value``
    ``[B, heads, X, Y, Z, D]`` (``X`` the depth), ``additional_values`` ``[B, heads, N_add, D]`` or
    ``None``; window ``kernel_size_d x kernel_size x kernel_size``, dilations ``(dilation_d, dilation,
    dilation)``. Returns ``[B, heads, X, Y, Z, D]``.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size * dilation`` larger than an axis),
    ``attn.shape[-1]`` other than the window size plus ``N_add``, or bad ``additional_values``.
    """
    return _legacy.av("na3d_av", 3, attn, value, (kernel_size_d, kernel_size, kernel_size),
                      (dilation_d, dilation, dilation), additional_values=additional_values)


def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    """0.14's name kept by 0.15: :func:`na1d_qk_with_bias` with ``rpb`` ``[heads, 2 * kernel_size - 1]``
    (or ``None``) as the bias. ``query``/``key`` ``[B, heads, L, D]``; returns ``[B, heads, L,
    kernel_size]``."""
    return na1d_qk_with_bias(query, key, rpb, kernel_size, dilation)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    """0.14's name kept by 0.15: :func:`na2d_qk_with_bias` with ``rpb`` ``[heads, 2K - 1, 2K - 1]`` (or
    ``None``). ``query``/``key`` ``[B, heads, X, Y, D]``; returns ``[B, heads, X, Y, K * K]``."""
    return na2d_qk_with_bias(query, key, rpb, kernel_size, dilation)


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    """0.15's 3-D counterpart of ``natten1dqkrpb``: :func:`na3d_qk_with_bias` with ``rpb`` ``[heads,
    2Kd - 1, 2K - 1, 2K - 1]`` (or ``None``). ``query``/``key`` ``[B, heads, X, Y, Z, D]``; returns
    ``[B, heads, X, Y, Z, Kd * K * K]``."""
    return na3d_qk_with_bias(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation)


natten1dqk = na1d_qk
natten1dav = na1d_av
natten2dqk = na2d_qk
natten2dav = na2d_av
natten3dqk = na3d_qk
natten3dav = na3d_av
