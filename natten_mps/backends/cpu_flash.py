"""PyTorch's CPU flash-attention kernels as the pure path uses them (a leaf module shared by
:mod:`.pure` and :mod:`.pure_small`): the forward and backward ops (None where this torch lacks
them) and the backward with an LSE gradient."""
from __future__ import annotations

import torch

_flash_fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


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
