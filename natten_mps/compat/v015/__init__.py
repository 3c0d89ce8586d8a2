"""NATTEN 0.15 API: heads-first split ops (1-D, 2-D, 3-D) with biases and additional tokens; modules.

Functional (``[B, heads, *spatial, head_dim]``; weights ``[B, heads, *spatial, K^rank + N_add]``):
``na1d_qk(query, key, kernel_size, dilation, additional_keys=None)``,
``na1d_qk_with_bias(query, key, bias, kernel_size, dilation, additional_keys=None)``,
``na1d_av(attn, value, kernel_size, dilation, additional_values=None)``, the same for 2-D; 3-D takes
``kernel_size_d, kernel_size, dilation_d, dilation`` (depth first, square in H x W). Additional
keys/values are ``[B, heads, N_add, head_dim]``; their weights follow the neighbourhood's. The 0.14
names (``natten1dqkrpb``, ``natten1dqk``, ``natten1dav``, 2-D and 3-D) are aliases, as in 0.15.

Modules: ``NeighborhoodAttention1D/2D`` as 0.14; ``NeighborhoodAttention3D(dim, num_heads,
kernel_size, kernel_size_d=None, dilation=1, dilation_d=None, bias=True, qkv_bias=True,
qk_scale=None, attn_drop=0.0, proj_drop=0.0)`` (pads H and W up to the window, as 0.15 did).

Also: 0.15's feature queries (``has_cuda``: a CUDA GPU is visible, this package then runs there on
PyTorch ops; ``has_half``/``has_bfloat``: True; ``has_gemm`` and the GEMM/TF32 queries: False, there
are no GEMM kernels) and its settings (``enable_tiled_na`` ...: accepted, nothing to set). From
natten-mps 0.3.3's shim: the fused ``na1d/na2d/na3d`` (heads-last, see :mod:`.v017`), ``has_mps``,
``has_fna``.
"""
from __future__ import annotations

from .._context import has_fused_na as has_fna  # noqa: F401  (natten-mps 0.3.3's shim had it)
from .._legacy import LegacyNeighborhoodAttention, has_mps, odd_kernel  # noqa: F401
from ..v014 import NeighborhoodAttention1D, NeighborhoodAttention2D, _FlopHandler, add_natten_handle  # noqa: F401
from ..v017.functional import na1d, na2d, na3d  # noqa: F401  (natten-mps 0.3.3's shim had them)
from . import functional  # noqa: F401  (natten_mps.compat.v015.functional: 0.15's natten.functional)
from .functional import *  # noqa: F401,F403
from .functional import (disable_gemm_na, disable_tf32, disable_tiled_na, enable_gemm_na, enable_tf32,  # noqa: F401
                         enable_tiled_na, has_bfloat, has_cuda, has_fp32_gemm, has_fp64_gemm, has_gemm, has_half,
                         has_tf32_gemm)

__version__ = "0.15.1"

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
           "na1d_qk", "na1d_qk_with_bias", "na1d_av", "na2d_qk", "na2d_qk_with_bias", "na2d_av",
           "na3d_qk", "na3d_qk_with_bias", "na3d_av", "natten1dqkrpb", "natten1dqk", "natten1dav",
           "natten2dqkrpb", "natten2dqk", "natten2dav", "natten3dqkrpb", "natten3dqk", "natten3dav",
           "na1d", "na2d", "na3d", "has_cuda", "has_mps", "has_half", "has_bfloat", "has_gemm", "has_fna",
           "has_tf32_gemm", "has_fp32_gemm", "has_fp64_gemm", "enable_tf32", "disable_tf32",
           "enable_tiled_na", "disable_tiled_na", "enable_gemm_na", "disable_gemm_na",
           "add_natten_handle", "_FlopHandler"]


class NeighborhoodAttention3D(LegacyNeighborhoodAttention):
    """NATTEN 0.15's 3-D module over ``[B, D, H, W, dim]``."""

    def __init__(self, dim, num_heads, kernel_size, kernel_size_d=None, dilation=1, dilation_d=None, bias=True,
                 qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        k = odd_kernel(kernel_size)
        kd = odd_kernel(kernel_size_d or kernel_size, "kernel_size_d")
        d = dilation or 1
        dd = dilation_d or d
        super().__init__(3, dim, num_heads, (kd, k, k), (dd, d, d), (False,) * 3, bias, qkv_bias, qk_scale,
                         attn_drop, proj_drop, pad_axes=(1, 2))
