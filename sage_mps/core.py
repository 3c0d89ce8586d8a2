"""``sageattn``: argument handling, K smoothing and the exact LSE correction."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from natten_mps import checks, ops
from natten_mps.backends import workspace
from natten_mps.autocast import autocast_inputs

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
            the unquantized attention). On Metal: quantization kernels and an integer-dot attention kernel.

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
    if tensor_layout == "NHD":        # heads-first views: every step below works on [B, H, N, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        shapes = [tuple(t.transpose(1, 2).shape if tensor_layout == "NHD" else t.shape) for t in (q, k, v)]
        raise ValueError(f"q {shapes[0]}, k {shapes[1]}, v {shapes[2]} do not agree (layout {tensor_layout})")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k/v heads ({k.shape[1]})")
    scale = checks.check_scale(sm_scale, q.shape[-1])
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    eager = ops.plain_eager(q, k, v)          # asked once for the steps below
    k_mean = None
    if smooth_k and k.shape[2] > 0:
        # smoothed in the caller's memory order (the attention kernels read K as the caller laid it out)
        if grads:                       # autograd keeps the smoothed K and the mean
            k_mean = k.mean(dim=2, keepdim=True)
            k = k - k_mean
        else:
            k, k_mean = _smooth(k, eager)
    needs_float = qk_quant is None or grads
    if needs_float:
        out, lse = ops.dense_attention_heads_first(q, k, v, bool(is_causal), scale, eager)
        if k_mean is not None and (return_lse or qk_quant == "int8"):
            G = q.shape[1] // k_mean.shape[1]
            km = k_mean.repeat_interleave(G, dim=1) if G > 1 else k_mean
            lse = lse + (q.float() * km.float()).sum(-1) * scale
    if qk_quant == "int8":
        # the INT8 path works token-major: [B, N, H, D]
        out_q, lse_q = int8_attention_forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              bool(is_causal), scale,
                                              None if k_mean is None else k_mean.transpose(1, 2))
        out_q, lse_q = out_q.transpose(1, 2), lse_q.transpose(1, 2)
        if needs_float:      # straight-through: INT8 values, the unquantized attention's gradient
            out = out + (out_q - out).detach()
            lse = lse + (lse_q - lse).detach()
        else:
            out, lse = out_q, lse_q
    if tensor_layout == "NHD":
        out = out.transpose(1, 2)
    return (out, lse.contiguous()) if return_lse else out    # LSE [B, H, N] like sageattention


def _smooth(k: Tensor, eager: bool) -> Tuple[Tensor, Tensor]:
    """``(k - mean, mean)`` over the sequence of a heads-first ``k`` ``[B, Hkv, N, D]`` (mean
    ``keepdim``) for a call that nothing differentiates. On CPU in eager mode both land in buffers
    this thread keeps per shape (:mod:`natten_mps.backends.workspace`; neither escapes the call):
    a fresh allocation of K's size each call costs more than the subtraction (page faults; measured
    +0.3 ms at B=2, H=8, L=256, D=64 on the 2-core CI machine), and in the benchmark's interleaved
    rounds at L=256 ``mean(out=)`` into a kept buffer beats both a fresh ``mean`` and a BLAS product
    with a ``1/N`` row by 1-3% of the whole call."""
    if k.device.type != "cpu" or not eager:      # compile, vmap, modes (ops.plain_eager): no out= buffers
        k_mean = k.mean(dim=2, keepdim=True)
        return k - k_mean, k_mean
    mean_shape = k.shape[:2] + (1, k.shape[3])
    smoothed, k_mean = workspace.kept(
        ("sage_smoothing", tuple(k.shape), k.stride(), k.dtype),
        lambda: (k.numel() + k.shape[0] * k.shape[1] * k.shape[3]) * k.element_size(),
        lambda: (torch.empty_strided(k.shape, k.stride(), dtype=k.dtype), torch.empty(mean_shape, dtype=k.dtype)))
    torch.mean(k, 2, keepdim=True, out=k_mean)
    return torch.sub(k, k_mean, out=smoothed), k_mean


def _check_cu_seqlens(cu: Tensor, name: str, total: int) -> list:
    if not isinstance(cu, Tensor) or cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64) or cu.numel() < 2:
        raise TypeError(f"{name} must be a 1-D int32/int64 tensor of batch + 1 offsets, got "
                        f"{getattr(cu, 'dtype', type(cu).__name__)} of shape {tuple(getattr(cu, 'shape', ()))}")
    offs = [int(x) for x in cu.tolist()]
    if offs[0] != 0 or any(b < a for a, b in zip(offs, offs[1:])) or offs[-1] != total:
        raise ValueError(f"{name} must start at 0, never decrease and end at the packed length {total}, "
                         f"got {offs}")
    return offs


def sageattn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                    max_seqlen_q: int, max_seqlen_k: int, is_causal: bool = False,
                    sm_scale: Optional[float] = None, smooth_k: bool = True, **kwargs) -> Tensor:
    """SageAttention over a packed batch of sequences of different lengths (sageattention's layout).

    Args:
        q: ``[total_q, H, D]``; k, v: ``[total_k, H_kv, D|Dv]``; sequence ``i`` is rows
            ``cu_seqlens_q[i]:cu_seqlens_q[i+1]`` of ``q`` and ``cu_seqlens_k[i]:cu_seqlens_k[i+1]`` of
            ``k``/``v`` (``cu_seqlens_*``: ``[batch + 1]`` int32/int64 offsets).
        max_seqlen_q, max_seqlen_k: the longest sequences (checked against the offsets).
        is_causal, sm_scale, smooth_k: as :func:`sageattn`; the K mean is taken per sequence.

    Returns ``[total_q, H, Dv]``. Forward and backward (each sequence runs :func:`sageattn`).
    """
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        checks.check_tensor(t, n)
        if t.dim() != 3:
            raise ValueError(f"{n} must be 3-D [total_tokens, heads, head_dim], got shape {tuple(t.shape)}")
    oq = _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.shape[0])
    ok = _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.shape[0])
    if len(oq) != len(ok):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k describe {len(oq) - 1} and {len(ok) - 1} sequences")
    lq = [b - a for a, b in zip(oq, oq[1:])]
    lk = [b - a for a, b in zip(ok, ok[1:])]
    if max(lq) > max_seqlen_q or max(lk) > max_seqlen_k:
        raise ValueError(f"max_seqlen_q/max_seqlen_k ({max_seqlen_q}, {max_seqlen_k}) are below the longest "
                         f"sequences ({max(lq)}, {max(lk)})")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"k and v must have the same packed length, got {k.shape[0]} and {v.shape[0]}")
    outs = []
    for i in range(len(lq)):
        if lq[i] == 0:
            outs.append(q.new_empty(0, q.shape[1], v.shape[-1]))
            continue
        if lk[i] == 0:
            raise ValueError(f"sequence {i} has {lq[i]} queries but no keys")
        seq = [t[None, a:b] for t, (a, b) in ((q, (oq[i], oq[i + 1])), (k, (ok[i], ok[i + 1])), (v, (ok[i], ok[i + 1])))]
        outs.append(sageattn(*seq, tensor_layout="NHD", is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k,
                             **kwargs)[0])
    return torch.cat(outs, dim=0)
