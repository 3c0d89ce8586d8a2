"""NATTEN 0.20 API: heads-last fused ops with stride, additional keys/values; ``attention``,
``merge_attentions``; the modules of 0.20 (those of this package).

``na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
additional_keys=None, additional_values=None, **tuning)`` and 2-D/3-D; ``attention(query, key, value,
scale=None, **tuning, return_lse=False)``; ``merge_attentions(outputs, lse_tensors,
torch_compile=True)``. ``tuning`` are 0.20's backend and tile choices for its CUDA kernels
(``backend``, ``q_tile_shape``, ``kv_tile_shape``, ``backward_*``, ``run_persistent_kernel``,
``kernel_schedule``, ``torch_compile``, ``try_fuse_additional_kv``, ``attention_kwargs``): accepted,
choosing nothing here (the results do not depend on them); 0.20's context settings
(:mod:`natten_mps.compat._context`), ``HAS_LIBNATTEN`` (True) and ``get_configs_for_*`` (no CUDA tile
configurations: empty lists). From natten-mps 0.3.3's shim: the heads-last split ops
``na*d_qk``/``na*d_av``, ``has_cuda``, ``has_mps``, ``has_fna``. ``.functional`` is 0.20's
``natten.functional``.
"""
from __future__ import annotations

from ... import nn
from ...split import na1d_av, na1d_qk, na2d_av, na2d_qk, na3d_av, na3d_qk  # noqa: F401  (natten-mps 0.3.3's shim)
from .._context import has_cuda, has_fused_na as has_fna  # noqa: F401  (natten-mps 0.3.3's shim)
from .._context import (allow_flex_compile, allow_flex_compile_backprop,  # noqa: F401
                        are_deterministic_algorithms_enabled, disable_flex_compile, disable_flex_compile_backprop,
                        get_memory_usage_preference, is_flex_compile_allowed, is_flex_compile_backprop_allowed,
                        is_kv_parallelism_in_fused_na_enabled, is_memory_usage_default, is_memory_usage_strict,
                        is_memory_usage_unrestricted, no_configs, set_memory_usage_preference,
                        use_deterministic_algorithms, use_kv_parallelism_in_fused_na)
from .._legacy import has_mps  # noqa: F401
from . import functional  # noqa: F401  (natten_mps.compat.v020.functional: 0.20's natten.functional)
from .functional import attention, merge_attentions, na1d, na2d, na3d  # noqa: F401

__version__ = "0.20.1"

# NATTEN's compiled library: this package has its own kernels, so code that asks may use the fused ops.
HAS_LIBNATTEN = True
CONFIG_QUERIES = ["get_configs_for_cutlass_fna", "get_bwd_configs_for_cutlass_fna", "get_configs_for_cutlass_fmha",
                  "get_bwd_configs_for_cutlass_fmha", "get_configs_for_cutlass_hopper_fna",
                  "get_configs_for_cutlass_hopper_fmha", "get_configs_for_cutlass_blackwell_fna",
                  "get_configs_for_cutlass_blackwell_fmha", "get_configs_for_flex_fna", "get_configs_for_flex_fmha"]
for _name in CONFIG_QUERIES:
    globals()[_name] = no_configs
del _name

NeighborhoodAttention1D = nn.NeighborhoodAttention1D
NeighborhoodAttention2D = nn.NeighborhoodAttention2D
NeighborhoodAttention3D = nn.NeighborhoodAttention3D

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions", "na1d_qk", "na1d_av", "na2d_qk", "na2d_av",
           "na3d_qk", "na3d_av", "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
           "has_cuda", "has_mps", "has_fna"]
