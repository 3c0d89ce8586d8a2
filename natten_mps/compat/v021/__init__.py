"""NATTEN 0.21 API (``natten_mps.compat.v021``; ``.functional`` is 0.21's ``natten.functional``).

0.21's top level is 0.20's (:mod:`..v020`: context settings, ``HAS_LIBNATTEN``, ``get_configs_for_*``,
the modules of this package) with 0.21's functions, which are this package's own
(:mod:`natten_mps.functional`: ``return_lse`` on the NA ops, ``is_causal`` on ``attention``), and
0.21's further ``get_*configs_for_cutlass_*`` queries (empty lists here).
"""
from __future__ import annotations

from ... import nn
from .._context import (allow_flex_compile, allow_flex_compile_backprop,  # noqa: F401
                        are_deterministic_algorithms_enabled, disable_flex_compile, disable_flex_compile_backprop,
                        get_memory_usage_preference, is_flex_compile_allowed, is_flex_compile_backprop_allowed,
                        is_kv_parallelism_in_fused_na_enabled, is_memory_usage_default, is_memory_usage_strict,
                        is_memory_usage_unrestricted, no_configs, set_memory_usage_preference,
                        use_deterministic_algorithms, use_kv_parallelism_in_fused_na)
from ..v020 import CONFIG_QUERIES as _V020_QUERIES, HAS_LIBNATTEN  # noqa: F401
from . import functional  # noqa: F401  (natten_mps.compat.v021.functional: 0.21's natten.functional)
from .functional import attention, merge_attentions, na1d, na2d, na3d  # noqa: F401

__version__ = "0.21.7"

NeighborhoodAttention1D = nn.NeighborhoodAttention1D
NeighborhoodAttention2D = nn.NeighborhoodAttention2D
NeighborhoodAttention3D = nn.NeighborhoodAttention3D

CONFIG_QUERIES = _V020_QUERIES + ["get_bwd_configs_for_cutlass_hopper_fna", "get_bwd_configs_for_cutlass_hopper_fmha",
                                  "get_bwd_configs_for_cutlass_blackwell_fna",
                                  "get_bwd_configs_for_cutlass_blackwell_fmha"]
for _name in CONFIG_QUERIES:
    globals()[_name] = no_configs
del _name
