"""NATTEN 0.17's ``natten.functional``: heads-first split ops and heads-last fused ops.

Split ops (``[B, heads, *spatial, head_dim]``, weights ``[B, heads, *spatial, prod(kernel_size) +
N_add]``): ``na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False,
rpb=None)``, ``na1d_av(attn, value, kernel_size, dilation=1, additional_values=None,
is_causal=False)``, 2-D and 3-D likewise (``na3d_av``'s ``dilation`` has no default, as in 0.17);
ints or per-axis tuples. Scores are unscaled.

Fused ops (heads-last ``[B, *spatial, heads, head_dim]``): ``na1d(query, key, value, kernel_size,
dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None, additional_values=None,
xformers_kwargs=None)`` and 2-D/3-D; ``scale`` defaults to ``head_dim ** -0.5``; additional
keys/values ``[B, N_add, heads, head_dim]``. With ``rpb`` the weights are made explicitly (and
train). ``xformers_kwargs`` (0.17's options for its extra-token attention) choose nothing here.

Deprecated 0.15 names kept by 0.17.0-0.17.4: ``natten1dqkrpb(query, key, rpb, kernel_size,
dilation)``, ``natten1dqk``, ``natten1dav``, 2-D, 3-D (``kernel_size_d, kernel_size, dilation_d,
dilation``); the alias of 0.17.5 leaves them out, as 0.17.5 did.
"""
from __future__ import annotations

from ... import checks, functional
from .. import _legacy

__all__ = ["na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av", "na1d", "na2d", "na3d"]
DEPRECATED = ["natten1dqkrpb", "natten2dqkrpb", "natten3dqkrpb", "natten1dqk", "natten1dav", "natten2dqk",
              "natten2dav", "natten3dqk", "natten3dav"]


def na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    """1-D attention scores, heads-first (NATTEN 0.17's split op).

    ``query``/``key`` ``[B, heads, L, D]``; ``kernel_size``, ``dilation`` (default 1) and
    ``is_causal`` (default False) are ints/bools or 1-tuples; ``additional_keys`` ``[B, heads, N_add, D]``
    or ``None``; ``rpb`` ``[heads, 2K - 1]`` or ``None``. Returns the unscaled scores
    ``[B, heads, L, K + N_add]`` (plus ``rpb``): neighbours row-major over the window, then
    the additional keys; causally excluded neighbours are ``-inf``.
    Raises ``TypeError`` for a non-tensor or a bad window-argument type, ``ValueError`` for a wrong
    rank, mismatched shapes, a bad window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size *
    dilation`` larger than an axis), an ``rpb`` of the wrong shape or bad ``additional_keys``.
    """
    return _legacy.qk("na1d_qk", 1, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na2d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    """2-D attention scores, heads-first (NATTEN 0.17's split op).

    ``query``/``key`` ``[B, heads, X, Y, D]``; ``kernel_size``, ``dilation`` (default 1) and
    ``is_causal`` (default False) are ints/bools or 2-tuples; ``additional_keys`` ``[B, heads, N_add, D]``
    or ``None``; ``rpb`` ``[heads, 2Kx - 1, 2Ky - 1]`` or ``None``. Returns the unscaled scores
    ``[B, heads, X, Y, Kx * Ky + N_add]`` (plus ``rpb``): neighbours row-major over the window, then
    the additional keys; causally excluded neighbours are ``-inf``.
    Raises ``TypeError`` for a non-tensor or a bad window-argument type, ``ValueError`` for a wrong
    rank, mismatched shapes, a bad window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size *
    dilation`` larger than an axis), an ``rpb`` of the wrong shape or bad ``additional_keys``.
    """
    return _legacy.qk("na2d_qk", 2, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na3d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    """3-D attention scores, heads-first (NATTEN 0.17's split op).

    ``query``/``key`` ``[B, heads, X, Y, Z, D]``; ``kernel_size``, ``dilation`` (default 1) and
    ``is_causal`` (default False) are ints/bools or 3-tuples; ``additional_keys`` ``[B, heads, N_add, D]``
    or ``None``; ``rpb`` ``[heads, 2Kx - 1, 2Ky - 1, 2Kz - 1]`` or ``None``. Returns the unscaled scores
    ``[B, heads, X, Y, Z, Kx * Ky * Kz + N_add]`` (plus ``rpb``): neighbours row-major over the window, then
    the additional keys; causally excluded neighbours are ``-inf``.
    Raises ``TypeError`` for a non-tensor or a bad window-argument type, ``ValueError`` for a wrong
    rank, mismatched shapes, a bad window (``kernel_size < 2``, ``dilation < 1``, ``kernel_size *
    dilation`` larger than an axis), an ``rpb`` of the wrong shape or bad ``additional_keys``.
    """
    return _legacy.qk("na3d_qk", 3, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na1d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    """1-D weighted values, heads-first (NATTEN 0.17's split op).

    ``attn`` ``[B, heads, L, K + N_add]`` (weights in :func:`na1d_qk`'s order, usually its
    softmax), ``value`` ``[B, heads, L, D]``, ``additional_values`` ``[B, heads, N_add, D]`` or
    ``None``; ``kernel_size``, ``dilation`` (default 1), ``is_causal`` (default False): ints/bools or
    1-tuples. Returns ``[B, heads, L, D]``: ``sum_n attn[..., n] * value[neighbour n]`` plus the
    additional values weighted by the last ``N_add`` entries.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window, ``attn.shape[-1]`` other than ``prod(kernel_size) + N_add`` or bad ``additional_values``.
    """
    return _legacy.av("na1d_av", 1, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def na2d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    """2-D weighted values, heads-first (NATTEN 0.17's split op).

    ``attn`` ``[B, heads, X, Y, Kx * Ky + N_add]`` (weights in :func:`na2d_qk`'s order, usually its
    softmax), ``value`` ``[B, heads, X, Y, D]``, ``additional_values`` ``[B, heads, N_add, D]`` or
    ``None``; ``kernel_size``, ``dilation`` (default 1), ``is_causal`` (default False): ints/bools or
    2-tuples. Returns ``[B, heads, X, Y, D]``: ``sum_n attn[..., n] * value[neighbour n]`` plus the
    additional values weighted by the last ``N_add`` entries.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window, ``attn.shape[-1]`` other than ``prod(kernel_size) + N_add`` or bad ``additional_values``.
    """
    return _legacy.av("na2d_av", 2, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def na3d_av(attn, value, kernel_size, dilation, additional_values=None, is_causal=False):
    """3-D weighted values, heads-first (NATTEN 0.17's split op).

    ``attn`` ``[B, heads, X, Y, Z, Kx * Ky * Kz + N_add]`` (weights in :func:`na3d_qk`'s order, usually its
    softmax), ``value`` ``[B, heads, X, Y, Z, D]``, ``additional_values`` ``[B, heads, N_add, D]`` or
    ``None``; ``kernel_size``, ``dilation`` (no default, as in 0.17), ``is_causal`` (default False): ints/bools or
    3-tuples. Returns ``[B, heads, X, Y, Z, D]``: ``sum_n attn[..., n] * value[neighbour n]`` plus the
    additional values weighted by the last ``N_add`` entries.
    Raises ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank, mismatched shapes, a bad
    window, ``attn.shape[-1]`` other than ``prod(kernel_size) + N_add`` or bad ``additional_values``.
    """
    return _legacy.av("na3d_av", 3, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def _fused(rank, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys, additional_values,
           xformers_kwargs):
    name = f"na{rank}d"
    if xformers_kwargs is not None and not isinstance(xformers_kwargs, dict):
        raise TypeError(f"{name}: xformers_kwargs must be a dict or None, got {type(xformers_kwargs).__name__}")
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{name}: additional_keys and additional_values must be given together")
    if rpb is None:
        fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[rank]
        return fn(query, key, value, kernel_size, dilation=dilation, is_causal=is_causal, scale=scale,
                  additional_keys=additional_keys, additional_values=additional_values)
    # With a positional bias the weights are explicit (heads-first split ops, bias and extra tokens).
    scale = checks.check_scale(scale, query.shape[-1])
    hf = _legacy.heads_first
    extra_k = None if additional_keys is None else hf(additional_keys)
    extra_v = None if additional_values is None else hf(additional_values)
    attn = _legacy.qk(name, rank, hf(query) * scale, hf(key), kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=extra_k).softmax(-1)
    out = _legacy.av(name, rank, attn, hf(value), kernel_size, dilation, is_causal=is_causal,
                     additional_values=extra_v)
    return _legacy.heads_last(out)


def na1d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None,
         additional_values=None, xformers_kwargs=None):
    """1-D neighborhood attention, heads-last (NATTEN 0.17's fused op).

    ``query``/``key``/``value`` ``[B, L, heads, D]``; ``kernel_size``, ``dilation`` (default 1),
    ``is_causal`` (default False): ints/bools or 1-tuples; ``rpb`` ``[heads, 2K - 1]`` or ``None``
    (then the weights are made explicitly: scores * scale + rpb, softmax, weighted values);
    ``scale`` default ``D ** -0.5``; ``additional_keys``/``additional_values`` ``[B, N_add, heads, D]``,
    attended by every query. ``xformers_kwargs`` (a dict or ``None``) chooses nothing here. Returns
    ``[B, L, heads, D]``. Raises ``ValueError`` when only one of the additional tensors is given,
    ``TypeError`` for a non-dict ``xformers_kwargs``, and as :func:`natten_mps.na1d` otherwise.
    """
    return _fused(1, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                  additional_values, xformers_kwargs)


def na2d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None,
         additional_values=None, xformers_kwargs=None):
    """2-D neighborhood attention, heads-last (NATTEN 0.17's fused op).

    ``query``/``key``/``value`` ``[B, X, Y, heads, D]``; ``kernel_size``, ``dilation`` (default 1),
    ``is_causal`` (default False): ints/bools or 2-tuples; ``rpb`` ``[heads, 2Kx - 1, 2Ky - 1]`` or ``None``
    (then the weights are made explicitly: scores * scale + rpb, softmax, weighted values);
    ``scale`` default ``D ** -0.5``; ``additional_keys``/``additional_values`` ``[B, N_add, heads, D]``,
    attended by every query. ``xformers_kwargs`` (a dict or ``None``) chooses nothing here. Returns
    ``[B, X, Y, heads, D]``. Raises ``ValueError`` when only one of the additional tensors is given,
    ``TypeError`` for a non-dict ``xformers_kwargs``, and as :func:`natten_mps.na2d` otherwise.
    """
    return _fused(2, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                  additional_values, xformers_kwargs)


def na3d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None,
         additional_values=None, xformers_kwargs=None):
    """3-D neighborhood attention, heads-last (NATTEN 0.17's fused op).

    ``query``/``key``/``value`` ``[B, X, Y, Z, heads, D]``; ``kernel_size``, ``dilation`` (default 1),
    ``is_causal`` (default False): ints/bools or 3-tuples; ``rpb`` ``[heads, 2Kx - 1, 2Ky - 1, 2Kz - 1]`` or ``None``
    (then the weights are made explicitly: scores * scale + rpb, softmax, weighted values);
    ``scale`` default ``D ** -0.5``; ``additional_keys``/``additional_values`` ``[B, N_add, heads, D]``,
    attended by every query. ``xformers_kwargs`` (a dict or ``None``) chooses nothing here. Returns
    ``[B, X, Y, Z, heads, D]``. Raises ``ValueError`` when only one of the additional tensors is given,
    ``TypeError`` for a non-dict ``xformers_kwargs``, and as :func:`natten_mps.na3d` otherwise.
    """
    return _fused(3, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                  additional_values, xformers_kwargs)


# Deprecated 0.15 names: 0.17.0 to 0.17.4 kept them (0.17.5 removed them).
def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na1d_qk` with ints ``kernel_size``, ``dilation``
    and ``rpb`` ``[heads, 2K - 1]`` or ``None``. ``query``/``key`` ``[B, heads, L, D]``; returns
    ``[B, heads, L, K]``."""
    return na1d_qk(query, key, (kernel_size,), (dilation,), rpb=rpb)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na2d_qk` with a square window (ints ``kernel_size``
    ``K``, ``dilation``) and ``rpb`` ``[heads, 2K - 1, 2K - 1]`` or ``None``. ``query``/``key``
    ``[B, heads, X, Y, D]``; returns ``[B, heads, X, Y, K * K]``."""
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2, rpb=rpb)


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na3d_qk` with window ``(kernel_size_d, kernel_size,
    kernel_size)``, dilations ``(dilation_d, dilation, dilation)`` and ``rpb`` ``[heads, 2Kd - 1, 2K - 1,
    2K - 1]`` or ``None``. ``query``/``key`` ``[B, heads, X, Y, Z, D]`` (``X`` the depth); returns
    ``[B, heads, X, Y, Z, Kd * K * K]``."""
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation), rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na1d_qk` with ints ``kernel_size``, ``dilation``.
    ``query``/``key`` ``[B, heads, L, D]``; returns the unscaled scores ``[B, heads, L, K]``."""
    return na1d_qk(query, key, (kernel_size,), (dilation,))


def natten1dav(attn, value, kernel_size, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na1d_av` with ints ``kernel_size``, ``dilation``.
    ``attn`` ``[B, heads, L, K]``, ``value`` ``[B, heads, L, D]``; returns ``[B, heads, L, D]``."""
    return na1d_av(attn, value, (kernel_size,), (dilation,))


def natten2dqk(query, key, kernel_size, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na2d_qk` with a square window (ints ``kernel_size``
    ``K``, ``dilation``). ``query``/``key`` ``[B, heads, X, Y, D]``; returns ``[B, heads, X, Y, K * K]``."""
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2)


def natten2dav(attn, value, kernel_size, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na2d_av` with a square window (ints ``kernel_size``
    ``K``, ``dilation``). ``attn`` ``[B, heads, X, Y, K * K]``, ``value`` ``[B, heads, X, Y, D]``; returns
    ``[B, heads, X, Y, D]``."""
    return na2d_av(attn, value, (kernel_size,) * 2, (dilation,) * 2)


def natten3dqk(query, key, kernel_size_d, kernel_size, dilation_d, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na3d_qk` with window ``(kernel_size_d, kernel_size,
    kernel_size)`` and dilations ``(dilation_d, dilation, dilation)``. ``query``/``key`` ``[B, heads, X, Y,
    Z, D]`` (``X`` the depth); returns ``[B, heads, X, Y, Z, Kd * K * K]``."""
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))


def natten3dav(attn, value, kernel_size_d, kernel_size, dilation_d, dilation):
    """Deprecated 0.15 name (0.17.0-0.17.4): :func:`na3d_av` with window ``(kernel_size_d, kernel_size,
    kernel_size)`` and dilations ``(dilation_d, dilation, dilation)``. ``attn`` ``[B, heads, X, Y, Z,
    Kd * K * K]``, ``value`` ``[B, heads, X, Y, Z, D]``; returns ``[B, heads, X, Y, Z, D]``."""
    return na3d_av(attn, value, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))
