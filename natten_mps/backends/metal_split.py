"""Metal implementations of the split ops (``shaders/natten/split.metal``): explicit attention weights.

``qk(a, x)`` -> weights ``[B, *L, H, Kvol]`` (``a`` ``[B, *L, H, D]``, ``x`` ``[B, *L, Hkv, D]``);
``av(w, x)`` -> ``[B, *L, H, Dx]``; ``inverse(w, x, heads_kv)`` -> ``[B, *L, Hkv, Dx]``, the transpose
of ``av`` (what a key or value receives from the queries whose window holds it). The forward and
backward of both split ops are these three kernels (see :mod:`natten_mps.ops`):
``qk``: dq = av(dw, k), dk = inverse(dw, q); ``av``: dw = qk(dout, v) (masked: 0), dv = inverse(w, dout).
"""
from __future__ import annotations

import math
from typing import List

import torch

from ..metal import runtime
from . import fallback, metal
from .metal import _DTYPE_SUFFIX, _INT32_MAX, _new_output, _pad3

SPLIT_SHADER = "natten/split.metal"
THREADS_PER_GROUP = 256


def split_supported(*tensors: torch.Tensor) -> bool:
    """The split kernels' coverage: the fused kernels' dtypes and 32-bit indexing; any head dim."""
    ts = [t for t in tensors if t is not None]
    return (ts[0].dtype in _DTYPE_SUFFIX and all(t.dtype == ts[0].dtype for t in ts) and ts[0].dim() <= 6
            and all(0 < t.numel() <= _INT32_MAX for t in ts)
            and runtime.family_available(SPLIT_SHADER, _DTYPE_SUFFIX[ts[0].dtype], ts[0].device.type))


def _geometry(B, spatial, H, Hkv, width_a, width_x, kernel_size, stride, dilation, is_causal, device):
    L = _pad3(spatial, 1)
    g = ([B, H, Hkv, width_a, width_x] + L + L + _pad3(kernel_size, 1) + _pad3(stride, 1) + _pad3(dilation, 1)
         + _pad3([int(bool(c)) for c in is_causal], 0) + [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    g += [0] * (metal.GEOM_FIXED - len(g))       # the tiled kernels' fields, unread here
    return metal._geom_buffer(tuple(g), torch.device(device))


def _launch(name: str, dtype, n_threads: int, *args) -> None:
    lib = runtime.library(SPLIT_SHADER, args[0].device.type)
    kernel = getattr(lib, f"{name}_{_DTYPE_SUFFIX[dtype]}")
    # one thread an output element: any group size works, within the pipeline's own thread limit
    group = min(THREADS_PER_GROUP, n_threads, kernel.max_threads_per_threadgroup)
    kernel(*args, threads=n_threads, group_size=group)


@runtime.pure_on_failure(fallback.split_qk)
def qk(a, x, kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
       fill: float = float("-inf")) -> torch.Tensor:
    a, x = a.contiguous(), x.contiguous()
    B, spatial, H, D = a.shape[0], list(a.shape[1:-2]), a.shape[-2], a.shape[-1]
    kvol = math.prod(kernel_size)
    w = _new_output(a.shape[:-1] + (kvol,), a.dtype, a.device)
    geom = _geometry(B, spatial, H, x.shape[-2], D, D, kernel_size, stride, dilation, is_causal, a.device)
    _launch("split_qk", a.dtype, w.numel(), a, x, w, geom, float(fill))
    return w


@runtime.pure_on_failure(fallback.split_av)
def av(w, x, kernel_size, stride, dilation, is_causal) -> torch.Tensor:
    w, x = w.contiguous(), x.contiguous()
    B, spatial, H = w.shape[0], list(w.shape[1:-2]), w.shape[-2]
    Dx = x.shape[-1]
    out = _new_output(w.shape[:-1] + (Dx,), x.dtype, x.device)
    geom = _geometry(B, spatial, H, x.shape[-2], Dx, Dx, kernel_size, stride, dilation, is_causal, w.device)
    _launch("split_av", x.dtype, out[..., 0].numel() * (-(-Dx // 4)), w.to(x.dtype), x, out, geom)
    return out


@runtime.pure_on_failure(fallback.split_inverse)
def inverse(w, x, heads_kv: int, kernel_size, stride, dilation, is_causal) -> torch.Tensor:
    w, x = w.contiguous(), x.contiguous()
    B, spatial, H = w.shape[0], list(w.shape[1:-2]), w.shape[-2]
    Dx = x.shape[-1]
    out = _new_output(x.shape[:-2] + (heads_kv, Dx), x.dtype, x.device)
    geom = _geometry(B, spatial, H, heads_kv, Dx, Dx, kernel_size, stride, dilation, is_causal, w.device)
    _launch("split_inverse", x.dtype, out[..., 0].numel() * (-(-Dx // 4)), w.to(x.dtype), x, out, geom)
    return out


__all__ = ["qk", "av", "inverse", "split_supported", "SPLIT_SHADER"]
