"""NATTEN 0.17 API: heads-first split ops with causal masks and ``rpb``, heads-last fused ops, modules.

Split ops (``[B, heads, *spatial, head_dim]``): ``na1d_qk(query, key, kernel_size, dilation=1,
additional_keys=None, is_causal=False, rpb=None)``, ``na1d_av(attn, value, kernel_size, dilation=1,
additional_values=None, is_causal=False)``, and 2-D/3-D (ints or tuples per axis).
Fused ops (heads-last ``[B, *spatial, heads, head_dim]``): ``na1d(query, key, value, kernel_size,
dilation=1, is_causal=False, rpb=None, scale=None)`` and 2-D/3-D; with ``rpb`` the weights are made
explicitly (0.17's fused kernels took ``rpb`` in the forward pass only; here it trains).
Deprecated 0.15 names (``natten1dqkrpb(query, key, rpb, kernel_size, dilation)``, ``natten1dqk``,
``natten1dav``, 2-D, 3-D with ``kernel_size_d``/``dilation_d``) are kept, as 0.17 kept them.

Modules: ``NeighborhoodAttention1D/2D/3D(dim, num_heads, kernel_size, dilation=1, is_causal=False,
rel_pos_bias=False, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0)``, parameters
``qkv``, ``rpb`` (with ``rel_pos_bias``), ``proj``. Settings of 0.17's CUDA kernels
(``use_fused_na``, ``use_autotuner``, ``use_kv_parallelism_in_fused_na``, ...) are accepted and set
nothing; ``is_fused_na_enabled()`` is True (the fused op is always used when it can be).
"""
from __future__ import annotations

from .. import checks, functional, split
from . import _legacy
from ._legacy import LegacyNeighborhoodAttention, has_bfloat, has_cuda, has_gemm, has_half, has_mps, no_op

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
           "na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av", "na1d", "na2d", "na3d",
           "natten1dqkrpb", "natten2dqkrpb", "natten3dqkrpb", "natten1dqk", "natten1dav", "natten2dqk",
           "natten2dav", "natten3dqk", "natten3dav", "has_cuda", "has_mps", "has_half", "has_bfloat",
           "has_gemm", "has_fna", "has_fused_na", "use_fused_na", "is_fused_na_enabled", "use_fna",
           "is_fna_enabled", "use_autotuner", "disable_autotuner", "use_kv_parallelism_in_fused_na",
           "use_deterministic_algorithms", "use_tiled_na", "use_gemm_na", "use_tf32_in_gemm_na",
           "set_memory_usage_preference"]


def na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _legacy.qk("na1d_qk", 1, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na2d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _legacy.qk("na2d_qk", 2, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na3d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _legacy.qk("na3d_qk", 3, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na1d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return _legacy.av("na1d_av", 1, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def na2d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return _legacy.av("na2d_av", 2, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def na3d_av(attn, value, kernel_size, dilation, additional_values=None, is_causal=False):
    return _legacy.av("na3d_av", 3, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def _fused(rank, query, key, value, kernel_size, dilation, is_causal, rpb, scale):
    if rpb is None:
        fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[rank]
        return fn(query, key, value, kernel_size, dilation=dilation, is_causal=is_causal, scale=scale)
    scale = checks.check_scale(scale, query.shape[-1])
    qk = {1: split.na1d_qk, 2: split.na2d_qk, 3: split.na3d_qk}[rank]
    av = {1: split.na1d_av, 2: split.na2d_av, 3: split.na3d_av}[rank]
    attn = qk(query, key, kernel_size, dilation, is_causal=is_causal, scale=scale, rpb=rpb).softmax(-1)
    return av(attn, value, kernel_size, dilation, is_causal=is_causal)


def na1d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None):
    return _fused(1, query, key, value, kernel_size, dilation, is_causal, rpb, scale)


def na2d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None):
    return _fused(2, query, key, value, kernel_size, dilation, is_causal, rpb, scale)


def na3d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None):
    return _fused(3, query, key, value, kernel_size, dilation, is_causal, rpb, scale)


def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    return na1d_qk(query, key, (kernel_size,), (dilation,), rpb=rpb)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2, rpb=rpb)


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation), rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation):
    return na1d_qk(query, key, (kernel_size,), (dilation,))


def natten1dav(attn, value, kernel_size, dilation):
    return na1d_av(attn, value, (kernel_size,), (dilation,))


def natten2dqk(query, key, kernel_size, dilation):
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2)


def natten2dav(attn, value, kernel_size, dilation):
    return na2d_av(attn, value, (kernel_size,) * 2, (dilation,) * 2)


def natten3dqk(query, key, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))


def natten3dav(attn, value, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_av(attn, value, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))


class _Module017(LegacyNeighborhoodAttention):
    rank = 0

    def __init__(self, dim, num_heads, kernel_size, dilation=1, is_causal=False, rel_pos_bias=False, qkv_bias=True,
                 qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        r = self.rank
        super().__init__(r, dim, num_heads, checks.as_tuple(kernel_size, r, "kernel_size"),
                         checks.as_tuple(dilation, r, "dilation"), checks.as_tuple(is_causal, r, "is_causal", kind=bool),
                         rel_pos_bias, qkv_bias, qk_scale, attn_drop, proj_drop)


class NeighborhoodAttention1D(_Module017):
    """NATTEN 0.17's 1-D module over ``[B, L, dim]``."""
    rank = 1


class NeighborhoodAttention2D(_Module017):
    """NATTEN 0.17's 2-D module over ``[B, H, W, dim]``."""
    rank = 2


class NeighborhoodAttention3D(_Module017):
    """NATTEN 0.17's 3-D module over ``[B, D, H, W, dim]``."""
    rank = 3


def has_fna(device_index=None) -> bool:
    return False


has_fused_na = has_fna


def is_fused_na_enabled() -> bool:
    return True


is_fna_enabled = is_fused_na_enabled
use_fused_na = use_fna = use_autotuner = disable_autotuner = use_kv_parallelism_in_fused_na = no_op
use_deterministic_algorithms = use_tiled_na = use_gemm_na = use_tf32_in_gemm_na = no_op
set_memory_usage_preference = no_op

