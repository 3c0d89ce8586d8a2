"""NATTEN 0.17 API (``natten_mps.compat.v017``; ``.functional`` is 0.17's ``natten.functional``).

Top level: the modules ``NeighborhoodAttention1D/2D/3D(dim, num_heads, kernel_size, dilation=1,
is_causal=False, rel_pos_bias=False, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0,
use_experimental_ops=False)`` over ``[B, *spatial, dim]`` (parameters ``qkv``, ``rpb`` with
``rel_pos_bias``, ``proj``), 0.17's probes and context settings (:mod:`natten_mps.compat._context`:
``has_fused_na()`` is True; ``use_fused_na(False)`` sends the modules down their split path), and, as
natten-mps 0.3.3's flat shim had them, the functions of :mod:`.functional` (heads-first split ops
``na*d_qk``/``na*d_av``, heads-last fused ``na*d``, the deprecated ``natten*`` names).
"""
from __future__ import annotations

from ... import checks
from .. import _context
from .._context import *  # noqa: F401,F403  (0.17's context: probes and settings)
from .._context import MemoryUsagePreference  # noqa: F401
from .._legacy import LegacyNeighborhoodAttention, has_mps  # noqa: F401
from . import functional  # noqa: F401  (natten_mps.compat.v017.functional: 0.17's natten.functional)
from .functional import (na1d, na1d_av, na1d_qk, na2d, na2d_av, na2d_qk, na3d, na3d_av, na3d_qk,  # noqa: F401
                         natten1dav, natten1dqk, natten1dqkrpb, natten2dav, natten2dqk, natten2dqkrpb, natten3dav,
                         natten3dqk, natten3dqkrpb)

__version__ = "0.17.5"

CONTEXT = ["are_deterministic_algorithms_enabled", "disable_autotuner", "disable_gemm_na", "disable_tf32",
           "disable_tiled_na", "enable_gemm_na", "enable_tf32", "enable_tiled_na", "force_flex_attention",
           "get_memory_usage_preference", "has_bfloat", "has_cuda", "has_fna", "has_fp32_gemm", "has_fp64_gemm",
           "has_fused_na", "has_gemm", "has_half", "has_tf32_gemm", "is_autotuner_enabled",
           "is_autotuner_enabled_for_backward", "is_autotuner_enabled_for_forward",
           "is_autotuner_thorough_for_backward", "is_autotuner_thorough_for_forward", "is_fna_enabled",
           "is_fused_na_enabled", "is_gemm_na_enabled", "is_kv_parallelism_in_fused_na_enabled",
           "is_memory_usage_default", "is_memory_usage_strict", "is_memory_usage_unrestricted",
           "is_tf32_in_gemm_na_enabled", "is_tiled_na_enabled", "set_memory_usage_preference", "use_autotuner",
           "use_deterministic_algorithms", "use_flex_attention", "use_fna", "use_fused_na", "use_gemm_na",
           "use_kv_parallelism_in_fused_na", "use_tf32_in_gemm_na", "use_tiled_na"]

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
           "na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av", "na1d", "na2d", "na3d",
           "natten1dqkrpb", "natten2dqkrpb", "natten3dqkrpb", "natten1dqk", "natten1dav", "natten2dqk",
           "natten2dav", "natten3dqk", "natten3dav", "has_cuda", "has_mps", "has_half", "has_bfloat",
           "has_gemm", "has_fna", "has_fused_na", "use_fused_na", "is_fused_na_enabled", "use_fna",
           "is_fna_enabled", "use_autotuner", "disable_autotuner", "use_kv_parallelism_in_fused_na",
           "use_deterministic_algorithms", "use_tiled_na", "use_gemm_na", "use_tf32_in_gemm_na",
           "set_memory_usage_preference"]


class _Module017(LegacyNeighborhoodAttention):
    rank = 0

    def __init__(self, dim, num_heads, kernel_size, dilation=1, is_causal=False, rel_pos_bias=False, qkv_bias=True,
                 qk_scale=None, attn_drop=0.0, proj_drop=0.0, use_experimental_ops=False):
        r = self.rank
        super().__init__(r, dim, num_heads, checks.as_tuple(kernel_size, r, "kernel_size"),
                         checks.as_tuple(dilation, r, "dilation"),
                         checks.as_tuple(is_causal, r, "is_causal", kind=bool),
                         rel_pos_bias, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.use_experimental_ops = bool(use_experimental_ops)

    def fused_allowed(self) -> bool:
        return _context.is_fused_na_enabled()


class NeighborhoodAttention1D(_Module017):
    """NATTEN 0.17's 1-D module over ``[B, L, dim]``."""
    rank = 1


class NeighborhoodAttention2D(_Module017):
    """NATTEN 0.17's 2-D module over ``[B, H, W, dim]``."""
    rank = 2


class NeighborhoodAttention3D(_Module017):
    """NATTEN 0.17's 3-D module over ``[B, D, H, W, dim]``."""
    rank = 3
