"""Varlen neighborhood attention on PyTorch ops (CPU, CUDA, and the fallback elsewhere).

A padded batch ``q`` ``[B, *L_max, H, D]`` whose sample ``b`` occupies the leading ``sizes[b]``
positions of every axis (``sizes`` ``[B, rank]`` int). Samples of equal extents are gathered and run
together through :mod:`.pure`'s neighborhood attention on their own extents, so the loop is over
distinct extents, not over the batch. Padding positions come out as zeros (output, LSE, gradients).
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch

from . import pure


def sample_groups(sizes: torch.Tensor) -> Iterator[Tuple[Tuple[int, ...], torch.Tensor]]:
    """(extents, sample indices) for each distinct row of ``sizes`` (one host read of ``sizes``)."""
    rows = sizes.detach().to("cpu", torch.int64)
    distinct, which = torch.unique(rows, dim=0, return_inverse=True)
    for g, extent in enumerate(distinct.tolist()):
        yield tuple(extent), torch.nonzero(which == g).flatten()


def _region(index: torch.Tensor, extent, batch: int, device):
    """Indexing tuple for samples ``index`` restricted to ``extent`` (plain slices when it is all)."""
    spans = tuple(slice(0, e) for e in extent)
    if index.numel() == batch:
        return (slice(None),) + spans
    return (index.to(device),) + spans


def na_varlen_forward(q, k, v, sizes, kernel_size: List[int], stride: List[int], dilation: List[int],
                      is_causal: List[bool], scale: float):
    """-> (out ``[B, *L_max, H, Dv]``, lse ``[B, *L_max, H]``), zeros at padding positions."""
    out = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    lse = q.new_zeros(q.shape[:-1], dtype=pure.lse_dtype(q.dtype))
    for extent, index in sample_groups(sizes):
        r = _region(index, extent, q.shape[0], q.device)
        o, l = pure.na_forward(q[r], k[r], v[r], kernel_size, stride, dilation, is_causal, scale)
        out[r] = o
        lse[r] = l
    return out, lse


def na_varlen_backward(dout, dlse, q, k, v, sizes, out, lse, kernel_size, stride, dilation, is_causal, scale):
    """Gradients of :func:`na_varlen_forward` -> (dq, dk, dv, None); zeros at padding positions."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for extent, index in sample_groups(sizes):
        r = _region(index, extent, q.shape[0], q.device)
        g = pure.na_backward(dout[r], None if dlse is None else dlse[r], q[r], k[r], v[r], out[r], lse[r],
                             kernel_size, stride, dilation, is_causal, scale)
        dq[r], dk[r], dv[r] = g
    return dq, dk, dv, None
