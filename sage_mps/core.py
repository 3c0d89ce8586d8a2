"""``sageattn``: argument handling, K smoothing and the exact LSE correction."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from natten_mps import checks, ops
from natten_mps.backends import workspace
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
    seq_dim = 2 if tensor_layout == "HND" else 1
    k_mean = None
    if smooth_k and k.shape[seq_dim] > 0:
        # smoothed in the caller's layout, so the smoothed K keeps its memory order (the attention
        # kernels read it as the caller laid it out)
        k_mean = _key_mean(k, seq_dim)
        saved = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))   # autograd keeps K
        k = k - k_mean if saved else _smooth(k, k_mean)
    if tensor_layout == "HND":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k_mean = None if k_mean is None else k_mean.transpose(1, 2)
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree "
                         f"(layout {tensor_layout})")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"q heads ({q.shape[2]}) must be a multiple of k/v heads ({k.shape[2]})")
    scale = checks.check_scale(sm_scale, q.shape[-1])
    needs_float = qk_quant is None or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    if needs_float:
        out, lse = ops.dense_attention(q, k, v, bool(is_causal), scale)
        if k_mean is not None and (return_lse or qk_quant == "int8"):
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


def _key_mean(k: Tensor, seq_dim: int) -> Tensor:
    """Mean key over the sequence, ``keepdim``. For float32 on CPU with the sequence as the
    second-to-last axis of contiguous memory (``HND``), one BLAS product with a ``1/N`` row per
    (batch, head): half the cost of ``mean`` in the benchmark's rounds at L=256 (0.06 vs 0.11 ms
    with the subtraction)."""
    if k.device.type == "cpu" and k.dtype == torch.float32 and seq_dim == 2 and k.is_contiguous() \
            and k.shape[2] > 0 and not torch.compiler.is_compiling():
        w = workspace.kept(("sage_mean_row", k.shape[2]), lambda: 4 * k.shape[2],
                           lambda: torch.full((1, 1, 1, k.shape[2]), 1.0 / k.shape[2]))
        return torch.matmul(w, k)
    return k.mean(dim=seq_dim, keepdim=True)


def _smooth(k: Tensor, k_mean: Tensor) -> Tensor:
    """``k - k_mean`` for a call whose smoothed K nothing keeps (no autograd). On CPU in eager mode
    into a buffer this thread keeps per shape (:mod:`natten_mps.backends.workspace`): a fresh
    allocation of K's size each call costs more than the subtraction (page faults; measured +0.3 ms
    at B=2, H=8, L=256, D=64 on the 2-core CI machine)."""
    if k.device.type != "cpu" or torch.compiler.is_compiling():
        return k - k_mean
    buf = workspace.kept(("sage_smoothed_k", tuple(k.shape), k.stride(), k.dtype), lambda: k.numel() * k.element_size(),
                         lambda: torch.empty_strided(k.shape, k.stride(), dtype=k.dtype))
    return torch.sub(k, k_mean, out=buf)


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
