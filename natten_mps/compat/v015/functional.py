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
    return _legacy.qk("na1d_qk", 1, query, key, kernel_size, dilation, additional_keys=additional_keys)


def na1d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None):
    return _legacy.qk("na1d_qk_with_bias", 1, query, key, kernel_size, dilation, rpb=bias,
                      additional_keys=additional_keys)


def na1d_av(attn, value, kernel_size, dilation, additional_values=None):
    return _legacy.av("na1d_av", 1, attn, value, kernel_size, dilation, additional_values=additional_values)


def na2d_qk(query, key, kernel_size, dilation, additional_keys=None):
    return _legacy.qk("na2d_qk", 2, query, key, kernel_size, dilation, additional_keys=additional_keys)


def na2d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None):
    return _legacy.qk("na2d_qk_with_bias", 2, query, key, kernel_size, dilation, rpb=bias,
                      additional_keys=additional_keys)


def na2d_av(attn, value, kernel_size, dilation, additional_values=None):
    return _legacy.av("na2d_av", 2, attn, value, kernel_size, dilation, additional_values=additional_values)


def na3d_qk_with_bias(query, key, bias, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys=None):
    return _legacy.qk("na3d_qk_with_bias", 3, query, key, (kernel_size_d, kernel_size, kernel_size),
                      (dilation_d, dilation, dilation), rpb=bias, additional_keys=additional_keys)


def na3d_qk(query, key, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys=None):
    return na3d_qk_with_bias(query, key, None, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys)


def na3d_av(attn, value, kernel_size_d, kernel_size, dilation_d, dilation, additional_values=None):
    return _legacy.av("na3d_av", 3, attn, value, (kernel_size_d, kernel_size, kernel_size),
                      (dilation_d, dilation, dilation), additional_values=additional_values)


def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    return na1d_qk_with_bias(query, key, rpb, kernel_size, dilation)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    return na2d_qk_with_bias(query, key, rpb, kernel_size, dilation)


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk_with_bias(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation)


natten1dqk = na1d_qk
natten1dav = na1d_av
natten2dqk = na2d_qk
natten2dav = na2d_av
natten3dqk = na3d_qk
natten3dav = na3d_av
