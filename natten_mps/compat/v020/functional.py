"""NATTEN 0.20's ``natten.functional``: heads-last fused ops, ``attention``, ``merge_attentions``.

``na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
additional_keys=None, additional_values=None, **tuning)`` and 2-D/3-D over ``[B, *spatial, heads,
head_dim]``; ``attention(query, key, value, scale=None, return_lse=False, **tuning)`` over ``[B,
tokens, heads, head_dim]``; ``merge_attentions(outputs, lse_tensors, torch_compile=True)``.
``tuning`` are 0.20's backend and tile choices for its CUDA kernels (``backend``, ``q_tile_shape``,
``kv_tile_shape``, ``backward_*``, ``run_persistent_kernel``, ``kernel_schedule``, ``torch_compile``,
``try_fuse_additional_kv``, ``attention_kwargs``): accepted, choosing nothing here; unknown keywords
raise ``TypeError``. 0.20 had no split ops (0.21 neither).
"""
from __future__ import annotations

from ... import checks, functional

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions"]


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
