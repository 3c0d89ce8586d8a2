"""INT8 QK attention on Metal (``shaders/sage/int8_attention.metal``): quantization on the device and
integer dot products in the attention kernel. Same numerics as :func:`sage_mps.int8.int8_attention_forward`
(which is the path off Metal): Q (times ``sm_scale * log2 e``) in blocks of 128 tokens, K in blocks of 64.

Three dispatches: quantize Q, quantize K, attention.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from natten_mps.backends.metal import _DTYPE_SUFFIX, _INT32_MAX, _new_output
from natten_mps.metal import runtime

INT8_SHADER = "sage/int8_attention.metal"
MAX_HEAD_DIM = 256
QUERIES_PER_GROUP = 32
THREADS = 256
_LOG2E = 1.0 / math.log(2.0)


def supported(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """float32/16/bf16, head dims <= 256, 32-bit indexing, the family built on this device and its
    pipelines allowing THREADS threads a threadgroup (the forward's tiling is fixed: 8 SIMD-groups)."""
    return (q.dtype in _DTYPE_SUFFIX and q.dtype == k.dtype == v.dtype and max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM
            and all(0 < t.numel() <= _INT32_MAX for t in (q, k, v))
            and runtime.family_available(INT8_SHADER, _DTYPE_SUFFIX[q.dtype], q.device.type)
            and runtime.thread_limit(INT8_SHADER, q.device.type, _DTYPE_SUFFIX[q.dtype]) >= THREADS)


def _pure_forward(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float, q_block: int,
                  k_block: int) -> Tuple[Tensor, Tensor]:
    """The path off Metal with :func:`int8_attention_forward`'s signature (a family found unavailable
    during the call): ``sage_mps.int8`` re-checks :func:`supported`, now False."""
    from . import int8
    assert (q_block, k_block) == (int8.Q_BLOCK, int8.K_BLOCK), (q_block, k_block)
    return int8.int8_attention_forward(q, k, v, is_causal, scale, None)


def quantize(x: Tensor, block: int, mult: float) -> Tuple[Tensor, Tensor]:
    """``x`` ``[B, N, H, D]`` -> (int8 ``[B, N, H, D]``, block scales ``[B, H, ceil(N / block)]`` float32)."""
    x = x.contiguous()
    B, N, H, D = x.shape
    nb = -(-N // block)
    xq = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scales = _new_output((B, H, nb), torch.float32, x.device)
    params = torch.tensor([B, N, H, D, block], dtype=torch.int32, device=x.device)
    lib = runtime.library(INT8_SHADER, x.device.type)
    groups = B * H * nb
    kernel = getattr(lib, f"sage_quantize_{_DTYPE_SUFFIX[x.dtype]}")
    tpg = min(256, kernel.max_threads_per_threadgroup)     # any multiple of 32 works: a strided loop
    kernel(x, xq, scales, params, float(mult), threads=groups * tpg, group_size=tpg)
    return xq, scales


@runtime.pure_on_failure(_pure_forward)
def int8_attention_forward(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float,
                           q_block: int, k_block: int) -> Tuple[Tensor, Tensor]:
    """``q`` ``[B, Nq, H, D]``, (smoothed) ``k`` / ``v`` ``[B, Nk, Hkv, D|Dv]`` -> (out ``[B, Nq, H, Dv]``,
    natural-log LSE ``[B, Nq, H]`` float32, without the smoothing correction)."""
    B, Nq, H, D = q.shape
    Nk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    qi, qs = quantize(q, q_block, scale * _LOG2E)
    ki, ks = quantize(k, k_block, 1.0)
    out = _new_output((B, Nq, H, Dv), q.dtype, q.device)
    lse = _new_output((B, Nq, H), torch.float32, q.device)
    params = torch.tensor([B, Nq, Nk, H, Hkv, D, Dv, int(bool(is_causal)), q_block, k_block], dtype=torch.int32,
                          device=q.device)
    lib = runtime.library(INT8_SHADER, q.device.type)
    groups = B * H * -(-Nq // QUERIES_PER_GROUP)
    getattr(lib, f"sage_int8_forward_{_DTYPE_SUFFIX[q.dtype]}")(qi, qs, ki, ks, v.contiguous(), out, lse, params,
                                                                  threads=groups * THREADS, group_size=THREADS)
    return out, lse
