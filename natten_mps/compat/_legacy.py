"""Building blocks of the compatibility shims: heads-first split ops and the legacy module.

Before 0.17 (split ops) and for the split ops of 0.17, NATTEN's layout was heads-first:
``query``/``key``/``value`` ``[B, heads, *spatial, head_dim]``, attention weights
``[B, heads, *spatial, prod(kernel_size) (+ additional tokens)]``; additional keys/values
``[B, heads, tokens, head_dim]`` contribute weights appended after the neighbourhood's. The
computation is :mod:`natten_mps.split` (same neighbour order, same ``rpb`` indexing).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .. import checks, functional, split, support


def heads_last(x: Tensor) -> Tensor:
    """``[B, H, *spatial, C]`` -> ``[B, *spatial, H, C]``."""
    return x.movedim(1, -2)


def heads_first(x: Tensor) -> Tensor:
    """``[B, *spatial, H, C]`` -> ``[B, H, *spatial, C]``."""
    return x.movedim(-2, 1)


def _check_rank(name: str, t, rank: int, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank + 3:
        raise ValueError(f"{name}: {what} must be a {rank + 3}-D tensor [batch, heads, *spatial, dim] "
                         f"(heads-first, as NATTEN < 0.20), got shape {tuple(t.shape)}")


def qk(name: str, rank: int, query: Tensor, key: Tensor, kernel_size, dilation, *, is_causal=False,
       rpb: Optional[Tensor] = None, additional_keys: Optional[Tensor] = None) -> Tensor:
    """Heads-first attention scores (unscaled, plus ``rpb``): ``[B, H, *spatial, Kvol (+ N_add)]``."""
    _check_rank(name, query, rank, "query")
    _check_rank(name, key, rank, "key")
    fn = {1: split.na1d_qk, 2: split.na2d_qk, 3: split.na3d_qk}[rank]
    logits = heads_first(fn(heads_last(query), heads_last(key), kernel_size, dilation, is_causal=is_causal,
                            rpb=rpb))
    if additional_keys is None:
        return logits
    _check_additional(name, "additional_keys", additional_keys, query)
    extra = torch.einsum("bh...d,bhnd->bh...n", query, additional_keys.to(query.dtype))
    return torch.cat([logits, extra.to(logits.dtype)], dim=-1)


def av(name: str, rank: int, attn: Tensor, value: Tensor, kernel_size, dilation, *, is_causal=False,
       additional_values: Optional[Tensor] = None) -> Tensor:
    """Heads-first weighted values: ``[B, H, *spatial, head_dim]``."""
    _check_rank(name, attn, rank, "attn")
    _check_rank(name, value, rank, "value")
    kvol = math.prod(checks.as_tuple(kernel_size, rank, "kernel_size"))
    extra_tokens = 0 if additional_values is None else additional_values.shape[-2]
    if attn.shape[-1] != kvol + extra_tokens:
        raise ValueError(f"{name}: attn's last dimension must be prod(kernel_size) + additional tokens = "
                         f"{kvol} + {extra_tokens}, got {attn.shape[-1]}")
    fn = {1: split.na1d_av, 2: split.na2d_av, 3: split.na3d_av}[rank]
    out = heads_first(fn(heads_last(attn[..., :kvol]), heads_last(value), kernel_size, dilation,
                         is_causal=is_causal))
    if additional_values is None:
        return out
    _check_additional(name, "additional_values", additional_values, value)
    return out + torch.einsum("bh...n,bhnd->bh...d", attn[..., kvol:].to(value.dtype), additional_values)


def _check_additional(name, what, t, ref) -> None:
    if not isinstance(t, Tensor) or t.dim() != 4 or t.shape[0] != ref.shape[0] or t.shape[1] != ref.shape[1] \
            or t.shape[-1] != ref.shape[-1]:
        raise ValueError(f"{name}: {what} must be [batch, heads, tokens, dim] matching {tuple(ref.shape)} in batch, "
                         f"heads and dim, got shape {tuple(getattr(t, 'shape', ()))}")


class LegacyNeighborhoodAttention(nn.Module):
    """The modules of NATTEN 0.14 to 0.17: parameters ``qkv``, ``rpb`` (optional relative positional
    bias ``[heads, 2K_0 - 1, ...]``), ``proj``; input ``[B, *spatial, dim]``.

    ``pad_axes``: axes the module zero-pads up to ``kernel_size * dilation`` when the input is shorter
    (then crops the output), as NATTEN 0.14/0.15 did; inputs too short on other axes are refused.
    Without ``rpb`` and attention dropout the fused op runs; otherwise the weights are explicit
    (split ops: scores * scale + rpb, softmax, dropout, weighted values).
    """

    def __init__(self, rank: int, dim: int, num_heads: int, kernel_size: Sequence[int], dilation: Sequence[int],
                 is_causal: Sequence[bool], rel_pos_bias: bool, qkv_bias: bool, qk_scale: Optional[float],
                 attn_drop: float, proj_drop: float, pad_axes: Sequence[int] = ()):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(num_heads, int) or dim < 1 or num_heads < 1 \
                or dim % num_heads:
            raise ValueError(f"dim must be a positive multiple of num_heads, got dim={dim!r}, num_heads={num_heads!r}")
        self.rank = rank
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = tuple(kernel_size)
        self.dilation = tuple(dilation)
        self.is_causal = tuple(bool(c) for c in is_causal)
        if any(d < 1 for d in self.dilation):
            raise ValueError(f"dilation must be >= 1, got {self.dilation}")
        if rel_pos_bias and any(self.is_causal):
            raise ValueError("Causal neighborhood attention is undefined with positional biases (rel_pos_bias)")
        self.pad_axes = tuple(pad_axes)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop_p = float(attn_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != self.rank + 2:
            raise ValueError(f"{type(self).__name__} expected a rank-{self.rank + 2} input tensor "
                             f"[batch, *spatial, dim]; got shape {tuple(getattr(x, 'shape', ()))}")
        spatial = tuple(x.shape[1:-1])
        window = tuple(k * d for k, d in zip(self.kernel_size, self.dilation))
        pads = [0] * self.rank
        for ax in range(self.rank):
            if spatial[ax] < window[ax]:
                if ax not in self.pad_axes:
                    raise ValueError(f"{type(self).__name__}: input extent {spatial[ax]} on axis {ax} is smaller than "
                                     f"kernel_size * dilation = {window[ax]}")
                pads[ax] = window[ax] - spatial[ax]
        if any(pads):
            flat = []
            for p in reversed(pads):
                flat += [0, p]
            x = torch.nn.functional.pad(x, [0, 0] + flat)
        B, C = x.shape[0], x.shape[-1]
        q, k, v = self.qkv(x).reshape(B, *x.shape[1:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        if self.rpb is None and not (self.attn_drop_p > 0 and self.training) and self.fused_allowed():
            fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[self.rank]
            out = fn(q, k, v, self.kernel_size, dilation=self.dilation, is_causal=self.is_causal, scale=self.scale)
        else:
            qk_fn = {1: split.na1d_qk, 2: split.na2d_qk, 3: split.na3d_qk}[self.rank]
            av_fn = {1: split.na1d_av, 2: split.na2d_av, 3: split.na3d_av}[self.rank]
            logits = qk_fn(q, k, self.kernel_size, self.dilation, is_causal=self.is_causal, scale=self.scale,
                           rpb=self.rpb)
            attn = self.attn_drop(logits.softmax(dim=-1))
            out = av_fn(attn, v, self.kernel_size, self.dilation, is_causal=self.is_causal)
        out = out.reshape(B, *x.shape[1:-1], C)
        if any(pads):
            out = out[(slice(None),) + tuple(slice(0, n) for n in spatial)]
        return self.proj_drop(self.proj(out))

    def fused_allowed(self) -> bool:
        """Whether the fused op may run (0.17's modules follow ``use_fused_na``)."""
        return True

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, is_causal={self.is_causal}, has_bias={self.rpb is not None}")


def odd_kernel(kernel_size, name: str = "kernel_size") -> int:
    """NATTEN 0.14/0.15 modules: one odd int > 1."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 2 or kernel_size % 2 == 0:
        raise ValueError(f"{name} must be an odd int greater than 1 (NATTEN 0.14/0.15 modules), got {kernel_size!r}")
    return kernel_size


def no_op(*args, **kwargs) -> None:
    """Settings of NATTEN's CUDA kernels (tiled/GEMM/fused NA, TF32, autotuner): nothing to set here."""
    return None


def has_mps() -> bool:
    """natten-mps 0.3.3's probe: an Apple GPU is usable."""
    return support.has_mps()


from ._context import has_bfloat, has_cuda, has_gemm, has_half  # noqa: E402,F401  (kept importable here)
