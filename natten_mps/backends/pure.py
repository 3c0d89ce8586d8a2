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


# ---- dtypes ------------------------------------------------------------------------------------

def lse_dtype(dtype):
    """LSE is float32 for every input dtype except float64 (kept for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- tiles-major layout (rank-generic) ---------------------------------------------------------
# Public tensors are heads-last ``[B, *L, H, C]`` with ``H = Hkv * G``; the core sees queries as
# ``[B, *L, Hkv, G, C]`` (a view). Tiles are laid out as ``[tiles, rows, heads, C]``:
#   tiles = prod(n_i)       query tiles, first axis outermost (the fused kernel's batch dim)
#   rows  = prod(T_i) * G   a tile's query positions, each with its G query heads
#   heads = B * Hkv         batch and K/V heads (the kernel's head dim: every head shares one mask)
# and a tile's keys as ``[tiles, prod(U_i), heads, C]``. Rows and key windows are single strided
# dims, which is what the fused kernel and batched matmuls take.

def _tile_perm(rank: int) -> List[int]:
    """``[B, n0, T0, n1, T1, ..., Hkv, G, C]`` -> ``[n0, n1, ..., T0, T1, ..., G, B, Hkv, C]``."""
    return ([1 + 2 * i for i in range(rank)] + [2 + 2 * i for i in range(rank)]
            + [2 * rank + 2, 0, 2 * rank + 1, 2 * rank + 3])


def _split_tiles(x: torch.Tensor, plans: Sequence[AxisPlan]) -> torch.Tensor:
    """View ``[B, *S, Hkv, G, C]`` (``S_i = n_i * T_i``) as ``[B, n0, T0, n1, T1, ..., Hkv, G, C]``."""
    shape = [x.shape[0]]
    for p in plans:
        shape += [p.n_tiles, p.tile]
    return x.view(shape + list(x.shape[-3:]))


def _to_tiles(x: torch.Tensor, plans: Sequence[AxisPlan], dtype) -> torch.Tensor:
    """Public-order ``[B, *L, Hkv, G, C]`` (any strides) -> tiles-major ``[tiles, rows, B*Hkv, C]``.

    Axes are zero-padded to whole tiles. A view when nothing needs padding, casting or reordering
    (rank 1 with ``B == G == 1``), one copy otherwise.
    """
    rank = len(plans)
    x = x.to(dtype)
    pads = []
    for i in reversed(range(rank)):
        pads += [0, plans[i].n_tiles * plans[i].tile - x.shape[1 + i]]
    if any(pads):
        x = torch.nn.functional.pad(x, [0] * 6 + pads)
    B, Hkv, G, C = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    x = _split_tiles(x, plans).permute(_tile_perm(rank))
    return x.reshape(math.prod(p.n_tiles for p in plans), math.prod(p.tile for p in plans) * G, B * Hkv, C)


def _from_tiles(t: torch.Tensor, plans: Sequence[AxisPlan], B: int, Hkv: int, G: int) -> torch.Tensor:
    """Inverse of :func:`_to_tiles` for the first-axis tiles of a chunk: ``[c*rest, rows, B*Hkv, C]``
    -> view ``[B, c, T0, n1, T1, ..., Hkv, G, C]``."""
    rank = len(plans)
    rest = [p.n_tiles for p in plans[1:]]
    shape = [t.shape[0] // math.prod(rest)] + rest + [p.tile for p in plans] + [G, B, Hkv, t.shape[-1]]
    perm = _tile_perm(rank)
    inverse = sorted(range(len(perm)), key=perm.__getitem__)
    return t.reshape(shape).permute(inverse)


class _Untiler:
    """Collects per-chunk tiles-major results into a public-order ``[B, *L, Hkv, G, C]`` tensor.

    With a single chunk the result stays a view of the kernel's output (no copy when the layouts
    agree); with several, each chunk is copied into place as it is produced.
    """

    def __init__(self, plans, spatial, B, Hkv, G, C, n_chunks, dtype, device):
        self.plans, self.spatial, self.dims = plans, spatial, (B, Hkv, G)
        self.buf = None
        if n_chunks > 1:
            padded = [p.n_tiles * p.tile for p in plans]
            self.buf = torch.empty([B] + padded + [Hkv, G, C], dtype=dtype, device=device)

    def add(self, t0: int, t1: int, tiles: torch.Tensor) -> None:
        piece = _from_tiles(tiles, self.plans, *self.dims)
        if self.buf is None:
            B, Hkv, G = self.dims
            merged = [B] + [p.n_tiles * p.tile for p in self.plans] + [Hkv, G, tiles.shape[-1]]
            self.buf = piece.reshape(merged)
        else:
            _split_tiles(self.buf, self.plans)[:, t0:t1].copy_(piece)

    def result(self) -> torch.Tensor:
        return self.buf[(slice(None),) + tuple(slice(0, n) for n in self.spatial)]


def _pad_keys(x: torch.Tensor, plans: Sequence[AxisPlan], dtype) -> torch.Tensor:
    """Public ``[B, *L, Hkv, C]`` -> zero-padded ``[*P, B*Hkv, C]`` (``P_i = pad_lo + L_i + pad_hi``)."""
    rank = len(plans)
    B, Hkv, C = x.shape[0], x.shape[-2], x.shape[-1]
    spatial = x.shape[1:1 + rank]
    padded = [p.pad_lo + n + p.pad_hi for p, n in zip(plans, spatial)]
    buf = torch.empty(padded + [B, Hkv, C], dtype=dtype, device=x.device)
    for i, (p, n) in enumerate(zip(plans, spatial)):
        buf.narrow(i, 0, p.pad_lo).zero_()
        buf.narrow(i, p.pad_lo + n, p.pad_hi).zero_()
    buf[tuple(slice(p.pad_lo, p.pad_lo + n) for p, n in zip(plans, spatial))].copy_(
        x.permute(*range(1, rank + 1), 0, rank + 1, rank + 2))
    return buf.view(padded + [B * Hkv, C])


def _crop_keys(buf: torch.Tensor, plans: Sequence[AxisPlan], spatial, B: int, Hkv: int) -> torch.Tensor:
    """Padded ``[*P, B*Hkv, C]`` -> public-order view ``[B, *L, Hkv, C]``."""
    rank = len(plans)
    x = buf[tuple(slice(p.pad_lo, p.pad_lo + n) for p, n in zip(plans, spatial))].unflatten(rank, (B, Hkv))
    return x.permute(rank, *range(rank), rank + 1, rank + 2)


def _gather_keys(buf: torch.Tensor, plans: Sequence[AxisPlan], t0: int, t1: int) -> torch.Tensor:
    """Padded ``[*P, heads, C]`` -> ``[c*rest, prod(U), heads, C]``: the keys of first-axis tiles ``t0:t1``.

    Windows are ``unfold`` views of the padded axes; for rank 1 the result stays a (overlapping)
    strided view, for higher ranks the final reshape gathers it with one copy.
    """
    rank = len(plans)
    x = buf
    for i, p in enumerate(plans):
        first, count = (t0, t1 - t0) if i == 0 else (0, p.n_tiles)
        x = x.narrow(i, first * p.tile, (count - 1) * p.tile + p.union).unfold(i, p.union, p.tile)
    x = x.permute(*range(rank), *range(rank + 2, 2 * rank + 2), rank, rank + 1)   # [c, n.., U.., heads, C]
    return x.reshape(-1, math.prod(p.union for p in plans), buf.shape[-2], buf.shape[-1])


def _key_indices(plans: Sequence[AxisPlan], t0: int, t1: int) -> List[torch.Tensor]:
    return [plans[0].key_index[t0:t1]] + [p.key_index for p in plans[1:]]


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
    """Adjoint of :func:`_gather_keys`: add ``grad`` ``[c*rest, prod(U), heads, C]`` into padded ``dst``."""
    idx = [ix + p.pad_lo for ix, p in zip(_key_indices(plans, t0, t1), plans)]
    lin = _linear_key_index(idx, dst.shape[:-2])
    dst.view(-1, dst.shape[-2] * dst.shape[-1]).index_add_(0, lin, grad.reshape(lin.shape[0], -1))


# ---- masks -------------------------------------------------------------------------------------

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
    """Bool mask ``[tiles, rows, prod(U)]`` (rows = tile positions x G heads): True where a key is
    outside the query's window. Built from the per-axis masks, once per shape (cached)."""
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
    allowed = allowed.reshape(tiles, rows, 1, cols).expand(tiles, rows, G, cols).reshape(tiles, rows * G, cols)
    return ~allowed


def _head_mask(mask: Optional[torch.Tensor], heads: int) -> Optional[torch.Tensor]:
    """``[tiles, rows, U]`` -> ``[tiles, heads, rows, U]`` without copying (every head shares it)."""
    return None if mask is None else mask.unsqueeze(1).expand(mask.shape[0], heads, *mask.shape[1:])


def _chunks(plans: Sequence[AxisPlan], heads: int, G: int, itemsize: int, fused: bool, channels: int):
    """First-axis tile ranges sized so the per-chunk buffers stay near the budget.

    Matmul route: the score matrix. Fused route: the mask plus, for rank > 1, the gathered keys and
    values (``channels = D + Dv``; rank-1 windows are views), with a quarter of the budget.
    """
    rest = math.prod(p.n_tiles for p in plans[1:])
    union = math.prod(p.union for p in plans)
    rows = G * math.prod(p.tile for p in plans)
    if fused:
        gathered = rest * union * heads * channels * itemsize if len(plans) > 1 else 0
        per_tile0, budget = gathered + rest * rows * union * itemsize, _CHUNK_BYTES // 4
    else:
        per_tile0, budget = rest * heads * rows * union * itemsize, _CHUNK_BYTES
    step = max(1, budget // max(per_tile0, 1))
    return [(t0, min(plans[0].n_tiles, t0 + step)) for t0 in range(0, plans[0].n_tiles, step)]


# ---- per-chunk kernels -------------------------------------------------------------------------
# Every chunk kernel takes tiles-major tensors (queries ``[c, rows, heads, D]``, keys ``[c, U, heads,
# C]``, LSE/delta ``[c, rows, heads]``) and returns the kernel convention: outputs and gradients as
# ``[c, heads, rows|U, C]`` and the LSE as ``[c, heads, rows]``.
#
# On CPU, PyTorch's flash-attention kernel takes an additive mask and returns the LSE; running it
# on each chunk's tiles does the masked softmax in one vectorised pass, several times faster than
# matmul + mask + softmax as separate ops. It needs equal Q/K/V head dims, and an additive mask
# lets a non-finite key leak into its tile-mates, so it is used only on CPU for finite keys;
# everything else takes the matmul route (which is also what CUDA runs).
_flash_fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_USE_FUSED = os.environ.get("NATTEN_MPS_PURE_FUSED", "1") != "0"


def _fused_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return (_USE_FUSED and _flash_fwd is not None and _flash_bwd is not None and q.device.type == "cpu"
            and q.shape[-1] == v.shape[-1] and bool(torch.isfinite(k.sum())))  # one pass; overflow errs safe


def _heads_major(*xs):
    return [x.transpose(1, 2) for x in xs]


def _fused_tile_backward(dot, qt, kt, vt, ot, lset, dlset, mask, scale, causal=False):
    """Gradients from the fused kernel (kernel layout ``[batch, heads, rows, C]``); a nonzero LSE
    gradient rides on an extra channel.

    The kernel forms ``delta = rowsum(dO * O)``; the LSE gradient needs ``delta - dlse``. Appending a
    zero channel to q, k, v, a one to dO and ``-dlse`` to O leaves the scores and dP unchanged and
    shifts delta by exactly ``-dlse``.
    """
    if dlset is not None:
        pad = lambda x, val: torch.cat([x, val], dim=-1)  # noqa: E731
        zeros_q = qt.new_zeros(qt.shape[:-1] + (1,))
        zeros_k = kt.new_zeros(kt.shape[:-1] + (1,))
        qt, kt, vt = pad(qt, zeros_q), pad(kt, zeros_k), pad(vt, zeros_k)
        dot = pad(dot, torch.ones_like(zeros_q))
        ot = pad(ot, -dlset.unsqueeze(-1))
    dq, dk, dv = _flash_bwd(dot, qt, kt, vt, ot, lset, 0.0, causal, attn_mask=mask, scale=scale)
    if dlset is not None:
        dq, dk, dv = dq[..., :-1], dk[..., :-1], dv[..., :-1]
    return dq, dk, dv


def _matmul_forward(qc, kc, vc, outside):
    """Masked softmax attention by batched matmuls; ``qc`` is pre-scaled."""
    q, k, v = _heads_major(qc, kc, vc)
    s = torch.matmul(q, k.transpose(-1, -2))
    if outside is not None:
        s.masked_fill_(outside.unsqueeze(1), float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    p = s.sub_(m).exp_()
    denom = p.sum(dim=-1, keepdim=True)
    o = torch.matmul(p, v).div_(denom)     # normalise the [rows, Dv] output, not [rows, U]
    return o, m.add_(denom.log_())[..., 0]


def _matmul_backward(doc, qc, kc, vc, lsec, deltac, outside, scale):
    """Gradients of :func:`_matmul_forward` from the saved LSE (``qc`` pre-scaled)."""
    do, q, k, v = _heads_major(doc, qc, kc, vc)
    s = torch.matmul(q, k.transpose(-1, -2))
    if outside is not None:
        s.masked_fill_(outside.unsqueeze(1), float("-inf"))
    p = s.sub_(lsec.transpose(1, 2).unsqueeze(-1)).exp_()
    dv = torch.matmul(p.transpose(-1, -2), do)
    ds = p.mul_(torch.matmul(do, v.transpose(-1, -2)).sub_(deltac.transpose(1, 2).unsqueeze(-1)))
    return torch.matmul(ds, k).mul_(scale), torch.matmul(ds.transpose(-1, -2), q), dv


# ---- undilated core ----------------------------------------------------------------------------

def _core_forward(q, k, v, kernel_size, stride, causal, scale):
    """``q`` ``[B, *L, Hkv, G, D]``, ``k``/``v`` ``[B, *L, Hkv, D|Dv]`` (public order, any strides).

    Returns ``out`` ``[B, *L, Hkv, G, Dv]`` and ``lse`` ``[B, *L, Hkv, G]`` in the compute dtype,
    as views where no copy was needed.
    """
    B, Hkv, G = q.shape[0], q.shape[-3], q.shape[-2]
    spatial = tuple(q.shape[1:-3])
    plans = _plans(spatial, kernel_size, stride, causal, q.device)
    dtype = _compute_dtype(q.dtype)
    fused = _fused_ok(q, k, v)
    heads, rest = B * Hkv, math.prod(p.n_tiles for p in plans[1:])
    qt = _to_tiles(q, plans, dtype)
    if not fused:
        qt = qt * scale
    kp, vp = _pad_keys(k, plans, dtype), _pad_keys(v, plans, dtype)
    chunks = _chunks(plans, heads, G, qt.element_size(), fused, k.shape[-1] + v.shape[-1])
    out = _Untiler(plans, spatial, B, Hkv, G, v.shape[-1], len(chunks), dtype, q.device)
    lse = _Untiler(plans, spatial, B, Hkv, G, 1, len(chunks), dtype, q.device)
    for t0, t1 in chunks:
        qc = qt[t0 * rest:t1 * rest]
        kc, vc = _gather_keys(kp, plans, t0, t1), _gather_keys(vp, plans, t0, t1)
        if fused:
            o, m = _flash_fwd(*_heads_major(qc, kc, vc), 0.0, False, scale=scale,
                              attn_mask=_head_mask(_bias(plans, t0, t1, G, dtype), heads))
        else:
            o, m = _matmul_forward(qc, kc, vc, _outside(plans, t0, t1, G))
        out.add(t0, t1, o.transpose(1, 2))
        lse.add(t0, t1, m.transpose(1, 2).unsqueeze(-1))
    return out.result(), lse.result()[..., 0]


def _core_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, causal, scale):
    """Gradients of :func:`_core_forward` (same layouts; ``lse``/``dlse`` ``[B, *L, Hkv, G]``,
    ``dlse`` None when zero). Returns public-order ``dq, dk, dv`` in the compute dtype."""
    B, Hkv, G = q.shape[0], q.shape[-3], q.shape[-2]
    spatial = tuple(q.shape[1:-3])
    plans = _plans(spatial, kernel_size, stride, causal, q.device)
    dtype = _compute_dtype(q.dtype)
    fused = _fused_ok(q, k, v)
    heads, rest = B * Hkv, math.prod(p.n_tiles for p in plans[1:])
    qt, dot = _to_tiles(q, plans, dtype), _to_tiles(dout, plans, dtype)
    lset = _to_tiles(lse.unsqueeze(-1), plans, dtype)[..., 0]
    if fused:   # the kernel forms rowsum(dO * O) itself; a nonzero dlse rides on an extra channel
        ot = _to_tiles(out, plans, dtype)
        dlset = None if dlse is None else _to_tiles(dlse.unsqueeze(-1), plans, dtype)[..., 0]
    else:
        qt = qt * scale
        delta = (dout.to(dtype) * out.to(dtype)).sum(-1)
        if dlse is not None:
            delta = delta - dlse.to(dtype)
        deltat = _to_tiles(delta.unsqueeze(-1), plans, dtype)[..., 0]
    kp, vp = _pad_keys(k, plans, dtype), _pad_keys(v, plans, dtype)
    dkp, dvp = torch.zeros_like(kp), torch.zeros_like(vp)
    chunks = _chunks(plans, heads, G, qt.element_size(), fused, k.shape[-1] + v.shape[-1])
    dq = _Untiler(plans, spatial, B, Hkv, G, q.shape[-1], len(chunks), dtype, q.device)
    for t0, t1 in chunks:
        rows = slice(t0 * rest, t1 * rest)
        kc, vc = _gather_keys(kp, plans, t0, t1), _gather_keys(vp, plans, t0, t1)
        if fused:
            dqc, dkc, dvc = _fused_tile_backward(
                *_heads_major(dot[rows], qt[rows], kc, vc, ot[rows], lset[rows]),
                None if dlset is None else dlset[rows].transpose(1, 2),
                _head_mask(_bias(plans, t0, t1, G, dtype), heads), scale)
        else:
            dqc, dkc, dvc = _matmul_backward(dot[rows], qt[rows], kc, vc, lset[rows], deltat[rows],
                                             _outside(plans, t0, t1, G), scale)
        dq.add(t0, t1, dqc.transpose(1, 2))
        _scatter_keys(dkp, dkc.transpose(1, 2), plans, t0, t1)
        _scatter_keys(dvp, dvc.transpose(1, 2), plans, t0, t1)
    return dq.result(), _crop_keys(dkp, plans, spatial, B, Hkv), _crop_keys(dvp, plans, spatial, B, Hkv)


# ---- public entry points: GQA view, dilation groups, dtype -------------------------------------

def _dilation_groups(spatial, dilation):
    """Yield the strided slices (over spatial dims) of each dilation group."""
    for combo in itertools.product(*[range(d) for d in dilation]):
        yield tuple(slice(g, None, d) for g, d in zip(combo, dilation))


def _materialize(x: torch.Tensor, shape, dtype) -> torch.Tensor:
    """A public-order result (maybe a strided view) as a contiguous tensor of ``shape`` in ``dtype``."""
    if x.dtype == dtype and x.is_contiguous():
        return x.view(shape)
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x).view(shape)


def _run_groups(core, dilation, spatial, inputs, results):
    """Run ``core`` on every dilation group (each an undilated problem on strided views of
    ``inputs``) and write its results into the matching slices of the ``results`` views."""
    for sl in _dilation_groups(spatial, dilation):
        index = (slice(None),) + sl
        for dst, src in zip(results, core(*[None if x is None else x[index] for x in inputs])):
            dst[index] = src


def na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale):
    """Neighborhood attention forward. ``q`` ``[B, *L, H, D]``, ``k``/``v`` ``[B, *L, Hkv, D(v)]``.

    Returns ``out`` ``[B, *L, H, Dv]`` (input dtype) and ``lse`` ``[B, *L, H]`` (float32, natural log).
    """
    Hkv = k.shape[-2]
    G = q.shape[-2] // Hkv
    out_shape, lse_shape = q.shape[:-1] + (v.shape[-1],), q.shape[:-1]
    if q.numel() == 0:
        return q.new_empty(out_shape), q.new_empty(lse_shape, dtype=lse_dtype(q.dtype))
    qg = q.unflatten(-2, (Hkv, G))
    core = functools.partial(_core_forward, kernel_size=kernel_size, stride=stride, causal=is_causal, scale=scale)
    if all(d == 1 for d in dilation):
        o, l = core(qg, k, v)
        return _materialize(o, out_shape, q.dtype), _materialize(l, lse_shape, lse_dtype(q.dtype))
    out, lse = q.new_empty(out_shape), q.new_empty(lse_shape, dtype=lse_dtype(q.dtype))
    _run_groups(core, dilation, q.shape[1:-2], (qg, k, v),
                (out.unflatten(-2, (Hkv, G)), lse.unflatten(-1, (Hkv, G))))
    return out, lse


def na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale):
    """Gradients of :func:`na_forward` w.r.t. ``q, k, v`` given those of ``out`` and ``lse``."""
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    Hkv = k.shape[-2]
    G = q.shape[-2] // Hkv
    heads = lambda x: x.unflatten(-2, (Hkv, G))   # noqa: E731  [.., H, C] -> [.., Hkv, G, C]
    rows = lambda x: x.unflatten(-1, (Hkv, G))    # noqa: E731  [.., H] -> [.., Hkv, G]
    dlse = None if dlse is None or not bool(dlse.any()) else rows(dlse)
    inputs = (heads(dout), dlse, heads(q), k, v, heads(out), rows(lse))
    core = functools.partial(_core_backward, kernel_size=kernel_size, stride=stride, causal=is_causal, scale=scale)
    if all(d == 1 for d in dilation):
        dq, dk, dv = core(*inputs)
        return (_materialize(dq, q.shape, q.dtype), _materialize(dk, k.shape, k.dtype),
                _materialize(dv, v.shape, v.dtype))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _run_groups(core, dilation, q.shape[1:-2], inputs, (heads(dq), dk, dv))
    return dq, dk, dv


# ---- layout for dense attention ----------------------------------------------------------------

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
