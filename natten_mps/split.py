"""Split neighborhood-attention ops: ``na{1,2,3}d_qk`` (scores) and ``na{1,2,3}d_av`` (weighted values).

``na1d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None, rpb=None)``
returns ``[B, *spatial, heads, prod(kernel_size)]``: entry ``n`` of a query is its ``n``-th neighbour,
neighbours in row-major order over the axes. On each axis, in the query's dilation group, neighbour
``n`` is the key at group coordinate ``lo + n``, where ``[lo, lo + K - 1]`` is the query's window
(NATTEN's rule, :mod:`natten_mps.semantics`). Causal axes use the same key order as
natten-mps and older NATTEN: ``leader - (K - 1) + n``, the last entry being the query itself at stride 1;
positions before the sequence start (or after the query) are masked with ``-inf``. ``scale`` multiplies
the scores (``None``: unscaled, as the historical split ops returned them); ``rpb``, the relative
positional bias of the historical APIs (``[heads, 2K_0 - 1, ...]``), adds
``rpb[h, K - 1 + (key - query)]`` per axis (group coordinates).

``na1d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False)`` returns
``sum_n attn[..., n] * value[neighbour n]`` (masked entries contribute nothing). GQA: ``heads`` may
be a multiple of the key/value heads. ``softmax(qk * scale) -> av`` equals ``na{1,2,3}d``.

On Metal (MPS, or the emulator / MSL -> CUDA back end when selected) the weights and the weighted
values come from the kernels of ``shaders/natten/split.metal`` through the registered ops
``natten_mps::split_qk`` / ``split_av`` (forward and backward, :mod:`natten_mps.ops`); ``scale`` and
``rpb`` are then applied on PyTorch ops. Elsewhere they run on PyTorch ops (gathered neighbourhoods,
autograd through them).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import backend, checks, ops
from .backends import metal_split
from .semantics import window_bounds

__all__ = ["na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av"]


def _axis_table(n: int, kernel: int, stride: int, dilation: int, causal: bool, device):
    """Per position of one axis: its K neighbours (positions) and which exist, [n, K] each, and the
    group-coordinate offsets key - query [n, K] (for rpb)."""
    pos = torch.arange(n)
    group, coord = pos % dilation, pos // dilation
    glen = torch.tensor([len(range(g, n, dilation)) for g in range(dilation)])[group]
    keys = torch.empty(n, kernel, dtype=torch.long)
    for g in range(min(dilation, n)):
        sel = group == g
        c = coord[sel]
        lo, _ = window_bounds(c, int(glen[sel][0]), kernel, stride, causal)
        if causal:
            leader = torch.clamp((c // stride) * stride + stride - 1, max=int(glen[sel][0]) - 1)
            lo = leader - (kernel - 1)
        keys[sel] = lo[:, None] + torch.arange(kernel)[None, :]
    valid = (keys >= 0) & (keys < glen[:, None])
    if causal:
        valid &= keys <= coord[:, None]
    offsets = keys - coord[:, None]
    spatial = keys.clamp(min=0) * dilation + group[:, None]
    spatial = torch.where(valid, spatial, torch.zeros_like(spatial))
    return spatial.to(device), valid.to(device), offsets.to(device)


def _neighbourhood(spatial, ks, st, dil, causal, device):
    """Flat key token per (query token, neighbour) [T, Kvol], validity [T, Kvol], per-axis offsets
    (kept per signature: callers only read them)."""
    key = (tuple(spatial), tuple(ks), tuple(st), tuple(dil), tuple(bool(c) for c in causal), torch.device(device))
    tables = _TABLES.get(key)
    if tables is None:
        tables = _neighbourhood_tables(*key)
        _TABLES.put(key, tables)
    return tables


_TABLES = checks.SignatureCache(64)


def _neighbourhood_tables(spatial, ks, st, dil, causal, device):
    tok = torch.zeros(1, 1, dtype=torch.long, device=device)
    ok = torch.ones(1, 1, dtype=torch.bool, device=device)
    offs = []
    for ax, n in enumerate(spatial):
        sp, va, of = _axis_table(n, ks[ax], st[ax], dil[ax], causal[ax], device)
        tok = (tok[:, None, :, None] * n + sp[None, :, None, :]).reshape(tok.shape[0] * n, -1)
        ok = (ok[:, None, :, None] & va[None, :, None, :]).reshape(ok.shape[0] * n, -1)
        offs.append(of)
    return tok, ok, offs


def _rpb_bias(rpb: Tensor, offs, ks, spatial) -> Tensor:
    """[H, T, Kvol] bias: rpb[h, K_0 - 1 + off_0, K_1 - 1 + off_1, ...]."""
    rank = len(ks)
    index = []
    for ax in range(rank):
        idx = (offs[ax] + ks[ax] - 1).clamp(0, 2 * ks[ax] - 2)            # [n_ax, K_ax]
        shape = [1] * (2 * rank)
        shape[ax], shape[rank + ax] = spatial[ax], ks[ax]
        index.append(idx.reshape(shape))
    return rpb[(slice(None),) + tuple(index)].reshape(rpb.shape[0], -1, int(torch.tensor(ks).prod()))


def _check_split(name, rank, a, b, kernel_size, dilation, stride, is_causal, a_name, b_name, same_dim):
    """The split ops' checks; results kept per signature (see checks.SignatureCache)."""
    sig = None
    if not torch.compiler.is_compiling():
        sig = (name, checks.tensor_key(a), checks.tensor_key(b)) + tuple(
            map(checks.arg_key, (kernel_size, dilation, stride, is_causal)))
        if False in sig or None in sig:
            sig = None
    checked = None if sig is None else _CHECKED.get(sig)
    if checked is None:
        checked = _check_split_args(name, rank, a, b, kernel_size, dilation, stride, is_causal, a_name, b_name,
                                    same_dim)
        if sig is not None:
            _CHECKED.put(sig, checked)
    return checked


_CHECKED = checks.SignatureCache()


def _check_split_args(name, rank, a, b, kernel_size, dilation, stride, is_causal, a_name, b_name, same_dim):
    checks.check_tensor(a, a_name)
    checks.check_tensor(b, b_name)
    for t, n in ((a, a_name), (b, b_name)):
        if t.dim() != rank + 3:
            raise ValueError(f"{name}: {n} must be a {rank + 3}-D tensor [batch, *spatial, heads, ...], "
                             f"got shape {tuple(t.shape)}")
    if a.shape[:rank + 1] != b.shape[:rank + 1]:
        raise ValueError(f"{name}: Spatial dimensions must match: {a_name} {tuple(a.shape)} and {b_name} "
                         f"{tuple(b.shape)} must agree on [batch, *spatial]")
    if a.shape[-2] % b.shape[-2] != 0:
        raise ValueError(f"{name}: {a_name} heads ({a.shape[-2]}) must be a multiple of {b_name} heads "
                         f"({b.shape[-2]})")
    if same_dim and a.dtype != b.dtype:
        raise TypeError(f"{name}: {a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    if same_dim and a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{name}: {a_name} and {b_name} must have the same head_dim, got {a.shape[-1]} and {b.shape[-1]}")
    spatial, ks, st, dil, causal = checks.check_na_params(a, a, kernel_size, stride, dilation, is_causal, rank)
    return spatial, ks, st, dil, causal


def _on_metal(a: Tensor, b: Tensor) -> bool:
    return backend.use_metal(a, metal_split.split_supported(a, b) and a.dtype == b.dtype)


def _qk(rank, query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale: Optional[float] = None,
        rpb: Optional[Tensor] = None) -> Tensor:
    name = f"na{rank}d_qk"
    spatial, ks, st, dil, causal = _check_split(name, rank, query, key, kernel_size, dilation, stride, is_causal,
                                                "query", "key", True)
    B, H, D = query.shape[0], query.shape[-2], query.shape[-1]
    Hkv = key.shape[-2]
    Kvol = math.prod(ks)
    metal_path = _on_metal(query, key)
    if metal_path:
        logits = ops.split_scores(query, key, list(ks), list(st), list(dil), list(causal))   # masked: -inf
    else:
        tok, ok, offs = _neighbourhood(spatial, ks, st, dil, causal, query.device)
        T = tok.shape[0]
        kf = key.reshape(B, T, Hkv, D).index_select(1, tok.reshape(-1)).reshape(B, T, Kvol, Hkv, D)
        qf = query.reshape(B, T, Hkv, H // Hkv, D)
        logits = torch.einsum("btkgd,btnkd->btkgn", qf, kf).reshape(*query.shape[:-1], Kvol)
    if scale is not None:
        logits = logits * checks.check_scale(scale, D)
    if rpb is not None:
        want = (H,) + tuple(2 * k - 1 for k in ks)
        if not isinstance(rpb, Tensor) or tuple(rpb.shape) != want:
            raise ValueError(f"{name}: rpb must be a tensor of shape {want}, got {tuple(getattr(rpb, 'shape', ()))}")
        if metal_path:
            _, _, offs = _neighbourhood(spatial, ks, st, dil, causal, query.device)
        bias = _rpb_bias(rpb.to(logits.dtype), offs, ks, spatial).permute(1, 0, 2)
        logits = logits + bias.reshape(*spatial, H, Kvol)
    if not metal_path:
        logits = logits.masked_fill(~ok.reshape(*spatial, 1, Kvol), float("-inf"))
    return logits.reshape(*query.shape[:-1], Kvol)


def _av(rank, attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False) -> Tensor:
    name = f"na{rank}d_av"
    spatial, ks, st, dil, causal = _check_split(name, rank, attn, value, kernel_size, dilation, stride, is_causal,
                                                "attn", "value", False)
    B, H, Kvol = attn.shape[0], attn.shape[-2], attn.shape[-1]
    Hkv, Dv = value.shape[-2], value.shape[-1]
    want = math.prod(ks)
    if Kvol != want:
        raise ValueError(f"{name}: attn's last dimension must be prod(kernel_size) = {want}, got {Kvol}")
    if _on_metal(attn, value):
        return ops.split_weighted(attn.to(value.dtype), value, list(ks), list(st), list(dil), list(causal))
    tok, ok, _ = _neighbourhood(spatial, ks, st, dil, causal, attn.device)
    T = tok.shape[0]
    vf = value.reshape(B, T, Hkv, Dv).index_select(1, tok.reshape(-1)).reshape(B, T, Kvol, Hkv, Dv)
    w = attn.reshape(B, T, Hkv, H // Hkv, Kvol).masked_fill(~ok[None, :, None, None, :], 0.0)
    out = torch.einsum("btkgn,btnkd->btkgd", w.to(vf.dtype), vf)
    return out.reshape(*attn.shape[:-1], Dv)


def na1d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None, rpb=None) -> Tensor:
    """1-D neighbourhood scores (heads-last). ``query`` ``[B, L, heads, D]``, ``key`` ``[B, L, kv_heads, D]``
    (``heads`` a multiple of ``kv_heads``, same dtype and head dim) -> ``[B, L, heads, K]``: entry ``n`` is
    the score against the ``n``-th neighbour (row-major over the axes; see the module docstring),
    ``-inf`` where the neighbour does not exist. ``kernel_size``, ``dilation``, ``stride``,
    ``is_causal``: an int/bool or one per axis (NATTEN's rules; defaults 1, 1, False). ``scale``
    multiplies the scores (None: unscaled); ``rpb`` ``[heads, 2K-1, ...]`` adds the relative
    positional bias. ValueError/TypeError name the argument for bad shapes, dtypes or window
    arguments."""
    return _qk(1, query, key, kernel_size, dilation, stride=stride, is_causal=is_causal, scale=scale, rpb=rpb)


def na2d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None, rpb=None) -> Tensor:
    """2-D neighbourhood scores (heads-last). ``query`` ``[B, X, Y, heads, D]``, ``key`` ``[B, X, Y, kv_heads, D]``
    (``heads`` a multiple of ``kv_heads``, same dtype and head dim) -> ``[B, X, Y, heads, K_x * K_y]``: entry ``n`` is
    the score against the ``n``-th neighbour (row-major over the axes; see the module docstring),
    ``-inf`` where the neighbour does not exist. ``kernel_size``, ``dilation``, ``stride``,
    ``is_causal``: an int/bool or one per axis (NATTEN's rules; defaults 1, 1, False). ``scale``
    multiplies the scores (None: unscaled); ``rpb`` ``[heads, 2K-1, ...]`` adds the relative
    positional bias. ValueError/TypeError name the argument for bad shapes, dtypes or window
    arguments."""
    return _qk(2, query, key, kernel_size, dilation, stride=stride, is_causal=is_causal, scale=scale, rpb=rpb)


def na3d_qk(query, key, kernel_size, dilation=1, *, stride=1, is_causal=False, scale=None, rpb=None) -> Tensor:
    """3-D neighbourhood scores (heads-last). ``query`` ``[B, X, Y, Z, heads, D]``, ``key`` ``[B, X, Y, Z, kv_heads, D]``
    (``heads`` a multiple of ``kv_heads``, same dtype and head dim) -> ``[B, X, Y, Z, heads, K_x * K_y * K_z]``: entry ``n`` is
    the score against the ``n``-th neighbour (row-major over the axes; see the module docstring),
    ``-inf`` where the neighbour does not exist. ``kernel_size``, ``dilation``, ``stride``,
    ``is_causal``: an int/bool or one per axis (NATTEN's rules; defaults 1, 1, False). ``scale``
    multiplies the scores (None: unscaled); ``rpb`` ``[heads, 2K-1, ...]`` adds the relative
    positional bias. ValueError/TypeError name the argument for bad shapes, dtypes or window
    arguments."""
    return _qk(3, query, key, kernel_size, dilation, stride=stride, is_causal=is_causal, scale=scale, rpb=rpb)


def na1d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False) -> Tensor:
    """1-D weighted neighbour values (heads-last). ``attn`` ``[B, L, heads, K]`` (e.g. the softmax
    of :func:`na1d_qk`), ``value`` ``[B, L, kv_heads, Dv]`` -> ``[B, L, heads, Dv]`` =
    ``sum_n attn[..., n] * value[neighbour n]``; missing neighbours contribute nothing. Window
    arguments as in :func:`na1d_qk`. ValueError names the argument for bad shapes or window
    arguments."""
    return _av(1, attn, value, kernel_size, dilation, stride=stride, is_causal=is_causal)


def na2d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False) -> Tensor:
    """2-D weighted neighbour values (heads-last). ``attn`` ``[B, X, Y, heads, K_x * K_y]`` (e.g. the softmax
    of :func:`na2d_qk`), ``value`` ``[B, X, Y, kv_heads, Dv]`` -> ``[B, X, Y, heads, Dv]`` =
    ``sum_n attn[..., n] * value[neighbour n]``; missing neighbours contribute nothing. Window
    arguments as in :func:`na2d_qk`. ValueError names the argument for bad shapes or window
    arguments."""
    return _av(2, attn, value, kernel_size, dilation, stride=stride, is_causal=is_causal)


def na3d_av(attn, value, kernel_size, dilation=1, *, stride=1, is_causal=False) -> Tensor:
    """3-D weighted neighbour values (heads-last). ``attn`` ``[B, X, Y, Z, heads, K_x * K_y * K_z]`` (e.g. the softmax
    of :func:`na3d_qk`), ``value`` ``[B, X, Y, Z, kv_heads, Dv]`` -> ``[B, X, Y, Z, heads, Dv]`` =
    ``sum_n attn[..., n] * value[neighbour n]``; missing neighbours contribute nothing. Window
    arguments as in :func:`na3d_qk`. ValueError names the argument for bad shapes or window
    arguments."""
    return _av(3, attn, value, kernel_size, dilation, stride=stride, is_causal=is_causal)


