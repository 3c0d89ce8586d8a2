"""Variable-length neighborhood attention: a padded batch whose samples have their own extents.

``query``/``key``/``value`` are padded to common extents, ``[B, *L_max, heads, head_dim]`` (heads-last,
as :func:`natten_mps.na1d`); sample ``b`` occupies the leading ``seq_lens[b]`` positions (1-D) or the
leading ``spatial_sizes[b]`` box (2-D/3-D). Each sample attends exactly as :func:`natten_mps.na1d`
(``na2d``, ``na3d``) would on its own unpadded tensors: windows are clamped to the sample's extents,
padding is never attended, and the output (and every gradient) is zero at padding positions.

Signatures follow natten-mps 0.3.3 (``na1d_varlen(q, k, v, seq_lens, kernel_size, dilation=1,
scale=None)``), plus keyword-only ``stride`` and ``is_causal`` with upstream NATTEN's meaning. As in
upstream NATTEN (and unlike natten-mps, which asks only ``extent >= kernel_size``), every sample needs
``kernel_size * dilation <= extent`` on every axis. GQA/MQA as in the fixed-size functions.

On Metal the whole padded batch is one launch per pass (the per-sample extents travel to the
kernels with the geometry); elsewhere samples of equal extents run together on PyTorch ops.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import checks, ops
from .autocast import autocast_inputs

__all__ = ["na1d_varlen", "na2d_varlen", "na3d_varlen"]

_INT_DTYPES = (torch.int32, torch.int64)


def check_sizes(sizes, name: str, batch: int, max_extents, kernel_size, dilation, rank: int) -> Tensor:
    """``sizes`` as an int tensor ``[B, rank]``; every entry in ``[kernel_size * dilation, L_max]``."""
    if not isinstance(sizes, Tensor):
        raise TypeError(f"{name} must be an int32/int64 tensor, got {type(sizes).__name__}")
    if sizes.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {sizes.dtype}")
    expected = (batch,) if rank == 1 and name == "seq_lens" else (batch, rank)
    if tuple(sizes.shape) != expected:
        raise ValueError(f"{name} must have shape {list(expected)} (one {'length' if rank == 1 else 'extent row'} "
                         f"per sample), got shape {tuple(sizes.shape)}")
    sizes = sizes.reshape(batch, rank)
    if torch.compiler.is_compiling():
        return sizes                 # value checks read the tensor; a traced graph skips them
    low, high = torch.stack(torch.aminmax(sizes, dim=0)).tolist() if batch else ([], [])
    for ax in range(rank if batch else 0):
        need = kernel_size[ax] * dilation[ax]
        if low[ax] < need:
            raise ValueError(f"every {name}[:, {ax}] must be >= kernel_size * dilation = {need} "
                             f"(kernel_size={kernel_size}, dilation={dilation}), got min {low[ax]}"
                             if rank > 1 else
                             f"All seq_lens must be >= kernel_size * dilation = {need} (kernel_size={kernel_size}, "
                             f"dilation={dilation}), but min(seq_lens)={low[ax]}")
        if high[ax] > max_extents[ax]:
            raise ValueError(f"every {name}[:, {ax}] must be <= the padded extent max_spatial[{ax}] = {max_extents[ax]}, got max "
                             f"{high[ax]}" if rank > 1 else
                             f"All seq_lens must be <= L_max ({max_extents[ax]}), but max(seq_lens)={high[ax]}")
    return sizes


def _varlen(rank, name, query, key, value, sizes, kernel_size, dilation, scale, stride, is_causal):
    query, key, value = autocast_inputs(query, key, value)
    # the checks of q, k, v and the window arguments are kept per signature; ``sizes`` is read every call
    sig = None
    if not torch.compiler.is_compiling():
        sig = (rank,) + tuple(map(checks.tensor_key, (query, key, value))) + tuple(
            map(checks.arg_key, (kernel_size, stride, dilation, is_causal, scale)))
        if False in sig or None in sig:
            sig = None
    checked = None if sig is None else _CHECKED.get(sig)
    if checked is None:
        checks.check_qkv(query, key, value, rank)
        spatial, ks, st, dil, causal = checks.check_na_params(query, key, kernel_size, stride, dilation, is_causal,
                                                              rank)
        sizes = check_sizes(sizes, name, query.shape[0], spatial, ks, dil, rank)
        checked = (spatial, ks, dil, [list(ks), list(st), list(dil), list(causal)],
                   checks.check_scale(scale, query.shape[-1]))
        if sig is not None:
            _CHECKED.put(sig, checked)
    else:
        sizes = check_sizes(sizes, name, query.shape[0], checked[0], checked[1], checked[2], rank)
    spatial, ks, dil, window, scale = checked
    if sizes.device != query.device:
        sizes = sizes.to(query.device)
    out, _ = ops.neighborhood_attention_varlen(query, key, value, sizes, *window, scale)
    return out


_CHECKED = checks.SignatureCache()


def na1d_varlen(query: Tensor, key: Tensor, value: Tensor, seq_lens: Tensor, kernel_size, dilation=1,
                scale: Optional[float] = None, *, stride=1, is_causal=False) -> Tensor:
    """1-D varlen neighborhood attention.

    Args:
        query, key, value: ``[B, L_max, heads, head_dim]`` (key/value may have fewer heads: GQA).
        seq_lens: ``[B]`` int32/int64, the length of each sample (``kernel_size * dilation <=
            seq_lens[b] <= L_max``); any device.
        kernel_size, dilation, scale, stride, is_causal: as :func:`natten_mps.na1d`.

    Returns:
        ``[B, L_max, heads, head_dim_v]``, zero at positions ``>= seq_lens[b]``.
    """
    return _varlen(1, "seq_lens", query, key, value, seq_lens, kernel_size, dilation, scale, stride, is_causal)


def na2d_varlen(query: Tensor, key: Tensor, value: Tensor, spatial_sizes: Tensor, kernel_size, dilation=1,
                scale: Optional[float] = None, *, stride=1, is_causal=False) -> Tensor:
    """2-D varlen neighborhood attention: ``query`` ``[B, H_max, W_max, heads, head_dim]``,
    ``spatial_sizes`` ``[B, 2]`` int (``(H_b, W_b)``). Zero outside each sample's ``H_b x W_b`` box.
    See :func:`na1d_varlen`."""
    return _varlen(2, "spatial_sizes", query, key, value, spatial_sizes, kernel_size, dilation, scale, stride,
                   is_causal)


def na3d_varlen(query: Tensor, key: Tensor, value: Tensor, spatial_sizes: Tensor, kernel_size, dilation=1,
                scale: Optional[float] = None, *, stride=1, is_causal=False) -> Tensor:
    """3-D varlen neighborhood attention: ``query`` ``[B, D_max, H_max, W_max, heads, head_dim]``,
    ``spatial_sizes`` ``[B, 3]`` int (``(D_b, H_b, W_b)``). See :func:`na1d_varlen`."""
    return _varlen(3, "spatial_sizes", query, key, value, spatial_sizes, kernel_size, dilation, scale, stride,
                   is_causal)
