"""Dense attention on simdgroup matrices: launches of ``shaders/natten/flash_simdgroup.metal``.

The matrix variant of :func:`natten_mps.backends.metal.dense_forward` / ``dense_backward``: same
arguments, layouts and results (out ``[B, Lq, H, Dv]``, lse ``[B, Lq, H]`` float32 natural log;
causal top-left; GQA), so the host can run either (``metal._dense_variant``).

A threadgroup is 4 SIMD-groups (128 threads) owning 32 queries (forward, dQ) or 32 keys (dK/dV);
grid ``(ceil(L / 32), heads, B)``. The head dim is padded to ``DP``, the smallest instantiated
width holding ``max(D, Dv)`` (:data:`PADDED_DIMS`). Backward: dQ (and delta =
rowsum(dout * out) - dlse), then dK/dV; no atomics.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..metal import runtime

SHADER = "natten/flash_simdgroup.metal"
PADDED_DIMS = (8, 16, 32, 64, 128, 256)
TILE = 32
THREADS = 128
_SUFFIX = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def padded_dim(d: int, dv: int) -> int:
    """The instantiated head-dim width ``DP`` for head dims ``d`` (q, k) and ``dv`` (v)."""
    need = max(d, dv)
    for p in PADDED_DIMS:
        if need <= p:
            return p
    raise ValueError(f"head dims {d}, {dv}: the simdgroup kernels hold at most {PADDED_DIMS[-1]}")


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether these (already Metal-supported) tensors fit the matrix kernels: 4-D heads-last,
    a dtype with kernels and head dims up to the widest instantiation."""
    return (q.dim() == 4 and q.dtype in _SUFFIX and max(q.shape[-1], v.shape[-1]) <= PADDED_DIMS[-1]
            and q.shape[2] % k.shape[2] == 0)


def supported_na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`na2d_forward` covers these 5-D heads-last tensors (dtype, head dims, GQA)."""
    return (q.dim() == 5 and q.dtype in _SUFFIX and max(q.shape[-1], v.shape[-1]) <= PADDED_DIMS[-1]
            and q.shape[3] % k.shape[3] == 0)


def _geom(q, k, v, is_causal: bool, has_dlse: bool) -> torch.Tensor:
    from .metal import _geom_buffer
    B, Lq, H, D = q.shape
    return _geom_buffer((Lq, k.shape[1], H, k.shape[2], D, v.shape[-1], int(bool(is_causal)), int(has_dlse)),
                        q.device)


def _kernel(lib, name: str, q: torch.Tensor, dp: int):
    return getattr(lib, f"{name}_{_SUFFIX[q.dtype]}_{dp}")


def _new(shape, dtype, device) -> torch.Tensor:
    if runtime.poison_outputs(device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def dense_forward(q, k, v, is_causal: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, Hkv, D|Dv]`` -> (out ``[B, Lq, H, Dv]``,
    lse ``[B, Lq, H]`` float32)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, Lq, H, D = q.shape
    dp = padded_dim(D, v.shape[-1])
    out = _new((B, Lq, H, v.shape[-1]), q.dtype, q.device)
    lse = _new((B, Lq, H), torch.float32, q.device)
    lib = runtime.library(SHADER, q.device.type)
    tiles = -(-Lq // TILE)
    _kernel(lib, "flash_forward", q, dp)(q, k, v, out, lse, _geom(q, k, v, is_causal, False), float(scale),
                                         threads=(tiles * THREADS, H, B), group_size=(THREADS, 1, 1))
    return out, lse


def dense_backward(dout, dlse: Optional[torch.Tensor], q, k, v, out, lse, is_causal: bool, scale: float):
    """Gradients (dq, dk, dv) of :func:`dense_forward` given ``dout`` and (optional) ``dlse``."""
    q, k, v, out = q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous()
    dout = dout.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    has_dlse = dlse is not None
    dlse_t = dlse.float().contiguous() if has_dlse else lse
    B, Lq, H, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    dp = padded_dim(D, v.shape[-1])
    dq = _new(q.shape, q.dtype, q.device)
    dk = _new(k.shape, k.dtype, k.device)
    dv = _new(v.shape, v.dtype, v.device)
    delta = _new(lse.shape, torch.float32, q.device)
    geom = _geom(q, k, v, is_causal, has_dlse)
    lib = runtime.library(SHADER, q.device.type)
    _kernel(lib, "flash_backward_dq", q, dp)(q, k, v, out, dout, lse, dlse_t, dq, delta, geom, float(scale),
                                             threads=(-(-Lq // TILE) * THREADS, H, B), group_size=(THREADS, 1, 1))
    _kernel(lib, "flash_backward_dkdv", q, dp)(q, k, v, dout, lse, delta, dk, dv, geom, float(scale),
                                               threads=(-(-Lk // TILE) * THREADS, Hkv, B),
                                               group_size=(THREADS, 1, 1))
    return dq, dk, dv


def na2d_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D neighborhood attention forward on simdgroup matrices (``na2d_forward`` kernels), a
    candidate for large windows: ``q`` ``[B, L0, L1, H, D]``, ``k``/``v`` ``[B, L0, L1, Hkv, D|Dv]``;
    ``kernel_size``, ``stride``, ``dilation``, ``is_causal``: 2 per-axis values (NATTEN's rule) ->
    (out ``[B, L0, L1, H, Dv]``, lse ``[B, L0, L1, H]`` float32). No varlen, no additional keys;
    backward: :func:`na2d_backward`."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, L0, L1, H, D = q.shape
    Hkv, Dv = k.shape[3], v.shape[-1]
    dp = padded_dim(D, Dv)
    out = _new((B, L0, L1, H, Dv), q.dtype, q.device)
    lse = _new((B, L0, L1, H), torch.float32, q.device)
    geom, grid = _na2d_geometry(q, k, v, kernel_size, stride, dilation, is_causal, False)
    lib = runtime.library(SHADER, q.device.type)
    _kernel(lib, "na2d_forward", q, dp)(q, k, v, out, lse, geom, float(scale),
                                        threads=(grid[0], H, grid[2]), group_size=(THREADS, 1, 1))
    return out, lse


def _na2d_geometry(q, k, v, kernel_size, stride, dilation, is_causal, has_dlse: bool):
    """The ``geom`` buffer of the na2d kernels and their grid (threads; y is the head axis)."""
    from .metal import _geom_buffer
    B, L0, L1, H, D = q.shape
    K, S, dil, C = (list(x) for x in (kernel_size, stride, dilation, is_causal))
    rows = -(-L0 // dil[0])                  # the longest dilation group's extents
    cols = -(-L1 // dil[1])
    tiles1 = -(-cols // 8)
    tiles = -(-rows // 4) * tiles1
    geom = _geom_buffer((B, H, k.shape[3], D, v.shape[-1], L0, L1, *K, *S, *dil, *(int(bool(c)) for c in C), tiles1,
                         int(has_dlse)), q.device)
    return geom, (tiles * THREADS, None, B * dil[0] * dil[1])


def na2d_backward(dout, dlse: Optional[torch.Tensor], q, k, v, out, lse, kernel_size, stride, dilation, is_causal,
                  scale: float):
    """Gradients (dq, dk, dv) of :func:`na2d_forward`: dQ (and delta = rowsum(dout * out) - dlse) over
    each query tile's key box, then dK/dV over each key tile's query box; no atomics."""
    q, k, v, out = q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous()
    dout = dout.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    has_dlse = dlse is not None
    dlse_t = dlse.float().contiguous() if has_dlse else lse
    H, Hkv = q.shape[3], k.shape[3]
    dp = padded_dim(q.shape[-1], v.shape[-1])
    dq = _new(q.shape, q.dtype, q.device)
    dk = _new(k.shape, k.dtype, k.device)
    dv = _new(v.shape, v.dtype, v.device)
    delta = _new(lse.shape, torch.float32, q.device)
    geom, grid = _na2d_geometry(q, k, v, kernel_size, stride, dilation, is_causal, has_dlse)
    lib = runtime.library(SHADER, q.device.type)
    _kernel(lib, "na2d_backward_dq", q, dp)(q, k, v, out, dout, lse, dlse_t, dq, delta, geom, float(scale),
                                            threads=(grid[0], H, grid[2]), group_size=(THREADS, 1, 1))
    _kernel(lib, "na2d_backward_dkdv", q, dp)(q, k, v, dout, lse, delta, dk, dv, geom, float(scale),
                                              threads=(grid[0], Hkv, grid[2]), group_size=(THREADS, 1, 1))
    return dq, dk, dv
