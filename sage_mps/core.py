"""``sageattn``: argument handling, K smoothing and the exact LSE correction."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from natten_mps import checks, ops
from natten_mps.functional import autocast_inputs

from .int8 import int8_attention_forward

_LAYOUTS = ("HND", "NHD")


def sageattn(q: Tensor, k: Tensor, v: Tensor, tensor_layout: str = "HND", is_causal: bool = False,
             sm_scale: Optional[float] = None, smooth_k: bool = True, return_lse: bool = False,
             qk_quant: Optional[str] = None, **kwargs):
    """SageAttention-compatible attention.

    Args:
        q, k, v: ``[B, H, N, D]`` (``tensor_layout="HND"``) or ``[B, N, H, D]`` (``"NHD"``); K/V may
            have fewer heads than Q (GQA, ``H % H_kv == 0``).
        is_causal: causal mask: query ``i`` sees keys ``j <= i`` (as SDPA aligns it when the query and
            key lengths differ: top-left).
        sm_scale: score scale, default ``D ** -0.5``.
        smooth_k: subtract the mean key over the sequence (exact; reduces outliers).
        return_lse: also return the log-sum-exp of the (unsmoothed) scores, ``[B, H, N]``, natural log.
        qk_quant: ``None`` (float scores) or ``"int8"``: SageAttention 1.x's INT8 QK numerics
            (:mod:`sage_mps.int8`: Q in blocks of 128 tokens, smoothed K in blocks of 64, integer
            products, base-2 softmax, float32 PV); the backward is straight-through (the gradient of
            the unquantized attention). Runs on PyTorch ops on every device (no INT8 Metal kernel yet).

    Returns the output in ``q``'s layout and dtype (and the LSE, float32).
    """
    if tensor_layout not in _LAYOUTS:
        raise ValueError(f"tensor_layout must be one of {_LAYOUTS}, got {tensor_layout!r}")
    unknown = set(kwargs) - {"qk_quant_gran", "pv_accum_dtype"}
    if unknown:
        raise TypeError(f"sageattn got unexpected keyword arguments {sorted(unknown)}")
    if qk_quant not in (None, "int8"):
        raise ValueError(f"qk_quant must be None or 'int8', got {qk_quant!r}")
    q, k, v = autocast_inputs(q, k, v)        # SDPA's autocast rule
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        checks.check_tensor(t, n)
        if t.dim() != 4:
            raise ValueError(f"{n} must be 4-D ({tensor_layout}), got shape {tuple(t.shape)}")
    checks.check_same((q, k, v), ("q", "k", "v"), "dtype")
    checks.check_same((q, k, v), ("q", "k", "v"), "device")
    if tensor_layout == "HND":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree "
                         f"(layout {tensor_layout})")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"q heads ({q.shape[2]}) must be a multiple of k/v heads ({k.shape[2]})")
    scale = checks.check_scale(sm_scale, q.shape[-1])
    k_mean = None
    if smooth_k and k.shape[1] > 0:
        k_mean = k.mean(dim=1, keepdim=True)
        k = k - k_mean
    needs_float = qk_quant is None or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    if needs_float:
        out, lse = ops.dense_attention(q, k, v, bool(is_causal), scale)
        if k_mean is not None:
            G = q.shape[2] // k_mean.shape[2]
            km = k_mean.repeat_interleave(G, dim=2) if G > 1 else k_mean
            lse = lse + (q.float() * km.float()).sum(-1) * scale
    if qk_quant == "int8":
        out_q, lse_q = int8_attention_forward(q, k, v, bool(is_causal), scale, k_mean)
        if needs_float:      # straight-through: INT8 values, the unquantized attention's gradient
            out = out + (out_q - out).detach()
            lse = lse + (lse_q - lse).detach()
        else:
            out, lse = out_q, lse_q
    if tensor_layout == "HND":
        out = out.transpose(1, 2)
    if not return_lse:
        return out
    return out, lse.transpose(1, 2)  # [B, H, N] like sageattention
