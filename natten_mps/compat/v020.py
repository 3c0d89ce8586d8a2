"""NATTEN 0.20 API: heads-last fused ops with stride, additional keys/values; ``attention``,
``merge_attentions``; the modules of 0.20 (those of this package).

``na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
additional_keys=None, additional_values=None, **tuning)`` and 2-D/3-D; ``attention(query, key, value,
scale=None, **tuning, return_lse=False)``; ``merge_attentions(outputs, lse_tensors,
torch_compile=True)``. ``tuning`` are 0.20's backend and tile choices for its CUDA kernels
(``backend``, ``q_tile_shape``, ``kv_tile_shape``, ``backward_*``, ``run_persistent_kernel``,
``kernel_schedule``, ``torch_compile``, ``try_fuse_additional_kv``, ``attention_kwargs``): accepted,
choosing nothing here (the results do not depend on them). From natten-mps 0.3.3's shim: the
heads-last split ops ``na*d_qk``/``na*d_av``, ``has_cuda``, ``has_mps``, ``has_fna``.
"""
from __future__ import annotations

from .. import checks, functional, nn
from ..split import na1d_av, na1d_qk, na2d_av, na2d_qk, na3d_av, na3d_qk  # noqa: F401
from ._legacy import has_cuda, has_mps  # noqa: F401

NeighborhoodAttention1D = nn.NeighborhoodAttention1D
NeighborhoodAttention2D = nn.NeighborhoodAttention2D
NeighborhoodAttention3D = nn.NeighborhoodAttention3D

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions", "na1d_qk", "na1d_av", "na2d_qk", "na2d_av",
           "na3d_qk", "na3d_av", "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
           "has_cuda", "has_mps", "has_fna"]

def _na(rank, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys, additional_values,
        tuning):
    checks.check_tuning(f"na{rank}d", tuning)
    fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[rank]
    return fn(query, key, value, kernel_size, stride=stride, dilation=dilation, is_causal=is_causal, scale=scale,
              additional_keys=additional_keys, additional_values=additional_values)


def na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
         additional_values=None, **tuning):
    return _na(1, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, tuning)


def na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
         additional_values=None, **tuning):
    return _na(2, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, tuning)


def na3d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
         additional_values=None, **tuning):
    return _na(3, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, tuning)


def attention(query, key, value, scale=None, return_lse=False, **tuning):
    checks.check_tuning("attention", tuning)
    return functional.attention(query, key, value, scale=scale, return_lse=return_lse)


def merge_attentions(outputs, lse_tensors, torch_compile=True):
    return functional.merge_attentions(outputs, lse_tensors, torch_compile)


def has_fna(device_index=None) -> bool:
    return False
