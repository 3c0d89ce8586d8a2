"""Query tiles, their key windows and masks, and how tiles are laid out for a batched kernel.

Every batched attention kernel the pure path calls (PyTorch's CPU flash kernel, or batched matmuls)
sees four dims ``[kernel_batch, kernel_heads, rows, C]``, where rows and keys are each a single
strided dim. A *tiling* maps the public heads-last tensors onto that:

* queries ``[B, *L, Hkv, G, C]`` (a view of ``[B, *L, H, C]``) -> ``[kernel_batch, rows, kernel_heads, C]``
  with ``rows = prod(T_i) * G`` (the G query heads of a K/V head ride along as extra rows, so K/V
  are never repeated);
* keys ``[B, *L, Hkv, C]`` -> a zero-margined buffer whose windows are ``[kernel_batch, prod(U_i),
  kernel_heads, C]``;
* a mask ``[kernel_batch, rows, prod(U_i)]`` shared by every kernel head;
* and back: per-chunk outputs into the public layout, key gradients scattered into the buffer.

Two tilings share that interface:

* :class:`TilesMajor` (any rank): kernel_batch = tiles, kernel_heads = ``B * Hkv``. One mask
  serves every batch and head; queries and keys are gathered with one copy each.
* :class:`BatchMajor1D` (rank 1, finite inputs): kernel_batch = ``B * tiles``, kernel_heads =
  ``Hkv``. Queries, outputs and query gradients keep the public memory layout (no copies), and
  key windows are overlapping strided views of one buffer holding every batch.

Chunks are ranges ``[j0, j1)`` of a tiling's outer tile index, sized so per-chunk buffers stay
near a memory budget (never O(L^2) or O(L * K^d * D)).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..semantics import window_bounds


def default_tile(rank: int, length: int, kernel: int, axis: int = 0, flash_forward: bool = False) -> int:
    """Query tile per axis, from measurements on a 2-core CPU (``benchmarks/tune_tiles.py``).

    ``flash_forward``: the tile is for the forward pass on the CPU flash kernel. For rank 1 with
    ``5 <= kernel <= 17`` that forward runs 7-15% faster end to end (L = 256..4096) with tiles of
    ``33 - kernel`` queries, whose key windows are then exactly 32 keys, a multiple of the kernel's
    vector blocking; the backward, which pays for the partial last tile's padding on more tensors,
    was as fast or faster with 32.
    ``NATTEN_MPS_TILE_{rank}D`` overrides it: one int for every axis, or a comma list per axis.
    """
    env = os.environ.get(f"NATTEN_MPS_TILE_{rank}D")
    if env:
        parts = [int(x) for x in env.split(",")]
        t = parts[axis] if len(parts) == rank else parts[0]
    elif rank == 1:
        t = 33 - kernel if flash_forward and 5 <= kernel <= 17 else 32
    elif rank == 2:
        t = 8
    elif kernel <= 5:
        t = 2 if axis == 0 else 4      # (2, 4, 4) beat (4, 4, 4) by ~15% at 16^3 K=3
    else:
        t = 8
    return max(1, min(t, length))


@dataclass(frozen=True, eq=False)
class AxisPlan:
    tile: int                 # queries per tile on this axis
    n_tiles: int
    union: int                # keys gathered per tile on this axis
    pad_lo: int               # keys are read from the axis padded by pad_lo / pad_hi:
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
    # Tiles read keys at a uniform step (so the windows are strided views of the padded axis).
    pad_lo = max(0, int((tile_start - first).max()))
    union = int((last - (tile_start - pad_lo) + 1).max())
    pad_hi = max(0, (n - 1) * tile + union - pad_lo - length)
    key = (tile_start - pad_lo)[:, None] + torch.arange(union)[None, :]
    allowed = (key[:, None, :] >= lo[:, :, None]) & (key[:, None, :] <= hi[:, :, None])
    full = bool(allowed.all()) and union == length and pad_lo == 0 and pad_hi == 0
    return AxisPlan(tile, n, union, pad_lo, pad_hi, key.to(device), allowed.to(device), full)


def plans_for(spatial, kernel_size, stride, causal, device, flash_forward: bool = False) -> Tuple[AxisPlan, ...]:
    rank = len(spatial)
    return tuple(_axis_plan(spatial[i], kernel_size[i], stride[i], causal[i],
                            default_tile(rank, spatial[i], kernel_size[i], i, flash_forward), device)
                 for i in range(rank))


def clear_caches() -> None:
    """Forget cached plans and masks."""
    _axis_plan.cache_clear()
    _mask_cache.clear()


# ---- masks -------------------------------------------------------------------------------------

_mask_cache: Dict[tuple, Optional[torch.Tensor]] = {}


def _cached(key, build):
    value = _mask_cache.get(key, _MISSING)
    if value is _MISSING:             # (another thread may clear the cache at any time)
        if len(_mask_cache) > 64:
            _mask_cache.clear()
        value = _mask_cache[key] = build()
    return value


_MISSING = object()


def tile_mask(plans: Sequence[AxisPlan], t0: int, t1: int, G: int, additive: bool, dtype) -> Optional[torch.Tensor]:
    """Mask of first-axis tiles ``t0:t1``: ``[tiles, rows, prod(U)]``, rows = tile positions x G heads.

    ``additive``: 0 inside a query's window and -inf outside (for the fused kernel); otherwise bool,
    True outside (for ``masked_fill``, which a NaN key outside a window cannot leak through).
    None when every key of every tile is inside every window. Cached per shape.
    """
    return _cached((plans, t0, t1, G, additive, dtype), lambda: _build_mask(plans, t0, t1, G, additive, dtype))


def _build_mask(plans, t0, t1, G, additive, dtype):
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
    outside = ~allowed.reshape(tiles, rows, 1, cols).expand(tiles, rows, G, cols).reshape(tiles, rows * G, cols)
    if not additive:
        return outside
    return torch.zeros(outside.shape, dtype=dtype, device=outside.device).masked_fill_(outside, float("-inf"))


# ---- tilings -----------------------------------------------------------------------------------

def _pad_axes(x: torch.Tensor, first_dim: int, sizes: Sequence[int]) -> torch.Tensor:
    """Zero-pad dims ``first_dim, first_dim+1, ...`` at their end to ``sizes``."""
    pads = []
    for i in reversed(range(len(sizes))):
        pads += [0, sizes[i] - x.shape[first_dim + i]]
    if not any(pads):
        return x
    return torch.nn.functional.pad(x, [0, 0] * (x.dim() - first_dim - len(sizes)) + pads)


def _inverse(perm: Sequence[int]) -> List[int]:
    return sorted(range(len(perm)), key=list(perm).__getitem__)


class TilesMajor:
    """Kernel batch = query tiles (first axis outermost), kernel heads = ``B * Hkv``.

    Queries ``[tiles, rows, B*Hkv, C]`` are gathered with one copy (a view for rank 1 with
    ``B == G == 1``). Keys are zero-padded per axis into ``[*P, B*Hkv, C]`` (``P_i = pad_lo + L_i +
    pad_hi``); a tile's window is an ``unfold`` view of it for rank 1, and for rank > 1 a row gather
    (``index_select`` of ``B*Hkv*C``-long rows). Chunks run over the first axis's tiles.
    """

    def __init__(self, plans: Sequence[AxisPlan], spatial, B: int, Hkv: int, G: int):
        self.plans, self.spatial, self.B, self.Hkv, self.G = tuple(plans), tuple(spatial), B, Hkv, G
        self.rank = len(plans)
        self.padded = [p.n_tiles * p.tile for p in plans]          # query axes in whole tiles
        self.whole = self.padded == list(self.spatial)              # no query padding needed
        self.rest = math.prod(p.n_tiles for p in plans[1:])        # tiles per first-axis tile
        self.rows = math.prod(p.tile for p in plans) * G
        self.union = math.prod(p.union for p in plans)
        self.heads = B * Hkv
        self.outer = plans[0].n_tiles                              # chunked index range

    # queries and outputs: public-order [B, *S, Hkv, G, C] <-> [B, n0, T0, n1, T1, ..., Hkv, G, C]
    def _perm(self) -> List[int]:
        r = self.rank
        return [1 + 2 * i for i in range(r)] + [2 + 2 * i for i in range(r)] + [2 * r + 2, 0, 2 * r + 1, 2 * r + 3]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0]]
        for p in self.plans:
            shape += [p.n_tiles, p.tile]
        return x.view(shape + list(x.shape[-3:]))

    def chunk_index(self, j0: int, j1: int):
        """Index of chunk ``j0:j1`` in :meth:`split`'s view."""
        return (slice(None), slice(j0, j1))

    def queries(self, x: torch.Tensor, dtype) -> torch.Tensor:
        """Public-order ``[B, *L, Hkv, G, C]`` (any strides) -> ``[outer*rest, rows, heads, C]``."""
        x = _pad_axes(x if x.dtype == dtype else x.to(dtype), 1, self.padded)
        x = self.split(x).permute(self._perm())
        return x.reshape(self.outer * self.rest, self.rows, self.heads, x.shape[-1])

    def from_tiles(self, t: torch.Tensor) -> torch.Tensor:
        """Chunk ``[c*rest, rows, heads, C]`` -> view laid out like ``split(...)[chunk_index]``."""
        rest = [p.n_tiles for p in self.plans[1:]]
        shape = [t.shape[0] // self.rest] + rest + [p.tile for p in self.plans] + [self.G, self.B, self.Hkv, t.shape[-1]]
        return t.reshape(shape).permute(_inverse(self._perm()))

    # keys
    def key_buffer_bytes(self, channels: int, itemsize: int) -> int:
        padded = math.prod(p.pad_lo + n + p.pad_hi for p, n in zip(self.plans, self.spatial))
        return padded * self.heads * channels * itemsize

    def new_key_buffer(self, channels: int, dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """A zeroed, padded key buffer ``[*P, B*Hkv, C]`` (``P_i = pad_lo + L_i + pad_hi``) and the
        public-order view ``[B, *L, Hkv, C]`` of its interior: keys are copied in there, the
        margins stay zero."""
        r = self.rank
        P = [p.pad_lo + n + p.pad_hi for p, n in zip(self.plans, self.spatial)]
        buf = torch.zeros(P + [self.B, self.Hkv, channels], dtype=dtype, device=device)
        interior = buf[self._interior()].permute(r, *range(r), r + 1, r + 2)
        return buf.view(P + [self.heads, channels]), interior

    def _interior(self):
        return tuple(slice(p.pad_lo, p.pad_lo + n) for p, n in zip(self.plans, self.spatial))

    def crop_keys(self, buf: torch.Tensor) -> torch.Tensor:
        """Buffer -> public-order view ``[B, *L, Hkv, C]``."""
        r = self.rank
        x = buf[self._interior()].unflatten(r, (self.B, self.Hkv))
        return x.permute(r, *range(r), r + 1, r + 2)

    def _window_rows(self, j0: int, j1: int, device) -> torch.Tensor:
        """Buffer row (flattened ``*P``) of every key of every window of chunk ``j0:j1``, in the
        ``[c*rest, prod(U)]`` order. Cached per shape."""
        def build():
            r = self.rank
            sizes = [p.pad_lo + n + p.pad_hi for p, n in zip(self.plans, self.spatial)]
            lin = None
            for i, p in enumerate(self.plans):
                ix = p.key_index[j0:j1] if i == 0 else p.key_index
                shape = [1] * (2 * r)
                shape[i], shape[r + i] = ix.shape
                term = ((ix + p.pad_lo) * math.prod(sizes[i + 1:])).reshape(shape)
                lin = term if lin is None else lin + term
            return lin.reshape(-1).to(device)
        return _cached((self.plans, "rows", j0, j1, device), build)

    def window_scratch_rows(self, chunks: Sequence[Tuple[int, int]]) -> int:
        """Rows (of ``heads * C``) of the reusable output of :meth:`key_windows` (0 for rank 1:
        windows are views)."""
        return 0 if self.rank == 1 else max(j1 - j0 for j0, j1 in chunks) * self.rest * self.union

    def key_windows(self, buf: torch.Tensor, j0: int, j1: int, scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Buffer -> ``[c*rest, prod(U), heads, C]``, the keys of chunk ``j0:j1``.

        Rank 1: an overlapping ``unfold`` view of the padded axis. Higher ranks: one row gather
        (``index_select``) into ``scratch`` when given.
        """
        heads, C = buf.shape[-2], buf.shape[-1]
        if self.rank == 1:
            p = self.plans[0]
            x = buf.narrow(0, j0 * p.tile, (j1 - j0 - 1) * p.tile + p.union).unfold(0, p.union, p.tile)
            return x.permute(0, 3, 1, 2)                                  # [c, U, heads, C]
        rows = self._window_rows(j0, j1, buf.device)
        flat = buf.view(-1, heads * C)
        if scratch is None:
            out = flat.index_select(0, rows)
        else:
            out = torch.index_select(flat, 0, rows, out=scratch[:rows.shape[0]])
        return out.view(-1, self.union, heads, C)

    def key_grad_buffer(self, buf: torch.Tensor, chunks: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """A buffer shaped like ``buf`` for :meth:`scatter_keys` of every chunk (zeros)."""
        return torch.zeros(buf.shape, dtype=buf.dtype, device=buf.device)

    def scatter_keys(self, buf: torch.Tensor, grad: torch.Tensor, j0: int, j1: int) -> None:
        """Adjoint of :meth:`key_windows`: add ``grad`` ``[c*rest, prod(U), heads, C]`` into ``buf``."""
        rows = self._window_rows(j0, j1, buf.device)
        buf.view(-1, buf.shape[-2] * buf.shape[-1]).index_add_(0, rows, grad.reshape(rows.shape[0], -1))

    def mask(self, j0: int, j1: int, additive: bool, dtype) -> Optional[torch.Tensor]:
        return tile_mask(self.plans, j0, j1, self.G, additive, dtype)

    def chunks(self, budget: int, itemsize: int, fused: bool, channels: int) -> List[Tuple[int, int]]:
        """Per first-axis tile, the matmul route holds the score matrix; the fused route the mask
        plus, for rank > 1, the gathered keys and values (``channels = D + Dv``)."""
        if fused:
            gathered = self.union * self.heads * channels * itemsize if self.rank > 1 else 0
            per = self.rest * (gathered + self.rows * self.union * itemsize)
        else:
            per = self.rest * self.heads * self.rows * self.union * itemsize
        step = max(1, budget // max(per, 1))
        return [(j, min(self.outer, j + step)) for j in range(0, self.outer, step)]


class BatchMajor1D(TilesMajor):
    """Rank 1, fused route: kernel batch = ``B * tiles`` (batch outermost), kernel heads = ``Hkv``.

    Queries ``[B*n, T*G, Hkv, C]`` are a view of the public tensor when ``L`` is a whole number of
    tiles and ``G == 1`` or ``Hkv == 1`` (otherwise one copy, into a reused zero-tailed buffer when
    the caller passes one), and kernel outputs come back in the public layout. Keys
    of all batches share one buffer of rows ``pad_lo + b*S + i`` (``S = n*T``), so tile ``j``'s
    window is rows ``[j*T, j*T + U)``, an overlapping strided view. A window reaching past its own
    sequence reads margins or a neighbouring batch's keys, which its mask excludes; this needs
    finite keys and values (a masked entry then contributes exactly zero), as the fused route does.
    """

    def __init__(self, plans, spatial, B, Hkv, G):
        super().__init__(plans, spatial, B, Hkv, G)
        p = plans[0]
        self.S = p.n_tiles * p.tile
        self.outer, self.heads = B * p.n_tiles, Hkv
        self.segments = math.ceil(p.union / p.tile)          # a window spans this many tile-rows
        self.n_rows = (self.outer + self.segments) * p.tile     # >= (outer-1)*T + U and >= pad_lo + B*S

    def split(self, x):   # [B, S, Hkv, G, C] -> [B*n, T, Hkv, G, C]
        return x.view(self.outer, self.plans[0].tile, *x.shape[-3:])

    def chunk_index(self, j0, j1):
        return (slice(j0, j1),)

    def queries(self, x, dtype, padded=None):
        """As :meth:`TilesMajor.queries`; ``padded``: a reusable ``[B, S, Hkv, G, C]`` buffer whose
        rows past ``L`` are zero, used instead of a fresh padded copy when ``L < S``."""
        if not self.whole:
            if padded is None:
                x = _pad_axes(x.to(dtype), 1, self.padded)              # [B, S, Hkv, G, C]
            else:
                padded[:, :self.spatial[0]].copy_(x)
                x = padded
        elif x.dtype != dtype:
            x = x.to(dtype)
        if self.G == 1:
            return x.view(self.outer, self.rows, self.Hkv, x.shape[-1]) if x.is_contiguous() else \
                x.reshape(self.outer, self.rows, self.Hkv, x.shape[-1])
        return x.transpose(2, 3).reshape(self.outer, self.rows, self.Hkv, x.shape[-1])

    def from_tiles(self, t):
        return t.reshape(t.shape[0], self.plans[0].tile, self.G, self.Hkv, t.shape[-1]).transpose(2, 3)

    def key_buffer_bytes(self, channels, itemsize):
        return self.n_rows * self.Hkv * channels * itemsize

    def new_key_buffer(self, channels, dtype, device):
        p = self.plans[0]
        buf = torch.zeros([self.n_rows, self.Hkv, channels], dtype=dtype, device=device)
        data = buf.narrow(0, p.pad_lo, self.B * self.S).view(self.B, self.S, self.Hkv, channels)
        return buf, data[:, :self.spatial[0]] if self.S != self.spatial[0] else data

    def crop_keys(self, buf):
        keys = buf[self.plans[0].pad_lo:self.plans[0].pad_lo + self.B * self.S].view(self.B, self.S, self.Hkv, -1)
        return keys if self.whole else keys[:, :self.spatial[0]]

    def key_grad_buffer(self, buf, chunks):
        """With one chunk, the first blocks of the windows tile rows ``[0, outer*T)`` exactly once
        and are copied in (see :meth:`scatter_keys`), so only the rows past them start at zero."""
        if len(chunks) > 1:
            return torch.zeros(buf.shape, dtype=buf.dtype, device=buf.device)
        out = torch.empty(buf.shape, dtype=buf.dtype, device=buf.device)
        out[self.outer * self.plans[0].tile:].zero_()
        return out

    def scatter_keys(self, buf, grad, j0, j1):
        """Window ``j`` covers buffer rows ``[j*T, j*T + U)``: its ``s``-th block of ``T`` keys lands
        on tile-row ``j + s``, so each block of every window is added with one strided ``add_``
        (the first block copied instead when one chunk covers every tile)."""
        T, U = self.plans[0].tile, self.plans[0].union
        row = buf.shape[-2] * buf.shape[-1]                              # elements per key row
        n = grad.shape[0]
        if not grad.is_contiguous():
            grad = grad.contiguous()
        for s in range(self.segments):
            w = min(T, U - s * T)
            # [n, w, row] blocks: rows (j + s)*T .. +w of the buffer, rows s*T .. +w of each window
            dst = buf.as_strided((n, w, row), (T * row, row, 1), buf.storage_offset() + (j0 + s) * T * row)
            src = grad.as_strided((n, w, row), (U * row, row, 1), grad.storage_offset() + s * T * row)
            if s == 0 and j1 - j0 == self.outer:
                dst.copy_(src)
            else:
                dst.add_(src)

    def mask(self, j0, j1, additive, dtype):
        n = self.plans[0].n_tiles
        if j1 - j0 <= n and j0 // n == (j1 - 1) // n:                   # within one batch
            return tile_mask(self.plans, j0 % n, j0 % n + (j1 - j0), self.G, additive, dtype)
        one = tile_mask(self.plans, 0, n, self.G, additive, dtype)       # whole batches
        return None if one is None else _cached(
            (self.plans, "batches", (j1 - j0) // n, self.G, additive, dtype),
            lambda: one.repeat((j1 - j0) // n, 1, 1))

    def chunks(self, budget, itemsize, fused, channels):
        """Whole batches per chunk when one batch's mask fits the budget, else tile ranges within
        a batch."""
        n = self.plans[0].n_tiles
        per_tile = self.rows * self.union * itemsize
        step = max(1, budget // max(per_tile, 1))
        if step >= n:
            step -= step % n
            return [(j, min(self.outer, j + step)) for j in range(0, self.outer, step)]
        return [(b * n + t, b * n + min(n, t + step)) for b in range(self.B) for t in range(0, n, step)]


class Untiler:
    """Collects per-chunk kernel outputs ``[c*rest, rows, heads, C]`` into a public-order
    ``[B, *L, Hkv, G, C]`` tensor. With one chunk the result stays a view of the kernel's output
    (no copy when the layouts agree); with several, each chunk is copied into place."""

    def __init__(self, tiling: TilesMajor, channels: int, n_chunks: int, dtype, device):
        self.tiling, self.buf = tiling, None
        self.shape = [tiling.B] + tiling.padded + [tiling.Hkv, tiling.G, channels]
        if n_chunks > 1:
            self.buf = torch.empty(self.shape, dtype=dtype, device=device)

    def add(self, j0: int, j1: int, tiles: torch.Tensor) -> None:
        piece = self.tiling.from_tiles(tiles)
        if self.buf is None:
            self.buf = piece.reshape(self.shape)
        else:
            self.tiling.split(self.buf)[self.tiling.chunk_index(j0, j1)].copy_(piece)

    def result(self) -> torch.Tensor:
        if self.tiling.whole:
            return self.buf
        return self.buf[(slice(None),) + tuple(slice(0, n) for n in self.tiling.spatial)]
