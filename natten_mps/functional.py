"""Public functional API, signature-compatible with upstream NATTEN 0.21.

All tensors are heads-last: ``query`` ``[batch, *spatial, heads, head_dim]``, ``key`` ``[batch, *spatial,
heads_kv, head_dim]``, ``value`` ``[batch, *spatial, heads_kv, head_dim_v]``; outputs are
``[batch, *spatial, heads, head_dim_v]`` in the input dtype and, with ``return_lse=True``, the
log-sum-exp ``[batch, *spatial, heads]`` (float32, natural log) of the attention scores.

Under ``torch.autocast`` the functions follow SDPA's rule: floating inputs are cast to the autocast
dtype of their device (mixed input dtypes are then accepted) and the output has that dtype.

The neighborhood rule (kernel size, stride, dilation, causal, borders) is written out in
:mod:`natten_mps.semantics`. ``heads`` must be a multiple of ``heads_kv`` (GQA/MQA); K/V heads are
shared by consecutive query heads and never repeated in memory.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import checks, ops
from .autocast import autocast_inputs
from .semantics import is_full_attention

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions"]


# Checked arguments per call signature (see checks.SignatureCache): the checks run on a signature's
# first call; later calls of that signature reuse their results.
_NA_CHECKED = checks.SignatureCache()


def _na_signature(rank, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values):
    """The cache key of a call, or None when it must be checked in full: tensors by type, shape,
    dtype and device; other arguments by type and value (see checks.arg_key)."""
    if torch.compiler.is_compiling():     # traced once; the graph holds no Python checks anyway
        return None
    try:
        sig = (rank, type(query), query.shape, query.dtype, query.device, type(key), key.shape, key.dtype, key.device,
               type(value), value.shape, value.dtype, value.device,
               checks.window_key(kernel_size), checks.window_key(stride), checks.window_key(dilation),
               checks.window_key(is_causal), type(scale), scale)
        if additional_keys is not None or additional_values is not None:
            sig += (checks.tensor_key(additional_keys), checks.tensor_key(additional_values))
    except (AttributeError, TypeError):   # not tensors: checked in full (unhashable keys: see SignatureCache)
        return None
    return sig


def _check_na(rank, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
              additional_values):
    """Every check of a neighborhood-attention call; returns what the op needs:
    ``(full_attention, kernel_size, stride, dilation, is_causal, scale, heads)`` (window args as lists)."""
    heads, heads_kv = checks.check_qkv(query, key, value, rank)
    spatial, ks, st, dil, causal = checks.check_na_params(query, key, kernel_size, stride, dilation,
                                                          is_causal, rank)
    checks.check_additional_kv(query, additional_keys, additional_values, heads_kv)
    scale = checks.check_scale(scale, query.shape[-1])
    return is_full_attention(spatial, ks, causal), list(ks), list(st), list(dil), list(causal), scale, heads


def _neighborhood_attention(rank, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                            additional_keys, additional_values, return_lse):
    query, key, value, additional_keys, additional_values = autocast_inputs(
        query, key, value, additional_keys, additional_values)
    args = (rank, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
            additional_values)
    sig = _na_signature(*args)
    checked = None if sig is None else _NA_CHECKED.get(sig)
    if checked is None:
        checked = _check_na(*args)
        if sig is not None:
            _NA_CHECKED.put(sig, checked)
    full, ks, st, dil, causal, scale, heads = checked
    B = query.shape[0]
    if full:
        # FMHA fast path: the window is the whole input.
        flat = lambda t: t.reshape(B, -1, t.shape[-2], t.shape[-1])  # noqa: E731
        out, lse = ops.dense_attention(flat(query), flat(key), flat(value), False, scale)
        out = out.reshape(query.shape[:-1] + (value.shape[-1],))
        lse = lse.reshape(query.shape[:-1])
    elif additional_keys is not None:
        # one op: on Metal the additional keys ride in the NA kernel's dispatch (forward and backward)
        out, lse = ops.neighborhood_attention_extra(query, key, value, additional_keys, additional_values, ks,
                                                    st, dil, causal, scale)
        return (out, lse) if return_lse else out
    else:
        out, lse = ops.neighborhood_attention(query, key, value, ks, st, dil, causal, scale)
    if additional_keys is not None:
        q_flat = query.reshape(B, -1, heads, query.shape[-1])
        extra_out, extra_lse = ops.dense_attention(q_flat, additional_keys, additional_values, False, scale)
        out, lse = merge_attentions(
            [out, extra_out.reshape(out.shape)], [lse, extra_lse.reshape(lse.shape)])
    return (out, lse) if return_lse else out


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1, dilation=1, is_causal=False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False, **tuning):
    """1-D neighborhood attention. ``query`` ``[B, L, H, D]``; ints or 1-tuples for the window args.

    Args:
        kernel_size: keys per query (>= 2; ``kernel_size * dilation <= L``).
        stride: queries per shared window (``1 <= stride <= kernel_size``); output keeps shape ``L``.
        dilation: gap between attended keys; splits the axis into ``dilation`` interleaved groups.
        is_causal: attend only to keys at or before the query.
        scale: score scale, default ``head_dim ** -0.5``.
        additional_keys / additional_values: ``[B, N_extra, heads_kv, D|Dv]`` tokens every query
            attends to in addition to its neighborhood (merged exactly by log-sum-exp).
        return_lse: also return the log-sum-exp ``[B, L, H]``.
        **tuning: upstream NATTEN's kernel choices (``backend``, ``q_tile_shape``, ``kv_tile_shape``,
            ``backward_*``, ``run_persistent_kernel``, ``kernel_schedule``, ``torch_compile``,
            ``attention_kwargs``, ...), accepted for compatibility; they choose nothing here. Any
            other keyword raises ``TypeError``.
    """
    checks.check_tuning("na1d", tuning)
    return _neighborhood_attention(1, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                                   additional_keys, additional_values, return_lse)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1, dilation=1, is_causal=False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False, **tuning):
    """2-D neighborhood attention. ``query`` ``[B, X, Y, H, D]``; window args are ints or 2-tuples.

    Additional keys/values are ``[B, N_extra, heads_kv, D|Dv]``. See :func:`na1d` for the arguments.
    """
    checks.check_tuning("na2d", tuning)
    return _neighborhood_attention(2, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                                   additional_keys, additional_values, return_lse)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1, dilation=1, is_causal=False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False, **tuning):
    """3-D neighborhood attention. ``query`` ``[B, X, Y, Z, H, D]``; window args are ints or 3-tuples.

    Additional keys/values are ``[B, N_extra, heads_kv, D|Dv]``. See :func:`na1d` for the arguments.
    """
    checks.check_tuning("na3d", tuning)
    return _neighborhood_attention(3, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                                   additional_keys, additional_values, return_lse)


def attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
              scale: Optional[float] = None, return_lse: bool = False, **tuning):
    """Dense attention. ``query`` ``[B, Lq, H, D]``, ``key``/``value`` ``[B, Lk, Hkv, D|Dv]``.

    ``is_causal``: query ``i`` sees keys ``j <= i`` (SDPA's top-left alignment when ``Lq != Lk``). Returns ``[B, Lq, H, Dv]`` (and the LSE ``[B, Lq, H]``).
    Upstream's kernel choices (``backend``, tile sizes, ...) are accepted and choose nothing; its varlen
    arguments (``seqlens_Q``, ``cumulative_seqlen_Q``, ...) are refused with a ``ValueError``.
    """
    varlen = [n for n in ("seqlens_Q", "seqlens_KV", "cumulative_seqlen_Q", "cumulative_seqlen_KV", "max_seqlen_Q",
                          "max_seqlen_KV") if tuning.pop(n, None) is not None]
    if varlen:
        raise ValueError(f"attention: upstream's varlen arguments {varlen} are not supported; run each sequence "
                         f"separately (or use sage_mps.sageattn_varlen)")
    checks.check_tuning("attention", tuning)
    query, key, value = autocast_inputs(query, key, value)
    names = ("query", "key", "value")
    for t, n in zip((query, key, value), names):
        checks.check_tensor(t, n)
        if t.dim() != 4:
            raise ValueError(f"{n} must be a 4-D tensor [batch, seqlen, heads, head_dim], got shape {tuple(t.shape)}")
    checks.check_same((query, key, value), names, "dtype")
    checks.check_same((query, key, value), names, "device")
    if key.shape[:3] != value.shape[:3]:
        raise ValueError(f"key and value must agree on [batch, seqlen, heads], got {tuple(key.shape)} and {tuple(value.shape)}")
    if query.shape[0] != key.shape[0] or query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must agree on batch and head_dim")
    if key.shape[2] < 1 or query.shape[2] % key.shape[2] != 0:
        raise ValueError(f"query heads ({query.shape[2]}) must be a multiple of key/value heads ({key.shape[2]})")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
    scale = checks.check_scale(scale, query.shape[-1])
    out, lse = ops.dense_attention(query, key, value, is_causal, scale)
    return (out, lse) if return_lse else out


def merge_attentions(outputs: Sequence[Tensor], lse_tensors: Sequence[Tensor], torch_compile: bool = True,
                     use_autograd_fix: bool = True) -> Tuple[Tensor, Tensor]:
    """Merge attentions over disjoint key sets into the attention over their union.

    ``outputs[i]`` is ``[B, *spatial, H, Dv]`` and ``lse_tensors[i]`` ``[B, *spatial, H]``. Returns
    ``(output, lse)`` with ``lse = logsumexp_i(lse_i)`` and ``output = sum_i exp(lse_i - lse) * output_i``;
    differentiable with respect to every output and every LSE. ``torch_compile`` and
    ``use_autograd_fix`` (upstream's switches for its own implementation) are accepted and change nothing.
    """
    if not isinstance(outputs, (list, tuple)) or not isinstance(lse_tensors, (list, tuple)):
        raise TypeError("outputs and lse_tensors must be lists of tensors")
    if len(outputs) < 2:
        raise ValueError(f"merge_attentions needs at least two outputs, got {len(outputs)}")
    if len(outputs) != len(lse_tensors):
        raise ValueError(f"the number of outputs and LSE tensors must match, got {len(outputs)} outputs and "
                         f"{len(lse_tensors)} LSE tensors")
    ref = outputs[0]
    for i, (o, l) in enumerate(zip(outputs, lse_tensors)):
        if not isinstance(o, Tensor) or not isinstance(l, Tensor):
            raise TypeError(f"outputs[{i}] and lse_tensors[{i}] must be tensors")
        if o.shape != ref.shape:
            raise ValueError(f"outputs[{i}] has shape {tuple(o.shape)}, expected {tuple(ref.shape)}")
        if o.dtype != ref.dtype:
            raise TypeError(f"outputs[{i}] has dtype {o.dtype}, expected {ref.dtype}")
        if l.shape != ref.shape[:-1]:
            raise ValueError(f"lse_tensors[{i}] has shape {tuple(l.shape)}, expected {tuple(ref.shape[:-1])}")
        if o.device != ref.device or l.device != ref.device:
            raise ValueError(f"outputs[{i}]/lse_tensors[{i}] must be on {ref.device}")
    acc_dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    lses = torch.stack([l.to(acc_dtype) for l in lse_tensors])
    lse = torch.logsumexp(lses, dim=0)
    weights = torch.exp(lses - lse.unsqueeze(0)).unsqueeze(-1)
    out = sum(w * o.to(acc_dtype) for w, o in zip(weights, outputs))
    return out.to(ref.dtype), lse.to(lse_tensors[0].dtype)


# The split ops (scores, then weighted values) live in their own module; exported here too, where
# natten-mps has them.
from .split import na1d_av, na1d_qk, na2d_av, na2d_qk, na3d_av, na3d_qk  # noqa: E402,F401
from .varlen import na1d_varlen, na2d_varlen, na3d_varlen  # noqa: E402,F401
