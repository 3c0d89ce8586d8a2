"""Metal implementations of the natten_mps ops (MPS; CPU under emulation; CUDA through the MSL -> CUDA back end).

Each function takes the op's public layout (heads-last) and launches kernels from ``shaders/``
through the shared runtime. Configurations no kernel covers report ``supported(...) == False``
and the op layer runs the pure-PyTorch path instead.
"""
from __future__ import annotations

import torch

from ..metal import runtime

NA_FORWARD_SHADER = "natten/na_forward.metal"
MAX_HEAD_DIM = 256
_DTYPE_SUFFIX = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def na_forward_supported(q: torch.Tensor, v: torch.Tensor) -> bool:
    return (q.dtype in _DTYPE_SUFFIX and q.dim() <= 6 and q.shape[-1] <= MAX_HEAD_DIM
            and v.shape[-1] <= MAX_HEAD_DIM)


def _new_output(shape, dtype, device) -> torch.Tensor:
    # Under emulation (and on request elsewhere), outputs are poisoned so that a kernel that forgets
    # to write shows up as NaN.
    if runtime.poison_outputs(device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _pad3(values, fill):
    values = list(values)
    return [fill] * (3 - len(values)) + values


def na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale):
    """Fused forward: ``q`` ``[B, *L, H, D]``, ``k``/``v`` ``[B, *L, Hkv, D|Dv]`` -> (out, lse)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    Hkv, Dv = k.shape[-2], v.shape[-1]
    spatial = q.shape[1:-2]
    out = _new_output(q.shape[:-1] + (Dv,), q.dtype, q.device)
    lse = _new_output(q.shape[:-1], torch.float32, q.device)
    threads = q.numel() // D if D else 0
    if threads == 0:
        return out, lse
    geom = ([B, H, Hkv, D, Dv] + _pad3(spatial, 1) + _pad3(kernel_size, 1) + _pad3(stride, 1)
            + _pad3(dilation, 1) + _pad3([int(c) for c in is_causal], 0))
    geom_t = torch.tensor(geom, dtype=torch.int64, device=q.device)
    lib = runtime.library(NA_FORWARD_SHADER, q.device.type)
    kernel = getattr(lib, f"na_forward_{_DTYPE_SUFFIX[q.dtype]}")
    kernel(q, k, v, out, lse, geom_t, float(scale), threads=threads, group_size=min(256, threads))
    return out, lse
