"""NATTEN 0.21's ``natten.functional``: this package's own API, which follows 0.21.

``na1d/na2d/na3d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
additional_keys=None, additional_values=None, return_lse=False, **tuning)`` over heads-last ``[B,
*spatial, heads, head_dim]``; ``attention(query, key, value, is_causal=False, scale=None,
return_lse=False, **tuning)``; ``merge_attentions(outputs, lse_tensors, torch_compile=True,
use_autograd_fix=True)``. The objects are :mod:`natten_mps.functional`'s (not wrappers).
0.21's variable-length ``attention`` arguments (``seqlens_Q``, ``cumulative_seqlen_Q``, ...) are not
accepted (``TypeError``); ``natten_mps.na*d_varlen`` cover variable-length NA.
"""
from __future__ import annotations

from ...functional import attention, merge_attentions, na1d, na2d, na3d  # noqa: F401

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions"]
