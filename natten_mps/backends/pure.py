"""Device-agnostic blocked neighborhood attention in plain PyTorch (CPU, CUDA, MPS fallback).

Algorithm (one generic N-d routine, :func:`_core_forward` / :func:`_core_backward`):

* Dilation is removed by regrouping: each of the ``prod(dilation)`` interleaved groups is an
  undilated problem on a strided view of the public tensors.
* Queries are cut into tiles of ``T`` positions per axis. Because window starts never decrease
  along an axis, the union of the windows of a tile is an interval of at most ``U`` keys per axis
  (``U`` ~ ``T + K``). Each tile's ``G * prod(T)`` queries attend densely to its ``prod(U)`` keys,
  with the keys outside each query's exact window masked (a mask built per axis and cached, never
  an O(L^2) mask). How tiles, key windows and masks are laid out for the batched kernel is a
  *tiling* (:mod:`.tiling`): rank 1 on the fused route keeps the public memory layout and reads
  key windows as strided views; otherwise tiles are gathered with one copy.
* On CPU every chunk of tiles runs through PyTorch's fused flash-attention kernel with an additive
  mask; elsewhere (CUDA, MPS fallback, unequal head dims, non-finite inputs) through batched
  matmuls, ``masked_fill`` and a softmax with its log-sum-exp.
* Tiles are processed in chunks so peak memory is bounded by a budget, not by the input size.
* Backward recomputes the probabilities from the saved LSE, chunk by chunk, and scatters key/value
  gradients back (rank 1: strided block copy/add; otherwise ``index_add_``).
* Small problems (at most ``pure_small.MAX_TOKENS`` positions) skip the tiling: one fused
  dense call with the neighbourhood as a kept ``[T, T]`` mask (:mod:`.pure_small`).
* Forward and backward choose their tiles separately (:func:`.tiling.default_tile`), and on CPU
  reuse per-signature buffers across calls (:class:`_Buffers`), so a call copies its inputs in and
  allocates only what it returns.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from typing import NamedTuple, Optional, Tuple

import torch

from . import pure_small, workspace
from .cpu_flash import _flash_bwd, _flash_fwd, _fused_tile_backward  # noqa: F401
from . import tiling
from .tiling import BatchMajor1D, TilesMajor, Untiler, plans_for

# Per-chunk memory budgets: the matmul route's score matrices, and the fused route's working set
# (mask + gathered windows), which is kept cache-sized: 4 MiB ran 12-25% faster than 12 MiB on the
# 2-D and 3-D benchmark configurations and the same on 1-D (2-core CPU).
_CHUNK_BYTES = int(os.environ.get("NATTEN_MPS_PURE_CHUNK_BYTES", 48 << 20))
_FUSED_WORKING_SET = 4 << 20


def lse_dtype(dtype):
    """LSE is float32 for every input dtype except float64 (kept for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- per-chunk kernels -------------------------------------------------------------------------
# Every chunk kernel takes tiles-major tensors (queries ``[c, rows, heads, D]``, keys ``[c, U, heads,
# C]``, LSE/delta ``[c, rows, heads]``) and returns the kernel convention: outputs and gradients as
# ``[c, heads, rows|U, C]`` and the LSE as ``[c, heads, rows]``.
#
# On CPU, PyTorch's flash-attention kernel takes an additive mask and returns the LSE; running it
# on each chunk's tiles does the masked softmax in one vectorised pass, several times faster than
# matmul + mask + softmax as separate ops. It needs equal Q/K/V head dims. A masked entry enters it
# as ``0 * value`` (and ``score + -inf``), so a non-finite key, value or output gradient outside a
# window would leak into its tile-mates; but such a leak always leaves a non-finite result (NaN from
# 0 * inf, 0 * NaN or inf - inf), so a finite result is exact. The core therefore runs the fused
# route first and redoes a problem on the matmul route only when its result is not finite (which a
# non-finite input inside a window legitimately causes too). Elsewhere (CUDA, MPS fallback,
# unequal head dims) the matmul route runs directly; it applies masks with ``masked_fill``.
_USE_FUSED = os.environ.get("NATTEN_MPS_PURE_FUSED", "1") != "0"


def _fused_route(q: torch.Tensor, v: torch.Tensor) -> bool:
    """The fused kernel applies: CPU, equal head dims (and not switched off)."""
    return (_USE_FUSED and _flash_fwd is not None and _flash_bwd is not None and q.device.type == "cpu"
            and q.shape[-1] == v.shape[-1])


def _finite(x: torch.Tensor) -> bool:
    """One reduction; a sum overflowing to inf errs on the safe side (a needless redo)."""
    return math.isfinite(x.sum().item())


def _head_mask(mask, heads: int):
    """``[tiles, rows, U]`` -> ``[tiles, heads, rows, U]`` without copying (every head shares it)."""
    return None if mask is None else mask.unsqueeze(1).expand(mask.shape[0], heads, *mask.shape[1:])


def _heads_major(*xs):
    return [x.transpose(1, 2) for x in xs]


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

class _Setup(NamedTuple):
    """Everything about one undilated problem that depends only on its signature (cached)."""
    tiling: TilesMajor
    chunks: Tuple[Tuple[int, int], ...]
    dtype: torch.dtype                      # compute dtype
    masks: Tuple[Optional[torch.Tensor], ...]   # per chunk, in the route's kernel convention
    key: tuple                              # the signature it was built for


def _setup(q, k, v, kernel_size, stride, causal, fused, forward: bool) -> _Setup:
    """Tiling, chunks, masks and compute dtype of one undilated problem (public-order views), for
    the forward or the backward pass (their best tiles may differ)."""
    rank = q.dim() - 4
    budget = min(_CHUNK_BYTES, _FUSED_WORKING_SET) if fused else _CHUNK_BYTES
    key = (q.shape, k.shape[-1], v.shape[-1], tuple(kernel_size), tuple(stride), tuple(causal), fused,
           fused and forward, q.dtype, q.device, budget, os.environ.get(_TILE_ENV[rank]))
    setup = _SETUPS.get(key)
    if setup is None:   # (bounded: a process cycling through many signatures rebuilds them)
        setup = _setup_for(tuple(q.shape[1:-3]), q.shape[0], q.shape[-3], q.shape[-2], *key[3:8], q.dtype,
                           q.device, k.shape[-1] + v.shape[-1], budget, key[-1])
        if len(_SETUPS) >= 256:
            _SETUPS.clear()
        _SETUPS[key] = setup
    return setup


_SETUPS: dict = {}
_TILE_ENV = {r: f"NATTEN_MPS_TILE_{r}D" for r in (1, 2, 3)}


def clear_caches() -> None:
    """Forget cached setups, plans and masks (this thread's kept buffers: ``workspace.release()``)."""
    _SETUPS.clear()
    tiling.clear_caches()


def _setup_for(spatial, B, Hkv, G, kernel_size, stride, causal, fused, flash_forward, dtype, device, channels,
               budget, tile_env):
    key = (spatial, B, Hkv, G, kernel_size, stride, causal, fused, flash_forward, dtype, device, channels, budget,
           tile_env)
    plans = plans_for(spatial, kernel_size, stride, causal, device, flash_forward)
    tiling = (BatchMajor1D if fused and len(spatial) == 1 else TilesMajor)(plans, spatial, B, Hkv, G)
    dtype = _compute_dtype(dtype)
    chunks = tuple(tiling.chunks(budget, dtype.itemsize, fused, channels))
    if fused:   # additive, one copy shared by every kernel head
        masks = tuple(_head_mask(tiling.mask(j0, j1, True, dtype), tiling.heads) for j0, j1 in chunks)
    else:
        masks = tuple(tiling.mask(j0, j1, False, dtype) for j0, j1 in chunks)
    return _Setup(tiling, chunks, dtype, masks, key)


class _Buffers:
    """The buffers one problem signature (and pass) reuses: zero-margined key and value buffers with
    their interiors (where each call copies its keys and values), gathered-window scratch (rank > 1)
    or every chunk's windows as views (rank 1), and zero-tailed query-shaped buffers where the
    batch-major tiling's last tile is partial. Kept per thread across calls on CPU
    (:func:`workspace.kept`); nothing returned to the caller is a view of them."""

    def __init__(self, setup, key_channels: int, value_channels: int, device):
        tiling, dtype = setup.tiling, setup.dtype
        self.keys, self.key_in = tiling.new_key_buffer(key_channels, dtype, device)
        self.values, self.value_in = tiling.new_key_buffer(value_channels, dtype, device)
        rows = tiling.window_scratch_rows(setup.chunks)
        self.scratch = [torch.empty(rows, b.shape[-2] * b.shape[-1], dtype=dtype, device=device) if rows else None
                        for b in (self.keys, self.values)]
        self.views = None
        if tiling.rank == 1:   # per chunk: [c, U, heads, C] views and the kernel's heads-major [c, heads, U, C]
            windows = [(tiling.key_windows(self.keys, j0, j1), tiling.key_windows(self.values, j0, j1))
                       for j0, j1 in setup.chunks]
            self.views = [(k, v, k.transpose(1, 2), v.transpose(1, 2)) for k, v in windows]
        self.setup, self.device, self._padded = setup, device, {}
        self.queries_padded = _pads_queries(setup)

    @staticmethod
    def nbytes(setup, key_channels: int, value_channels: int) -> int:
        tiling, size = setup.tiling, setup.dtype.itemsize
        scratch = tiling.window_scratch_rows(setup.chunks) * tiling.heads
        padded = 0 if not _pads_queries(setup) else \
            math.prod(tiling.padded) * tiling.B * tiling.Hkv * tiling.G * (key_channels + 2 * value_channels + 2)
        return (tiling.key_buffer_bytes(key_channels, size) + tiling.key_buffer_bytes(value_channels, size)
                + scratch * (key_channels + value_channels) * size + padded * size)

    def padded(self, name: str, channels: int) -> Optional[torch.Tensor]:
        """A reusable zero-tailed ``[B, *padded, Hkv, G, C]`` buffer for query-shaped input ``name``
        (batch-major tiling with a partial last tile), else None."""
        if not self.queries_padded:
            return None
        buf = self._padded.get(name)
        if buf is None:
            t = self.setup.tiling
            buf = self._padded[name] = torch.zeros([t.B] + t.padded + [t.Hkv, t.G, channels],
                                                   dtype=self.setup.dtype, device=self.device)
        return buf

    def fill(self, k: torch.Tensor, v: torch.Tensor) -> "_Buffers":
        self.key_in.copy_(k)
        self.value_in.copy_(v)
        return self

    def windows(self, tiling, index: int, j0: int, j1: int, heads_major: bool):
        """Chunk ``index`` (tiles ``j0:j1``): keys and values ``[c*rest, prod(U), heads, C]``, or
        ``[c*rest, heads, prod(U), C]`` when ``heads_major``."""
        if self.views is not None:
            return self.views[index][2:] if heads_major else self.views[index][:2]
        kc = tiling.key_windows(self.keys, j0, j1, self.scratch[0])
        vc = tiling.key_windows(self.values, j0, j1, self.scratch[1])
        return (kc.transpose(1, 2), vc.transpose(1, 2)) if heads_major else (kc, vc)


def _pads_queries(setup) -> bool:
    return isinstance(setup.tiling, BatchMajor1D) and not setup.tiling.whole


def _key_value_buffers(setup, k, v) -> _Buffers:
    """This call's key/value buffers holding ``k`` and ``v``; they never outlive the call."""
    Dk, Dv = k.shape[-1], v.shape[-1]
    build = functools.partial(_Buffers, setup, Dk, Dv, k.device)
    if k.device.type != "cpu":
        return build().fill(k, v)
    nbytes = functools.partial(_Buffers.nbytes, setup, Dk, Dv)
    return workspace.kept((setup.key, Dk, Dv), nbytes, build).fill(k, v)


def _queries(tiling, x, dtype, kv: _Buffers, name: str) -> torch.Tensor:
    """``tiling.queries`` of ``x``, padded (when needed) in this signature's kept buffer ``name``."""
    if kv.queries_padded:
        return tiling.queries(x, dtype, kv.padded(name, x.shape[-1]))
    return tiling.queries(x, dtype)


def _identity(x):
    return x


def _rows(x: torch.Tensor, tiling, j0: int, j1: int, chunks) -> torch.Tensor:
    """The tiles-major rows of chunk ``j0:j1`` (the tensor itself for a single chunk)."""
    return x if len(chunks) == 1 else x[j0 * tiling.rest:j1 * tiling.rest]


def _core_forward(q, k, v, kernel_size, stride, causal, scale):
    """``q`` ``[B, *L, Hkv, G, D]``, ``k``/``v`` ``[B, *L, Hkv, D|Dv]`` (public order, any strides).

    Returns ``out`` ``[B, *L, Hkv, G, Dv]`` and ``lse`` ``[B, *L, Hkv, G]`` in the compute dtype,
    as views where no copy was needed.
    """
    if _fused_route(q, v):
        out, lse = _tiled_forward(q, k, v, kernel_size, stride, causal, scale, True)
        # A leak (a NaN score, or 0 * a non-finite value) puts a NaN into its row's output.
        if _finite(out):
            return out, lse
    return _tiled_forward(q, k, v, kernel_size, stride, causal, scale, False)


def _tiled_forward(q, k, v, kernel_size, stride, causal, scale, fused):
    setup = _setup(q, k, v, kernel_size, stride, causal, fused, True)
    tiling, chunks, dtype = setup.tiling, setup.chunks, setup.dtype
    kv = _key_value_buffers(setup, k, v)
    qt = _queries(tiling, q, dtype, kv, "q")
    if not fused:
        qt = qt * scale
    out = Untiler(tiling, v.shape[-1], len(chunks), dtype, q.device)
    lse = Untiler(tiling, 1, len(chunks), dtype, q.device)
    for index, ((j0, j1), mask) in enumerate(zip(chunks, setup.masks)):
        qc = _rows(qt, tiling, j0, j1, chunks)
        kc, vc = kv.windows(tiling, index, j0, j1, fused)
        if fused:
            o, m = _flash_fwd(qc.transpose(1, 2), kc, vc, 0.0, False, scale=scale, attn_mask=mask)
        else:
            o, m = _matmul_forward(qc, kc, vc, mask)
        out.add(j0, j1, o.transpose(1, 2))
        lse.add(j0, j1, m.transpose(1, 2).unsqueeze(-1))
    return out.result(), lse.result()[..., 0]


def _core_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, causal, scale):
    """Gradients of :func:`_core_forward` (same layouts; ``lse``/``dlse`` ``[B, *L, Hkv, G]``,
    ``dlse`` None when zero). Returns public-order ``dq, dk, dv`` in the compute dtype."""
    args = (dout, dlse, q, k, v, out, lse, kernel_size, stride, causal, scale)
    if _fused_route(q, v):
        dq, dk, dv = _tiled_backward(*args, True)
        if _finite(dq):      # a leak through a masked entry always reaches some query's gradient
            return dq, dk, dv
    return _tiled_backward(*args, False)


def _tiled_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, causal, scale, fused):
    setup = _setup(q, k, v, kernel_size, stride, causal, fused, False)
    tiling, chunks, dtype = setup.tiling, setup.chunks, setup.dtype
    kv = _key_value_buffers(setup, k, v)
    qt, dot = _queries(tiling, q, dtype, kv, "q"), _queries(tiling, dout, dtype, kv, "dout")
    lset = _queries(tiling, lse.unsqueeze(-1), dtype, kv, "lse")[..., 0]
    if fused:   # the kernel forms rowsum(dO * O) itself; a nonzero dlse rides on an extra channel
        ot = _queries(tiling, out, dtype, kv, "out")
        dlset = None if dlse is None else _queries(tiling, dlse.unsqueeze(-1), dtype, kv, "dlse")[..., 0]
    else:
        qt = qt * scale
        delta = (dout.to(dtype) * out.to(dtype)).sum(-1)
        if dlse is not None:
            delta = delta - dlse.to(dtype)
        deltat = tiling.queries(delta.unsqueeze(-1), dtype)[..., 0]
    dkb = dvb = None
    dq = Untiler(tiling, q.shape[-1], len(chunks), dtype, q.device)
    for index, ((j0, j1), mask) in enumerate(zip(chunks, setup.masks)):
        rows = _identity if len(chunks) == 1 else \
            functools.partial(_rows, tiling=tiling, j0=j0, j1=j1, chunks=chunks)
        kc, vc = kv.windows(tiling, index, j0, j1, fused)
        if fused:
            dqc, dkc, dvc = _fused_tile_backward(
                *_heads_major(rows(dot), rows(qt)), kc, vc, *_heads_major(rows(ot), rows(lset)),
                None if dlset is None else rows(dlset).transpose(1, 2), mask, scale)
        else:
            dqc, dkc, dvc = _matmul_backward(rows(dot), rows(qt), kc, vc, rows(lset), rows(deltat), mask, scale)
        dq.add(j0, j1, dqc.transpose(1, 2))
        # Each key-gradient buffer is made once its chunk's kernel output exists, and that output is
        # dropped right after its scatter: the value-gradient buffer then reuses the key output's
        # freed memory instead of growing the heap (fewer page faults on small problems).
        dkb = tiling.key_grad_buffer(kv.keys, chunks) if dkb is None else dkb
        tiling.scatter_keys(dkb, dkc.transpose(1, 2), j0, j1)
        del dkc
        dvb = tiling.key_grad_buffer(kv.values, chunks) if dvb is None else dvb
        tiling.scatter_keys(dvb, dvc.transpose(1, 2), j0, j1)
        del dvc
    return dq.result(), tiling.crop_keys(dkb), tiling.crop_keys(dvb)


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


def _split_heads(x: torch.Tensor, Hkv: int, G: int) -> torch.Tensor:
    """``[..., H, C]`` -> ``[..., Hkv, G, C]`` (a view for any strides: one dim is split)."""
    return x.view(x.shape[:-2] + (Hkv, G, x.shape[-1]))


def na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale):
    """Neighborhood attention forward. ``q`` ``[B, *L, H, D]``, ``k``/``v`` ``[B, *L, Hkv, D(v)]``.

    Returns ``out`` ``[B, *L, H, Dv]`` (input dtype) and ``lse`` ``[B, *L, H]`` (float32, natural log).
    """
    Hkv = k.shape[-2]
    G = q.shape[-2] // Hkv
    out_shape, lse_shape = q.shape[:-1] + (v.shape[-1],), q.shape[:-1]
    if q.numel() == 0:
        return q.new_empty(out_shape), q.new_empty(lse_shape, dtype=lse_dtype(q.dtype))
    mask = pure_small.mask_for(q, k, v, kernel_size, stride, dilation, is_causal)
    if mask is not None:       # a small problem: one masked dense call
        result = pure_small.forward(q, k, v, mask, scale)
        if result is not None:
            return result
    qg = _split_heads(q, Hkv, G)
    core = functools.partial(_core_forward, kernel_size=kernel_size, stride=stride, causal=is_causal, scale=scale)
    if all(d == 1 for d in dilation):
        o, l = core(qg, k, v)
        return _materialize(o, out_shape, q.dtype), _materialize(l, lse_shape, lse_dtype(q.dtype))
    out, lse = q.new_empty(out_shape), q.new_empty(lse_shape, dtype=lse_dtype(q.dtype))
    _run_groups(core, dilation, q.shape[1:-2], (qg, k, v),
                (_split_heads(out, Hkv, G), lse.view(lse.shape[:-1] + (Hkv, G))))
    return out, lse


def na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale):
    """Gradients of :func:`na_forward` w.r.t. ``q, k, v`` given those of ``out`` and ``lse``."""
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    mask = pure_small.mask_for(q, k, v, kernel_size, stride, dilation, is_causal)
    if mask is not None:      # a small problem: one masked dense call
        grads = pure_small.backward(dout, dlse, q, k, v, out, lse, mask, scale)
        if _finite(grads[0]):  # a leak through a masked entry reaches some query's gradient
            return grads
    Hkv = k.shape[-2]
    G = q.shape[-2] // Hkv
    heads = functools.partial(_split_heads, Hkv=Hkv, G=G)              # [.., H, C] -> [.., Hkv, G, C]
    rows = lambda x: x.view(x.shape[:-1] + (Hkv, G))    # noqa: E731  [.., H] -> [.., Hkv, G]
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

def _dense_fused_ok(q, k, v, is_causal: bool) -> bool:
    """Non-causal: no entry is masked, so nothing can leak. Causal: finite keys and values."""
    return _fused_route(q, v) and (not is_causal or (_finite(k) and _finite(v)))


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


def attention_forward_heads_first(q, k, v, is_causal: bool, scale: float):
    """Dense attention on heads-first tensors in one call of the CPU flash kernel, where it applies
    directly: ``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]`` (one head per key head, float32
    or float64, any strides, non-empty) -> (out ``[B, H, Lq, D]``, a strided view of token-major
    memory; lse ``[B, H, Lq]``). Returns ``None`` where it does not apply (the caller then takes
    :func:`attention_forward`). No copies: sageattn's common case, where a few tensor ops matter at
    L=256."""
    if (q.shape[1] != k.shape[1] or q.dtype not in (torch.float32, torch.float64) or not _fused_route(q, v)
            or 0 in (q.shape[0], q.shape[2], k.shape[2])):
        return None
    if is_causal and not (_finite(k) and _finite(v)):
        return None
    return _flash_fwd(q, k, v, 0.0, is_causal, scale=scale)


def attention_forward(q, k, v, is_causal: bool, scale: float, contiguous: bool = True):
    """Dense attention. ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, Hkv, D(v)]`` -> (out, lse).

    ``contiguous=False`` (eager callers only, never the registered op, whose fake kernel promises
    contiguous outputs) lets ``out`` be a strided view of the kernel's buffer instead of a copy."""
    B, Lq, H, _ = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    if B == 0 or Lq == 0 or Lk == 0:
        return (q.new_zeros(B, Lq, H, v.shape[-1]), q.new_full((B, Lq, H), float("-inf"), dtype=lse_dtype(q.dtype)))
    fast = attention_forward_heads_first(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal, scale)
    if fast is not None:
        o = fast[0].transpose(1, 2)
        return (o.contiguous() if contiguous else o), fast[1].transpose(1, 2).contiguous()
    qi = to_internal(q, Hkv, True)                   # [N, G, Lq, D]
    ki, vi = to_internal(k, Hkv, False), to_internal(v, Hkv, False)
    N, G = qi.shape[:2]
    if _dense_fused_ok(qi, ki, vi, is_causal):
        qf, kf, vf = _dense_fused_layout(qi, ki, vi, is_causal)
        # [B, Hkv, ...] rather than [B*Hkv, 1, ...]: the kernel splits its work over the first two
        # axes, and this is the split SDPA's own call gets (measured 15% faster at B=2, H=8, L=256)
        qf, kf, vf = (t.reshape(B, -1, *t.shape[2:]) for t in (qf, kf, vf))
        o, m = _flash_fwd(qf, kf, vf, 0.0, is_causal, scale=scale)
        # o is [B, Hkv, G*Lq | Lq, Dv] (the kernel's memory is token-major, so for G = 1 the public
        # layout is a view of it: no copy); m is [B, Hkv, G*Lq | Lq]
        o = o.reshape(B, Hkv, G, Lq, -1).permute(0, 3, 1, 2, 4).reshape(B, Lq, H, -1)
        m = m.reshape(B, Hkv, G, Lq).permute(0, 3, 1, 2).reshape(B, Lq, H)
        o = o.to(q.dtype)
        return (o.contiguous() if contiguous else o), m.to(lse_dtype(q.dtype)).contiguous()
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
    if _dense_fused_ok(qi, ki, vi, is_causal):
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
