"""SageAttention 1.x INT8 numerics for ``sageattn(..., qk_quant="int8")``, on PyTorch ops (any device).

Forward, per batch and head (layout ``[B, N, H, D]``):

1. Q is multiplied by ``sm_scale * log2(e)`` and quantized in blocks of 128 tokens, the (smoothed)
   K in blocks of 64 tokens; each block to INT8 with scale ``max|x| / 127`` and rounding half away
   from zero (a block of zeros gets scale 0).
2. ``Q_int8 K_int8^T`` is accumulated exactly in integers (computed as float32 products of the
   integer values: every partial sum is an integer below 127^2 x 256 < 2^24, so float32 is exact)
   and dequantized with the two block scales: base-2 scores.
3. Softmax in base 2, then ``P V`` with float32 accumulation.
4. The LSE is returned in natural log, with the smoothing correction ``sm_scale * q . mean(k)``.

Backward is straight-through: the gradient of the unquantized attention at the same inputs.
On Metal (MPS; the emulator or the CUDA back end when selected) steps 1-3 run as kernels
(:mod:`sage_mps.metal_int8`: quantization on the device, integer dot products); elsewhere as the
PyTorch ops below, which are also the kernels' reference.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from natten_mps import backend

from . import metal_int8

Q_BLOCK = 128
K_BLOCK = 64
_LOG2E = 1.0 / math.log(2.0)


def quantize_blocks(x: Tensor, block: int) -> Tuple[Tensor, Tensor]:
    """``x`` ``[B, N, H, D]`` -> (int8 values as float32 ``[B, N, H, D]``, scale per token ``[B, N, H, 1]``).

    Tokens are grouped in blocks of ``block`` along N (per batch and head); each block shares the
    scale ``max|x| / 127``; values round half away from zero.
    """
    B, N, H, D = x.shape
    x = x.float()
    pad = (-N) % block
    xp = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
    blocks = xp.reshape(B, -1, block, H, D)
    amax = blocks.abs().amax(dim=(2, 4), keepdim=True)                  # [B, nb, 1, H, 1]
    scale = amax / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = blocks / safe
    q = torch.sign(y) * torch.floor(y.abs() + 0.5)                    # half away from zero
    q = torch.where(scale > 0, q, torch.zeros_like(q)).clamp_(-127, 127)
    per_token = scale.expand(B, blocks.shape[1], block, H, 1).reshape(B, -1, H, 1)[:, :N]
    return q.reshape(B, -1, H, D)[:, :N], per_token


def int8_attention_forward(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float,
                           k_mean: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """INT8 QK attention. ``q`` ``[B, Nq, H, D]``; ``k`` (already smoothed) / ``v`` ``[B, Nk, Hkv, D|Dv]``;
    ``k_mean`` ``[B, 1, Hkv, D]`` or None. Returns (out ``[B, Nq, H, Dv]`` in q's dtype, natural-log
    LSE ``[B, Nq, H]`` float32 including the smoothing correction)."""
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    if backend.use_metal(q, metal_int8.supported(q, k, v)):
        out, lse = int8_attention_metal(q, k, v, bool(is_causal), float(scale))
        return out, _smoothing_correction(lse, q, k_mean, G, scale)
    qi, sq = quantize_blocks(q.float() * (scale * _LOG2E), Q_BLOCK)
    ki, sk = quantize_blocks(k.float(), K_BLOCK)
    if G > 1:
        ki, sk = ki.repeat_interleave(G, dim=2), sk.repeat_interleave(G, dim=2)
        vv = v.repeat_interleave(G, dim=2)
    else:
        vv = v
    # [B, H, Nq, Nk] integer products (exact in float32), dequantized by the two block scales
    s = torch.matmul(qi.permute(0, 2, 1, 3), ki.permute(0, 2, 3, 1))
    s = s * sq.permute(0, 2, 1, 3) * sk.permute(0, 2, 3, 1)
    if is_causal:
        mask = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    p = torch.exp2(s - m)
    den = p.sum(dim=-1, keepdim=True)
    out = torch.matmul(p, vv.permute(0, 2, 1, 3).float()) / den
    lse = (m + torch.log2(den)).squeeze(-1) * math.log(2.0)              # natural log, [B, H, Nq]
    lse = lse.permute(0, 2, 1)
    return out.permute(0, 2, 1, 3).to(q.dtype), _smoothing_correction(lse, q, k_mean, G, scale).contiguous()


def _smoothing_correction(lse: Tensor, q: Tensor, k_mean: Optional[Tensor], G: int, scale: float) -> Tensor:
    """The LSE of the unsmoothed scores: add ``scale * q . mean(k)`` (``lse`` ``[B, Nq, H]``)."""
    if k_mean is None:
        return lse
    km = k_mean.float().repeat_interleave(G, dim=2) if G > 1 else k_mean.float()
    return lse + (q.float() * km).sum(-1) * scale


@torch.library.custom_op("sage_mps::int8_attention", mutates_args=())
def int8_attention_metal(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """The Metal kernels as one registered op (opaque under ``torch.compile``): (out, natural-log LSE
    without the smoothing correction). Forward only: ``sageattn`` makes the backward straight-through."""
    return metal_int8.int8_attention_forward(q, k, v, is_causal, scale, Q_BLOCK, K_BLOCK)


@int8_attention_metal.register_fake
def _int8_attention_fake(q, k, v, is_causal, scale):
    return q.new_empty(q.shape[:-1] + (v.shape[-1],)), q.new_empty(q.shape[:-1], dtype=torch.float32)
