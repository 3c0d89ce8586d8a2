"""Device-agnostic blocked neighborhood attention in plain PyTorch (CPU, CUDA, MPS fallback).

Layout inside this module: ``q`` is ``[N, G, *L, D]`` and ``k``/``v`` are ``[N, *L, D]`` where
``N = batch * heads_kv`` and ``G = heads // heads_kv`` (GQA query heads ride along as extra query
rows, so K/V are never repeated), ``L`` is the spatial shape of one dilation group.

Algorithm (one generic N-d routine):

* Dilation is removed by regrouping: each of the ``prod(dilation)`` interleaved groups is an
  undilated problem on a strided view.
* Queries are cut into tiles of ``T`` positions per axis. Because window starts never decrease
  along an axis, the union of the windows of a tile is an interval of at most ``U`` keys per axis
  (``U`` ~ ``T + K``). The key axis is zero-padded so every tile's keys are a strided window
  (``unfold``), gathered with one copy. Each tile's ``G * prod(T)`` queries attend densely to its
  ``prod(U)`` keys with the keys outside each query's exact window masked (a mask built per axis and
  cached, never an O(L^2) mask): on CPU through PyTorch's fused flash-attention kernel with an
  additive mask, elsewhere (CUDA, MPS fallback, or when the fused kernel does not apply) through
  batched matmuls, ``masked_fill`` and a softmax with its log-sum-exp.
* Tiles are processed in chunks along the first axis so peak memory is bounded by a budget, not by
  the input size (never O(L^2) or O(L * K^d * D)).
* Backward recomputes the probabilities from the saved LSE, tile by tile, and scatters key/value
  gradients back with ``index_add_``.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..semantics import group_length, window_bounds

_CHUNK_BYTES = int(os.environ.get("NATTEN_MPS_PURE_CHUNK_BYTES", 48 << 20))


def default_tile(rank: int, length: int, kernel: int, axis: int = 0) -> int:
    """Query tile per axis, from measurements on a 2-core CPU (``benchmarks/tune_tiles.py``).

    ``NATTEN_MPS_TILE_{rank}D`` overrides it: one int for every axis, or a comma list per axis.
    """
    env = os.environ.get(f"NATTEN_MPS_TILE_{rank}D")
    if env:
        parts = [int(x) for x in env.split(",")]
        t = parts[axis] if len(parts) == rank else parts[0]
    elif rank == 1:
        t = 32
    elif rank == 2:
        t = 8
    elif kernel <= 5:
        t = 2 if axis == 0 else 4      # (2, 4, 4) beat (4, 4, 4) by ~15% at 16^3 K=3
    else:
        t = 8
    return max(1, min(t, length))


@dataclass(frozen=True)
class AxisPlan:
    tile: int                 # queries per tile on this axis
    n_tiles: int
    union: int                # keys gathered per tile on this axis
    pad_lo: int               # keys are gathered from the axis padded by pad_lo / pad_hi:
    pad_hi: int               # tile t reads padded positions [t * tile, t * tile + union)
    key_index: torch.Tensor   # [n_tiles, union] key positions (unpadded; may fall outside the axis)
    allowed: torch.Tensor     # [n_tiles, tile, union] bool: key u is in the window of query t
    full: bool                # every key allowed for every query (no mask needed)


@functools.lru_cache(maxsize=256)
def _axis_plan(length: int, kernel: int, stride: int, causal: bool, tile: int,
               device: torch.device) -> AxisPlan:
    n = math.ceil(length / tile)
    q = torch.arange(n * tile)
    lo, hi = window_bounds(torch.clamp(q, max=length - 1), length, kernel, stride, causal)
    lo, hi = lo.view(n, tile), hi.view(n, tile)
    first, last = lo.min(dim=1).values, hi.max(dim=1).values
    tile_start = torch.arange(n) * tile
    # Tiles read keys at a uniform step (so the gather is a strided view of the padded axis).
    pad_lo = max(0, int((tile_start - first).max()))
    union = int((last - (tile_start - pad_lo) + 1).max())
    pad_hi = max(0, (n - 1) * tile + union - pad_lo - length)
    key = (tile_start - pad_lo)[:, None] + torch.arange(union)[None, :]
    allowed = (key[:, None, :] >= lo[:, :, None]) & (key[:, None, :] <= hi[:, :, None])
    full = bool(allowed.all()) and union == length and pad_lo == 0 and pad_hi == 0
    return AxisPlan(tile, n, union, pad_lo, pad_hi, key.to(device), allowed.to(device), full)


def _plans(spatial, kernel_size, stride, causal, device) -> List[AxisPlan]:
    rank = len(spatial)
    return [_axis_plan(spatial[i], kernel_size[i], stride[i], causal[i],
                       default_tile(rank, spatial[i], kernel_size[i], i), device)
            for i in range(rank)]


# ---- tiling helpers (rank-generic) -------------------------------------------------------------

def _tile_rows(x: torch.Tensor, plans: Sequence[AxisPlan], n0: int) -> torch.Tensor:
    """``[N, G, n0*T0, n1*T1, ..., C]`` -> ``[N, n0*n1*..., G*T0*T1*..., C]``."""
    rank = len(plans)
    N, G, C = x.shape[0], x.shape[1], x.shape[-1]
    counts = [n0] + [p.n_tiles for p in plans[1:]]
    shape = [N, G]
    for c, p in zip(counts, plans):
        shape += [c, p.tile]
    x = x.reshape(shape + [C])
    tile_dims = [2 + 2 * i for i in range(rank)]
    in_dims = [3 + 2 * i for i in range(rank)]
    x = x.permute(0, *tile_dims, 1, *in_dims, 2 + 2 * rank)
    return x.reshape(N, math.prod(counts), G * math.prod(p.tile for p in plans), C)


def _untile_rows(x: torch.Tensor, plans: Sequence[AxisPlan], n0: int, G: int) -> torch.Tensor:
    """Inverse of :func:`_tile_rows`."""
    rank = len(plans)
    N, C = x.shape[0], x.shape[-1]
    counts = [n0] + [p.n_tiles for p in plans[1:]]
    x = x.reshape([N] + counts + [G] + [p.tile for p in plans] + [C])
    order = [0, 1 + rank]
    for i in range(rank):
        order += [1 + i, 2 + rank + i]
    x = x.permute(*order, 2 + 2 * rank)
    return x.reshape([N, G] + [c * p.tile for c, p in zip(counts, plans)] + [C])


def _key_indices(plans: Sequence[AxisPlan], t0: int, t1: int) -> List[torch.Tensor]:
    return [plans[0].key_index[t0:t1]] + [p.key_index for p in plans[1:]]


def _pad_keys(x: torch.Tensor, plans: Sequence[AxisPlan]) -> torch.Tensor:
    """``[N, *L, C]`` -> ``[N, *P, C]`` zero-padded so every tile's keys are a strided window."""
    pads = []
    for p in reversed(plans):
        pads += [p.pad_lo, p.pad_hi]
    return torch.nn.functional.pad(x, [0, 0] + pads) if any(pads) else x


def _gather_keys(xp: torch.Tensor, plans: Sequence[AxisPlan], t0: int, t1: int) -> torch.Tensor:
    """Padded ``[N, *P, C]`` -> ``[N, tiles, prod(U), C]``: the keys of tiles ``t0:t1`` (first axis)."""
    rank = len(plans)
    x = xp
    counts = [t1 - t0] + [p.n_tiles for p in plans[1:]]
    starts = [t0 * plans[0].tile] + [0] * (rank - 1)
    for i, (p, c, st) in enumerate(zip(plans, counts, starts)):
        x = x.narrow(1 + i, st, (c - 1) * p.tile + p.union).unfold(1 + i, p.union, p.tile)
    # x: [N, n0.., C, U0..]
    x = x.permute(0, *range(1, rank + 1), *range(rank + 2, 2 * rank + 2), rank + 1)
    return x.reshape(xp.shape[0], math.prod(counts), math.prod(p.union for p in plans), xp.shape[-1])


def _linear_key_index(idx: Sequence[torch.Tensor], spatial: Sequence[int]) -> torch.Tensor:
    """Flat key position of every gathered key, in the ``[tiles, prod(U)]`` order."""
    rank = len(idx)
    lin = None
    for i, ix in enumerate(idx):
        stride = math.prod(spatial[i + 1:])
        shape = [1] * (2 * rank)
        shape[i], shape[rank + i] = ix.shape[0], ix.shape[1]
        term = (ix * stride).reshape(shape)
        lin = term if lin is None else lin + term
    return lin.reshape(-1)


def _scatter_keys(dst: torch.Tensor, grad: torch.Tensor, plans: Sequence[AxisPlan], t0: int, t1: int) -> None:
    """Adjoint of :func:`_gather_keys`: add ``grad`` ``[N, tiles, prod(U), C]`` into padded ``dst``."""
    N, C = dst.shape[0], dst.shape[-1]
    idx = [ix + p.pad_lo for ix, p in zip(_key_indices(plans, t0, t1), plans)]
    lin = _linear_key_index(idx, dst.shape[1:-1])
    dst.view(N, -1, C).index_add_(1, lin, grad.reshape(N, -1, C))


def _crop_keys(x: torch.Tensor, plans: Sequence[AxisPlan], spatial) -> torch.Tensor:
    return x[(slice(None),) + tuple(slice(p.pad_lo, p.pad_lo + n) for p, n in zip(plans, spatial))]


_outside_cache: dict = {}


def _outside(plans: Sequence[AxisPlan], t0: int, t1: int, G: int) -> Optional[torch.Tensor]:
    key = (tuple(plans), t0, t1, G)
    if key not in _outside_cache:
        if len(_outside_cache) > 64:
            _outside_cache.clear()
        _outside_cache[key] = _build_outside(plans, t0, t1, G)
    return _outside_cache[key]


_bias_cache: dict = {}


def _bias(plans: Sequence[AxisPlan], t0: int, t1: int, G: int, dtype) -> Optional[torch.Tensor]:
    """Additive form of :func:`_outside` (0 inside, -inf outside), for the fused CPU kernel."""
    key = (tuple(plans), t0, t1, G, dtype)
    if key not in _bias_cache:
        if len(_bias_cache) > 64:
            _bias_cache.clear()
        outside = _build_outside(plans, t0, t1, G)   # not cached: only the additive form is kept
        _bias_cache[key] = None if outside is None else torch.zeros(
            outside.shape, dtype=dtype, device=outside.device).masked_fill_(outside, float("-inf"))
    return _bias_cache[key]


def _build_outside(plans: Sequence[AxisPlan], t0: int, t1: int, G: int) -> Optional[torch.Tensor]:
    """Bool mask ``[tiles, G*prod(T), prod(U)]``: True where a key is outside the query's window.

    Applied with ``masked_fill`` (not an additive bias) so a NaN key outside a window cannot leak in.
    """
    if all(p.full for p in plans):
        return None
    rank = len(plans)
    allowed = None
    per_axis = [plans[0].allowed[t0:t1]] + [p.allowed for p in plans[1:]]
    for i, a in enumerate(per_axis):
        shape = [1] * (3 * rank)
        shape[i], shape[rank + i], shape[2 * rank + i] = a.shape
        a = a.reshape(shape)
        allowed = a if allowed is None else allowed & a
    tiles = math.prod(a.shape[0] for a in per_axis)
    rows = math.prod(a.shape[1] for a in per_axis)
    cols = math.prod(a.shape[2] for a in per_axis)
    allowed = allowed.reshape(tiles, 1, rows, cols).expand(tiles, G, rows, cols).reshape(tiles, G * rows, cols)
    return ~allowed


def _pad_to_tiles(x: torch.Tensor, plans: Sequence[AxisPlan], first_dim: int) -> torch.Tensor:
    pads = []
    for i in reversed(range(len(plans))):
        size = x.shape[first_dim + i]
        pads += [0, plans[i].n_tiles * plans[i].tile - size]
    if any(pads):
        x = torch.nn.functional.pad(x, [0, 0] * (x.dim() - first_dim - len(plans)) + pads)
    return x


def _chunks(plans: Sequence[AxisPlan], N: int, G: int, itemsize: int, fused: bool, channels: int):
    """First-axis tile ranges sized so the largest per-chunk buffer stays near the budget.

    That buffer is the score matrix on the matmul route; on the fused route (no score matrix) it
    is the gathered keys plus values (``channels`` = D + Dv), with a quarter of the budget.
    """
    tiles_rest = N * math.prod(p.n_tiles for p in plans[1:])
    union = math.prod(p.union for p in plans)
    if fused:
        per_tile0, budget = tiles_rest * union * channels * itemsize, _CHUNK_BYTES // 4
    else:
        per_tile0, budget = tiles_rest * G * math.prod(p.tile for p in plans) * union * itemsize, _CHUNK_BYTES
    step = max(1, budget // max(per_tile0, 1))
    for t0 in range(0, plans[0].n_tiles, step):
        yield t0, min(plans[0].n_tiles, t0 + step)


# ---- fused tile kernel (CPU) -----------------------------------------------------------------
# PyTorch's CPU flash-attention kernel takes an additive mask and returns the LSE; running it on
# each tile's queries and gathered keys does the masked softmax in one vectorised pass, several
# times faster than matmul + mask + softmax as separate ops. It needs equal Q/K/V head dims, and
# an additive mask lets a non-finite key leak into its tile-mates, so it is used only on CPU for
# finite keys; everything else takes the generic matmul route (which is also what CUDA runs).
_flash_fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_USE_FUSED = os.environ.get("NATTEN_MPS_PURE_FUSED", "1") != "0"


def _fused_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return (_USE_FUSED and _flash_fwd is not None and _flash_bwd is not None and q.device.type == "cpu"
            and q.shape[-1] == v.shape[-1] and bool(torch.isfinite(k.sum())))  # one pass; overflow errs safe


def _expand_mask(bias: Optional[torch.Tensor], N: int) -> Optional[torch.Tensor]:
    return None if bias is None else bias.unsqueeze(0).expand(N, *bias.shape)


def _fused_tile_backward(dot, qt, kt, vt, ot, lset, dlset, bias, scale, causal=False):
    """Tile gradients from the fused kernel; a nonzero LSE gradient rides on an extra channel.

    The kernel forms ``delta = rowsum(dO * O)``; the LSE gradient needs ``delta - dlse``. Appending a
    zero channel to q, k, v, a one to dO and ``-dlse`` to O leaves the scores and dP unchanged and
    shifts delta by exactly ``-dlse``.
    """
    N = qt.shape[0]
    if dlset is not None:
        pad = lambda x, val: torch.cat([x, val], dim=-1)  # noqa: E731
        zeros_q = qt.new_zeros(qt.shape[:-1] + (1,))
        zeros_k = kt.new_zeros(kt.shape[:-1] + (1,))
        qt, kt, vt = pad(qt, zeros_q), pad(kt, zeros_k), pad(vt, zeros_k)
        dot = pad(dot, torch.ones_like(zeros_q))
        ot = pad(ot, -dlset.unsqueeze(-1))
    dq, dk, dv = _flash_bwd(dot, qt, kt, vt, ot, lset, 0.0, causal, attn_mask=_expand_mask(bias, N), scale=scale)
    if dlset is not None:
        dq, dk, dv = dq[..., :-1], dk[..., :-1], dv[..., :-1]
    return dq, dk, dv


# ---- undilated core ---------------------------------------------------------------------------

def _core_forward(q, k, v, kernel_size, stride, causal, scale):
    N, G = q.shape[:2]
    spatial = tuple(q.shape[2:-1])
    plans = _plans(spatial, kernel_size, stride, causal, q.device)
    T0 = plans[0].tile
    fused = _fused_ok(q, k, v)
    qp = _pad_to_tiles(q if fused else q * scale, plans, 2)
    out = torch.empty(qp.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    lse = torch.empty(qp.shape[:-1] + (1,), dtype=q.dtype, device=q.device)
    kp, vp = _pad_keys(k, plans), _pad_keys(v, plans)
    for t0, t1 in _chunks(plans, N, G, q.element_size(), fused, k.shape[-1] + v.shape[-1]):
        qt = _tile_rows(qp[:, :, t0 * T0:t1 * T0], plans, t1 - t0)
        kt, vt = _gather_keys(kp, plans, t0, t1), _gather_keys(vp, plans, t0, t1)
        if fused:
            o, m = _flash_fwd(qt, kt, vt, 0.0, False, attn_mask=_expand_mask(_bias(plans, t0, t1, G, q.dtype), N),
                              scale=scale)
            out[:, :, t0 * T0:t1 * T0] = _untile_rows(o, plans, t1 - t0, G)
            lse[:, :, t0 * T0:t1 * T0] = _untile_rows(m.unsqueeze(-1), plans, t1 - t0, G)
            continue
        s = torch.matmul(qt, kt.transpose(-1, -2))
        outside = _outside(plans, t0, t1, G)
        if outside is not None:
            s.masked_fill_(outside, float("-inf"))
        m = s.amax(dim=-1, keepdim=True)
        p = s.sub_(m).exp_()
        denom = p.sum(dim=-1, keepdim=True)
        o = torch.matmul(p, vt).div_(denom)     # normalise the [rows, Dv] output, not [rows, U]
        out[:, :, t0 * T0:t1 * T0] = _untile_rows(o, plans, t1 - t0, G)
        lse[:, :, t0 * T0:t1 * T0] = _untile_rows(m.add_(denom.log_()), plans, t1 - t0, G)
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
    return out[crop], lse[crop][..., 0]


def _core_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, causal, scale):
    N, G = q.shape[:2]
    spatial = tuple(q.shape[2:-1])
    plans = _plans(spatial, kernel_size, stride, causal, q.device)
    T0 = plans[0].tile
    fused = _fused_ok(q, k, v)
    qp = _pad_to_tiles(q if fused else q * scale, plans, 2)   # the fused kernel applies the scale itself
    dop = _pad_to_tiles(dout, plans, 2)
    lsep = _pad_to_tiles(lse.unsqueeze(-1), plans, 2)
    dq = torch.empty_like(qp)
    kp, vp = _pad_keys(k, plans), _pad_keys(v, plans)
    dk = torch.zeros_like(kp)
    dv = torch.zeros_like(vp)
    if fused:   # the kernel forms rowsum(dO * O) itself; a nonzero dlse rides on an extra channel
        outp = _pad_to_tiles(out, plans, 2)
        dlsep = None if dlse is None or not bool(dlse.any()) else _pad_to_tiles(dlse.unsqueeze(-1), plans, 2)
    else:
        delta = (dout * out).sum(-1, keepdim=True)
        if dlse is not None:
            delta = delta - dlse.unsqueeze(-1)
        deltap = _pad_to_tiles(delta, plans, 2)
    for t0, t1 in _chunks(plans, N, G, q.element_size(), fused, k.shape[-1] + v.shape[-1]):
        rows = slice(t0 * T0, t1 * T0)
        n0 = t1 - t0
        qt = _tile_rows(qp[:, :, rows], plans, n0)
        kt, vt = _gather_keys(kp, plans, t0, t1), _gather_keys(vp, plans, t0, t1)
        if fused:
            dlset = None if dlsep is None else _tile_rows(dlsep[:, :, rows], plans, n0)[..., 0]
            dqt, dkt, dvt = _fused_tile_backward(
                _tile_rows(dop[:, :, rows], plans, n0), qt, kt, vt, _tile_rows(outp[:, :, rows], plans, n0),
                _tile_rows(lsep[:, :, rows], plans, n0)[..., 0], dlset, _bias(plans, t0, t1, G, q.dtype), scale)
            dq[:, :, rows] = _untile_rows(dqt, plans, n0, G)
            _scatter_keys(dk, dkt, plans, t0, t1)
            _scatter_keys(dv, dvt, plans, t0, t1)
            continue
        s = torch.matmul(qt, kt.transpose(-1, -2))
        outside = _outside(plans, t0, t1, G)
        if outside is not None:
            s.masked_fill_(outside, float("-inf"))
        p = s.sub_(_tile_rows(lsep[:, :, rows], plans, n0)).exp_()
        dot = _tile_rows(dop[:, :, rows], plans, n0)
        _scatter_keys(dv, torch.matmul(p.transpose(-1, -2), dot), plans, t0, t1)
        dp = torch.matmul(dot, vt.transpose(-1, -2))
        ds = p.mul_(dp.sub_(_tile_rows(deltap[:, :, rows], plans, n0)))
        dq[:, :, rows] = _untile_rows(torch.matmul(ds, kt), plans, n0, G)
        _scatter_keys(dk, torch.matmul(ds.transpose(-1, -2), qt), plans, t0, t1)
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
    dq = dq[crop] if fused else dq[crop] * scale
    return dq, _crop_keys(dk, plans, spatial), _crop_keys(dv, plans, spatial)


# ---- layout + dilation -------------------------------------------------------------------------

def lse_dtype(dtype):
    """LSE is float32 for every input dtype except float64 (kept for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_internal(x: torch.Tensor, heads_kv: int, is_query: bool, dtype=None) -> torch.Tensor:
    """``[B, *L, H, C]`` -> ``[B*Hkv, G, *L, C]`` (query) or ``[B*Hkv, *L, C]`` (key/value)."""
    rank = x.dim() - 3
    B, H, C = x.shape[0], x.shape[-2], x.shape[-1]
    spatial = x.shape[1:1 + rank]
    x = x.to(dtype or _compute_dtype(x.dtype))
    if is_query:
        G = H // heads_kv
        x = x.reshape(B, *spatial, heads_kv, G, C)
        x = x.permute(0, rank + 1, rank + 2, *range(1, rank + 1), rank + 3)
        return x.reshape(B * heads_kv, G, *spatial, C)
    x = x.permute(0, rank + 1, *range(1, rank + 1), rank + 2)
    return x.reshape(B * H, *spatial, C)


def from_internal(x: torch.Tensor, batch: int, heads_kv: int) -> torch.Tensor:
    """``[B*Hkv, G, *L, C]`` -> ``[B, *L, Hkv*G, C]``."""
    rank = x.dim() - 3
    G, C = x.shape[1], x.shape[-1]
    spatial = x.shape[2:2 + rank]
    x = x.reshape(batch, heads_kv, G, *spatial, C)
    x = x.permute(0, *range(3, 3 + rank), 1, 2, 3 + rank)
    return x.reshape(batch, *spatial, heads_kv * G, C)


def _public(x: torch.Tensor, batch: int, heads_kv: int, dtype) -> torch.Tensor:
    """Internal ``[N, G, *L, C]`` -> contiguous public ``[B, *L, H, C]`` in ``dtype``."""
    return from_internal(x, batch, heads_kv).to(dtype).contiguous()


def _dilation_groups(spatial, dilation):
    """Yield the strided slices (over spatial dims) of each dilation group."""
    for combo in itertools.product(*[range(d) for d in dilation]):
        yield tuple(slice(g, None, d) for g, d in zip(combo, dilation))


def na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale):
    """Neighborhood attention forward. ``q`` ``[B, *L, H, D]``, ``k``/``v`` ``[B, *L, Hkv, D(v)]``.

    Returns ``out`` ``[B, *L, H, Dv]`` (input dtype) and ``lse`` ``[B, *L, H]`` (float32, natural log).
    """
    B, Hkv = q.shape[0], k.shape[-2]
    qi, ki, vi = to_internal(q, Hkv, True), to_internal(k, Hkv, False), to_internal(v, Hkv, False)
    if B == 0 or qi.numel() == 0:
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        return out, q.new_empty(q.shape[:-1], dtype=lse_dtype(q.dtype))
    if all(d == 1 for d in dilation):
        oi, li = _core_forward(qi, ki, vi, kernel_size, stride, is_causal, scale)
    else:
        oi = qi.new_empty(qi.shape[:-1] + (vi.shape[-1],))
        li = qi.new_empty(qi.shape[:-1])
        for sl in _dilation_groups(q.shape[1:-2], dilation):
            o, l = _core_forward(qi[(slice(None), slice(None)) + sl], ki[(slice(None),) + sl],
                                 vi[(slice(None),) + sl], kernel_size, stride, is_causal, scale)
            oi[(slice(None), slice(None)) + sl] = o
            li[(slice(None), slice(None)) + sl] = l
    return _public(oi, B, Hkv, q.dtype), _public(li.unsqueeze(-1), B, Hkv, lse_dtype(q.dtype))[..., 0]


def na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale):
    """Gradients of :func:`na_forward` w.r.t. ``q, k, v`` given those of ``out`` and ``lse``."""
    B, Hkv = q.shape[0], k.shape[-2]
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    qi, ki, vi = to_internal(q, Hkv, True), to_internal(k, Hkv, False), to_internal(v, Hkv, False)
    doi, oi = to_internal(dout, Hkv, True), to_internal(out, Hkv, True)
    li = to_internal(lse.unsqueeze(-1), Hkv, True, qi.dtype)[..., 0]
    dli = None if dlse is None else to_internal(dlse.unsqueeze(-1), Hkv, True, qi.dtype)[..., 0]
    if all(d == 1 for d in dilation):
        dq, dk, dv = _core_backward(doi, dli, qi, ki, vi, oi, li, kernel_size, stride, is_causal, scale)
    else:
        dq, dk, dv = torch.empty_like(qi), torch.empty_like(ki), torch.empty_like(vi)
        for sl in _dilation_groups(q.shape[1:-2], dilation):
            qs, ks = (slice(None), slice(None)) + sl, (slice(None),) + sl
            g = _core_backward(doi[qs], None if dli is None else dli[qs], qi[qs], ki[ks], vi[ks], oi[qs],
                               li[qs], kernel_size, stride, is_causal, scale)
            dq[qs], dk[ks], dv[ks] = g
    return (_public(dq, B, Hkv, q.dtype), _public(dk.unsqueeze(1), B, Hkv, k.dtype),
            _public(dv.unsqueeze(1), B, Hkv, v.dtype))


# ---- dense attention (FMHA and additional keys/values) ----------------------------------------

def _dense_fused_layout(qi, ki, vi, is_causal):
    """``[N, G, Lq, D]`` queries, ``[N, Lk, D]`` keys -> flash-kernel layout ``[N, heads, L, D]``.

    Non-causal: the G query heads become extra query rows of one head (K/V are not repeated).
    Causal: row position matters, so K/V are expanded over the G heads.
    """
    N, G, Lq, D = qi.shape
    if is_causal and G > 1:
        return qi, ki.unsqueeze(1).expand(N, G, *ki.shape[1:]).contiguous(), \
            vi.unsqueeze(1).expand(N, G, *vi.shape[1:]).contiguous()
    if is_causal:
        return qi, ki.unsqueeze(1), vi.unsqueeze(1)
    return qi.reshape(N, 1, G * Lq, D), ki.unsqueeze(1), vi.unsqueeze(1)


def _dense_score_chunks(qi, ki, is_causal: bool):
    """Yield ``(r0, r1, scores)`` for query rows ``r0:r1`` (matmul route; ``qi`` already scaled)."""
    N, G, Lq = qi.shape[:3]
    Lk = ki.shape[1]
    step = max(1, _CHUNK_BYTES // max(N * G * Lk * qi.element_size(), 1))
    for r0 in range(0, Lq, step):
        r1 = min(Lq, r0 + step)
        s = torch.matmul(qi[:, :, r0:r1], ki.unsqueeze(1).transpose(-1, -2))
        if is_causal:
            rows = torch.arange(r0, r1, device=qi.device)[:, None]
            s.masked_fill_(torch.arange(Lk, device=qi.device)[None, :] > rows, float("-inf"))
        yield r0, r1, s


def attention_forward(q, k, v, is_causal: bool, scale: float):
    """Dense attention. ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, Hkv, D(v)]`` -> (out, lse)."""
    B, Lq, H, _ = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    if B == 0 or Lq == 0 or Lk == 0:
        return (q.new_zeros(B, Lq, H, v.shape[-1]), q.new_full((B, Lq, H), float("-inf"), dtype=lse_dtype(q.dtype)))
    qi = to_internal(q, Hkv, True)                   # [N, G, Lq, D]
    ki, vi = to_internal(k, Hkv, False), to_internal(v, Hkv, False)
    N, G = qi.shape[:2]
    if _fused_ok(qi, ki, vi):
        qf, kf, vf = _dense_fused_layout(qi, ki, vi, is_causal)
        o, m = _flash_fwd(qf, kf, vf, 0.0, is_causal, scale=scale)
        o, m = o.reshape(N, G, Lq, -1), m.reshape(N, G, Lq, 1)
        return _public(o, B, Hkv, q.dtype), _public(m, B, Hkv, lse_dtype(q.dtype))[..., 0]
    qi = qi * scale
    out = qi.new_empty(N, G, Lq, vi.shape[-1])
    lse = qi.new_empty(N, G, Lq, 1)
    for r0, r1, s in _dense_score_chunks(qi, ki, is_causal):
        m = torch.logsumexp(s, dim=-1, keepdim=True)
        out[:, :, r0:r1] = torch.matmul(s.sub_(m).exp_(), vi.unsqueeze(1))
        lse[:, :, r0:r1] = m
    return _public(out, B, Hkv, q.dtype), _public(lse, B, Hkv, lse_dtype(q.dtype))[..., 0]


def attention_backward(dout, dlse, q, k, v, out, lse, is_causal: bool, scale: float):
    B, Lq, H, _ = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    qi = to_internal(q, Hkv, True)
    ki, vi = to_internal(k, Hkv, False), to_internal(v, Hkv, False)
    doi, oi = to_internal(dout, Hkv, True), to_internal(out, Hkv, True)
    li = to_internal(lse.unsqueeze(-1), Hkv, True, qi.dtype)
    if _fused_ok(qi, ki, vi):
        N, G = qi.shape[:2]
        qf, kf, vf = _dense_fused_layout(qi, ki, vi, is_causal)
        shape = lambda x: x.reshape(qf.shape[:-1] + (x.shape[-1],))  # noqa: E731
        dl = None
        if dlse is not None and bool(dlse.any()):
            dl = shape(to_internal(dlse.unsqueeze(-1), Hkv, True, qi.dtype))[..., 0]
        dq, dk, dv = _fused_tile_backward(shape(doi), qf, kf, vf, shape(oi), shape(li)[..., 0], dl, None, scale,
                                          is_causal)
        if dk.shape[1] > 1:   # causal: K/V were expanded over the G query heads
            dk, dv = dk.sum(1, keepdim=True), dv.sum(1, keepdim=True)
        return (_public(dq.reshape(qi.shape), B, Hkv, q.dtype), _public(dk.reshape(N, 1, Lk, -1), B, Hkv, k.dtype),
                _public(dv.reshape(N, 1, Lk, -1), B, Hkv, v.dtype))
    qi = qi * scale
    delta = (doi * oi).sum(-1, keepdim=True)
    if dlse is not None:
        delta = delta - to_internal(dlse.unsqueeze(-1), Hkv, True, qi.dtype)
    N, G = qi.shape[:2]
    dq = torch.empty_like(qi)
    dk, dv = torch.zeros_like(ki), torch.zeros_like(vi)
    for r0, r1, s in _dense_score_chunks(qi, ki, is_causal):
        p = s.sub_(li[:, :, r0:r1]).exp_()
        do = doi[:, :, r0:r1]
        dv += torch.matmul(p.transpose(-1, -2), do).sum(1)
        ds = p.mul_(torch.matmul(do, vi.unsqueeze(1).transpose(-1, -2)).sub_(delta[:, :, r0:r1]))
        dq[:, :, r0:r1] = torch.matmul(ds, ki.unsqueeze(1))
        dk += torch.matmul(ds.transpose(-1, -2), qi[:, :, r0:r1]).sum(1)
    return (_public(dq * scale, B, Hkv, q.dtype), _public(dk.unsqueeze(1), B, Hkv, k.dtype),
            _public(dv.unsqueeze(1), B, Hkv, v.dtype))
